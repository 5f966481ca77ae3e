"""A reference point for the benchmark: the edge's transport with nothing behind it.

    python -m loadtest.bare --port 8099 [--processes 2]

N processes on one port (SO_REUSEPORT), each a uvloop event loop with an llhttp parser
(httptools) answering every request with the same small 302, keep-alive. No routing, no
recording: what Python's HTTP transport alone costs, so that the benchmark can show how
much of a click's cost is the transport and how much the tracker's own work.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket

import httptools
import uvloop

REPLY = (
    b"HTTP/1.1 302 Found\r\nLocation: https://shop.example/landing\r\n"
    b"Cache-Control: no-store\r\nContent-Length: 0\r\n\r\n"
)


class Redirect(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(REPLY)


async def serve(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    server = await asyncio.get_running_loop().create_server(Redirect, sock=sock)
    await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    for _ in range(args.processes - 1):
        if os.fork() == 0:
            break
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
