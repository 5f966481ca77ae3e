"""Click and conversion tracking service."""
