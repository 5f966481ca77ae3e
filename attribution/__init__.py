"""Attribution models (first-click, last-click, linear, time-decay, position-based)."""
