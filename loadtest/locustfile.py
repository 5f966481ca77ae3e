"""Realistic flows for locust: visitors click links, land, some convert; a few bots.

    TRACKER_ADMIN_TOKEN=... .venv/bin/locust -f loadtest/locustfile.py --headless \\
        -u 200 -r 50 -t 60s --host http://127.0.0.1:8080

At the start it creates the links (`lt-1`..`lt-20`) and the advertiser (`loadtest`) through
the admin API. Visitors keep their `vid` cookie, click, load the landing page's pixel, and
one in five converts through a server-to-server postback with its click id. At the end
it waits for the sink and checks that every accepted conversion is in ClickHouse (through
the sink's local SQL endpoint); a mismatch makes locust exit non-zero.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from urllib.parse import urlsplit

import orjson
import requests
from locust import FastHttpUser, between, events, task

LINKS = [f"lt-{i}" for i in range(1, 21)]
ADVERTISER = "loadtest"
ADVERTISER_TOKEN = os.environ.get("LOADTEST_ADVERTISER_TOKEN", "loadtest-token-0123456789")
ADMIN_TOKEN = os.environ.get("TRACKER_ADMIN_TOKEN", "")
QUERY_URL = os.environ.get("TRACKER_QUERY_URL", "http://127.0.0.1:8124/query")
RUN = uuid.uuid4().hex[:8]  # this run's transaction ids start with it
BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
]
accepted: list[str] = []


def admin(host: str, path: str, body: dict) -> None:
    response = requests.post(
        f"{host}{path}", json=body, timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    if response.status_code not in (201, 409):
        raise RuntimeError(f"{path}: {response.status_code} {response.text}")


@events.test_start.add_listener
def create_links(environment, **_) -> None:
    host = environment.host
    for slug in LINKS:
        admin(
            host,
            "/api/links",
            {
                "slug": slug,
                "campaign_id": f"lt-campaign-{slug[-1]}",
                "destination": f"{host}/p.gif?slug={slug}&c={{click_id}}",
            },
        )
    admin(host, "/api/advertisers", {"id": ADVERTISER, "token": ADVERTISER_TOKEN})
    time.sleep(3)  # every edge process picks the links up


@events.test_stop.add_listener
def check_conversions(environment, **_) -> None:
    """Every conversion the tracker accepted is in ClickHouse."""
    expected = len(accepted)
    deadline = time.monotonic() + 60
    stored = -1
    while time.monotonic() < deadline:
        answer = requests.post(
            QUERY_URL,
            timeout=30,
            data=orjson.dumps(
                {"sql": f"SELECT count() FROM tracker.conversions WHERE startsWith(txid, '{RUN}')"}
            ),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ).json()
        stored = answer["rows"][0][0]
        if stored >= expected:
            break
        time.sleep(1)
    ok = stored == expected
    print(
        f"conversions accepted: {expected}, in ClickHouse: {stored} -> {'OK' if ok else 'MISMATCH'}"
    )
    if not ok:
        environment.process_exit_code = 1


class Visitor(FastHttpUser):
    weight = 20
    wait_time = between(0.5, 3)

    def on_start(self) -> None:
        self.agent = random.choice(BROWSERS)
        self.cookie = ""

    @task
    def click_land_maybe_convert(self) -> None:
        headers = {"User-Agent": self.agent, "Referer": "https://news.example/article"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        slug = random.choice(LINKS)
        with self.client.get(
            f"/c/{slug}?sub1={random.randint(1, 999)}&utm_source=locust",
            headers=headers,
            allow_redirects=False,
            name="/c/[slug]",
            catch_response=True,
        ) as r:
            if r.status_code != 302:
                r.failure(f"expected 302, got {r.status_code}")
                return
            set_cookie = r.headers.get("Set-Cookie", "")
            if set_cookie:
                self.cookie = set_cookie.split(";", 1)[0]
            location = urlsplit(r.headers["Location"])
        click_id = location.query.rsplit("c=", 1)[1]
        self.client.get(
            f"{location.path}?{location.query}", headers=headers, name="/p.gif (landing)"
        )
        if random.random() < 0.2:
            txid = f"{RUN}-{uuid.uuid4().hex[:12]}"
            with self.client.get(
                f"/postback?advertiser={ADVERTISER}&token={ADVERTISER_TOKEN}"
                f"&click_id={click_id}&txid={txid}&amount={random.randint(100, 9999) / 100}"
                "&currency=EUR",
                name="/postback",
                catch_response=True,
            ) as r:
                if r.status_code == 200 and r.json()["status"] == "accepted":
                    accepted.append(txid)
                else:
                    r.failure(r.text)


class Bot(FastHttpUser):
    weight = 1
    wait_time = between(0.1, 0.5)

    @task
    def crawl(self) -> None:
        self.client.request(
            "HEAD",
            f"/c/{random.choice(LINKS)}",
            allow_redirects=False,
            headers={"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"},
            name="/c/[slug] (bot)",
        )
