"""The fast path speaks HTTP/1.1 correctly and answers exactly like the aiohttp routes."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from tests.edge.test_clickpath import make_ctx, rows
from tracker.edge.clickpath import PyClickPath
from tracker.edge.fastpath import FastProtocol, Readers
from tracker.testing import BROWSER_UA, Service


def exchange(
    port: int, data: bytes | list[bytes], wait_close: bool = False, expect: int = 1
) -> bytes:
    """Send raw bytes (a list: one write each, a little apart) and read the answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for chunk in data if isinstance(data, list) else [data]:
            sock.sendall(chunk)
            if isinstance(data, list):
                time.sleep(0.01)
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not wait_close and received.count(b"HTTP/1.1 ") >= expect and complete(received):
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received


def complete(data: bytes) -> bool:
    """Every answer in data has its whole body (by Content-Length)."""
    pos = 0
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos)
        if head_end < 0:
            return False
        length = re.search(rb"Content-Length: (\d+)", data[pos:head_end])
        pos = head_end + 4 + (int(length.group(1)) if length else 0)
        if pos > len(data):
            return False
    return True


def statuses(data: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"GET {path} HTTP/{version}\r\nHost: t\r\nUser-Agent: {BROWSER_UA}\r\n{extra}\r\n"
    ).encode()


@pytest.fixture(scope="module")
def svc(running):
    running.add_link("fast", "https://shop.example/?c={click_id}", campaign_id="fast")
    return running


def test_keep_alive_and_pipelining_answer_in_order(svc):
    three = get("/c/fast?sub1=p1") + get("/c/missing") + get("/p.gif?slug=fast")
    answer = exchange(svc.port, three, expect=3)
    assert statuses(answer) == [302, 404, 200]
    assert answer.count(b"Connection: close") == 0
    svc.wait_count("clicks", 1, "sub1 = 'p1'")


def test_mixed_pipeline_hands_over_to_aiohttp_without_losing_a_request(svc):
    mixed = get("/c/fast?sub1=m1") + get("/healthz") + get("/c/fast?sub1=m2") + get("/api/links")
    answer = exchange(svc.port, mixed, expect=4)
    assert statuses(answer) == [302, 200, 302, 401]
    assert b'{"status":"ok"}' in answer and b'"unauthorized"' in answer
    svc.wait_count("clicks", 2, "sub1 IN ('m1', 'm2')")


def test_request_split_into_many_writes(svc):
    request = get("/c/fast?sub1=split")
    answer = exchange(svc.port, [request[i : i + 7] for i in range(0, len(request), 7)])
    assert statuses(answer) == [302]
    svc.wait_count("clicks", 1, "sub1 = 'split'")


def test_head_has_the_headers_of_get_and_no_body(svc):
    got = exchange(svc.port, get("/c/missing"))
    head = exchange(svc.port, get("/c/missing").replace(b"GET", b"HEAD", 1))
    length = re.search(rb"Content-Length: (\d+)", got).group(1)
    assert re.search(rb"Content-Length: (\d+)", head).group(1) == length and int(length) > 0
    assert head.endswith(b"\r\n\r\n")


def test_http_1_0_closes_unless_asked_to_keep_alive(svc):
    closed = exchange(svc.port, get("/c/fast", version="1.0"), wait_close=True)
    assert statuses(closed) == [302] and b"Connection: close" in closed
    kept = exchange(
        svc.port,
        get("/c/fast", "Connection: keep-alive\r\n", "1.0") + get("/c/fast", version="1.0"),
        wait_close=True,
    )
    assert statuses(kept) == [302, 302]


def test_malformed_and_oversized_requests(svc):
    assert statuses(exchange(svc.port, b"GARBAGE\r\n\r\n", wait_close=True)) == [400]
    huge = get("/c/fast", "X-Big: " + "a" * 100_000 + "\r\n")
    assert statuses(exchange(svc.port, huge, wait_close=True))[0] in (400, 431)


def test_other_methods_and_bodies_go_to_aiohttp(svc):
    post = b"POST /c/fast HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
    answer = exchange(svc.port, post)
    assert statuses(answer) == [405] and b"Allow: GET" in answer


IGNORED = re.compile(rb"^(Date|Server|Set-Cookie|Location|Content-Type|Connection): .*$", re.M)


@pytest.mark.parametrize(
    "path", ["/c/fast?sub1=same", "/c/missing", "/p.gif?slug=fast", "/p.gif", "/c/fast?no-track=1"]
)
def test_same_answers_as_the_aiohttp_routes(svc, service: Service, path):
    service.env["TRACKER_HTTP_FAST_PATH"] = "0"
    service.serve()
    service.add_link("fast", "https://shop.example/?c={click_id}", campaign_id="fast")

    def parts(port: int):
        answer = exchange(port, get(path))
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = sorted(
            line.split(b": ")[0]
            + (b": " + line.split(b": ", 1)[1] if not IGNORED.match(line) else b"")
            for line in head.split(b"\r\n")[1:]
        )
        location = re.search(rb"Location: ([^\r]*)", head)
        cookie = re.search(rb"Set-Cookie: [^=]*=[^;]*(;[^\r]*)", head)
        ctype = re.search(rb"Content-Type: ([^;\r]*)", head)
        return (
            statuses(answer),
            lines,
            body,
            location.group(1).split(b"c=")[0] if location else None,
            cookie.group(1) if cookie else None,
            ctype.group(1) if ctype else None,
        )

    assert parts(svc.port) == parts(service.port)


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def run_in(loop: str, scenario: Callable[[], Awaitable[None]]) -> None:
    event_loop = LOOPS[loop]()
    try:
        event_loop.run_until_complete(scenario())
    finally:
        event_loop.close()


async def fast_server(ctx, core, readers: Readers) -> tuple[asyncio.Server, int]:
    """The fast path alone on a loopback port (every request here is its own)."""

    def fallback() -> asyncio.Protocol:
        raise AssertionError("every request here is the fast path's")

    server = await asyncio.get_running_loop().create_server(
        lambda: FastProtocol(ctx, fallback, readers, core), "127.0.0.1", 0
    )
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("loop", list(LOOPS))
def test_held_connections_read_nothing_until_released(tmp_path, loop):
    """While the event writer is behind Redis the fast path reads no request: on the
    connections open when it is held and on those opened meanwhile (uvloop starts reading
    a connection after `connection_made`, whatever that did)."""

    async def scenario() -> None:
        ctx = make_ctx(tmp_path)
        core = PyClickPath(ctx)  # one for every connection, as the fast path's site has
        readers = Readers()
        server, port = await fast_server(ctx, core, readers)
        before = await asyncio.open_connection("127.0.0.1", port)
        assert await answer(before, "before") == 302
        readers.hold(True)
        during = await asyncio.open_connection("127.0.0.1", port)
        for client in (before, during):
            client[1].write(get("/c/plain?sub1=held"))
        for client in (before, during):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client[0].readuntil(b"\r\n\r\n"), 0.3)
        assert held(core) == 0
        readers.hold(False)
        for client in (before, during):
            head = await asyncio.wait_for(client[0].readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 302 ")
            client[1].close()
        assert held(core) == 2
        server.close()
        await server.wait_closed()

    run_in(loop, scenario)


@pytest.mark.parametrize(
    "first",
    [
        get("/c/plain?sub1=first", "Connection: close\r\n"),
        get("/c/plain?sub1=first", version="1.0"),  # HTTP/1.0 closes unless asked not to
    ],
    ids=["connection-close", "http-1.0"],
)
@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_request_pipelined_after_connection_close_is_neither_answered_nor_recorded(
    tmp_path, loop, first
):
    """HTTP/1.1: nothing after a request that asks to close is served; a click recorded
    there would be one no visitor was sent on (counted, never answered)."""

    async def scenario() -> None:
        ctx = make_ctx(tmp_path)
        core = PyClickPath(ctx)
        server, port = await fast_server(ctx, core, Readers())
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(first + get("/c/plain?sub1=after") + get("/c/plain?sub1=after", "", "1.0"))
        answers = await asyncio.wait_for(reader.read(), 5)  # to the server's close
        assert statuses(answers) == [302] and b"Connection: close" in answers
        assert [row["sub1"] for row in rows(core)] == ["first"]
        writer.close()
        server.close()
        await server.wait_closed()

    run_in(loop, scenario)


async def answer(client: tuple[asyncio.StreamReader, asyncio.StreamWriter], sub1: str) -> int:
    client[1].write(get(f"/c/plain?sub1={sub1}"))
    head = await asyncio.wait_for(client[0].readuntil(b"\r\n\r\n"), 5)
    return int(head.split(b" ", 2)[1])


def held(core) -> int:
    """Clicks recorded from the requests sent while held."""
    return sum(row["sub1"] == "held" for row in rows(core))
