"""Enrichment: each step alone, the fraud counters against real Redis, and the whole
pipeline through the real service with exact flag counts in ClickHouse."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import orjson
import pytest

from tests.geo.test_reader import write_mmdb
from tracker import hot
from tracker.ids import uuid7
from tracker.reasons import FraudFlag
from tracker.sink.enrich import fraud, fraud_counts, fraud_memory, steps
from tracker.sink.enrich.fraud import FraudRules, Thresholds, thresholds_from
from tracker.sink.enrich.pipeline import Pipeline, Step, flag
from tracker.sink.enrich.privacy import anonymize_ip
from tracker.testing import BROWSER_UA, Service, compiled_missing, wait_until
from tracker.timefmt import format_ms, parse_ms

ZERO = "00000000-0000-0000-0000-000000000000"
ADV_TOKEN = "adv-token-0123456789abcdef"
T = Thresholds()


# -- pure steps ---------------------------------------------------------------------------


def test_rules_are_pure_functions():
    assert not fraud.ip_flood(100, T) and fraud.ip_flood(101, T)
    assert fraud.duplicate_click(True) and not fraud.duplicate_click(False)
    assert fraud.fast_conversion(1_000, 5_999, T) and not fraud.fast_conversion(1_000, 6_000, T)
    assert not fraud.fast_conversion(0, 10, T)  # no click: nothing to measure
    assert not fraud.ip_many_visitors(5, T) and fraud.ip_many_visitors(6, T)
    assert fraud.datacenter_asn(16509, frozenset({16509}))
    assert not fraud.datacenter_asn(0, frozenset({16509}))
    overrides = thresholds_from(T, {"big": {"ip_clicks_per_minute": 500}})
    assert overrides["big"] == Thresholds(ip_clicks_per_minute=500)


@pytest.mark.parametrize(
    ("ip", "anonymized"),
    [
        ("203.0.113.77", "203.0.113.0"),
        ("::ffff:203.0.113.77", "203.0.113.0"),
        ("2001:db8:1234:5678:9abc:def0:1234:5678", "2001:db8:1234::"),
        ("junk", "::"),
    ],
)
def test_anonymize_ip(ip, anonymized):
    assert anonymize_ip(ip) == anonymized


def test_pipeline_runs_steps_in_order_counts_and_times_them():
    seen = []

    def first(event):
        seen.append(("first", event["n"]))
        return None if event["n"] == 2 else event

    def second(event):
        seen.append(("second", event["n"]))
        sum(range(100_000))  # CPU time to show
        if event["n"] == 3:
            flag(event, FraudFlag.IP_FLOOD)
            flag(event, FraudFlag.IP_FLOOD)
        return event

    prepared = []
    pipeline = Pipeline(
        [
            Step("first", first, ("clicks",)),
            Step("second", second, ("clicks",), prepared.append),
            Step("other", second, ("impressions",)),
        ]
    )
    out = pipeline.process("clicks", [{"n": 1}, {"n": 2}, {"n": 3}])
    assert [e["n"] for e in out] == [1, 3] and out[1]["fraud_flags"] == ["ip_flood"]
    assert seen == [("first", 1), ("first", 2), ("first", 3), ("second", 1), ("second", 3)]
    assert len(prepared) == 1 and [e["n"] for e in prepared[0]] == [1, 3]
    assert pipeline.stats["first"].events == 3 and pipeline.stats["first"].dropped == 1
    assert pipeline.stats["second"].events == 2 and pipeline.stats["second"].seconds > 0
    assert 0 < pipeline.stats["second"].cpu_seconds <= pipeline.stats["second"].seconds * 1.5
    assert "other" not in pipeline.stats
    assert pipeline.flags[("clicks", "ip_flood")] == 1
    assert pipeline.tables() == {"clicks", "impressions"}


def test_pipeline_counts_each_flag_and_bot_reason_per_table():
    pipeline = Pipeline([Step("bots", steps.mark_bot, ("clicks",))])
    events = [
        {"user_agent": "curl/8.5.0", "fraud_flags": [FraudFlag.IP_FLOOD]},
        {"user_agent": "curl/8.5.0"},
        {"user_agent": GOOGLEBOT, "fraud_flags": [FraudFlag.IP_FLOOD, FraudFlag.DUPLICATE_CLICK]},
        {"user_agent": BROWSER_UA, "method": "HEAD"},
        {"user_agent": BROWSER_UA, "fraud_flags": []},
    ]
    pipeline.process("clicks", events)
    pipeline.process("clicks", [{"user_agent": ""}])
    assert pipeline.flags == {
        ("clicks", "ip_flood"): 2,
        ("clicks", "duplicate_click"): 1,
        ("clicks", "bot:library"): 2,
        ("clicks", "bot:crawler"): 1,
        ("clicks", "bot:head_request"): 1,
        ("clicks", "bot:empty_user_agent"): 1,
    }


# -- fraud counters in Redis ----------------------------------------------------------------


def click(ip="198.51.100.1", visitor=None, slug="s", campaign="c", ms=1_700_000_000_000):
    return {
        "event_time": format_ms(ms),
        "ip": ip,
        "visitor_id": visitor or uuid7(),
        "link_slug": slug,
        "campaign_id": campaign,
        "click_id": uuid7(),
    }


try:
    from tracker.sink.enrich import _fraud_counts as compiled
except ImportError:  # not built in this work tree
    compiled = None
try:
    from tracker.sink.enrich import _fraud_memory as compiled_memory
except ImportError:
    compiled_memory = None


def use_counting(way: str, monkeypatch) -> None:
    """Count in Redis with fraud_counts.py's reference ("python") or
    tracker/sink/enrich/_fraud_counts.pyx ("compiled") grouping a chunk, placing and
    sending it and rebuilding its counts."""
    if way == "compiled" and compiled is None:
        compiled_missing("the compiled fraud counting")
    for name in ("aggregate", "place", "arg_lists", "pack_args", "rebuild"):
        chosen = (
            getattr(compiled, name) if way == "compiled" else getattr(fraud_counts, f"py_{name}")
        )
        monkeypatch.setattr(fraud_counts, name, chosen)


def use_memory_counting(compiled_: bool, monkeypatch) -> None:
    if compiled_ and compiled_memory is None:
        compiled_missing("the compiled fraud counting in memory")
    chosen = compiled_memory.count if compiled_ else fraud_memory.py_count
    monkeypatch.setattr(fraud_memory, "count_clicks", chosen)
    chosen = compiled_memory.replay if compiled_ else fraud_memory.py_replay
    monkeypatch.setattr(fraud_memory, "replay_clicks", chosen)


@pytest.fixture(params=["python", "compiled"])
def redis_counting(request, monkeypatch) -> None:
    use_counting(request.param, monkeypatch)


@pytest.fixture(params=["python", "compiled", "memory", "memory-compiled"])
def counting(request, monkeypatch) -> bool:
    """Each way of counting: in Redis (`use_counting`), or in the sink's memory
    (fraud_memory.py's `py_count` or tracker/sink/enrich/_fraud_memory.pyx). True for memory."""
    if request.param.startswith("memory"):
        use_memory_counting(request.param == "memory-compiled", monkeypatch)
        return True
    use_counting(request.param, monkeypatch)
    return False


def run_rules(rules: FraudRules, events: list[dict]) -> list[list[str]]:
    return [e.get("fraud_flags", []) for e in rules.check_clicks(events)]


def test_ip_flood_counts_across_batches_with_per_campaign_thresholds(redis_server, counting):
    rules = FraudRules(
        redis_server.client(),
        Thresholds(ip_clicks_per_minute=3),
        {"vip": Thresholds(ip_clicks_per_minute=5)},
        frozenset(),
        memory=counting,
    )
    visitor = uuid7()
    first = run_rules(rules, [click(visitor=visitor, slug=f"s{i}") for i in range(2)])
    second = run_rules(rules, [click(visitor=visitor, slug=f"t{i}") for i in range(3)])
    assert first == [[], []] and second == [[], ["ip_flood"], ["ip_flood"]]
    vip = run_rules(
        rules,
        [click(ip="198.51.100.2", visitor=visitor, slug=f"v{i}", campaign="vip") for i in range(6)],
    )
    assert [bool(f) for f in vip] == [False] * 5 + [True]
    other_minute = run_rules(
        rules, [click(visitor=visitor, slug="late", ms=1_700_000_000_000 + 60_000)]
    )
    assert other_minute == [[]]


def click_id_at(ms: int, rng: random.Random) -> str:
    """A UUIDv7 of that millisecond (uuid7() never goes back in time within a process)."""
    tail = f"{rng.getrandbits(72):018x}"
    text = f"{ms:012x}7{tail[:3]}{8 + rng.getrandbits(2):x}{tail[3:]}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def test_exclusion_marks_put_each_flagged_click_in_its_hours_set(redis_server):
    redis = redis_server.client()
    marks = steps.ExclusionMarks(redis, hot_hours=48)
    rng = random.Random(7)
    now = int(time.time() * 1000)
    ids = [click_id_at(now - hours * hot.HOUR_MS - i, rng) for hours in (0, 1) for i in range(300)]
    events = [
        {"click_id": c, "is_bot": i % 3 == 0, "fraud_flags": ["ip_flood"] if i % 3 == 1 else []}
        for i, c in enumerate(ids)
    ]
    for start in range(0, len(events), 200):  # batches that share sets
        marks.prepare(events[start : start + 200])
    for event in events:
        c = event["click_id"]
        flagged = bool(event["is_bot"] or event["fraud_flags"])
        assert redis.sismember(hot.excluded_set(c), hot.raw_id(c)) == flagged, c
    flagged = [e["click_id"] for e in events if e["is_bot"] or e["fraud_flags"]]
    sets = {hot.excluded_set(c): hot.hour_of(c) for c in flagged}
    assert len(sets) > 2 * hot.HOT_SHARDS * 0.9  # both hours, (nearly) every shard
    for key, hour in sets.items():
        expected = hot.expire_at(hour, 48) - time.time()
        assert expected - 5 < redis.ttl(key) <= expected + 1, key
    assert sum(redis.scard(key) for key in sets) == len(flagged) == 400


def test_duplicate_click_and_many_visitors(redis_server, counting):
    rules = FraudRules(
        redis_server.client(),
        Thresholds(visitors_per_ip_per_hour=2),
        {},
        frozenset(),
        memory=counting,
    )
    v1, v2, v3 = uuid7(), uuid7(), uuid7()
    flags = run_rules(
        rules,
        [
            click(visitor=v1),
            click(visitor=v1),
            click(visitor=v2),
            click(visitor=v3),
            click(visitor=v1, slug="other"),
        ],
    )
    assert flags == [[], ["duplicate_click"], [], ["ip_many_visitors"], ["ip_many_visitors"]]
    anonymous = run_rules(rules, [click(ip="198.51.100.9", visitor=ZERO) for _ in range(3)])
    assert anonymous == [[], [], []]  # no visitor id: nothing to compare


def test_fast_conversion_flag():
    rules = FraudRules(None, Thresholds(), {}, frozenset())
    conv = {
        "click_id": uuid7(),
        "click_time": format_ms(1_000_000),
        "campaign_id": "c",
        "event_time": format_ms(1_003_000),
        "previous_status": "",
    }
    assert rules.check_conversion(dict(conv))["fraud_flags"] == ["fast_conversion"]
    later = dict(conv, event_time=format_ms(1_010_000))
    assert "fraud_flags" not in rules.check_conversion(later)
    change = dict(conv, previous_status="pending")
    assert "fraud_flags" not in rules.check_conversion(change)


# -- the whole pipeline through the service ------------------------------------------------

GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


async def send(base: str, jobs: list[tuple[str, dict[str, str]]], concurrency: int = 32):
    queue = iter(jobs)
    statuses = []

    async def worker(session):
        for method, headers in queue:
            async with session.request(
                method, f"{base}/c/mix", headers=headers, allow_redirects=False
            ) as r:
                await r.read()
                statuses.append(r.status)

    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return statuses


async def test_ten_thousand_mixed_clicks_give_exact_flag_counts(service: Service, tmp_path):
    geo_db = write_mmdb(
        tmp_path / "asn.mmdb",
        {
            "3.5.140.0/24": {
                "autonomous_system_number": 16509,
                "autonomous_system_organization": "Cloud Inc",
            },
            "8.8.0.0/16": {
                "autonomous_system_number": 15169,
                "autonomous_system_organization": "Google",
            },
        },
        "GeoLite2-ASN",
    )
    service.env.update(
        {
            "TRACKER_TRUSTED_PROXIES": "127.0.0.1/32",
            "TRACKER_GEO_DATABASES": str(geo_db),
            "TRACKER_FRAUD_IP_CLICKS_PER_MINUTE": "100",
            "TRACKER_FRAUD_VISITORS_PER_IP_PER_HOUR": "5",
            # a window no run outlasts (Redis expires the marker in real time)
            "TRACKER_FRAUD_DUPLICATE_CLICK_SECONDS": "86400",
        }
    )
    # The edges' clock stands still mid-hour: every click falls in one calendar minute and
    # hour, so the per-minute and per-hour counts are exact however long the run takes.
    pinned = time.time() // 3600 * 3600 + 1800.5
    service.start_edges(2, clock_at=pinned)
    service.start_sink()
    service.add_link("mix", campaign_id="mix", affiliate_id="aff")
    rng = random.Random(7)

    def human(ip, cookie=None):
        headers = {"User-Agent": BROWSER_UA, "X-Forwarded-For": ip}
        if cookie:
            headers["Cookie"] = f"vid={cookie}"
        return ("GET", headers)

    jobs = []
    # 8,700 ordinary clicks: each from its own address, new visitor
    jobs += [human(f"10.{i // 250}.{i % 250}.{rng.randint(1, 250)}") for i in range(8700)]
    # 300 bots: crawlers, empty user agents, HEAD requests
    jobs += [
        ("GET", {"User-Agent": GOOGLEBOT, "X-Forwarded-For": f"8.8.4.{i}"}) for i in range(100)
    ]
    jobs += [("GET", {"User-Agent": "", "X-Forwarded-For": f"11.0.0.{i}"}) for i in range(100)]
    jobs += [
        ("HEAD", {"User-Agent": BROWSER_UA, "X-Forwarded-For": f"11.0.1.{i}"}) for i in range(100)
    ]
    # 2 flooding addresses, 150 clicks each, one returning visitor per address
    flood_visitors = [uuid7(), uuid7()]
    for n, visitor in enumerate(flood_visitors):
        jobs += [human(f"172.16.0.{n + 1}", visitor) for _ in range(150)]
    # a datacenter network: 300 clicks
    jobs += [human(f"3.5.140.{i % 200 + 1}", uuid7()) for i in range(300)]
    # one address shared by 12 new visitors (one click each)
    jobs += [human("172.16.9.9") for _ in range(12)]
    rng.shuffle(jobs)
    statuses = await send(service.base_url, jobs)
    # then 388 clicks in a row by one visitor from one address
    repeat = uuid7()
    statuses += await send(service.base_url, [human("172.16.8.8", repeat)] * 388, 1)
    assert len(statuses) == 10_000 and set(statuses) == {302}

    assert service.wait_count("clicks", 10_000, "link_slug = 'mix'") == 10_000
    counts = {
        r["rule"]: r["n"]
        for r in service.sql(
            "SELECT arrayJoin(fraud_flags) AS rule, count() AS n FROM tracker.clicks "
            "WHERE link_slug = 'mix' GROUP BY rule"
        )
    }
    bots = {
        r["bot_reason"]: r["n"]
        for r in service.sql(
            "SELECT bot_reason, count() AS n FROM tracker.clicks WHERE is_bot GROUP BY bot_reason"
        )
    }
    assert bots == {"crawler": 100, "empty_user_agent": 100, "head_request": 100}
    assert counts["datacenter_asn"] == 300
    # flooding: per address and calendar minute, every click past the 100th
    expected_flood = service.sql(
        "SELECT sum(greatest(n - 100, 0)) AS n FROM (SELECT count() AS n FROM tracker.clicks "
        "WHERE link_slug = 'mix' GROUP BY ip, toStartOfMinute(event_time))"
    )[0]["n"]
    assert expected_flood == 2 * 50 + 288
    assert counts["ip_flood"] == expected_flood
    assert service.sql(
        "SELECT DISTINCT toUnixTimestamp64Milli(event_time) AS ms FROM tracker.clicks "
        "WHERE link_slug = 'mix'"
    ) == [{"ms": int(pinned * 1000)}]
    # the same visitor on the same link within the window: every click but the first
    assert counts["duplicate_click"] == 2 * 149 + 387
    # 12 visitors on one address: the 6th and later are flagged
    assert (
        service.count(
            "clicks", "toString(ip) = '::ffff:172.16.9.9' AND has(fraud_flags, 'ip_many_visitors')"
        )
        == 7
    )
    assert (
        service.count(
            "clicks", "toString(ip) LIKE '::ffff:10.%' AND (is_bot OR notEmpty(fraud_flags))"
        )
        == 0
    )

    report = service.cli("report", "fraud", "--format", "json")
    assert report.returncode == 0, report.stderr
    rows = {(r["kind"], r["rule"]): r["events"] for r in orjson.loads(report.stdout)}
    assert rows[("click", "bot:crawler")] == 100
    assert rows[("click", "datacenter_asn")] == 300


async def test_bot_and_fraud_clicks_are_not_credited(service: Service):
    service.env["TRACKER_FRAUD_DUPLICATE_CLICK_SECONDS"] = "60"
    service.serve()
    assert (
        service.api(
            "POST", "/api/advertisers", {"id": "shop", "token": "adv-token-0123456789abcdef"}
        )[0]
        == 201
    )
    service.add_link("human", campaign_id="human")
    service.add_link("botty", campaign_id="botty")
    visitor = uuid7()
    jar = {"Cookie": f"vid={visitor}"}
    async with aiohttp.ClientSession(skip_auto_headers=["User-Agent"]) as session:

        async def go(slug, ua):
            async with session.get(
                f"{service.base_url}/c/{slug}",
                allow_redirects=False,
                headers={**jar, "User-Agent": ua},
            ) as r:
                return r.headers["Location"].rsplit("click_id=", 1)[1]

        await go("human", BROWSER_UA)
        bot = await go("botty", GOOGLEBOT)  # a bot on the visitor's path
        duplicate = await go("human", BROWSER_UA)  # a duplicate click: fraud-flagged
        # the sink has enriched the clicks and marked the two it leaves out
        redis = service.redis.client()

        def marked() -> bool:
            return all(
                redis.sismember(hot.excluded_set(c), hot.raw_id(c)) for c in (bot, duplicate)
            )

        wait_until(marked, 30, "the left-out clicks marked")
        async with session.get(
            f"{service.base_url}/p.gif?event=sale&txid=t1&amount=10&advertiser=shop",
            headers={**jar, "User-Agent": BROWSER_UA},
        ) as r:
            assert r.status == 200
    service.wait_count("attribution_credits", 5)
    credited = service.sql(
        "SELECT DISTINCT campaign_id, path_length FROM tracker.attribution_credits"
    )
    assert credited == [{"campaign_id": "human", "path_length": 1}]


def test_postbacks_get_no_device_or_geo_of_the_advertisers_server():
    from tracker.sink.enrich.steps import add_device

    postback = add_device({"source": "postback", "user_agent": "Go-http-client/1.1"})
    assert "device_type" not in postback
    pixel = add_device({"source": "pixel", "user_agent": BROWSER_UA})
    assert pixel["device_type"] == "desktop" and pixel["browser"] == "Chrome"


@pytest.mark.parametrize("cluster", [False, True], ids=["script", "pipeline"])
def test_duplicate_clicks_are_judged_by_the_clicks_own_times(redis_server, cluster, counting):
    """Within the window after any earlier click of the visitor on the link, by event time
    (not by when the sink reads them): a sink catching up judges as one on time would."""
    rules = FraudRules(
        redis_server.client(),
        Thresholds(duplicate_click_seconds=60),
        {"off": Thresholds(duplicate_click_seconds=0)},
        frozenset(),
        cluster,
        memory=counting,
    )
    visitor, start = uuid7(), 1_700_000_010_000  # a 60 s bucket starts at start + 30 s

    def at(seconds: float, slug: str = "a", campaign: str = "c") -> dict:
        ip = f"198.51.100.{int(seconds) % 250}"  # one click per address: only this rule
        return click(ip, visitor, slug, campaign, start + int(seconds * 1000))

    first = run_rules(rules, [at(0), at(30), at(30, "b"), at(100)])
    second = run_rules(rules, [at(95), at(150), at(300, campaign="off"), at(350), at(400)])
    assert first == [[], ["duplicate_click"], [], []]  # 100 s is 70 s after the last, at 30 s
    # 95 s came after 100 s (out of order), within the window of it; 150 s is 50 s after
    # 100 s; the rule is off for the campaign at 300 s, which is not counted either: 350 s
    # is alone, and 400 s is 50 s after it
    assert second == [["duplicate_click"], ["duplicate_click"], [], [], ["duplicate_click"]]


@pytest.mark.parametrize("cluster", [False, True], ids=["script", "pipeline"])
def test_an_ips_visitors_are_counted_across_calls(redis_server, cluster, counting):
    """An IP's first visitor is kept as its count's field, the second turns it into a
    count with both pairs in the set: each repeat is known, each new visitor counted."""
    rules = FraudRules(
        redis_server.client(),
        Thresholds(visitors_per_ip_per_hour=1),
        {},
        frozenset(),
        cluster,
        memory=counting,
    )
    a, b, c = uuid7(), uuid7(), uuid7()
    ip = "198.51.100.77"
    verdicts = [
        run_rules(rules, [click(ip, visitor, f"s{n}")])
        for n, visitor in enumerate([a, a, b, a, b, c, c])
    ]
    many = ["ip_many_visitors"]
    assert verdicts == [[[]], [[]], [many], [many], [many], [many], [many]]
    counts = rules.counter.count([click(ip, visitor, "t") for visitor in (a, b, c, uuid7())])
    assert [n.visitors_this_hour for n in counts] == [3, 3, 3, 4]


@pytest.mark.usefixtures("redis_counting")
def test_pipeline_counting_gives_the_same_verdicts_as_the_script(redis_server):
    """The Redis Cluster path (command by command) and the script agree."""
    events_a = [
        click(ip="198.51.100.5", visitor=v, slug=s)
        for v, s in [("v1", "a"), ("v1", "a"), ("v2", "a"), ("v3", "b"), (ZERO, "a")]
    ]
    events_a = [dict(e, visitor_id=uuid7() if e["visitor_id"] != ZERO else ZERO) for e in events_a]
    events_a[1]["visitor_id"] = events_a[0]["visitor_id"]
    fresh = {e["visitor_id"]: uuid7() for e in events_a if e["visitor_id"] != ZERO}
    events_b = [
        dict(e, ip="198.51.100.6", visitor_id=fresh.get(e["visitor_id"], ZERO)) for e in events_a
    ]
    t = Thresholds(ip_clicks_per_minute=2, visitors_per_ip_per_hour=1)
    script = FraudRules(redis_server.client(), t, {}, frozenset())
    pipeline = FraudRules(redis_server.client(), t, {}, frozenset(), cluster=True)
    verdicts = run_rules(script, events_a)
    assert verdicts == run_rules(pipeline, events_b)
    # and what they agree on is the rules' answer, not an empty one
    assert verdicts == [
        [],
        ["duplicate_click"],
        ["ip_flood", "ip_many_visitors"],
        ["ip_flood", "ip_many_visitors"],
        ["ip_flood"],
    ]


def test_counting_in_chunks_gives_the_same_verdicts_as_one_call(redis_server, counting):
    """A sink read of many clicks is counted a chunk at a time (a script holds Redis for
    its whole run); verdicts across chunk boundaries are those of one call."""
    t = Thresholds(ip_clicks_per_minute=4, visitors_per_ip_per_hour=3)
    visitors = [uuid7() for _ in range(5)]
    pattern = [(0, "a"), (1, "a"), (0, "a"), (2, "b"), (3, "a"), (1, "c"), (4, "a"), (0, "a")]

    def events(ip: str, own: list[str]) -> list[dict]:
        return [click(ip=ip, visitor=own[v], slug=s) for v, s in pattern]

    whole = FraudRules(redis_server.client(), t, {}, frozenset(), memory=counting)
    chunked = FraudRules(redis_server.client(), t, {}, frozenset(), memory=counting)
    if isinstance(chunked.counter, fraud_counts.ClickCounter):
        chunked.counter.chunk = 3
    expected = run_rules(whole, events("198.51.100.7", visitors))
    assert run_rules(chunked, events("198.51.100.8", [uuid7() for _ in visitors])) == expected
    flagged = {f for flags in expected for f in flags}
    assert flagged == {"duplicate_click", "ip_flood", "ip_many_visitors"}


def reference_verdicts(events: list[dict], default: Thresholds, per_campaign: dict) -> list:
    """The click rules read literally, one click after another, with the counters in a dict:
    what the aggregated Redis counting must reproduce click for click."""
    minute: dict = {}
    pairs: set = set()
    visitors: dict = {}
    # (visitor, link) -> (bucket, time) of each earlier click under the duplicate rule,
    # buckets of the longest window configured
    earlier: dict = {}
    bucket_ms = 1000 * max(t.duplicate_click_seconds for t in (default, *per_campaign.values()))
    out = []
    for e in events:
        t = per_campaign.get(e["campaign_id"], default)
        ms, ip, visitor = parse_ms(e["event_time"]), e.get("ip_key") or e["ip"], e["visitor_id"]
        key = (ms // 60_000, ip)
        minute[key] = minute.get(key, 0) + 1
        flags = ["ip_flood"] if minute[key] > t.ip_clicks_per_minute else []
        if visitor != ZERO:
            hour = (ms // 3_600_000, ip)
            if (hour, visitor) not in pairs:
                pairs.add((hour, visitor))
                visitors[hour] = visitors.get(hour, 0) + 1
            window, bucket = t.duplicate_click_seconds * 1000, ms // bucket_ms
            if window > 0:
                before = earlier.setdefault((visitor, e["link_slug"]), [])
                if any(b in (bucket - 1, bucket) and m > ms - window for b, m in before):
                    flags.append("duplicate_click")
                before.append((bucket, ms))
            if visitors[hour] > t.visitors_per_ip_per_hour:
                flags.append("ip_many_visitors")
        out.append(flags)
    return out


def realistic_clicks(rng: random.Random, n: int, ip_prefix: str) -> list[dict]:
    """Skewed IPs (a few busy ones), returning visitors, anonymous clicks, two campaigns,
    clicks spread over three minutes across an hour boundary, a little out of time order
    (as edges' clocks differ), some IPs keyed (anonymised)."""
    ips = [f"{ip_prefix}.{i}" for i in range(40)]
    visitors = [uuid7() for _ in range(150)] + [ZERO]
    start = 1_700_002_770_000  # 30 s before an hour ends
    events = []
    for i in range(n):
        ip = ips[min(int(rng.expovariate(0.15)), len(ips) - 1)]
        slug = rng.choice(["a", "b", "c", "d"])
        e = click(
            ip=ip,
            visitor=rng.choice(visitors),
            slug=slug,
            campaign="strict" if slug in "ab" else "lax",
            ms=start + i * 180_000 // n + rng.randint(-3_000, 3_000),
        )
        if ip.endswith("7"):
            e["ip_key"] = f"key-{ip}"
        events.append(e)
    return events


@pytest.mark.parametrize("cluster", [False, True], ids=["script", "pipeline"])
def test_aggregated_counting_gives_each_click_the_verdict_of_counting_one_by_one(
    redis_server, cluster, counting
):
    """A realistic batch (busy and quiet IPs, returning and anonymous visitors, per-campaign
    thresholds, the duplicate rule off for one campaign, an hour boundary), cut into chunks
    of several sizes: every click gets the flags of the rules applied click by click."""
    default = Thresholds(ip_clicks_per_minute=12, visitors_per_ip_per_hour=12)
    per_campaign = {"lax": Thresholds(ip_clicks_per_minute=24, duplicate_click_seconds=0)}
    rng = random.Random(13)
    for n, chunk in [(1_500, 2_000), (1_500, 337), (400, 1)]:
        prefix = f"198.{n % 256}.{chunk % 256}"
        events = realistic_clicks(rng, n, prefix)
        expected = reference_verdicts(events, default, per_campaign)
        rules = FraudRules(
            redis_server.client(), default, per_campaign, frozenset(), cluster, memory=counting
        )
        if isinstance(rules.counter, fraud_counts.ClickCounter):
            rules.counter.chunk = chunk
        assert run_rules(rules, events) == expected
        flagged = {f for flags in expected for f in flags}
        assert flagged == {"ip_flood", "duplicate_click", "ip_many_visitors"}
        assert 0.05 < sum(map(bool, expected)) / n < 0.95  # a mix, not all or nothing


async def test_fast_conversions_and_per_campaign_rules_from_the_settings_file(
    service: Service, tmp_path
):
    """fast_conversion end to end (the suite's settings turn it off), with per-campaign
    thresholds read from the TOML file. The edges' clock is pinned, and moved by
    restarting the edge at a later instant: no run is too slow or too fast for it."""
    settings_file = tmp_path / "tracker.toml"
    settings_file.write_text(
        "[fraud.campaigns.slow]\n"
        "min_click_to_conversion_seconds = 60\n"
        "[fraud.campaigns.busy]\n"
        "ip_clicks_per_minute = 2\n"
    )
    service.env["TRACKER_CONFIG"] = str(settings_file)
    service.env["TRACKER_FRAUD_MIN_CLICK_TO_CONVERSION_SECONDS"] = "5"
    t0 = time.time() // 60 * 60 + 0.25  # all the clicks in one calendar minute
    service.start_sink()
    service.start_edges(1, clock_at=t0)
    assert service.api("POST", "/api/advertisers", {"id": "shop", "token": ADV_TOKEN})[0] == 201
    service.add_link("busy", campaign_id="busy")
    service.add_link("std", campaign_id="std")
    service.add_link("slow", campaign_id="slow")

    async with aiohttp.ClientSession(headers={"User-Agent": BROWSER_UA}) as session:

        async def go(url: str) -> str:
            async with session.get(service.base_url + url, allow_redirects=False) as r:
                return r.headers.get("Location", "").rsplit("click_id=", 1)[-1]

        # the first clicks of 127.0.0.1 this minute: only the third floods
        busy_ids = [await go("/c/busy") for _ in range(3)]
        quick, later, slow = [await go(f"/c/{slug}") for slug in ("std", "std", "slow")]

        async def convert(at: float, click_id: str, txid: str) -> None:
            service.stop("edge-0")
            service.start_edges(1, clock_at=at)
            query = f"advertiser=shop&token={ADV_TOKEN}&click_id={click_id}&txid={txid}"
            async with session.get(f"{service.base_url}/postback?{query}") as r:
                assert (await r.json())["status"] == "accepted"

        await convert(t0 + 3, quick, "quick")  # 3 s after its click: under the default 5 s
        await convert(t0 + 10, later, "later")  # 10 s: fine by the default
        await convert(t0 + 10.5, slow, "slow")  # 10.5 s: under campaign slow's 60 s

    service.wait_count("conversions", 3)
    flags = {
        r["txid"]: r["fraud_flags"]
        for r in service.sql("SELECT txid, fraud_flags FROM tracker.conversions")
    }
    assert flags == {"quick": ["fast_conversion"], "later": [], "slow": ["fast_conversion"]}
    service.wait_count("clicks", 6)
    # by the ids the redirects carried: with the clock pinned, the three ids share one
    # millisecond and their random bits do not sort in the order they were made
    busy = {
        r["id"]: r["fraud_flags"]
        for r in service.sql(
            "SELECT toString(click_id) AS id, fraud_flags FROM tracker.clicks "
            "WHERE link_slug = 'busy'"
        )
    }
    assert [busy[click_id] for click_id in busy_ids] == [[], [], ["ip_flood"]]
    assert service.count("clicks", "notEmpty(fraud_flags) AND link_slug != 'busy'") == 0
