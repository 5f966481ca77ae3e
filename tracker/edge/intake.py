"""What the conversion routes need, prepared once per process."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tracker import metrics
from tracker.clock import Clock, system_clock
from tracker.config import Settings
from tracker.edge.client_ip import Network
from tracker.hashcache import HashCache
from tracker.reasons import PostbackOutcome, PostbackRefusal
from tracker.types import AsyncRedis


@dataclass(slots=True)
class ConversionIntake:
    redis: AsyncRedis
    advertisers: HashCache
    settings: Settings
    trusted: list[Network]  # proxies whose X-Forwarded-For is believed
    script: Any = None
    new_postback: Any = None  # postback_script.NewPostback, made on first use
    clock: Clock = system_clock  # stamps conversions, judges a signature's age
    # counted on the hot path, moved to Prometheus once a second (closed sets of labels)
    rejections: Counter[PostbackRefusal] = field(default_factory=Counter)
    outcomes: Counter[PostbackOutcome] = field(default_factory=Counter)
    # refused postbacks by (advertiser, UTC day, reason), added to Redis once a second
    # (tracker/refusals.py) for advertiser reconciliation
    refused: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def publish_metrics(self) -> None:
        """Move this intake's counts into Prometheus (the app does it once a second)."""
        for outcome, n in self.outcomes.items():
            metrics.CONVERSIONS.labels(outcome).inc(n)
        self.outcomes.clear()
        for reason, n in self.rejections.items():
            metrics.REJECTIONS.labels(reason).inc(n)
        self.rejections.clear()
