from collections.abc import Iterable

from tracker.sink.enrich.rows import Spans
from tracker.types import Row

class Fields:
    names: tuple[str, ...]
    def __init__(self, names: Iterable[str]) -> None: ...

def scan(line: bytes, fields: Fields) -> tuple[Row, Spans] | None: ...
def splice(line: bytes, event: Row, spans: Spans) -> bytes: ...
