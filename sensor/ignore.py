"""The ignore list: addresses and networks that never raise an alert.

File format: one address or CIDR per line, IPv4 or IPv6, ``#`` comments and
blank lines allowed; PortSentry's ``portsentry.ignore.static`` reads as-is
(``0.0.0.0`` there means "any local address" and is accepted but matches
nothing).  The host's own addresses (every interface, from /proc) and loopback
are always ignored.  Parsing is pure; :func:`local_networks` reads /proc.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                 ipaddress.ip_network("::1/128"))


class IgnoreFileError(ValueError):
    """A bad line in an ignore file: ``FILE:LINE: what is wrong``."""


def parse_ignore(text: str, path: str) -> tuple[Network, ...]:
    """Parse ignore-file text; the first bad line raises IgnoreFileError."""
    networks: list[Network] = []
    for number, line in enumerate(text.splitlines(), start=1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise IgnoreFileError(
                f"{path}:{number}: IGNORE_FILE: '{item[:60]}' is not an address or CIDR") from None
        if network.network_address.is_unspecified and "/" not in item:
            continue  # PortSentry's "0.0.0.0": its own placeholder for local addresses
        networks.append(network)
    return tuple(networks)


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


@dataclass(frozen=True)
class IgnoreList:
    """Networks whose probes are dropped before any counting."""

    networks: tuple[Network, ...]

    @classmethod
    def build(cls, configured: Iterable[Network], local: Iterable[Network]) -> IgnoreList:
        """Configured entries plus the host's own addresses and loopback."""
        merged: list[Network] = []
        for network in (*LOOPBACK, *local, *configured):
            if network not in merged:
                merged.append(network)
        return cls(tuple(merged))

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in n for n in self.networks if n.version == getattr(ip, "version", 0))
