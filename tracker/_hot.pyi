from collections.abc import Iterable

from tracker.hot import HotWrites

def group(writes: HotWrites, clicks: Iterable[tuple[str, bytes]]) -> None: ...
