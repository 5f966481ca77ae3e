"""Destination templates: macro substitution and the click id parameter. Pure functions.

A template is an http(s) URL that may contain `{click_id}`, `{visitor_id}`,
`{campaign_id}`, `{affiliate_id}`, `{sub1}`..`{sub5}`. Values are percent-encoded, so no
value can add a header line or break out of its URL component. A template with no
`{click_id}` gets `click_id=<id>` appended to its query string.

No open redirect: the scheme, host and port of a destination are fixed when the link is
saved. Macros may fill the path, query and fragment only (a value can hold no `/`, `?`,
`#` or `@`, so it cannot move the host either); a user name or password, a backslash (a
browser reads it as `/`) or a percent sign in the host are refused; a non-ASCII host is
stored IDNA-encoded (UTS #46), the form browsers send to DNS.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import quote, urlsplit

import idna

MACROS = frozenset(
    ["click_id", "visitor_id", "campaign_id", "affiliate_id"]
    + ["sub1", "sub2", "sub3", "sub4", "sub5"]
)
_MACRO_RE = re.compile(r"\{(" + "|".join(sorted(MACROS)) + r")\}")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")


_ORIGIN_RE = re.compile(r"(?i)(https?)://([^/?#]*)(.*)\Z", re.S)
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


class DestinationError(ValueError):
    """Why a destination template is not acceptable (the message says it to the user)."""


def normalize_destination(template: str) -> str:
    """The template as stored: scheme and host lower case, a non-ASCII host IDNA-encoded.
    Raises DestinationError when it could send a click anywhere but its fixed origin."""
    if not template or len(template) > 4096:
        raise DestinationError("destination must be 1 to 4096 characters")
    if _FORBIDDEN.search(template):
        raise DestinationError("destination must not contain spaces or control characters")
    if "\\" in template:
        raise DestinationError("destination must not contain a backslash")
    match = _ORIGIN_RE.match(template)
    if not match:
        raise DestinationError("destination must be an absolute http(s) URL")
    scheme, authority, rest = match.groups()
    if "{" in authority or "}" in authority:
        raise DestinationError(
            "macros may fill only the path, query and fragment, not the host or port"
        )
    if "@" in authority:
        raise DestinationError("destination must not carry a user name or password")
    host, port = _split_authority(authority)
    if not host:
        raise DestinationError("destination must be an absolute http(s) URL")
    try:
        urlsplit(_MACRO_RE.sub("x", rest))
    except ValueError:
        raise DestinationError("destination is not a valid URL") from None
    return f"{scheme.lower()}://{host}{':' + port if port else ''}{rest}"


def _split_authority(authority: str) -> tuple[str, str]:
    """(host as stored, port text) of a URL authority without user info."""
    if authority.startswith("["):
        end = authority.find("]")
        literal, after = authority[1:end], authority[end + 1 :]
        try:
            if end < 0:
                raise ValueError(authority)
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise DestinationError("destination is not a valid URL") from None
        host = f"[{literal.lower()}]"
    else:
        host, colon, port_text = authority.partition(":")
        after = colon + port_text
        host = _domain(host)
    port = ""
    if after:
        port = after[1:]
        if not after.startswith(":") or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            raise DestinationError("destination port must be a number from 1 to 65535")
    return host, port


def _domain(host: str) -> str:
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode()
        except idna.IDNAError:
            raise DestinationError("destination host is not a valid domain name") from None
    host = host.lower()
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if host and not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise DestinationError("destination host is not a valid domain name")
    return host


def validate_destination(template: str) -> str | None:
    """Why a destination template is not acceptable, or None when it is."""
    try:
        normalize_destination(template)
    except DestinationError as exc:
        return str(exc)
    return None


@lru_cache(maxsize=65536)
def compile_template(template: str) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """Split a template into literal pieces and macro names (cached per template).

    Returns (literals, names, has_click_id); literals has one more item than names.
    """
    literals: list[str] = []
    names: list[str] = []
    pos = 0
    for match in _MACRO_RE.finditer(template):
        literals.append(template[pos : match.start()])
        names.append(match.group(1))
        pos = match.end()
    literals.append(template[pos:])
    return tuple(literals), tuple(names), "click_id" in names


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def quote_value(value: str) -> str:
    """A macro value percent-encoded (as `quote(value, safe="")`); ids and most sub values
    need nothing, and checking that is ten times faster than quote()."""
    return value if _UNRESERVED.fullmatch(value) else quote(value, safe="")


def render(template: str, values: dict[str, str]) -> str:
    """The destination for one click: macros replaced, click id appended when not used."""
    literals, names, has_click_id = compile_template(template)
    if names:
        out = [literals[0]]
        for name, literal in zip(names, literals[1:], strict=True):
            out.append(quote_value(values.get(name, "")))
            out.append(literal)
        url = "".join(out)
    else:
        url = template
    if not has_click_id:
        url = append_param(url, "click_id", values.get("click_id", ""))
    return url


def append_param(url: str, name: str, value: str) -> str:
    """Add name=value to the query string, before any #fragment."""
    base, hash_sign, fragment = url.partition("#")
    if "?" not in base:
        sep = "?"
    elif base.endswith(("?", "&")):
        sep = ""
    else:
        sep = "&"
    return f"{base}{sep}{name}={quote_value(value)}{hash_sign}{fragment}"


# Outgoing postbacks (tracker/delivery/): the same substitution over the conversion's
# macros. Nothing is appended: the partner's template says where each value goes.
POSTBACK_MACROS = frozenset(
    ["click_id", "conversion_id", "txid", "event", "status", "trigger"]
    + ["amount", "payout", "currency", "campaign_id", "affiliate_id", "advertiser_id"]
    + ["sub1", "sub2", "sub3", "sub4", "sub5"]
)
_POSTBACK_RE = re.compile(r"\{(" + "|".join(sorted(POSTBACK_MACROS)) + r")\}")


@lru_cache(maxsize=4096)
def _compile_postback(template: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    literals: list[str] = []
    names: list[str] = []
    pos = 0
    for match in _POSTBACK_RE.finditer(template):
        literals.append(template[pos : match.start()])
        names.append(match.group(1))
        pos = match.end()
    literals.append(template[pos:])
    return tuple(literals), tuple(names)


def render_postback(template: str, values: dict[str, str]) -> str:
    """An outgoing postback URL: its macros replaced by percent-encoded values (unknown
    macros are left as they are)."""
    literals, names = _compile_postback(template)
    out = [literals[0]]
    for name, literal in zip(names, literals[1:], strict=True):
        out.append(quote_value(values.get(name, "")))
        out.append(literal)
    return "".join(out)
