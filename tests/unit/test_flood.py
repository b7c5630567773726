"""sensor/flood.py with the detector, on a fake clock: the guard, the two tiers, the reports."""

from __future__ import annotations

from sensor.alert import Alert
from sensor.detector import Detector
from sensor.flood import QUIET, prefix
from sensor.probe import Probe
from sensor.settings import DetectorSettings

SCANNER = "192.0.2.66"


def forged(i: int) -> str:
    return f"198.{18 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255}"


def probe(port: int, src: str = SCANNER, verified: bool = False) -> Probe:
    mode = "tcp" if verified else "atcp"
    return Probe(src, "192.0.2.1", "tcp", port, "connect" if verified else "syn", mode, verified)


def make(**kw: int) -> Detector:
    settings = {"flood_sources": 50, "flood_ports": 5, "summary_interval": 30, "probation_slots": 1 << 16}
    settings.update(kw)
    return Detector(DetectorSettings(**settings))  # type: ignore[arg-type]


def flood(detector: Detector, start: int, count: int, rate: int, t0: float,
          avoid: str = "") -> list[Alert]:
    """`count` forged one-probe sources at `rate` per second from time t0 (port 1000 + i % 7)."""
    alerts: list[Alert] = []
    for i in range(start, start + count):
        src = forged(i)
        if avoid and collides(detector, src, avoid):
            continue
        alerts += detector.observe(probe(1000 + i % 7, src), t0 + (i - start) / rate)
    return alerts


def collides(detector: Detector, a: str, b: str) -> bool:
    """Whether two sources share a probation slot (the table is direct-mapped)."""
    mask = (1 << max(4, detector.settings.probation_slots - 1).bit_length()) - 1
    return (hash((a, "tcp")) or 1) & mask == (hash((b, "tcp")) or 1) & mask


def test_below_the_budget_nothing_changes() -> None:
    detector = make()
    alerts = flood(detector, 0, 50, 50, 0.0)
    assert len(alerts) == 50 and not detector.flood.active and detector.flood.drain() == []


def test_guard_off_alerts_every_source() -> None:
    detector = make(flood_sources=0)
    assert len(flood(detector, 0, 2000, 1000, 0.0)) == 2000


def test_flood_suppresses_single_probe_sources_and_counts_them() -> None:
    detector = make()
    alerts = flood(detector, 0, 1000, 1000, 0.0)
    assert len(alerts) == 50                       # the budget of the first second, then the guard
    assert detector.flood.active and detector.flood.total_suppressed == 950
    lines = detector.flood.drain()
    assert len(lines) == 1 and lines[0].startswith("flood: more than 50 new unverified sources")
    assert detector.flood.drain() == []


def test_real_scanner_alerts_during_the_flood_after_flood_ports() -> None:
    detector = make()
    flood(detector, 0, 500, 1000, 0.0)
    alerts: list[Alert] = []
    for port in range(1, 8):
        alerts += detector.observe(probe(port), 0.6 + port / 1000)
    assert [(a.src, a.count, a.dport) for a in alerts] == [(SCANNER, 6, 6)]
    # Counted once as suppressed (its single probe), once as alerted for scan behaviour.
    seen, suppressed = detector.flood.total_seen, detector.flood.total_suppressed
    assert (seen, suppressed, detector.flood.total_alerted) == (500 - 50 + 1, 500 - 50 + 1, 1)


def test_verified_probes_are_never_suppressed() -> None:
    detector = make()
    flood(detector, 0, 500, 1000, 0.0)
    alerts = detector.observe(probe(22, "192.0.2.77", verified=True), 0.7)
    assert [(a.src, a.verified) for a in alerts] == [("192.0.2.77", True)]


def test_first_alerts_are_capped_per_second_during_a_flood() -> None:
    # Forged sources that each touch 6 ports look like scanners: at most 50 alerts a second.
    detector = make()
    flood(detector, 0, 100, 1000, 0.0)
    alerts: list[Alert] = []
    for i in range(200):
        for port in range(1, 7):
            alerts += detector.observe(probe(port, f"203.0.113.{i}"), 1.2 + i / 1000)
    assert len(alerts) == 50 and detector.flood.deferred == 150
    # A deferred source alerts at its next new port once the next second has a token.
    later = detector.observe(probe(7, "203.0.113.199"), 2.5)
    assert [(a.src, a.count) for a in later] == [("203.0.113.199", 7)]


def test_reports_per_interval_and_one_when_the_flood_ends() -> None:
    detector = make(summary_interval=10)
    lines: list[str] = []
    for second in range(25):                      # 25 s of 200 new sources a second
        flood(detector, second * 200, 200, 200, float(second))
        detector.flush(second + 0.999)
        lines += detector.flood.drain()
    assert len(lines) == 3                         # start, at 10 s, at 20 s
    assert "flood continues: " in lines[1] and "suppressed" in lines[1]
    assert "top ports 100" in lines[1] and "top prefixes 198.18.0.0/16" in lines[1]
    for t in range(26, 26 + int(QUIET) + 2):
        detector.flush(float(t))
    end = detector.flood.drain()
    assert len(end) == 1 and end[0].startswith("flood ended after")
    assert f"{25 * 200 - 50} suppressed" in end[0]
    assert "since the last report: top ports 100" in end[0]   # 4 s of flood since the 20 s report
    assert not detector.flood.active
    # After the flood a single-probe source alerts again.
    assert len(detector.observe(probe(22, "192.0.2.99"), 40.0)) == 1


def test_probation_never_evicts_confirmed_sources() -> None:
    detector = make(max_sources=16, probation_slots=1024, scan_trigger=2)
    detector.observe(probe(1), 0.0)
    detector.observe(probe(2), 0.1)                 # two ports: confirmed, not alerted yet
    assert (SCANNER, "tcp") in detector.windows
    flood(detector, 0, 100_000, 10_000, 0.2)
    assert (SCANNER, "tcp") in detector.windows
    assert detector.probation_count <= 1024 and len(detector.windows) == 1
    assert detector.probation_evicted > 90_000


def test_slow_scanner_during_a_flood_is_detected() -> None:
    # SCAN_TRIGGER=2, one new port every 20 s, its first probe 3 s into a 60 s flood of
    # 2,000 forged sources a second.  (Sources that share its probation slot are left out: the
    # table is direct-mapped, see the Detector docstring for how likely that is.)
    detector = make(scan_trigger=2, probation_slots=1 << 20)
    alerts: list[Alert] = []
    port, next_probe = 1, 3.0
    for second in range(120):
        if second < 60:
            alerts += flood(detector, second * 2000, 2000, 2000, float(second), avoid=SCANNER)
        if second >= next_probe:
            alerts += detector.observe(probe(port), float(second))
            port, next_probe = port + 1, next_probe + 20
        alerts += detector.flush(second + 0.999)
    mine = [a for a in alerts if a.src == SCANNER and not a.summary]
    assert len(mine) == 1 and mine[0].count == 5   # its 5th port (at 83 s), after the flood ended
    forged_alerts = [a for a in alerts if a.src != SCANNER]
    assert forged_alerts == []                     # one probe each never crosses SCAN_TRIGGER=2


def test_prefixes() -> None:
    assert prefix("198.18.7.9") == "198.18.0.0/16"
    assert prefix("2001:db8:5000:1234::7") == "2001:db8:5000::/48"


def test_output_stays_below_the_units_journald_limit() -> None:
    """Worst case for the guard: every forged source touches 7 ports (looks like a scanner).

    First alerts stay at FLOOD_SOURCES a second, so alerts plus summaries in any 30 s stay far
    below LogRateLimitBurst= of the packaged unit (journald's LogRateLimitIntervalSec=30s).
    """
    import re
    from pathlib import Path

    unit = (Path(__file__).resolve().parents[2] / "packaging" / "debian" / "portsentry-sensor.service").read_text()
    burst = int(re.search(r"^LogRateLimitBurst=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    assert re.search(r"^LogRateLimitIntervalSec=30s$", unit, re.M)
    detector = make(flood_sources=20, summary_interval=30, max_sources=4096)
    per_second: list[int] = []
    for second in range(40):
        lines = 0
        for i in range(300):
            src = forged(second * 300 + i)
            for port in range(1, 8):
                lines += len(detector.observe(probe(port, src), second + i / 300))
        lines += len(detector.flush(second + 0.999)) + len(detector.flood.drain())
        per_second.append(lines)
    assert max(per_second) <= 2 * 20 + 4096 + 1          # first alerts, one summary per window, admin
    assert sum(per_second[:20]) <= 40 + 19 * 20 + 2    # before any summary is due: the cap holds
    worst_30s = max(sum(per_second[i:i + 30]) for i in range(len(per_second) - 29))
    print(f"worst 30 s: {worst_30s} lines (LogRateLimitBurst={burst})")
    assert worst_30s < burst / 2, (worst_30s, burst)


def test_stopping_during_a_flood_ends_it_with_a_finite_duration() -> None:
    """Regression: SIGTERM during a flood closes every window with flush(inf) (sensor/events.py
    close()), and the flood's end line computed round(inf - started): OverflowError at shutdown."""
    detector = make()
    flood(detector, 0, 1000, 1000, 10.0)
    detector.flood.drain()
    detector.flush(float("inf"))
    lines = detector.flood.drain()
    assert len(lines) == 1 and lines[0].startswith("flood ended after 1 s: 950 new unverified sources"), lines
    assert not detector.flood.active
