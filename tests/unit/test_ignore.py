"""sensor/ignore.py: ignore files, local addresses, membership."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from repopaths import ROOTS

from sensor.ignore import (
    IgnoreFileError,
    IgnoreList,
    local_addresses,
    local_networks,
    parse_fib_trie,
    parse_if_inet6,
    parse_ignore,
    read_ignore_file,
)

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 192.0.2.1
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 192.0.2.1
        /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo

fe80 02 40 20 80     truncated
20010db8000000000000000000000001 02 40 00 80     eth0
"""


def test_v4_v6_cidr_comments_blank_lines() -> None:
    text = "# comment\n\n192.0.2.7\n198.51.100.0/24  # trailing\n2001:db8::/32\n::ffff:203.0.113.9\n"
    networks = parse_ignore(text, "f")
    ignore = IgnoreList.build(networks, [])
    assert "192.0.2.7" in ignore and "198.51.100.200" in ignore
    assert "2001:db8:1::5" in ignore and "2001:db9::1" not in ignore
    assert "192.0.2.8" not in ignore


def test_portsentry_ignore_static_format() -> None:
    networks = read_ignore_file(str(ROOTS / "debian-stock" / "etc" / "portsentry" / "portsentry.ignore.static"))
    assert networks == (ipaddress.ip_network("127.0.0.1/32"),)


@pytest.mark.parametrize(("line", "shown"), [("192.0.2.300", "192.0.2.300"), ("host.example", "host.example"),
                                             ("10.0.0.0/33", "10.0.0.0/33"), ("::g", "::g")])
def test_bad_lines_name_file_and_line(line: str, shown: str) -> None:
    with pytest.raises(IgnoreFileError) as caught:
        parse_ignore(f"# ok\n192.0.2.1\n{line}\n", "/etc/x.ignore")
    assert str(caught.value) == f"/etc/x.ignore:3: IGNORE_FILE: '{shown}' is not an address or CIDR"


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_ignore_file(str(tmp_path / "none")) == ()


def test_loopback_and_local_addresses_always_ignored() -> None:
    local = [ipaddress.ip_network(a) for a in parse_fib_trie(FIB_TRIE) + parse_if_inet6(IF_INET6)]
    ignore = IgnoreList.build([], local)
    for address in ("127.0.0.1", "127.3.4.5", "::1", "192.0.2.1", "2001:db8::1", "::ffff:127.0.0.1"):
        assert address in ignore
    assert "192.0.2.2" not in ignore and "2001:db8::2" not in ignore


def test_proc_parsers() -> None:
    assert [str(a) for a in parse_fib_trie(FIB_TRIE)] == ["127.0.0.1", "192.0.2.1"]
    assert [str(a) for a in parse_if_inet6(IF_INET6)] == ["::1", "2001:db8::1"]


def test_garbage_address_is_not_contained() -> None:
    assert "not-an-ip" not in IgnoreList.build([], [])


@given(st.text(max_size=200))
def test_parser_only_raises_its_own_error(text: str) -> None:
    try:
        parse_ignore(text, "f")
    except IgnoreFileError as exc:
        assert str(exc).startswith("f:")


# --- issue 12, item 7: the set + interval lookup must agree with ipaddress on every case -----------

def _contains_reference(networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network], address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in networks)


@pytest.mark.parametrize("version", [4, 6])
def test_cidrs_of_every_length_match_exactly_their_range(version: int) -> None:
    """For every prefix length: the first and last address are in, the neighbours outside are not."""
    bits = 32 if version == 4 else 128
    base = ipaddress.ip_address("198.51.100.77" if version == 4 else "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")
    for length in range(bits + 1):
        network = ipaddress.ip_network(f"{base}/{length}", strict=False)
        ignore = IgnoreList.build([network], [])
        first, last = int(network.network_address), int(network.broadcast_address)
        assert str(network.network_address) in ignore and str(network.broadcast_address) in ignore, network
        assert base in ignore
        cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
        if first > 0 and not (version == 4 and cls(first - 1).is_loopback):
            assert str(cls(first - 1)) not in ignore, network
        if last < 2 ** bits - 1:
            assert str(cls(last + 1)) not in ignore or cls(last + 1).is_loopback, network


def test_v4_mapped_entries_and_lookups() -> None:
    """::ffff:a.b.c.d in the file means the IPv4 address (before: it matched nothing), and lookups alike."""
    ignore = IgnoreList.build(parse_ignore("::ffff:203.0.113.9\n::ffff:198.51.100.0/120\n", "f"), [])
    for address in ("203.0.113.9", "::ffff:203.0.113.9", "198.51.100.200", "::ffff:198.51.100.1"):
        assert address in ignore, address
    for address in ("203.0.113.10", "::ffff:203.0.113.10", "198.51.101.0", "::203.0.113.9"):
        assert address not in ignore, address


def test_address_objects_scoped_and_odd_inputs() -> None:
    ignore = IgnoreList.build(parse_ignore("fe80::/64\n192.0.2.0/24\n", "f"), [])
    assert ipaddress.ip_address("192.0.2.9") in ignore and ipaddress.ip_address("fe80::1") in ignore
    assert "fe80::1%eth0" in ignore
    assert ipaddress.ip_address("192.0.3.9") not in ignore
    for odd in ("", "1.2.3", "::g", "192.0.2.1/24", None, 3232235777, b"\xc0\0\2\1"):
        assert odd not in ignore


def test_overlapping_nested_and_duplicate_entries() -> None:
    text = "10.0.0.0/8\n10.1.0.0/16\n10.1.2.3\n10.1.2.3\n11.0.0.0/8\n12.0.0.0/9\n12.128.0.0/9\n2001:db8::/33\n"
    networks = parse_ignore(text, "f")
    ignore = IgnoreList.build(networks, [])
    assert len(ignore.networks) == 8 - 1 + 2  # one duplicate dropped, loopback v4 and v6 added
    for address in ("10.255.255.255", "11.0.0.0", "12.127.255.255", "12.128.0.0", "12.255.255.255",
                    "2001:db8:7fff::1", "13.0.0.0", "9.255.255.255", "2001:db8:8000::", "2001:db9::"):
        assert (address in ignore) == _contains_reference(list(ignore.networks), address), address


@given(st.lists(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 32)), max_size=30),
       st.lists(st.integers(0, 2 ** 32 - 1), max_size=30))
def test_agrees_with_ipaddress_v4(entries: list[tuple[int, int]], probes: list[int]) -> None:
    networks = [ipaddress.IPv4Network((address, length), strict=False) for address, length in entries]
    ignore = IgnoreList.build(networks, [])
    for probe in probes + [int(n.network_address) for n in networks] + [int(n.broadcast_address) for n in networks]:
        address = str(ipaddress.IPv4Address(probe))
        assert (address in ignore) == _contains_reference(list(ignore.networks), address)


@given(st.lists(st.tuples(st.integers(0, 2 ** 128 - 1), st.integers(0, 128)), max_size=30),
       st.lists(st.integers(0, 2 ** 128 - 1), max_size=30))
def test_agrees_with_ipaddress_v6(entries: list[tuple[int, int]], probes: list[int]) -> None:
    networks = [ipaddress.IPv6Network((address, length), strict=False) for address, length in entries]
    ignore = IgnoreList.build(networks, [])
    for probe in probes + [int(n.network_address) + 1 for n in networks]:
        address = str(ipaddress.IPv6Address(probe % 2 ** 128))
        assert (address in ignore) == _contains_reference(list(ignore.networks), address)


def test_host_addresses_with_a_large_list() -> None:
    """The host's own addresses and loopback stay ignored next to 10,000 configured entries."""
    local = [ipaddress.ip_network(a) for a in parse_fib_trie(FIB_TRIE) + parse_if_inet6(IF_INET6)]
    configured = [ipaddress.IPv4Network((0xC6330000 + i * 4, 30)) for i in range(10000)]  # 198.51.0.0 up
    ignore = IgnoreList.build(configured, local)
    for address in ("127.0.0.1", "::1", "192.0.2.1", "2001:db8::1", "198.51.0.3", "198.51.156.63"):
        assert address in ignore, address
    assert "198.51.156.64" not in ignore and "192.0.2.2" not in ignore


def test_host_bits_are_accepted_and_only_the_bare_unspecified_address_is_skipped() -> None:
    ignore = IgnoreList.build(parse_ignore("192.0.2.77/24\n0.0.0.0\n::\n", "f"), [])
    assert "192.0.2.5" in ignore and "198.51.100.7" not in ignore and "2001:db8::7" not in ignore
    everything = IgnoreList.build(parse_ignore("0.0.0.0/0\n::/0\n", "f"), [])
    assert "198.51.100.7" in everything and "2001:db8::7" in everything


def test_a_long_bad_entry_is_shown_cut_at_60_characters() -> None:
    with pytest.raises(IgnoreFileError) as caught:
        parse_ignore("x" * 100, "f")
    assert str(caught.value) == f"f:1: IGNORE_FILE: '{'x' * 60}' is not an address or CIDR"


def test_fib_trie_without_a_leaf_before_local_yields_nothing() -> None:
    assert parse_fib_trie("Main:\n        /32 host LOCAL\n") == []


def test_local_addresses_come_from_both_proc_files(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "net" / "if_inet6").write_text(IF_INET6)
    assert [str(a) for a in local_addresses(str(tmp_path))] == ["127.0.0.1", "192.0.2.1", "::1", "2001:db8::1"]
    ignore = IgnoreList.build([], local_networks(str(tmp_path)))
    assert "192.0.2.1" in ignore and "2001:db8::1" in ignore and "192.0.2.2" not in ignore
    assert local_addresses(str(tmp_path / "none")) == ()
