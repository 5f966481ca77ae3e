from collections.abc import Callable

from tracker.sink.enrich.fraud_counts import Chunk, ClickCounts
from tracker.types import Row

def aggregate(
    chunk: Chunk, events: list[Row], window_ms: Callable[[str], int], sharded: bool
) -> None: ...
def rebuild(chunk: Chunk, answer: list[int]) -> list[ClickCounts]: ...
