"""How the service's Redis keeps and frees what it holds: its command-line settings, for
the Redis that `tracker serve --redis` starts (tracker/supervisor.py) and the ones tests
and benchmarks start (tracker/testing.py). A module of its own, importing nothing: the
test harness runs processes that must not import prometheus_client early."""

REDIS_PERSISTENCE = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "everysec",
    # The AOF grows mostly by events the sink has since read and deleted. Rewriting it
    # (a fork that writes out the whole dataset) after Redis's default 64 MB of growth
    # cost a third as much CPU again as the clicks themselves (9,000 clicks/s: 8.7 µs
    # per click on top of 25); from 1 GB. A large dataset rewrites when the file has
    # doubled (Redis's default percentage), as before.
    "--auto-aof-rewrite-min-size",
    "1gb",
    # The rewrite's snapshot uncompressed: LZF found nothing to squeeze in the click
    # records and half the rewrite's CPU went to trying (1.05 -> 0.66 s for 600,000
    # clicks' hot window); a backlog of events in the stream does compress, 2.5x, at
    # twice the CPU (1.86 -> 0.89 s), and the AOF then rewrites sooner for the smaller file.
    "--rdbcompression",
    "no",
    # an hour's click hashes expire together; freed in Redis's main thread, each one
    # of ~650,000 fields (1B clicks/day) stopped every command for 0.3 s
    "--lazyfree-lazy-expire",
    "yes",
    "--save",
    "",
]
