"""What routing rules add to a click, in process: `click_reply` (the core both servers
call) timed per click for a link without rules and for links with rules, on one core.
The writer is a stand-in that keeps nothing (the same for every case), so the figures
are the click core's own cost, and the differences are what the rules add.

    python -m loadtest.routing_cost [CLICKS]
    python -m loadtest.routing_cost --plain [CLICKS]

`--plain` times only a link without rules, building the click context from the fields
every version of it has, so the same file measures an older tree too (run it with
PYTHONPATH pointing at a worktree of that commit): what a link without rules costs
before and after routing landed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tracker.edge.clicks import ClickContext, Hit, click_reply
from tracker.hashcache import HashCache
from tracker.links import Link

UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
SPLIT = {
    "split": [
        {"variant": "a", "weight": 50, "url": "https://a.example/?c={click_id}"},
        {"variant": "b", "weight": 50, "url": "https://b.example/?c={click_id}"},
    ]
}
CASES = {
    "no rules": None,
    "split only": {"rules": [{"id": "ab", "to": SPLIT}]},
    "param + language rules, then split": {
        "rules": [
            {
                "id": "fb",
                "when": {"param_equals": {"src": "fb"}},
                "to": {"url": "https://fb.example/"},
            },
            {"id": "de", "when": {"language": ["de"]}, "to": {"url": "https://de.example/"}},
            {"id": "ab", "to": SPLIT},
        ]
    },
    "device rule (user agent parsed, cached)": {
        "rules": [
            {"id": "m", "when": {"device_type": ["tablet"]}, "to": {"url": "https://t.example/"}},
            {"id": "ab", "to": SPLIT},
        ]
    },
    "geo rule (country lookup, cached)": {
        "rules": [
            {"id": "gb", "when": {"country": ["DE"]}, "to": {"url": "https://de.example/"}},
            {"id": "ab", "to": SPLIT},
        ]
    },
}


class NullWriter:
    def add_click(self, *args) -> None:
        pass

    def add(self, *args) -> None:
        pass


def geo_file(folder: Path) -> str:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    path = folder / "city.mmdb"
    writer.to_db_file(str(path))
    return str(path)


HEADERS = {
    "user-agent": UA,
    "accept-language": "en-GB,en;q=0.9",
    "cookie": "vid=0190a0b0-0000-7000-8000-000000000001",
}


def measure_plain(count: int, rounds: int = 30, other_campaigns: dict | None = None) -> float:
    """µs per click of a link without rules (best round), on any version of the core.
    `other_campaigns`: caps of other campaigns the edge holds (none by default)."""
    cache: HashCache = HashCache(None, "", "", Link.from_json, 1.0)  # type: ignore[arg-type]
    cache.items["plain"] = Link(
        slug="plain",
        destination="https://shop.example/landing?c={click_id}&s={sub1}",
        campaign_id="spring",
        updated_at=1,
    )
    ctx = ClickContext(
        links=cache,
        writer=NullWriter(),  # type: ignore[arg-type]
        trusted=[],
        cookie_name="vid",
        cookie_attrs="; Path=/",
        fallback_url="",
        max_query_bytes=8192,
    )
    if "campaign_caps" in ClickContext.__dataclass_fields__:  # as the edge has it
        ccaps: HashCache = HashCache(None, "", "", str, 1.0)  # type: ignore[arg-type]
        ccaps.items = dict(other_campaigns or {})
        ctx.campaign_caps = ccaps
    hit = Hit("GET", "/c/plain?sub1=x&src=g", "sub1=x&src=g", HEADERS, "81.2.69.5")
    for _ in range(2000):
        click_reply(ctx, hit, "plain")
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            click_reply(ctx, hit, "plain")
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def measure(count: int, rounds: int = 30) -> dict[str, float]:
    from tracker.edge.routing import Lookups  # (not in trees from before routing)

    with tempfile.TemporaryDirectory() as folder:
        cache: HashCache = HashCache(None, "", "", Link.from_json, 1.0)
        for n, routing in enumerate(CASES.values()):
            cache.items[f"l{n}"] = Link(
                slug=f"l{n}",
                destination="https://shop.example/landing?c={click_id}&s={sub1}",
                routing=routing,
                updated_at=1,
            )
        ctx = ClickContext(
            links=cache,
            writer=NullWriter(),  # type: ignore[arg-type]
            trusted=[],
            cookie_name="vid",
            cookie_attrs="; Path=/",
            fallback_url="",
            max_query_bytes=8192,
            lookups=Lookups([geo_file(Path(folder))]),
        )
        hits = {
            name: Hit("GET", f"/c/l{n}?sub1=x&src=g", "sub1=x&src=g", HEADERS, "81.2.69.5")
            for n, name in enumerate(CASES)
        }
        for n, name in enumerate(CASES):
            for _ in range(2000):  # warm: caches, compiled rules
                click_reply(ctx, hits[name], f"l{n}")
        best = dict.fromkeys(CASES, float("inf"))
        for _ in range(rounds):  # cases interleaved, the best round of each: the machine
            for n, name in enumerate(CASES):  # is shared, and others' load only adds
                hit, slug = hits[name], f"l{n}"
                started = time.perf_counter()
                for _ in range(count):
                    click_reply(ctx, hit, slug)
                best[name] = min(best[name], (time.perf_counter() - started) / count)
        return {name: seconds * 1e6 for name, seconds in best.items()}


def main() -> None:
    args = sys.argv[1:]
    plain = "--plain" in args
    args = [a for a in args if a != "--plain"]
    count = int(args[0]) if args else 2_000
    if plain:
        print(f"no rules (plain link) {measure_plain(count):6.2f} µs/click")
        if "campaign_caps" in ClickContext.__dataclass_fields__:
            from tracker.routing import campaign_caps

            others = {"autumn": campaign_caps.parse("autumn", {"daily_clicks": 5})}
            micros = measure_plain(count, other_campaigns=others)
            print(f"no rules, another campaign capped {micros:6.2f} µs/click")
        return
    results = measure(count)
    base = results["no rules"]
    for name, micros in results.items():
        print(f"{name:42s} {micros:6.2f} µs/click  (+{micros - base:5.2f})")


if __name__ == "__main__":
    main()
