"""Postbacks out (to affiliates) and webhooks (to anyone): targets, the durable queue in
Redis, and the sender worker."""
