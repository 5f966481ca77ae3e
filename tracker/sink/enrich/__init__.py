"""Enrichment in the sink: geo, device, bots, fraud rules (see steps.py for the order)."""
