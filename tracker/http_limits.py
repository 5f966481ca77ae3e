"""Request size limits of the edge's HTTP servers: one source for the aiohttp server
(runner arguments, client_max_size), the llhttp fast path and the config check."""

from __future__ import annotations

# Room for long tracking URLs and big cookies: the handler decides what to keep.
MAX_LINE = 65536  # the request line (method, path and query)
MAX_FIELD = 32768  # one header field
MAX_HEADERS = 96 * 1024  # all header fields together (the fast path counts them)
MAX_BODY = 1024 * 1024  # a request body (postbacks and the admin API)
