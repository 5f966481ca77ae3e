/* Tracker first-party tag. On a landing page it keeps the click id from the URL in a
   cookie on this site (localStorage as a fallback); on a thank-you page it reports the
   conversion with that click id. No dependencies.
   <script async src="https://TRACKER/t.js" data-advertiser="shop"></script>
   tracker.conversion({txid: "o-1", amount: "19.99", currency: "EUR", event: "sale"}) */
(function (w, d) {
  "use strict";
  var me = d.currentScript;
  if (!me) return;
  var cfg = me.dataset;
  var FIELDS = ["txid", "amount", "currency", "event", "sub1", "sub2", "sub3", "sub4", "sub5"];

  function fromAttributes() {
    var c = { advertiser: cfg.advertiser };
    for (var i = 0; i < FIELDS.length; i++) c[FIELDS[i]] = cfg[FIELDS[i]];
    return c;
  }

  if (w.tracker && w.tracker.clickId) { // a second tag on the page (site-wide + thank-you)
    if (cfg.txid) w.tracker.conversion(fromAttributes());
    return;
  }
  var base = me.src.replace(/\/t\.js(\?.*)?$/, "");
  var name = cfg.cookie || "_tk_click";
  var maxAge = (parseInt(cfg.lookbackDays, 10) || 30) * 86400;
  var ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

  function valid(id) {
    return typeof id === "string" && ID.test(id) ? id : "";
  }

  function fromUrl() {
    var query = new URLSearchParams(w.location.search);
    var names = (cfg.param || "click_id").split(",");
    for (var i = 0; i < names.length; i++) {
      var id = valid((query.get(names[i].trim()) || "").toLowerCase());
      if (id) return id;
    }
    return "";
  }

  function save(id) {
    try {
      d.cookie = name + "=" + id + "; Max-Age=" + maxAge + "; Path=/; SameSite=Lax" +
        (cfg.cookieDomain ? "; Domain=" + cfg.cookieDomain : "") +
        (w.location.protocol === "https:" ? "; Secure" : "");
    } catch (e) { /* cookies disabled */ }
    try {
      w.localStorage.setItem(name, JSON.stringify({ id: id, expires: Date.now() + maxAge * 1000 }));
    } catch (e) { /* storage disabled */ }
  }

  function clickId() {
    try {
      var m = d.cookie.match(new RegExp("(?:^|; )" + name + "=([^;]*)"));
      if (m && valid(m[1])) return m[1];
    } catch (e) { /* cookies disabled */ }
    try {
      var kept = JSON.parse(w.localStorage.getItem(name) || "null");
      if (kept && kept.expires > Date.now()) return valid(kept.id);
    } catch (e) { /* storage disabled */ }
    return "";
  }

  // fetch(keepalive) first (it survives the page closing and gives the answer back), then
  // sendBeacon, then an image. A conversion is deduplicated by its txid on the server.
  function send(body) {
    var url = base + "/t/conversion";
    if (w.fetch) {
      try {
        return w.fetch(url, { method: "POST", body: body, keepalive: true, credentials: "include" })
          .then(function (r) { return r.json(); })
          .catch(function () { return { status: "unknown", reason: "network_or_origin" }; });
      } catch (e) { /* keepalive unsupported: fall through */ }
    }
    if (navigator.sendBeacon && navigator.sendBeacon(url, body)) {
      return Promise.resolve({ status: "sent" });
    }
    new Image(1, 1).src = url + "?" + body.toString();
    return Promise.resolve({ status: "sent" });
  }

  function conversion(c) {
    c = c || {};
    var body = new URLSearchParams();
    body.set("advertiser", c.advertiser || cfg.advertiser || "");
    body.set("click_id", valid(c.click_id) || clickId());
    for (var i = 0; i < FIELDS.length; i++) {
      var v = c[FIELDS[i]];
      if (v !== undefined && v !== null && v !== "") body.set(FIELDS[i], String(v));
    }
    return send(body);
  }

  var landed = fromUrl();
  if (landed) save(landed); // the newest click replaces an older one

  var queued = (w.tracker && w.tracker.q) || [];
  w.tracker = { conversion: conversion, clickId: clickId };
  for (var i = 0; i < queued.length; i++) conversion(queued[i]);
  if (cfg.txid) conversion(fromAttributes());
})(window, document);
