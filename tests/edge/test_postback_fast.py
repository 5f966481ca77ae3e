"""`GET /postback` on the fast path answers exactly like aiohttp's route: the same postbacks
sent to a service with the fast path and to one without give the same statuses, headers
and replies (new, duplicate, status changes, refusals, signed requests), in order when
pipelined, and the fast path's conversions are stored."""

from __future__ import annotations

import re
import time
import urllib.parse

import orjson

from tests.edge.test_fastpath import exchange, get, statuses
from tracker import hot
from tracker.edge import postback_fast
from tracker.ids import uuid7_time_ms
from tracker.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tracker.testing import Service, click_id_at, get_status_location

ADV = "fastshop"
ADV_TOKEN = "fast-shop-token-0123456789"


def setup(svc: Service, slug: str) -> str:
    """The advertiser and a link on `svc`; a click's id."""
    status, body = svc.api("POST", "/api/advertisers", {"id": ADV, "token": ADV_TOKEN})
    assert status in (201, 409), body
    svc.add_link(slug, "https://shop.example/?c={click_id}", campaign_id=slug)
    status, location = get_status_location(f"{svc.base_url}/c/{slug}")
    assert status == 302
    return urllib.parse.parse_qs(urllib.parse.urlparse(location).query)["c"][0]


def postback(click_id: str, **params: str) -> str:
    query = {"advertiser": ADV, "token": ADV_TOKEN, "click_id": click_id, **params}
    return "/postback?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})


def signed(click_id: str, txid: str, age: int) -> bytes:
    query = urllib.parse.urlencode({"advertiser": ADV, "click_id": click_id, "txid": txid})
    stamp = str(int(time.time()) - age)
    signature = sign(ADV_TOKEN, stamp, "GET", "/postback", query, b"")
    return get(
        f"/postback?{query}", f"{TIMESTAMP_HEADER}: {stamp}\r\n{SIGNATURE_HEADER}: {signature}\r\n"
    )


def requests(click_id: str, tag: str = "") -> list[bytes]:
    made_up = "01900000-0000-7000-8000-000000000001"  # long past the lookback
    return [
        get(postback(click_id, txid=f"{tag}o-1", amount="19.90", currency="EUR", sub1="a/b")),
        get(postback(click_id, txid=f"{tag}o-1", amount="19.90", currency="EUR")),  # duplicate
        get(postback(click_id, txid=f"{tag}o-1", status="approved")),
        get(postback(click_id, txid=f"{tag}o-1", status="pending")),  # 409 illegal_transition
        get(postback(click_id, txid=f"{tag}o-2", status="reversed")),  # 409 unknown_transaction
        get(postback(click_id, txid=f"{tag}o-3", token="wrong-token-0123456789")),
        get(postback("", txid=f"{tag}o-4")),
        get(postback(click_id, txid=f"{tag}o-5", amount="1.999", currency="USD")),
        get(postback(click_id, txid=f"{tag}o-6", advertiser="nobody")),
        get(postback(made_up, txid=f"{tag}o-7", payout="2.50")),
        get(postback(click_id, txid=f"{tag}o-8", event="lead"), version="1.0"),
        signed(click_id, f"{tag}o-9", 10),
        signed(click_id, f"{tag}o-10", 3600),  # stale
        b"GET /postback HTTP/1.1\r\nHost: t\r\n\r\n",  # no parameters at all
    ]


KEPT = (b"Content-Type", b"Content-Length")
# An HTTP/1.0 request: aiohttp answers in HTTP/1.0 and closes, the fast path (as for clicks)
# in HTTP/1.1 with `Connection: close`; both close the connection after the answer.
VERSIONLESS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def answers(port: int, click_id: str, tag: str = "") -> list[tuple]:
    out = []
    for request in requests(click_id, tag):
        answer = exchange(port, request, wait_close=b"HTTP/1.0" in request)
        head, _, body = answer.partition(b"\r\n\r\n")
        reply = orjson.loads(body)
        reply.pop("conversion_id", None)
        lines = [line for line in head.split(b"\r\n")[1:] if line != b"Connection: close"]
        names = sorted(line.split(b":")[0] for line in lines)
        kept = sorted(line for line in lines if line.startswith(KEPT))
        out.append(([int(s) for s in VERSIONLESS.findall(answer)], names, kept, reply))
    return out


def test_the_fast_path_answers_postbacks_like_aiohttp(running, service: Service):
    service.env["TRACKER_HTTP_FAST_PATH"] = "0"
    service.serve()
    fast, slow = (
        answers(running.port, setup(running, "pbfast")),
        answers(service.port, setup(service, "pbfast")),
    )
    assert fast == slow
    served_by = [
        re.search(rb"Server: ([^\r]*)", exchange(svc.port, get(postback("", txid="x"))))[1]
        for svc in (running, service)
    ]
    assert served_by[0] == b"tracker" and b"aiohttp" in served_by[1]  # two paths compared
    assert [s for s, *_ in fast] == [
        [200],
        [200],
        [200],
        [409],
        [409],
        [401],
        [400],
        [400],
        [401],
        [200],
        [200],
        [200],
        [401],
        [400],
    ]
    assert (fast[0][3]["status"], fast[0][3]["attributed"]) == ("accepted", True)
    assert fast[1][3]["status"] == "duplicate"
    # o-1 twice, 7, 8, 9
    running.wait_count("conversions", 5, f"advertiser_id = '{ADV}' AND txid LIKE 'o-%'")


def minute_old_click(svc: Service, slug: str) -> str:
    """A click of `slug` a minute old, written to the hot window as an edge writes it:
    its postbacks are settled without a task (a click of the last seconds takes the
    coroutine, as the script may answer `retry`)."""
    setup(svc, slug)
    click_id = click_id_at(int(time.time() * 1000) - 60_000)
    record = {
        "click_id": click_id,
        "visitor_id": click_id_at(int(time.time() * 1000) - 120_000),
        "ts": uuid7_time_ms(click_id),
        "link_slug": slug,
        "campaign_id": slug,
        "advertiser_id": ADV,
    }
    svc.redis.client().hset(hot.click_hash(click_id), hot.raw_id(click_id), hot.encode(record))
    return click_id


def test_postbacks_settled_without_a_task_answer_like_aiohttp(running, service: Service):
    """New, duplicate, a status change (left to the coroutine), refused transitions,
    and Redis losing its scripts: the same answers as aiohttp's route."""
    service.env["TRACKER_HTTP_FAST_PATH"] = "0"
    service.serve()
    fast_click, slow_click = minute_old_click(running, "pbold"), minute_old_click(service, "pbold")
    fast = answers(running.port, fast_click, "old-")
    slow = answers(service.port, slow_click, "old-")
    assert fast == slow
    assert (fast[0][3]["status"], fast[0][3]["attributed"]) == ("accepted", True)
    assert [fast[i][3]["status"] for i in (1, 2, 3)] == ["duplicate", "accepted", "rejected"]
    running.redis.client().script_flush()
    again = exchange(running.port, get(postback(fast_click, txid="after-flush")))
    assert statuses(again) == [200] and b'"attributed":true' in again
    running.wait_count("conversions", 1, "txid = 'after-flush' AND attributed = 1")


def test_pipelined_postbacks_and_clicks_answer_in_order(running):
    click_id = setup(running, "pbpipe")
    three = (
        get(postback(click_id, txid="p-1"))
        + get("/c/pbpipe?sub1=between")
        + get(postback(click_id, txid="p-1"))
        + get("/healthz")
    )
    answer = exchange(running.port, three, expect=4)
    assert statuses(answer) == [200, 302, 200, 200]
    replies = re.findall(rb'\{"status":"(\w+)"', answer)
    assert replies == [b"accepted", b"duplicate", b"ok"]
    running.wait_count("conversions", 1, f"advertiser_id = '{ADV}' AND txid = 'p-1'")


def test_postbacks_one_after_another_on_a_kept_connection(running):
    """Without pipelining, llhttp reads on after a postback with the same parser: a
    request split over two writes, clicks and postbacks in turn, all answered in order."""
    click_id = setup(running, "pbkept")
    second = get(postback(click_id, txid="k-2", amount="5.00"))
    writes = [
        get(postback(click_id, txid="k-1")),
        get("/c/pbkept?sub1=kept"),
        second[:40],
        second[40:],
        get(postback(click_id, txid="k-1")),
        get(postback(click_id, txid="k-3", status="reversed")),  # 409
        get("/healthz"),
    ]
    answer = exchange(running.port, writes, expect=6)
    assert statuses(answer) == [200, 302, 200, 200, 409, 200]
    replies = re.findall(rb'\{"status":"(\w+)"', answer)
    assert replies == [b"accepted", b"accepted", b"duplicate", b"rejected", b"ok"]
    running.wait_count("conversions", 2, f"advertiser_id = '{ADV}' AND txid IN ('k-1', 'k-2')")


def test_query_params_read_what_aiohttps_route_reads():
    for query in (
        "",
        "a=1&&b",
        "=x&a",
        "a=1&a=2",
        "a=b=c&d=",
        "sub1=%41+b&x=%zz",
        "advertiser=shop&token=t&click_id=C&txid=o-1&amount=1.50",
        "&&&",
        "a;b=1",
    ):
        expected = dict(urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"))
        assert postback_fast.query_params(query) == expected, query
