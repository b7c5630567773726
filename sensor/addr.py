"""Address canonicalisation: the one text form the sensor uses for an address.

The listeners (sockname/peername, IPV6_PKTINFO), the raw capture (recvmsg's
source, this host's addresses) and ``status ADDRESS`` compare and report
addresses in this form: scope ids (``%eth0``) removed, an IPv4-mapped IPv6
address (``::ffff:192.0.2.7``) written as the IPv4 address it carries.  Pure.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache


@lru_cache(maxsize=4096)
def canonical(address: str) -> str:
    """Canonical text of an address (scope ids and IPv4-mapped forms removed); ValueError if none."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def canonical_or_none(text: str, host_prefix: bool = False) -> str | None:
    """:func:`canonical` of *text* (surrounding white space ignored), or None if it is not an address.

    With *host_prefix*, a ``/32`` or ``/128`` suffix (one host written as a network, as
    firewall rules and hosts.deny do) is accepted and dropped.
    """
    item = text.strip()
    if host_prefix:
        for suffix in ("/32", "/128"):
            if item.endswith(suffix):
                item = item[: -len(suffix)]
    try:
        return canonical(item)
    except ValueError:
        return None
