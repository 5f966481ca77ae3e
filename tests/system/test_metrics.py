"""Prometheus metrics: every process's counts, added up, on any process's /metrics."""

from __future__ import annotations

import re
import time
import urllib.request

from tracker.testing import Service, hit_many, wait_until


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = samples.get(name, 0) + float(value)
    return samples


def value(samples: dict[str, float], pattern: str) -> float:
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))


async def test_metrics_add_up_across_processes(service: Service):
    service.serve()
    service.add_link("m", campaign_id="m")
    statuses = await hit_many(f"{service.base_url}/c/m", 300, concurrency=8)
    assert statuses.count(302) == 300
    await hit_many(f"{service.base_url}/c/nope", 5, concurrency=1)
    await hit_many(f"{service.base_url}/postback?advertiser=x&txid=1&click_id=bad", 3, 1)
    service.wait_count("clicks", 300, "link_slug = 'm'")
    time.sleep(1.5)  # edges publish their counts once a second

    def counted():
        s = scrape(f"{service.base_url}/metrics")
        return (
            s
            if value(s, r'tracker_requests_total\{route="/c/\{slug\}",status="302"\}') >= 300
            else None
        )

    samples = wait_until(counted, 10, "the edges' counts")
    # two edge processes answered; one scrape shows the sum of both
    assert value(samples, r'tracker_requests_total\{route="/c/\{slug\}",status="302"\}') == 300
    assert value(samples, r'tracker_requests_total\{route="/c/\{slug\}",status="404"\}') == 5
    assert value(samples, r'tracker_events_recorded_total\{table="clicks"\}') == 300
    assert value(samples, r"tracker_clicks_total") == 300
    assert value(samples, r'tracker_postback_rejections_total\{reason="invalid_click_id"\}') == 3
    assert value(samples, r'tracker_conversions_total\{outcome="rejected"\}') == 3
    assert value(samples, r"tracker_redis_flush_seconds_count") >= 1
    assert value(samples, r'tracker_sink_rows_total\{table="clicks"\}') == 300
    assert value(samples, r"tracker_sink_batches_total") >= 1
    assert value(samples, r'tracker_enrichment_step_seconds_total\{step="bots"\}') > 0
    assert value(samples, r"tracker_flagged_events_total\{.*\}") == 0  # a browser, no rules on
    # the sink's local endpoint answers the same totals
    sink = scrape(f"http://127.0.0.1:{service.query_port}/metrics")
    assert value(sink, r'tracker_sink_rows_total\{table="clicks"\}') == 300


def test_logs_are_json_lines_for_errors_and_lifecycle(service: Service):
    import orjson

    service.env["TRACKER_LOG_FORMAT"] = "json"
    service.serve()
    service.stop("serve")
    lines = [
        line
        for line in (service.logs / "serve.log").read_text().splitlines()
        if line.startswith("{")
    ]
    entries = [orjson.loads(line) for line in lines]
    assert entries and all({"time", "level", "logger", "pid", "message"} <= set(e) for e in entries)
    assert any("listening" in e["message"] for e in entries)
    assert not any("GET /" in e["message"] for e in entries)  # no line per request
