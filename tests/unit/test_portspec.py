"""sensor/portspec.py: port lists and ranges."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sensor.portspec import PortSpecError, format_ports, parse_ports


def test_lists_ranges_and_duplicates() -> None:
    assert parse_ports("5, 1-3,3,,") == (1, 2, 3, 5)
    assert parse_ports("") == ()


@pytest.mark.parametrize("bad", ["0", "65536", "x", "1-", "-5", "5-1", "1.5"])
def test_bad_items(bad: str) -> None:
    with pytest.raises(PortSpecError):
        parse_ports(bad)


@given(st.sets(st.integers(1, 65535), max_size=200))
def test_format_round_trips(ports: set[int]) -> None:
    assert parse_ports(format_ports(sorted(ports))) == tuple(sorted(ports))


@given(st.text(max_size=40))
def test_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(PortSpecError):
        parse_ports(text)


@pytest.mark.parametrize("text", ["²", "١٢", "8²"])
def test_unicode_digits_are_not_ports(text: str) -> None:
    """Regression: hypothesis found '²' passing str.isdigit() and crashing int() with ValueError."""
    with pytest.raises(PortSpecError):
        parse_ports(text)
