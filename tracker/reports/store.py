"""Where report queries run: the sink's query endpoint (tracker/sink/query_server.py).

Embedded chDB allows one engine per process and the sink holds it, so the edge, which
serves the report API, asks the sink over loopback HTTP as `tracker sql` does, with the
admin token; queries are read-only there. One aiohttp session per edge process.
"""

from __future__ import annotations

import aiohttp
import orjson

from tracker.config import Settings


class StoreError(Exception):
    """The query endpoint did not answer, or refused the query."""


class ReportStore:
    def __init__(self, settings: Settings) -> None:
        self.url = f"http://{settings.sink.query_host}:{settings.sink.query_port}/query"
        self.headers = {"Authorization": f"Bearer {settings.admin_token}"}
        self.database = settings.clickhouse.database
        self._session: aiohttp.ClientSession | None = None

    async def query(self, sql: str) -> tuple[list[str], list[list]]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        try:
            async with self._session.post(
                self.url, data=orjson.dumps({"sql": sql}), headers=self.headers
            ) as response:
                body = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise StoreError(f"query endpoint unavailable: {type(exc).__name__}") from None
        if response.status != 200:
            raise StoreError(str(body.get("error", response.status))[:300])
        return body["columns"], body["rows"]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
