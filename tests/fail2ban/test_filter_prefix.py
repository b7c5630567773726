"""The prefix alert (sensor/prefixwatch.py) through the real filter: the prefix is the ban entry.

What the sensor writes for a rotating /64 (and an opt-in IPv4 /24) goes through
fail2ban-regex with filter.d/portsentry-sensor.conf and yields the prefix; the
sample file (tests/fail2ban/samples/portsentry-sensor) holds the hand-written
injection lines (/0, /8, /16, /65 ...) that must not match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_filters import filter_spec, run_regex

from sensor.alert import Alert, format_alert
from sensor.detector import Detector
from sensor.probe import Probe
from sensor.settings import DetectorSettings


def _rotation(src_base: str, dst: str, count: int, verified: bool, suffix: str = "", **kw: int) -> list[Alert]:
    detector = Detector(DetectorSettings(flood_sources=0, **kw))  # type: ignore[arg-type]
    alerts: list[Alert] = []
    for i in range(count):
        src = f"{src_base}{i + 1:x}{suffix}" if ":" in src_base else f"{src_base}{i + 1}"
        alerts += detector.observe(Probe(src, dst, "tcp", 100 + i % 4, "connect" if verified else "syn",
                                         "tcp" if verified else "atcp", verified), float(i))
    return alerts + detector.flush(1e6)


@pytest.mark.parametrize("mode", ["all", "verified"])
def test_sensor_prefix_alerts_ban_the_prefix(f2b_confdir: Path, tmp_path: Path, mode: str) -> None:
    alerts = (_rotation("2001:db8:77::", "2001:db8::1", 50, True)
              + _rotation("2001:db8:78::", "2001:db8::1", 50, False)
              + _rotation("2001:db8:79:", "2001:db8::1", 5, True, "::1", ipv6_prefix=48)
              + _rotation("203.0.113.", "192.0.2.1", 20, True, ipv4_prefix=24))
    assert [a.net for a in alerts if a.net and not a.summary] == [
        "2001:db8:77::/64", "2001:db8:78::/64", "2001:db8:79::/48", "203.0.113.0/24"]
    lines = [f"Nov 21 23:59:{i:02d} victim portsentry-sensor[42]: {format_alert(a)[0]}"
             for i, a in enumerate(alerts)]
    logfile = tmp_path / "sensor.log"
    logfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = run_regex(f2b_confdir, logfile, filter_spec("portsentry-sensor", {"mode": mode}))
    want = [a.net or a.src for a in alerts if mode == "all" or a.verified]
    assert [address for address, _ in found] == want
    assert len(alerts) == 4 * 3  # per rotation: the first address, the prefix, its closing summary
