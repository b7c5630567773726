"""Port lists in PortSentry syntax: ``1,11,15-20``.  Pure."""

from __future__ import annotations

import re


class PortSpecError(ValueError):
    """A port list that does not parse; the message names the bad item."""


def parse_port(text: str) -> int:
    """One port number, 1-65535."""
    item = text.strip()
    if not re.fullmatch(r"[0-9]{1,5}", item) or not 1 <= int(item) <= 65535:
        raise PortSpecError(f"'{item}' is not a port (1-65535)")
    return int(item)


def parse_ports(text: str) -> tuple[int, ...]:
    """A comma list of ports and ``a-b`` ranges, sorted and without duplicates."""
    ports: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if "-" in item:
            low_text, _, high_text = item.partition("-")
            low, high = parse_port(low_text), parse_port(high_text)
            if low > high:
                raise PortSpecError(f"'{item}' is not a range (low-high)")
            ports.update(range(low, high + 1))
        else:
            ports.add(parse_port(item))
    return tuple(sorted(ports))


def format_ports(ports: tuple[int, ...] | list[int]) -> str:
    """Compact form of a port list: ``1-5,7,9-10``."""
    parts: list[str] = []
    ordered = sorted(set(ports))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)
