"""geo/: lookups over small .mmdb files written here, hot reload, and the npm database fetch."""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import random
import tarfile
import threading
import time
from pathlib import Path

import maxminddb
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from geo import EMPTY, GeoInfo, GeoReader, fetch, open_geo
from geo import reader as geo_reader
from geo.reader import merge, parse_record, public_address
from tracker.testing import wait_until

LONDON = {
    "country": {"iso_code": "GB", "names": {"en": "United Kingdom"}},
    "subdivisions": [{"iso_code": "ENG", "names": {"en": "England"}}],
    "city": {"names": {"en": "London", "de": "London"}},
}
CITY_ROWS = {
    "81.2.69.0/24": LONDON,
    "2a02:8010::/32": LONDON,
    # no city: a country-level row, as GeoLite2 City has
    "8.8.8.0/24": {"country": {"iso_code": "US"}, "registered_country": {"iso_code": "US"}},
    # private and special ranges that a careless build could still hold: never to be read
    "10.0.0.0/8": LONDON,
    "127.0.0.0/8": LONDON,
    "169.254.0.0/16": LONDON,
    "224.0.0.0/4": LONDON,
    "240.0.0.0/4": LONDON,
    "0.0.0.0/8": LONDON,
    "fc00::/7": LONDON,
    "fe80::/10": LONDON,
    "ff00::/8": LONDON,
}
ASN_ROWS = {
    "81.2.69.0/24": {
        "autonomous_system_number": 20712,
        "autonomous_system_organization": "Andrews & Arnold Ltd",
    },
    "8.8.8.0/24": {"autonomous_system_number": 15169, "autonomous_system_organization": "GOOGLE"},
}
COUNTRY_ROWS = {  # ip-location-db geo-whois-asn-country shape
    "1.1.1.0/24": {"country_code": "AU"},
    "8.8.8.0/24": {"country_code": "US"},
    "2001:4860::/32": {"country_code": "US"},
}

GB_LONDON = GeoInfo("GB", "ENG", "London")


def write_mmdb(path: Path, rows: dict[str, dict], database_type: str, ip_version: int = 6) -> Path:
    writer = MMDBWriter(
        ip_version=ip_version,
        ipv4_compatible=ip_version == 6,
        database_type=database_type,
        languages=["en"],
        description="test",
    )
    for network, record in rows.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def replace_atomically(path: Path, rows: dict[str, dict], database_type: str) -> None:
    """What an operator does: write a new file beside the old one, then `mv` it over."""
    tmp = write_mmdb(path.with_suffix(".new"), rows, database_type)
    os.replace(tmp, path)


@pytest.fixture
def city_db(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "GeoLite2-City.mmdb", CITY_ROWS, "GeoLite2-City")


@pytest.fixture
def asn_db(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "GeoLite2-ASN.mmdb", ASN_ROWS, "GeoLite2-ASN")


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "geo-whois-asn-country.mmdb", COUNTRY_ROWS, "country ipvAll")


# --- lookups -------------------------------------------------------------------------------


def test_ipv4_ipv6_and_ipv4_mapped(city_db: Path):
    with GeoReader([city_db]) as geo:
        assert geo.lookup("81.2.69.142") == GB_LONDON
        assert geo.lookup("2a02:8010::1") == GB_LONDON
        assert geo.lookup("::ffff:81.2.69.142") == GB_LONDON
        assert geo.lookup("::FFFF:8.8.8.8") == GeoInfo("US")
        assert geo.lookup("9.9.9.9") is EMPTY  # not in the database


def test_a_block_answer_is_reused_only_where_the_whole_block_has_it(tmp_path: Path):
    """Addresses of a /24 that one network covers share its answer; in a /24 split into
    smaller networks every address still gets its own, whichever is looked up first."""
    rows = {
        "198.51.0.0/16": {"country": {"iso_code": "NL"}},
        "198.51.7.0/28": {"country": {"iso_code": "BE"}},
        "198.51.9.128/25": {"country": {"iso_code": "FR"}},
    }
    db = write_mmdb(tmp_path / "GeoLite2-City.mmdb", rows, "GeoLite2-City")
    with GeoReader([db]) as geo:
        assert geo.lookup("198.51.3.1") == GeoInfo("NL")
        assert geo.lookup("198.51.3.2") == GeoInfo("NL")
        assert geo.lookup("198.51.7.100") == GeoInfo("NL")  # outside the /28 first
        assert geo.lookup("198.51.7.3") == GeoInfo("BE")
        assert geo.lookup("198.51.7.200") == GeoInfo("NL")
        assert geo.lookup("198.51.9.200") == GeoInfo("FR")  # inside the /25 first
        assert geo.lookup("198.51.9.1") == GeoInfo("NL")
        assert geo.lookup("198.51.9.129") == GeoInfo("FR")


def test_city_and_asn_are_merged(city_db: Path, asn_db: Path):
    with GeoReader([asn_db, city_db]) as geo:
        assert geo.lookup("81.2.69.142") == GeoInfo(
            "GB", "ENG", "London", 20712, "Andrews & Arnold Ltd"
        )
        assert geo.lookup("::ffff:8.8.8.8") == GeoInfo("US", asn=15169, as_org="GOOGLE")


def test_pure_python_reader_gives_the_same(city_db: Path, asn_db: Path, monkeypatch):
    # where the C extension is missing, the pure-Python mmap reader is used
    monkeypatch.setattr(geo_reader, "_maxminddb", lambda: (maxminddb, maxminddb.MODE_MMAP))
    with GeoReader([asn_db, city_db]) as geo:
        assert geo.lookup("::ffff:81.2.69.142") == GeoInfo(
            "GB", "ENG", "London", 20712, "Andrews & Arnold Ltd"
        )
        assert geo.lookup("2a02:8010::1") == GB_LONDON


def test_ip_location_db_country_file(country_db: Path, asn_db: Path):
    with GeoReader([country_db, asn_db]) as geo:
        assert geo.lookup("1.1.1.1") == GeoInfo("AU")
        assert geo.lookup("2001:4860:4860::8888") == GeoInfo("US")
        assert geo.lookup("8.8.8.8") == GeoInfo("US", asn=15169, as_org="GOOGLE")


def test_city_database_decides_the_country_whatever_the_order(tmp_path: Path, city_db: Path):
    # a country file that disagrees with the city file must not pair GB's city with another country
    other = write_mmdb(tmp_path / "other.mmdb", {"81.2.69.0/24": {"country_code": "IE"}}, "x")
    with GeoReader([other, city_db]) as geo:
        assert geo.lookup("81.2.69.1") == GB_LONDON


def test_ipv6_lookup_skips_an_ipv4_only_database(tmp_path: Path, city_db: Path):
    v4 = write_mmdb(tmp_path / "v4.mmdb", {"8.8.8.0/24": {"country_code": "US"}}, "x", 4)
    with GeoReader([v4, city_db]) as geo:
        assert geo.lookup("2a02:8010::1") == GB_LONDON
        assert geo.lookup("8.8.8.8") == GeoInfo("US")


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "127.0.0.1",
        "169.254.1.1",
        "224.0.0.1",
        "239.1.2.3",
        "240.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "100.64.0.1",
        "192.0.2.1",
        "::",
        "::1",
        "fc00::1",
        "fd12::1",
        "fe80::1",
        "fe80::1%eth0",
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_non_public_addresses_are_empty_without_reading(city_db: Path, ip: str):
    # the database holds rows for most of these: EMPTY proves it was not read
    assert public_address(ip) is None
    with GeoReader([city_db]) as geo:
        assert geo.lookup(ip) is EMPTY


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("8.8.8.8", "8.8.8.8"),
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("::ffff:0808:0808", "8.8.8.8"),
        ("2a00:1450::1", "2a00:1450::1"),
        ("2002:c000:204::1", "2002:c000:204::1"),  # 6to4 is left to the databases
        ("100.63.255.255", "100.63.255.255"),  # just outside the shared range
        ("100.128.0.0", "100.128.0.0"),
        ("172.32.0.1", "172.32.0.1"),
        ("223.255.255.255", "223.255.255.255"),  # just below multicast
        ("2001::1", None),  # Teredo
        ("2001:2::1", None),  # benchmarking
        ("3fff::1", None),  # documentation (RFC 9637)
        ("64:ff9b::808:808", None),  # NAT64: outside global unicast
        ("::8.8.8.8", None),  # IPv4-compatible (deprecated)
        ("fec0::1", None),  # site-local (deprecated)
        (None, None),
        (42, None),
    ],
)
def test_public_address(ip, key):
    assert public_address(ip) == key


def test_public_address_agrees_with_ipaddress():
    rng = random.Random(7)
    samples = [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(20_000)]
    samples += [ipaddress.IPv6Address((1 << 125) | rng.getrandbits(125)) for _ in range(5_000)]
    samples += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(5_000)]
    # ranges where Python versions differ from the IANA registry or among themselves
    # (fec0::/10 is deprecated site-local, which ipaddress calls global)
    unsure = [
        ipaddress.ip_network(n) for n in ("192.0.0.0/24", "3fff::/20", "2001::/23", "fec0::/10")
    ]
    for addr in samples:
        if any(addr in net for net in unsure if net.version == addr.version):
            continue
        expected = addr.is_global and not (addr.is_multicast or addr.is_reserved)
        assert (public_address(str(addr)) is not None) == expected, addr


@pytest.mark.parametrize(
    "ip", ["", " ", "nonsense", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4:80", "[::1]", "::g"]
)
def test_unparsable_is_empty(city_db: Path, ip: str):
    with GeoReader([city_db]) as geo:
        assert geo.lookup(ip) is EMPTY


def test_cache_returns_the_same_answer(city_db: Path):
    with GeoReader([city_db], cache_size=10) as geo:
        first = geo.lookup("81.2.69.142")
        assert geo.lookup("81.2.69.142") is first
        info = geo.cache_info()
        assert (info.hits, info.misses, info.maxsize) == (1, 1, 10)
        for i in range(30):  # bounded
            geo.lookup(f"81.2.69.{i}")
        assert geo.cache_info().currsize == 10


# --- record shapes and merging (pure) ------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (LONDON, GB_LONDON),
        (
            {"country": {"iso_code": "gb"}, "subdivisions": [{"names": {"en": "Wales"}}]},
            GeoInfo("GB", "Wales"),
        ),
        ({"registered_country": {"iso_code": "US"}}, GeoInfo("US")),
        (
            {"country_code": "DE", "state1": "Berlin", "city": "Berlin"},
            GeoInfo("DE", "Berlin", "Berlin"),
        ),
        ({"country_code": "US", "autonomous_system_number": 15169}, GeoInfo("US", asn=15169)),
        (
            {"autonomous_system_number": "AS13335", "autonomous_system_organization": " CF "},
            GeoInfo(asn=13335, as_org="CF"),
        ),
        ({"traits": {"autonomous_system_number": 3320}}, GeoInfo(asn=3320)),
        # odd shapes are ignored, never raised on
        ({"country": {"iso_code": 5}, "city": {"names": "x"}, "subdivisions": {}}, EMPTY),
        ({"country_code": "USA", "autonomous_system_number": -1}, EMPTY),
        ({"autonomous_system_number": True}, EMPTY),
        ({"subdivisions": [], "city": None}, EMPTY),
        ({}, EMPTY),
        ("US", EMPTY),
        (["US"], EMPTY),
        (None, EMPTY),
    ],
)
def test_parse_record(record, expected: GeoInfo):
    assert parse_record(record) == expected


def test_merge_keeps_pairs_together():
    parts = [
        GeoInfo("US"),
        GeoInfo("GB", "ENG", "London"),  # another country: its city is not taken
        GeoInfo("US", "CA", "Mountain View"),
        GeoInfo(asn=15169, as_org="GOOGLE"),
        GeoInfo(asn=1, as_org="OTHER"),
    ]
    assert merge(parts) == GeoInfo("US", "CA", "Mountain View", 15169, "GOOGLE")
    assert merge([]) is EMPTY
    assert merge([EMPTY, EMPTY]) is EMPTY


# --- hot reload ----------------------------------------------------------------------------

V1 = {"8.8.8.0/24": {"country_code": "US"}, "2001:4860::/32": {"country_code": "US"}}
V2 = {"8.8.8.0/24": {"country_code": "CA"}, "2001:4860::/32": {"country_code": "CA"}}


def test_reload_after_atomic_replace(tmp_path: Path):
    path = write_mmdb(tmp_path / "c.mmdb", V1, "country")
    with GeoReader([path]) as geo:
        assert geo.lookup("8.8.8.8") == GeoInfo("US")
        assert geo.maybe_reload() is False  # nothing changed
        replace_atomically(path, V2, "country")
        assert geo.maybe_reload() is True
        assert geo.lookup("8.8.8.8") == GeoInfo("CA")  # the cached US answer is gone
        assert geo.cache_info().currsize == 1
        assert geo.maybe_reload() is False


def test_lookups_keep_working_during_swaps(tmp_path: Path):
    path = write_mmdb(tmp_path / "c.mmdb", V1, "country")
    seen: set[GeoInfo] = set()
    latest: list[GeoInfo | None] = [None, None]  # each thread's last answer
    errors: list[BaseException] = []
    stop = threading.Event()

    def look_up_in_a_loop(geo: GeoReader, n: int) -> None:
        try:
            while not stop.is_set():
                for ip in ("8.8.8.8", "2001:4860::1", "::ffff:8.8.8.8"):
                    latest[n] = geo.lookup(ip)
                    seen.add(latest[n])
        except BaseException as exc:  # any failure is the finding
            errors.append(exc)
            stop.set()

    with GeoReader([path], cache_size=0) as geo:  # no cache: every lookup reads a database
        threads = [threading.Thread(target=look_up_in_a_loop, args=(geo, n)) for n in range(2)]
        for t in threads:
            t.start()
        for i in range(40):
            version, answer = (V2, GeoInfo("CA")) if i % 2 == 0 else (V1, GeoInfo("US"))
            replace_atomically(path, version, "country")
            assert geo.maybe_reload() is True
            # every thread answers from the new copy before the next swap, however the
            # threads are scheduled (so both versions are surely looked up in)
            wait_until(
                lambda answer=answer: stop.is_set() or latest == [answer, answer],
                10,
                f"both threads to see swap {i}",
                interval=0.001,
            )
        stop.set()
        for t in threads:
            t.join(timeout=10)
        assert geo.lookup("8.8.8.8") == GeoInfo("US")  # the last swap put V1 back
    assert not errors
    assert seen == {GeoInfo("US"), GeoInfo("CA")}  # never EMPTY mid-swap


def test_broken_replacement_keeps_the_old_data(tmp_path: Path, caplog):
    path = write_mmdb(tmp_path / "c.mmdb", V1, "country")
    with GeoReader([path]) as geo:
        broken = tmp_path / "broken"
        broken.write_bytes(b"not a maxmind database" * 100)
        os.replace(broken, path)
        with caplog.at_level(logging.ERROR, logger="geo.reader"):
            assert geo.maybe_reload() is False
        assert "cannot open" in caplog.text and "keeping the copy already open" in caplog.text
        assert geo.lookup("8.8.8.8") == GeoInfo("US")
        caplog.clear()
        assert geo.maybe_reload() is False  # the same broken file is not retried nor logged
        assert not caplog.records
        replace_atomically(path, V2, "country")  # the operator fixes it
        assert geo.maybe_reload() is True
        assert geo.lookup("8.8.8.8") == GeoInfo("CA")


def test_a_file_that_appears_later_is_picked_up(tmp_path: Path, city_db: Path):
    later = tmp_path / "asn.mmdb"
    with GeoReader([city_db, later]) as geo:
        assert geo.loaded == 1
        assert geo.lookup("81.2.69.1") == GB_LONDON
        replace_atomically(later, ASN_ROWS, "GeoLite2-ASN")
        assert geo.maybe_reload() is True
        assert geo.loaded == 2
        assert geo.lookup("81.2.69.1").asn == 20712


def test_close(city_db: Path):
    geo = GeoReader([city_db])
    geo.close()
    assert geo.lookup("81.2.69.142") is EMPTY
    assert geo.maybe_reload() is False


# --- open_geo ------------------------------------------------------------------------------


@pytest.mark.parametrize("paths", [None, [], [""]])
def test_open_geo_without_paths(paths, caplog):
    with caplog.at_level(logging.WARNING, logger="geo.reader"):
        assert open_geo(paths) is None
    assert [r.getMessage() for r in caplog.records] == [
        "geo is off: no database path is configured"
    ]


def test_open_geo_missing_or_broken(tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING, logger="geo.reader"):
        assert open_geo([tmp_path / "nope.mmdb"]) is None
    assert caplog.records[-1].getMessage().startswith("geo is off: no database found at ")
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="geo.reader"):
        assert open_geo([broken]) is None
    assert caplog.records[-1].getMessage().startswith("geo is off: none of ")


def test_open_geo(city_db: Path, tmp_path: Path):
    geo = open_geo([str(city_db), tmp_path / "missing-for-now.mmdb"])
    assert geo is not None
    with geo:
        assert geo.loaded == 1
        assert geo.lookup("81.2.69.142") == GB_LONDON


# --- fetch (no network: the npm call is replaced or fails) ---------------------------------


def make_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def package_tarball(tmp_path: Path, country_db: Path) -> Path:
    v4 = write_mmdb(tmp_path / "v4.mmdb", {"9.9.9.0/24": {"country_code": "CH"}}, "x", 4)
    return make_tarball(
        tmp_path / "pkg.tgz",
        {
            "package/package.json": b"{}",
            "package/geo-whois-asn-country-ipv4.mmdb": v4.read_bytes(),
            "package/geo-whois-asn-country.mmdb": country_db.read_bytes(),
        },
    )


def test_extract_database(tmp_path: Path, package_tarball: Path):
    target = tmp_path / "out" / fetch.FILENAME
    target.parent.mkdir()
    assert fetch.extract_database(package_tarball, fetch.FILENAME, target) == target
    with maxminddb.open_database(str(target)) as db:
        assert db.get("1.1.1.1") == {"country_code": "AU"}
    assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    assert [p.name for p in target.parent.iterdir()] == [fetch.FILENAME]  # no temp file left


def test_extract_database_refuses_bad_tarballs(tmp_path: Path):
    target = tmp_path / fetch.FILENAME
    target.write_bytes(b"previous")
    empty = make_tarball(tmp_path / "a.tgz", {"package/README.md": b"hi"})
    with pytest.raises(RuntimeError, match="has no"):
        fetch.extract_database(empty, fetch.FILENAME, target)
    junk = make_tarball(tmp_path / "b.tgz", {"package/" + fetch.FILENAME: b"junk"})
    with pytest.raises(RuntimeError, match="does not open"):
        fetch.extract_database(junk, fetch.FILENAME, target)
    assert target.read_bytes() == b"previous"  # the working copy is never replaced by junk
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "b.tgz", fetch.FILENAME]


def test_fetch_free_database(tmp_path: Path, package_tarball: Path, monkeypatch):
    calls: list[str] = []

    def fake_npm_pack(package: str, dest: Path) -> Path:
        calls.append(package)
        return package_tarball

    monkeypatch.setattr(fetch, "npm_pack", fake_npm_pack)
    dest = tmp_path / "data" / "geo"
    path = fetch.fetch_free_database(dest)
    assert path == dest / "geo-whois-asn-country.mmdb"
    assert calls == ["@ip-location-db/geo-whois-asn-country-mmdb"]
    assert fetch.fetch_free_database(dest) == path  # fresh: not fetched again
    assert len(calls) == 1
    month_ago = time.time() - 31 * 86400
    os.utime(path, (month_ago, month_ago))
    fetch.fetch_free_database(dest)
    assert len(calls) == 2
    with GeoReader([path]) as geo:
        assert geo.lookup("1.1.1.1") == GeoInfo("AU")


def test_npm_missing(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="npm is not installed"):
        fetch.npm_pack(fetch.PACKAGE, tmp_path)


def test_npm_failing(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text("#!/bin/sh\necho 'npm error 404 Not Found' >&2\nexit 1\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(RuntimeError, match=r"failed \(exit 1\): npm error 404"):
        fetch.npm_pack(fetch.PACKAGE, tmp_path)


def test_cli_reports_errors(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert fetch.main([str(tmp_path / "geo")]) == 1
    assert "npm is not installed" in capsys.readouterr().err
