"""The ignore list: addresses and networks that never raise an alert.

File format: one address or CIDR per line, IPv4 or IPv6, ``#`` comments and
blank lines allowed; PortSentry's ``portsentry.ignore.static`` reads as-is
(``0.0.0.0`` there means "any local address" and is accepted but matches
nothing).  The host's own addresses (every interface, from /proc) and loopback
are always ignored.  Parsing is pure; :func:`local_networks` reads /proc.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from socket import AF_INET, AF_INET6, inet_pton

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))


class IgnoreFileError(ValueError):
    """A bad line in an ignore file: ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True)
class IgnoreEntry:
    """One entry line of an ignore file."""

    line: int
    text: str                 # the line without surrounding blanks, an inline comment kept
    item: str                 # the address or CIDR as written
    network: Network | None   # None: PortSentry's "0.0.0.0", its placeholder for local addresses


def ignore_entries(text: str, path: str, skipped: list[str] | None = None) -> list[IgnoreEntry]:
    """Every entry line of ignore-file text, in order.

    The first bad line raises IgnoreFileError (``FILE:LINE: IGNORE_FILE: ...``); given a
    ``skipped`` list, bad lines are said there instead and left out.
    """
    entries: list[IgnoreEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            error = f"{path}:{number}: IGNORE_FILE: '{item[:60]}' is not an address or CIDR"
            if skipped is None:
                raise IgnoreFileError(error) from None
            skipped.append(error)
            continue
        placeholder = network.network_address.is_unspecified and "/" not in item
        entries.append(IgnoreEntry(number, line.strip(), item, None if placeholder else network))
    return entries


def parse_ignore(text: str, path: str) -> tuple[Network, ...]:
    """Parse ignore-file text; the first bad line raises IgnoreFileError."""
    return tuple(entry.network for entry in ignore_entries(text, path) if entry.network is not None)


def read_ignore_file(path: str) -> tuple[Network, ...]:
    """Read and parse an ignore file; a missing file is an empty list."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        raise IgnoreFileError(f"{path}: IGNORE_FILE: cannot read: {exc}") from None
    return parse_ignore(text, path)


def _hex_to_ipv6(text: str) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(bytes.fromhex(text))


def parse_if_inet6(text: str) -> list[Address]:
    """Addresses from /proc/net/if_inet6 (one per line, 32 hex digits first)."""
    found: list[Address] = []
    for line in text.splitlines():
        parts = line.split()
        if parts and len(parts[0]) == 32:
            found.append(_hex_to_ipv6(parts[0]))
    return found


def parse_fib_trie(text: str) -> list[Address]:
    """Local IPv4 addresses from /proc/net/fib_trie (``/32 host LOCAL`` leaves)."""
    found: list[Address] = []
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--") or stripped.startswith("+--"):
            last = stripped[3:].split()[0]
        elif stripped == "/32 host LOCAL" and last:
            address = ipaddress.IPv4Address(last)
            if address not in found:
                found.append(address)
    return found


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return ""


def local_addresses(proc: str = "/proc") -> tuple[Address, ...]:
    """Every address of this host (this network namespace), IPv4 and IPv6."""
    found = parse_fib_trie(_read(f"{proc}/net/fib_trie"))
    found += parse_if_inet6(_read(f"{proc}/net/if_inet6"))
    return tuple(found)


def local_networks(proc: str = "/proc") -> tuple[Network, ...]:
    """Host addresses as /32 and /128 networks."""
    return tuple(ipaddress.ip_network(a) for a in local_addresses(proc))


def _key(address: object) -> tuple[int, int] | None:
    """(IP version, address as an int) of a str or ipaddress address; IPv4-mapped IPv6 is IPv4."""
    if isinstance(address, str):
        try:
            if ":" not in address:
                return 4, int.from_bytes(inet_pton(AF_INET, address), "big")
            value = int.from_bytes(inet_pton(AF_INET6, address.partition("%")[0]), "big")
        except (OSError, ValueError):
            return None
    elif isinstance(address, ipaddress.IPv4Address):
        return 4, int(address)
    elif isinstance(address, ipaddress.IPv6Address):
        value = int(address)
    else:
        return None
    if value >> 32 == 0xFFFF:
        return 4, value & 0xFFFFFFFF
    return 6, value


class _Ranges:
    """Networks of one IP version: a set of single addresses plus merged, sorted ranges for bisect."""

    __slots__ = ("hosts", "starts", "ends")

    def __init__(self, hosts: set[int], spans: list[tuple[int, int]]) -> None:
        spans.sort()
        starts: list[int] = []
        ends: list[int] = []
        for start, end in spans:
            if ends and start <= ends[-1] + 1:
                if end > ends[-1]:
                    ends[-1] = end
            else:
                starts.append(start)
                ends.append(end)
        self.hosts, self.starts, self.ends = hosts, starts, ends

    def __contains__(self, value: int) -> bool:
        if value in self.hosts:
            return True
        index = bisect.bisect_right(self.starts, value) - 1
        return index >= 0 and value <= self.ends[index]


class IgnoreList:
    """Networks whose probes are dropped before any counting.

    Built in one pass plus one sort of the CIDRs (100,000 entries in well under
    0.5 s, bench/ignorebench.py); membership is a set lookup for single addresses
    and one bisect over merged ranges for CIDRs, whatever the mix of prefix lengths.
    ``::ffff:a.b.c.d/n`` entries (n >= 96) mean the IPv4 network ``a.b.c.d/(n-96)``.
    ``networks`` is the deduplicated list: what ``check`` counts and what two lists
    compare by.
    """

    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[Network]) -> None:
        kept: dict[tuple[int, int, int], Network] = {}
        hosts: tuple[set[int], set[int]] = (set(), set())
        spans: tuple[list[tuple[int, int]], list[tuple[int, int]]] = ([], [])
        for network in networks:
            value, length, six = int(network.network_address), network.prefixlen, network.version == 6
            if six and length >= 96 and value >> 32 == 0xFFFF:
                value, length, six = value & 0xFFFFFFFF, length - 96, False
                network = ipaddress.IPv4Network((value, length))
            key = (six, value, length)
            if key in kept:
                continue
            kept[key] = network
            bits = 128 if six else 32
            if length == bits:
                hosts[six].add(value)
            else:
                spans[six].append((value, value + (1 << (bits - length)) - 1))
        self.networks: tuple[Network, ...] = tuple(kept.values())
        self._v4 = _Ranges(hosts[0], spans[0])
        self._v6 = _Ranges(hosts[1], spans[1])

    @classmethod
    def build(cls, configured: Iterable[Network], local: Iterable[Network]) -> IgnoreList:
        """Configured entries plus the host's own addresses and loopback (duplicates dropped)."""
        return cls((*LOOPBACK, *local, *configured))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IgnoreList) and self.networks == other.networks

    def __hash__(self) -> int:
        return hash(self.networks)

    def __repr__(self) -> str:
        return f"IgnoreList({len(self.networks)} networks)"

    def __contains__(self, address: object) -> bool:
        key = _key(address)
        if key is None:
            return False
        return key[1] in (self._v6 if key[0] == 6 else self._v4)
