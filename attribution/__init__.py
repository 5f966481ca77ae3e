"""Attribution models (first-click, last-click, linear, time-decay, position-based)."""

from .models import (
    DEFAULT_HALF_LIFE_MS,
    DEFAULT_LOOKBACK_MS,
    MODELS,
    NAMED_CLICK_SOURCES,
    Credit,
    Touch,
    attribute,
    build_path,
    split_amount,
)

__all__ = [
    "DEFAULT_HALF_LIFE_MS",
    "DEFAULT_LOOKBACK_MS",
    "MODELS",
    "NAMED_CLICK_SOURCES",
    "Credit",
    "Touch",
    "attribute",
    "build_path",
    "split_amount",
]
