"""The sink's local endpoint: an action that fails says so, not that the body was wrong."""

from __future__ import annotations

import urllib.error
import urllib.request

import orjson
import pytest

from tracker.sink import query_server
from tracker.testing import free_port


def broken(body: dict) -> dict:
    raise TypeError("takes 1 positional argument but 8 were given")


def test_a_failing_action_answers_500_with_its_error(chdb_database):
    port = free_port()
    server = query_server.make_server(
        chdb_database, "t" * 32, "127.0.0.1", port, migrate=list, actions={"/act": broken}
    )
    query_server.start(server)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/act",
            data=b"{}",
            headers={"Authorization": "Bearer " + "t" * 32},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 500
        error = orjson.loads(caught.value.read())["error"]
        assert error.startswith("/act failed: TypeError takes 1 positional"), error
    finally:
        server.shutdown()
        server.server_close()
