from tracker.sink.enrich.fraud_counts import ClickCounts
from tracker.sink.enrich.fraud_memory import MemoryCounter
from tracker.types import Row

def count(counter: MemoryCounter, events: list[Row]) -> list[ClickCounts]: ...
