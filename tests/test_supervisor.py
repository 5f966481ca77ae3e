"""The Redis that `tracker serve --redis` (and so `make run`) starts: a real server."""

from __future__ import annotations

import subprocess

from tracker import config
from tracker.redis_connection import sync_client
from tracker.supervisor import redis_command, wait_for_redis
from tracker.testing import free_port


def test_the_service_redis_persists_and_frees_expired_hashes_off_its_main_thread(tmp_path):
    settings = config.load(
        env={
            "TRACKER_DATA_DIR": str(tmp_path),
            "TRACKER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        }
    )
    proc = subprocess.Popen(redis_command(settings), stdout=subprocess.DEVNULL)
    try:
        wait_for_redis(settings)
        client = sync_client(settings.redis.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        # an hour's click hashes expire together (docs/scaling.md, "Redis memory")
        assert client.config_get("lazyfree-lazy-expire") == {"lazyfree-lazy-expire": "yes"}
        # the AOF is not rewritten for every 64 MB of events the sink has long deleted
        rewrite = client.config_get("auto-aof-rewrite-min-size")
        assert rewrite == {"auto-aof-rewrite-min-size": str(1 << 30)}
        assert client.config_get("rdbcompression") == {"rdbcompression": "no"}  # half the CPU
        assert (tmp_path / "redis").is_dir()
    finally:
        proc.terminate()
        proc.wait(10)
