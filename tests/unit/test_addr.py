"""sensor/addr.py: the one text form of an address (issue 13, one home for canonicalisation)."""

from __future__ import annotations

import pytest

from sensor.addr import canonical, canonical_or_none


@pytest.mark.parametrize(("given", "want"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("fe80::1%eth0", "fe80::1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
])
def test_canonical(given: str, want: str) -> None:
    assert canonical(given) == want


def test_canonical_refuses_what_is_not_an_address() -> None:
    with pytest.raises(ValueError):
        canonical("scanner.example")


@pytest.mark.parametrize(("given", "host_prefix", "want"), [
    (" 2001:db8::1 ", False, "2001:db8::1"),
    ("192.0.2.7/32", True, "192.0.2.7"),
    ("2001:db8::1/128", True, "2001:db8::1"),
    ("192.0.2.7/32", False, None),
    ("192.0.2.0/24", True, None),
    ("not-an-address", True, None),
])
def test_canonical_or_none(given: str, host_prefix: bool, want: str | None) -> None:
    assert canonical_or_none(given, host_prefix=host_prefix) == want
