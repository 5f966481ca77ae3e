// The tracker's dashboard: plain JS over the JSON API (no build step). Every number comes
// from /api/reports with the signed-in key, so the server decides what this key may see.
"use strict";

const state = { key: sessionStorage.getItem("tracker-key") || "", me: null, filters: {},
                from: "", to: "", tz: "" };
const charts = {};
const ZONES = ["UTC", "Europe/London", "Europe/Berlin", "America/New_York",
               "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata", "Australia/Sydney"];
const LABELS = { clicks: "Clicks", unique_clicks: "Unique clicks", conversions: "Conversions",
  cvr: "CVR", amount: "Sales", revenue: "Revenue", payout: "Payout", profit: "Profit",
  epc: "EPC", roi: "ROI", aov: "AOV", bot_rate: "Bot rate", fraud_rate: "Fraud rate",
  credited_conversions: "Credited conv.", credited_amount: "Credited sales" };
const RATES = new Set(["cvr", "ctr", "roi", "bot_rate", "fraud_rate", "reversal_rate"]);

const $ = (id) => document.getElementById(id);

// Which metrics each role sees: affiliates their earnings, everyone else the programme's.
function money() { return state.me.role === "affiliate" ? "payout" : "revenue"; }
function kpiMetrics() {
  const role = state.me.role;
  if (role === "affiliate") return ["clicks", "unique_clicks", "conversions", "cvr", "payout", "epc"];
  if (role === "advertiser") return ["clicks", "unique_clicks", "conversions", "cvr", "amount", "revenue"];
  return ["clicks", "unique_clicks", "conversions", "cvr", "revenue", "payout", "profit", "epc"];
}

class ApiError extends Error {}

async function api(path, params, raw) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
  const response = await fetch(url, { headers: { Authorization: `Bearer ${state.key}` } });
  if (!response.ok) {
    let reason = `HTTP ${response.status}`;
    try { reason = (await response.json()).reason || reason; } catch (_) { /* not JSON */ }
    if (response.status === 401) signOut(reason);
    throw new ApiError(reason);
  }
  return raw ? response.blob() : response.json();
}

function addDays(iso, days) {
  const d = new Date(`${iso}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

function todayIn(tz) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit",
                                            day: "2-digit" }).format(new Date());
}

// The period as the API takes it: `to` is the day after the last day shown.
function period() {
  const params = { from: state.from, to: addDays(state.to, 1), tz: state.tz };
  for (const [field, value] of Object.entries(state.filters)) params[`filter[${field}]`] = value;
  return params;
}

function report(metrics, extra) {
  return api("/api/reports", { metrics: metrics.join(","), ...period(), ...(extra || {}) });
}

function show(name, value) {
  if (value === null || value === undefined) return "–";
  if (RATES.has(name)) return `${(value * 100).toFixed(2)}%`;
  if (typeof value === "string") return Number(value).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  if (typeof value === "number" && !Number.isInteger(value)) return value.toFixed(2);
  return value.toLocaleString("en-US");
}

async function drawKpis() {
  const metrics = kpiMetrics();
  const data = await report(metrics, { compare: "1" });
  $("kpis").innerHTML = "";
  for (const name of metrics) {
    const change = data.change[name];
    const tile = document.createElement("div");
    tile.className = "tile";
    tile.dataset.metric = name;
    const arrow = change === null ? "" : change >= 0 ? "▲" : "▼";
    tile.innerHTML = `<div class="label">${LABELS[name] || name}</div>
      <div class="kpi-value"></div>
      <div class="change ${change === null ? "" : change >= 0 ? "up" : "down"}">${
        change === null ? "no previous data" : `${arrow} ${(change * 100).toFixed(1)}% vs previous`}</div>`;
    const value = tile.querySelector(".kpi-value");
    value.textContent = show(name, data.totals[name]);
    value.dataset.raw = JSON.stringify(data.totals[name]);
    $("kpis").appendChild(tile);
  }
}

function chart(id) {
  if (!charts[id]) charts[id] = echarts.init($(id));
  return charts[id];
}

async function drawSeries() {
  const cash = money();
  const data = await report(["clicks", "conversions", cash], { group_by: "day" });
  const days = data.rows.map((r) => r.day);
  chart("series").setOption({
    tooltip: { trigger: "axis" },
    legend: { data: ["Clicks", "Conversions", LABELS[cash]] },
    xAxis: { type: "category", data: days },
    yAxis: [{ type: "value", name: "count" }, { type: "value", name: data.currency }],
    series: [
      { name: "Clicks", type: "line", data: data.rows.map((r) => r.clicks) },
      { name: "Conversions", type: "line", data: data.rows.map((r) => r.conversions) },
      { name: LABELS[cash], type: "bar", yAxisIndex: 1,
        data: data.rows.map((r) => Number(r[cash])) },
    ],
  }, true);
}

function fillTable(id, data, drill) {
  const table = $(id);
  const columns = [...data.group_by, ...data.metrics];
  const head = `<tr>${columns.map((c) => `<th>${LABELS[c] || c}</th>`).join("")}</tr>`;
  table.innerHTML = head;
  for (const row of data.rows) {
    const tr = document.createElement("tr");
    for (const c of columns) {
      const td = document.createElement("td");
      td.textContent = data.group_by.includes(c) ? (row[c] || "(none)") : show(c, row[c]);
      tr.appendChild(td);
    }
    if (drill) {
      tr.className = "drill";
      tr.dataset.value = row[drill];
      tr.addEventListener("click", () => { state.filters[drill] = row[drill]; refresh(); });
    }
    table.appendChild(tr);
  }
  if (!data.rows.length) table.insertAdjacentHTML("beforeend", `<tr><td colspan="${columns.length}" class="unavailable">no data</td></tr>`);
}

function unavailable(id, error) {
  $(id).innerHTML = `<tr><td class="unavailable">not available: ${error.message}</td></tr>`;
}

// The tables, each a report; a click on a row of a dimension table filters everything.
function tables() {
  const cash = money();
  return {
    campaign: { group_by: "campaign", metrics: ["clicks", "conversions", "cvr", cash], drill: "campaign" },
    affiliate: { group_by: "affiliate", metrics: ["clicks", "conversions", "cvr", cash], drill: "affiliate" },
    link: { group_by: "link", metrics: ["clicks", "conversions", "cvr"], drill: "link" },
    country: { group_by: "country", metrics: ["clicks", "conversions", "cvr"], drill: "country" },
    device: { group_by: "device", metrics: ["clicks", "conversions"] },
    model: { group_by: "model", metrics: ["credited_conversions", "credited_amount"] },
    fraud: { group_by: "fraud_flag,affiliate", metrics: ["clicks"] },
  };
}

async function drawTable(name) {
  const spec = tables()[name];
  const extra = { group_by: spec.group_by, sort: `-${spec.metrics[0]}`, limit: "10" };
  const data = await report(spec.metrics, extra);
  if ($(`top-${name}`)) fillTable(`top-${name}`, data, spec.drill);
  return data;
}

async function drawCountries() {
  const data = await drawTable("country");
  const rows = [...data.rows].reverse();
  chart("countries").setOption({
    grid: { left: 60, right: 20, top: 10, bottom: 20 },
    xAxis: { type: "value" }, yAxis: { type: "category", data: rows.map((r) => r.country || "(none)") },
    series: [{ type: "bar", data: rows.map((r) => r.clicks), name: "Clicks" }],
  }, true);
}

async function drawDevices() {
  const data = await drawTable("device");
  chart("devices").setOption({
    tooltip: { trigger: "item" },
    series: [{ type: "pie", radius: ["40%", "70%"],
               data: data.rows.map((r) => ({ name: r.device || "(none)", value: r.clicks })) }],
  }, true);
}

async function drawModels() {
  try {
    const data = await drawTable("model");
    chart("models").setOption({
      grid: { left: 100, right: 20, top: 10, bottom: 20 },
      xAxis: { type: "value" }, yAxis: { type: "category", data: data.rows.map((r) => r.model) },
      series: [{ type: "bar", data: data.rows.map((r) => r.credited_conversions), name: "Credited" }],
    }, true);
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    unavailable("top-model", error);
    chart("models").clear();
  }
}

async function drawFraud() {
  const totals = await report(["clicks", "bot_rate", "fraud_rate"]);
  $("fraud-rates").textContent = `Bot clicks ${show("bot_rate", totals.totals.bot_rate)}, ` +
    `flagged clicks ${show("fraud_rate", totals.totals.fraud_rate)}`;
  await drawTable("fraud");
}

function drawFilters() {
  const box = $("filters");
  box.innerHTML = "";
  for (const [field, value] of Object.entries(state.filters)) {
    const chip = document.createElement("button");
    chip.className = "chip";
    chip.dataset.field = field;
    chip.textContent = `${field}: ${value} ✕`;
    chip.addEventListener("click", () => { delete state.filters[field]; refresh(); });
    box.appendChild(chip);
  }
}

async function refresh() {
  drawFilters();
  $("error").textContent = "";
  document.body.dataset.loading = "1";
  const jobs = [drawKpis(), drawSeries(), drawTable("campaign"), drawTable("affiliate"),
                drawTable("link"), drawCountries(), drawDevices(), drawModels(), drawFraud()];
  const results = await Promise.allSettled(jobs);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) $("error").textContent = failed.reason.message;
  document.body.dataset.loading = "";
  document.body.dataset.ready = String(Number(document.body.dataset.ready || 0) + 1);
}

async function download(name) {
  const spec = tables()[name];
  const blob = await api("/api/reports", { metrics: spec.metrics.join(","), group_by: spec.group_by,
                                           ...period(), format: "csv" }, true);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${name}-${state.from}-${state.to}.csv`;
  link.click();
  URL.revokeObjectURL(link.href);
}

let liveTimer = null;
async function live() {
  let last = null;
  const tick = async () => {
    try {
      const now = await api("/api/live");
      if (last && now.at_ms > last.at_ms) {
        const rate = (now.clicks_total - last.clicks_total) * 1000 / (now.at_ms - last.at_ms);
        $("live-rate").textContent = rate.toFixed(1);
      }
      last = now;
    } catch (_) { /* the next tick tries again */ }
  };
  await tick();
  liveTimer = setInterval(tick, 2000);
}

function signOut(reason) {
  sessionStorage.removeItem("tracker-key");
  state.key = "";
  if (liveTimer) clearInterval(liveTimer);
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason || "";
}

async function start() {
  try {
    state.me = await api("/api/me");
  } catch (error) {
    signOut(error.message);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("who").textContent = `${state.me.role}${state.me.subject ? ` ${state.me.subject}` : ""}`;
  const zones = [Intl.DateTimeFormat().resolvedOptions().timeZone, ...ZONES];
  $("tz").innerHTML = [...new Set(zones)].map((z) => `<option>${z}</option>`).join("");
  const params = new URLSearchParams(location.search);
  state.tz = params.get("tz") || $("tz").value;
  $("tz").value = state.tz;
  state.to = params.get("to") || todayIn(state.tz);
  state.from = params.get("from") || addDays(state.to, -6);
  $("from").value = state.from;
  $("to").value = state.to;
  if (state.me.role === "admin" || state.me.role === "analyst") {
    $("live").hidden = false;
    live();
  }
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("key").value.trim();
    sessionStorage.setItem("tracker-key", state.key);
    start();
  });
  $("logout").addEventListener("click", () => signOut(""));
  for (const id of ["from", "to", "tz"]) {
    $(id).addEventListener("change", () => { state[id] = $(id).value; refresh(); });
  }
  for (const button of document.querySelectorAll("button.csv")) {
    button.addEventListener("click", () => download(button.dataset.for));
  }
  window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
  if (state.key) start(); else signOut("");
});

window.trackerDashboard = { state, charts };
