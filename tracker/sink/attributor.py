"""Online attribution in the sink: credits for each newly accepted conversion.

The path is read from Redis, where the edge keeps every visitor's clicks (touchpoints)
and each click's record for the lookback window; clicks written in the same sink batch
as the conversion are already there. Each configured model runs over the path (pure
functions in `attribution`), and the conversion's amount is split across the credited
clicks in minor units, so the credited amounts add up to the amount exactly.
"""

from __future__ import annotations

from decimal import Decimal

import orjson

from attribution import NAMED_CLICK_SOURCES, Touch, attribute, build_path, split_amount
from attribution.money import from_minor, to_minor
from tracker import metrics
from tracker import redis_keys as K
from tracker.ids import ZERO_UUID
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
    ):
        self.redis = redis
        self.credit_flagged = credit_flagged
        self.models = models
        self.lookback_ms = lookback_ms
        self.half_life_ms = half_life_ms

    def credit_rows(self, conversions_payload: bytes) -> list[bytes]:
        """`attribution_credits` rows for the first report of each attributed conversion
        (status changes keep the credits of their first report)."""
        rows = []
        for line in conversions_payload.split(b"\n"):
            conversion = orjson.loads(line)
            if conversion["previous_status"] or not conversion["attributed"]:
                continue
            if conversion.get("fraud_flags") and not self.credit_flagged:
                continue
            rows += self.credits(conversion)
        return rows

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
        if visitor_id == ZERO_UUID:
            return []
        # (member, score) pairs; redis-py's declared reply types do not fit a bytes client
        members: list[tuple[bytes, float]] = self.redis.zrangebyscore(  # type: ignore[assignment]
            K.visitor_clicks_key(visitor_id),
            converted_at - self.lookback_ms,
            converted_at,
            withscores=True,
        )
        if not members:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for click_id, _ in members:
            pipe.get(K.click_key(click_id.decode()))
            pipe.exists(K.excluded_click_key(click_id.decode()))
        results = pipe.execute()
        touches = []
        for (click_id, score), raw, excluded in zip(
            members, results[::2], results[1::2], strict=True
        ):
            if excluded:
                continue
            record = orjson.loads(raw) if raw else {}
            touches.append(
                Touch(
                    click_id=click_id.decode(),
                    ts=int(score),
                    campaign_id=record.get("campaign_id", ""),
                    affiliate_id=record.get("affiliate_id", ""),
                )
            )
        return touches
