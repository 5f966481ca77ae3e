"""tracker/netaddr.py: which address is recorded for a request."""

from __future__ import annotations

import ipaddress

import pytest

from tracker.edge.client_ip import UNKNOWN_IP, client_ip

TRUSTED = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        # an untrusted peer: X-Forwarded-For is the client's word and is ignored
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),
        ("203.0.113.5", "10.0.0.1, 1.2.3.4", "203.0.113.5"),
        ("2001:db8::5", "1.2.3.4", "2001:db8::5"),
        # a trusted peer without the header
        ("10.0.0.1", None, "10.0.0.1"),
        ("10.0.0.1", "", "10.0.0.1"),
        # a trusted peer: the rightmost untrusted hop is the client
        ("10.0.0.1", "1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", " 1.2.3.4 ", "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6,1.2.3.4", "1.2.3.4"),
        # several trusted hops are skipped, a spoofed left part is not reached
        ("10.0.0.1", "1.2.3.4, 10.0.0.7, 10.200.0.1", "1.2.3.4"),
        ("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.7", "1.2.3.4"),
        ("10.0.0.1", "10.1.1.1, 10.2.2.2", "10.1.1.1"),
        # garbage stops the walk: nothing left of it is believed
        ("10.0.0.1", "1.2.3.4, garbage", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4, ", "10.0.0.1"),
        ("10.0.0.1", "6.6.6.6, garbage, 10.0.0.5", "10.0.0.5"),
        ("10.0.0.1", "garbage, 1.2.3.4", "1.2.3.4"),
        ("10.0.0.1", "1.2.3.4, 999.1.1.1", "10.0.0.1"),
        # ports
        ("10.0.0.1", "1.2.3.4:5678", "1.2.3.4"),
        ("10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", "[2001:db8::1]", "2001:db8::1"),
        # IPv6 peers and hops, normalized
        ("fd00::1", "2001:DB8:0:0::2", "2001:db8::2"),
        ("fd00::1", "2001:db8::2, fd00::9", "2001:db8::2"),
        ("fd00::1", "1.2.3.4, fd00::9, 10.9.9.9", "1.2.3.4"),
        ("10.0.0.1", "2001:db8::3", "2001:db8::3"),
        ("2001:0db8:0000::0001", None, "2001:db8::1"),
    ],
)
def test_client_ip(peer, xff, expected):
    assert client_ip(peer, xff, TRUSTED) == expected


def test_no_trusted_networks_never_reads_header():
    assert client_ip("10.0.0.1", "1.2.3.4", []) == "10.0.0.1"


@pytest.mark.parametrize("peer", [None, "", "not-an-ip", "1.2.3"])
def test_unknown_peer(peer):
    assert client_ip(peer, "1.2.3.4", TRUSTED) == UNKNOWN_IP == "::"


def test_result_is_always_an_address():
    for xff in ["a,b,c", "1.2.3.4, [bad", ",,,", "\r\n1.2.3.4", "10.0.0.2:x:y"]:
        ipaddress.ip_address(client_ip("10.0.0.1", xff, TRUSTED))


def test_ipv4_mapped_peer_matches_ipv4_proxy_ranges():
    trusted = [ipaddress.ip_network("10.0.0.0/8")]
    assert client_ip("::ffff:10.0.0.1", "198.51.100.7", trusted) == "198.51.100.7"
