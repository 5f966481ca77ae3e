"""Online attribution in the sink: credits for each newly accepted conversion.

The path is read by `ClickHistory`: the hot window from Redis (clicks written in the same
sink batch as the conversion are already there), the rest of the lookback from
ClickHouse, one query per sink batch for all its conversions. Each configured model runs
over the path (pure functions in `attribution`), and the conversion's amount is split
across the credited clicks in minor units, so the credited amounts add up to the amount exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from attribution import NAMED_CLICK_SOURCES, Touch, attribute, build_path, split_amount
from attribution.money import from_minor, to_minor
from tracker import hot, metrics
from tracker.sink.history import ClickHistory
from tracker.timefmt import format_ms, parse_ms
from tracker.types import SyncRedis


class Attributor:
    def __init__(
        self,
        redis: SyncRedis,
        models: list[str],
        lookback_ms: int,
        half_life_ms: int,
        credit_flagged: bool = False,
        history: ClickHistory | None = None,
    ):
        self.redis = redis
        # without ClickHouse: Redis alone, holding the whole lookback
        self.history = history or ClickHistory(redis, None, -(-lookback_ms // hot.HOUR_MS))
        self._paths: dict[tuple[str, int], list[Touch]] = {}  # this batch's, read at once
        self.credit_flagged = credit_flagged
        self.models = models
        self.lookback_ms = lookback_ms
        self.half_life_ms = half_life_ms

    def credit_rows(self, conversions_payload: bytes) -> list[bytes]:
        """`attribution_credits` rows for the first report of each attributed conversion
        (status changes keep the credits of their first report)."""
        todo = []
        for line in conversions_payload.split(b"\n"):
            conversion = orjson.loads(line)
            if conversion["previous_status"] or not conversion["attributed"]:
                continue
            if conversion.get("fraud_flags") and not self.credit_flagged:
                continue
            todo.append(conversion)
        self.prefetch([(c["visitor_id"], parse_ms(c["event_time"])) for c in todo])
        rows = []
        for conversion in todo:
            rows += self.credits(conversion)
        return rows

    def prefetch(self, conversions: list[tuple[str, int]]) -> None:
        """Read the paths of a batch's conversions at once (also used by the commissions
        of the same batch, through `path`)."""
        wanted = [(v, at - self.lookback_ms, at) for v, at in conversions]
        found = self.history.paths(wanted)
        self._paths = {
            (v, at): [touch(c.record) for c in found.get((v, lo, at), []) if not c.excluded]
            for v, lo, at in wanted
        }

    def credits(self, conversion: dict) -> list[bytes]:
        converted_at = parse_ms(conversion["event_time"])
        # A postback or the tag names its click; a pixel's is only the visitor's last click.
        named = conversion["click_id"] if conversion["source"] in NAMED_CLICK_SOURCES else None
        touches = self.path(conversion["visitor_id"], converted_at)
        currency = conversion["currency"]
        minor = to_minor(Decimal(conversion["amount"]), currency)
        path_length = len(
            build_path(touches, converted_at, lookback_ms=self.lookback_ms, named_click_id=named)
        )
        rows = []
        for model in self.models:
            credits = attribute(
                touches,
                converted_at,
                model,
                lookback=self.lookback_ms,
                half_life=self.half_life_ms,
                named_click_id=named,
            )
            amounts = split_amount(minor, [credit.weight for credit in credits])
            metrics.CREDITED.labels(model, currency).inc(sum(amounts))
            for credit, part in zip(credits, amounts, strict=True):
                rows.append(
                    orjson.dumps(
                        {
                            "event_time": conversion["event_time"],
                            "conversion_id": conversion["conversion_id"],
                            "model": model,
                            "click_id": credit.touch.click_id,
                            "click_time": format_ms(credit.touch.ts),
                            "campaign_id": credit.touch.campaign_id,
                            "affiliate_id": credit.touch.affiliate_id,
                            "position": credit.position,
                            "path_length": path_length,
                            "weight": credit.weight,
                            "credited_amount": str(from_minor(part, currency)),
                            "currency": currency,
                        }
                    )
                )
        return rows

    def path(self, visitor_id: str, converted_at: int) -> list[Touch]:
        """The visitor's clicks inside the lookback window, up to the conversion, without
        the clicks the sink flagged as bot or fraud."""
        known = self._paths.get((visitor_id, converted_at))
        if known is not None:
            return known
        lo = converted_at - self.lookback_ms
        found = self.history.paths([(visitor_id, lo, converted_at)])
        clicks = found.get((visitor_id, lo, converted_at), [])
        return [touch(c.record) for c in clicks if not c.excluded]


def touch(record: Mapping[str, Any]) -> Touch:
    return Touch(
        click_id=record["click_id"],
        ts=record["ts"],
        campaign_id=record.get("campaign_id", ""),
        affiliate_id=record.get("affiliate_id", ""),
    )
