"""What the conversion routes need, prepared once per process."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tracker.config import Settings
from tracker.edge.client_ip import Network
from tracker.hashcache import HashCache
from tracker.types import AsyncRedis


@dataclass(slots=True)
class ConversionIntake:
    redis: AsyncRedis
    advertisers: HashCache
    settings: Settings
    trusted: list[Network]  # proxies whose X-Forwarded-For is believed
    script: Any = None
    rejections: Counter = field(default_factory=Counter)  # reason -> count
    outcomes: Counter = field(default_factory=Counter)  # accepted / duplicate / rejected
