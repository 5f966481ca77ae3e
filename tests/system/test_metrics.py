"""Prometheus metrics: every process's counts, added up, on any process's /metrics."""

from __future__ import annotations

import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

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


def by_process(folder: Path) -> dict[str, dict[str, float]]:
    """Each process's own samples (the multiprocess files are named by process id)."""
    pids = {path.stem.rsplit("_", 1)[1] for path in folder.glob("*.db")}
    out = {}
    for pid in pids:
        with tempfile.TemporaryDirectory() as own:
            for path in folder.glob(f"*_{pid}.db"):
                shutil.copy(path, own)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, own)
            out[pid] = {
                sample.name + labels(sample.labels): sample.value
                for metric in registry.collect()
                for sample in metric.samples
            }
    return out


def labels(names: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(names.items()))
    return "{" + inner + "}" if inner else ""


def value(samples: dict[str, float], pattern: str) -> float:
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))


async def test_metrics_add_up_across_processes(service: Service):
    service.serve()
    service.add_link("m", campaign_id="m")
    # a connection per click: the kernel spreads the connections over both edges
    statuses = await hit_many(
        f"{service.base_url}/c/m", 300, concurrency=8, headers={"Connection": "close"}
    )
    assert statuses.count(302) == 300
    await hit_many(f"{service.base_url}/c/nope", 5, concurrency=1)
    await hit_many(f"{service.base_url}/postback?advertiser=x&txid=1&click_id=bad", 3, 1)
    service.wait_count("clicks", 300, "link_slug = 'm'")

    def counted():  # the edges publish their counts once a second: until all are in
        s = scrape(f"{service.base_url}/metrics")
        done = (
            value(s, r'tracker_requests_total\{route="/c/\{slug\}",status="302"\}') >= 300
            and value(s, r'tracker_requests_total\{route="/c/\{slug\}",status="404"\}') >= 5
            and value(s, r'tracker_conversions_total\{outcome="rejected"\}') >= 3
        )
        return s if done else None

    samples = wait_until(counted, 10, "the edges' counts")
    # two edge processes answered; one scrape shows the sum of both
    assert value(samples, r'tracker_requests_total\{route="/c/\{slug\}",status="302"\}') == 300
    per_process = [
        value(s, r'tracker_requests_total\{route="/c/\{slug\}",status="302"\}')
        for s in by_process(service.folder / "data" / "metrics").values()
    ]
    answered = [n for n in per_process if n]
    assert len(answered) == 2 and sum(answered) == 300, per_process
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
