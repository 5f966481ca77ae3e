"""IP -> GeoInfo over one or more MaxMind-format (.mmdb) databases, cached, hot-reloadable.

Supported record shapes: GeoIP2 / GeoLite2 / DB-IP lite City, Country and ASN, and the flat
ip-location-db ones ({"country_code": "US"}, {"country_code", "state1", "city"},
{"autonomous_system_number", "autonomous_system_organization"}).

Operators replace a database with `mv` (a new inode): the old file stays mapped for the lookups
still using it, so a copy-in-place (`cp` over the file) is not supported.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


@functools.cache
def _maxminddb() -> tuple[Any, int]:
    """maxminddb and the mode to open files with, imported on the first database opened:
    an edge with no geo database configured never needs it (1.4 MB of its memory with the
    modules it pulls in: importlib.metadata, multiprocessing, zipfile)."""
    import maxminddb

    try:
        from maxminddb import extension
    except ImportError:  # a platform without the C extension
        extension = None  # type: ignore[assignment]
    # both map the file; the C extension (libmaxminddb) is several times faster per lookup
    mode = maxminddb.MODE_MMAP_EXT if hasattr(extension, "Reader") else maxminddb.MODE_MMAP
    return maxminddb, mode


@dataclass(frozen=True, slots=True)
class GeoInfo:
    country: str = ""  # ISO 3166-1 alpha-2
    region: str = ""  # first subdivision: ISO code, else its name
    city: str = ""  # English name
    asn: int = 0
    as_org: str = ""


EMPTY = GeoInfo()
FIELDS = tuple(f.name for f in fields(GeoInfo))


# --- pure logic: which addresses to look up, how to read a record, how to merge -------------


class _Ranges:
    """Integer address ranges with a bisect membership test: ipaddress's is_* properties and
    parser cost microseconds per address, which is most of an uncached lookup."""

    def __init__(self, cidrs: Iterable[str]):
        merged: list[list[int]] = []
        for net in sorted(ipaddress.ip_network(c) for c in cidrs):
            low, high = int(net.network_address), int(net.broadcast_address)
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._starts = [low for low, _ in merged]
        self._ends = [high for _, high in merged]

    def __contains__(self, value: int) -> bool:
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value <= self._ends[i]


# IANA special-purpose ranges: private, shared (CGN), loopback, link-local, documentation,
# benchmarking, multicast, reserved and broadcast, "this network" and unspecified
_V4_NOT_PUBLIC = _Ranges(
    (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
# only 2000::/3 is global unicast; within it: IETF protocol assignments (Teredo, ORCHID...)
# and documentation
_V6_NOT_PUBLIC = _Ranges(("2001::/23", "2001:db8::/32", "3fff::/20"))
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def public_address(text: str) -> str | None:
    """The address to look up (IPv4 for an IPv4-mapped one), or None for anything no database
    can place: unparsable, private, loopback, link-local, multicast, reserved, unspecified."""
    try:
        packed = socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        try:
            packed = socket.inet_pton(socket.AF_INET6, text)
        except (OSError, TypeError):
            return None
        if packed[:12] == _V4_MAPPED:  # dual-stack sockets show IPv4 peers as ::ffff:a.b.c.d
            packed = packed[12:]
            text = socket.inet_ntop(socket.AF_INET, packed)
    value = int.from_bytes(packed)
    if len(packed) == 4:
        return None if value in _V4_NOT_PUBLIC else text
    return text if value >> 125 == 1 and value not in _V6_NOT_PUBLIC else None


# maxminddb decodes maps to dict and arrays to list; anything else reads as absent


def _at(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, dict) else None


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _name(node: Any) -> str:
    """A GeoIP2 place ({"names": {"en": ...}}) or a bare string (ip-location-db)."""
    return _text(node) or _text(_at(_at(node, "names"), "en"))


def _country(record: dict) -> str:
    code = (
        _text(_at(record.get("country"), "iso_code"))
        or _text(record.get("country_code"))
        or _text(record.get("country"))
        # anycast and satellite ranges have no country, only where they are registered
        or _text(_at(record.get("registered_country"), "iso_code"))
    )
    return code.upper() if len(code) == 2 and code.isalpha() else ""


def _region(record: dict) -> str:
    subdivisions = record.get("subdivisions")
    first = subdivisions[0] if isinstance(subdivisions, list) and subdivisions else None
    return (
        _text(_at(first, "iso_code"))
        or _name(first)
        or _text(record.get("state1"))
        or _text(record.get("region"))
    )


def _asn(value: Any) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    text = _text(value).upper().removeprefix("AS")
    return int(text) if text.isdigit() else 0


def parse_record(record: Any) -> GeoInfo:
    """The fields one database record holds, whatever its flavour; other shapes give EMPTY."""
    if not isinstance(record, dict):
        return EMPTY
    traits = record.get("traits")  # GeoIP2 Enterprise keeps the AS here
    country = _country(record)
    region = _region(record)
    city = _name(record.get("city"))
    asn = _asn(record.get("autonomous_system_number") or _at(traits, "autonomous_system_number"))
    as_org = _text(record.get("autonomous_system_organization")) or _text(
        _at(traits, "autonomous_system_organization")
    )
    if not (country or region or city or asn or as_org):
        return EMPTY
    return GeoInfo(country, region, city, asn, as_org)


def merge(parts: Sequence[GeoInfo]) -> GeoInfo:
    """One answer from several databases' answers, earlier ones first.

    Region and city come only from an answer that agrees on the country, so a city never
    lands in another database's country; the AS number and its name stay a pair.
    """
    if len(parts) == 1:  # one answer is consistent already
        return parts[0]
    country = region = city = as_org = ""
    asn = 0
    for part in parts:
        country = country or part.country
        if not (region or city) and (part.region or part.city) and part.country in ("", country):
            region, city = part.region, part.city
        if not (asn or as_org) and (part.asn or part.as_org):
            asn, as_org = part.asn, part.as_org
    if not (country or region or city or asn or as_org):
        return EMPTY
    return GeoInfo(country, region, city, asn, as_org)


_TYPE_FIELDS = {  # substrings of metadata.database_type, lower-cased
    "enterprise": frozenset(FIELDS),
    "city": frozenset({"country", "region", "city"}),
    "country": frozenset({"country"}),
    "asn": frozenset({"asn", "as_org"}),
    "isp": frozenset({"asn", "as_org"}),
}
_KEY_FIELDS = {  # record keys that say a field is there even when this record leaves it empty
    "city": "city",
    "subdivisions": "region",
    "state1": "region",
    "country": "country",
    "country_code": "country",
    "autonomous_system_number": "asn",
    "autonomous_system_organization": "as_org",
}


def detect_fields(database_type: str, sample: Any) -> frozenset[str]:
    """What a database provides, from its declared type and the shape of one of its records."""
    found: set[str] = set()
    kind = database_type.lower()
    for hint, provided in _TYPE_FIELDS.items():
        if hint in kind:
            found |= provided
    info = parse_record(sample)
    found |= {name for name in FIELDS if getattr(info, name)}
    if isinstance(sample, dict):
        found |= {_KEY_FIELDS[key] for key in sample if key in _KEY_FIELDS}
    return frozenset(found)


def _rank(provided: frozenset[str]) -> int:
    # the most detailed location source decides the country, so its city can be used
    return 0 if "city" in provided else 1 if "country" in provided else 2


# --- databases on disk ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Database:
    path: Path
    reader: Any  # maxminddb.Reader or the C extension's reader
    ipv4_only: bool
    provides: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Slot:
    """One configured path: what is open for it and which version of the file was last tried."""

    path: Path
    db: _Database | None
    seen: Signature | None | str


@dataclass(frozen=True, slots=True)
class _State:
    """Everything a lookup reads, swapped as one attribute so a lookup sees one consistent set."""

    slots: tuple[_Slot, ...]
    resolve: Callable[[str], GeoInfo]


_UNSEEN = "unseen"


def _signature(path: Path) -> Signature | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _open(path: Path) -> _Database:
    maxminddb, mode = _maxminddb()
    reader = maxminddb.open_database(str(path), mode)
    try:
        meta = reader.metadata()
        # a probe lookup catches a damaged tree or data section before lookups depend on it
        reader.get("1.1.1.1")
        sample = next(iter(reader), (None, None))[1]
    except BaseException:
        reader.close()
        raise
    provides = detect_fields(str(meta.database_type), sample)
    built = datetime.fromtimestamp(meta.build_epoch, UTC).date()
    log.info(
        "geo: opened %s (%s, built %s, provides %s)",
        path,
        meta.database_type,
        built,
        ",".join(sorted(provides)) or "nothing known",
    )
    return _Database(path, reader, meta.ip_version == 4, provides)


def _refresh(slot: _Slot) -> _Slot:
    """The slot for the file now at slot.path: reopened when it changed, else unchanged."""
    sig = _signature(slot.path)
    if sig == slot.seen:
        return slot
    if sig is None:
        keeping = "; keeping the copy already open" if slot.db else ""
        log.warning("geo: %s not found%s", slot.path, keeping)
        return _Slot(slot.path, slot.db, None)
    try:
        db = _open(slot.path)
    except Exception as exc:  # any damaged file must leave the working copy in service
        keeping = "keeping the copy already open" if slot.db else "no data from it"
        log.error("geo: cannot open %s (%s); %s", slot.path, exc, keeping)
        return _Slot(slot.path, slot.db, sig)  # retried only once the file changes again
    return _Slot(slot.path, db, sig)


BLOCK_PREFIX = 24  # an IPv4 /24: the answer of a network this wide or wider is the block's


def _records(dbs: Sequence[_Database], addr: str) -> tuple[list[GeoInfo], int]:
    """Each database's answer for addr, and the longest prefix among the networks they
    answered from (0 when none did)."""
    parts = []
    longest = 0
    ipv6 = ":" in addr
    for db in dbs:
        if db.ipv4_only and ipv6:
            continue
        try:
            record, prefix = db.reader.get_with_prefix_len(addr)
        except (ValueError, _maxminddb()[0].InvalidDatabaseError) as exc:  # closed or damaged
            log.debug("geo: lookup of %s in %s failed: %s", addr, db.path, exc)
            longest = 128  # nothing known about the block
            continue
        longest = max(longest, prefix)
        if record is not None:
            parts.append(parse_record(record))
    return parts, longest


def _resolver(slots: Sequence[_Slot], cache_size: int) -> Callable[[str], GeoInfo]:
    dbs = sorted((s.db for s in slots if s.db), key=lambda db: _rank(db.provides))
    # IPv4 /24 -> the answer, kept when every database answered from a network covering the
    # whole /24: traffic's new addresses mostly fall in blocks already seen, and a block
    # hit skips the tree walks and the decoding of the records (exact, not approximate).
    blocks: dict[str, GeoInfo] = {}

    def resolve(ip: str) -> GeoInfo:
        addr = public_address(ip)
        if addr is None:
            return EMPTY
        block = None if ":" in addr else addr.rpartition(".")[0]
        info = blocks.get(block) if block else None
        if info is not None:
            return info
        parts, longest = _records(dbs, addr)
        info = merge(parts)
        if block and longest <= BLOCK_PREFIX and cache_size > 0:
            if len(blocks) >= cache_size:
                blocks.clear()
            blocks[block] = info
        return info

    # one cache per set of databases: a lookup finishing on the old set cannot refill the new
    return functools.lru_cache(maxsize=max(cache_size, 0))(resolve)


class GeoReader:
    """Looks IPs up in every configured database and merges the answers (thread-safe)."""

    def __init__(self, paths: Sequence[str | Path], cache_size: int = 100_000):
        if not paths:
            raise ValueError("GeoReader needs at least one database path")
        self._cache_size = cache_size
        self._lock = threading.Lock()  # serialises reloads; lookups never take it
        self._closed = False
        slots = [_refresh(_Slot(Path(p), None, _UNSEEN)) for p in paths]
        self._state = _State(tuple(slots), _resolver(slots, cache_size))

    def lookup(self, ip: str) -> GeoInfo:
        return self._state.resolve(ip)

    @property
    def loaded(self) -> int:
        """How many of the configured databases are open."""
        return sum(1 for s in self._state.slots if s.db)

    def cache_info(self) -> functools._CacheInfo:
        return self._state.resolve.cache_info()  # type: ignore[attr-defined]

    def maybe_reload(self) -> bool:
        """Reopen the files replaced since the last look; True when the answers may change.

        Old readers are not closed: lookups still running on them finish, and they are freed
        once nothing holds them.
        """
        with self._lock:
            if self._closed:
                return False
            state = self._state
            slots = tuple(_refresh(s) for s in state.slots)
            if slots == state.slots:
                return False
            changed = any(new.db is not old.db for new, old in zip(slots, state.slots, strict=True))
            resolve = _resolver(slots, self._cache_size) if changed else state.resolve
            self._state = _State(slots, resolve)
            return changed

    def close(self) -> None:
        with self._lock:
            self._closed = True
            state = self._state
            self._state = _State((), _resolver((), 0))
        for slot in state.slots:
            if slot.db:  # a lookup still running on it gets a ValueError, read as "no data"
                slot.db.reader.close()

    def __enter__(self) -> GeoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_geo(paths: Iterable[str | Path] | None, cache_size: int = 100_000) -> GeoReader | None:
    """A GeoReader over the configured databases, or None (with one warning) when there is none."""
    configured = [Path(p) for p in paths or () if str(p).strip()]
    if not configured:
        log.warning("geo is off: no database path is configured")
        return None
    if not any(p.is_file() for p in configured):
        log.warning("geo is off: no database found at %s", ", ".join(map(str, configured)))
        return None
    reader = GeoReader(configured, cache_size)
    if not reader.loaded:
        reader.close()
        log.warning("geo is off: none of %s could be opened", ", ".join(map(str, configured)))
        return None
    return reader
