from tracker.edge.clicks import ClickContext

class ClickPath:
    ctx: ClickContext

    def __init__(self, ctx: ClickContext) -> None: ...
    def handle(
        self, buffer: bytes | bytearray, start: int, end: int, peer: str | None, keep_alive: bool
    ) -> bytes | int: ...

def head_span(buffer: bytes | bytearray) -> tuple[int, int]: ...
