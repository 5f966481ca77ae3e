"""IP anonymisation before storage (tracker/ip_privacy.py; the edge applies it first)."""

from tracker.ip_privacy import anonymize_ip

__all__ = ["anonymize_ip"]
