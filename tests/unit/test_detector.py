"""sensor/detector.py: trigger, window, summaries, bounded state, returning sources."""

from __future__ import annotations

from sensor.detector import Detector
from sensor.probe import Probe
from sensor.settings import DetectorSettings


def probe(port: int, src: str = "198.51.100.7", proto: str = "tcp") -> Probe:
    return Probe(src, "192.0.2.1", proto, port, "syn" if proto == "tcp" else "udp", "atcp", False)


def make(**kw: float) -> Detector:
    return Detector(DetectorSettings(**kw))  # type: ignore[arg-type]


def test_first_probe_alerts_at_once_with_trigger_zero() -> None:
    detector = make()
    alerts = detector.observe(probe(22), 0.0)
    assert [(a.dport, a.count, a.summary) for a in alerts] == [(22, 1, False)]


def test_trigger_counts_distinct_ports_not_packets() -> None:
    detector = make(scan_trigger=2)
    assert detector.observe(probe(1), 0) == []
    assert detector.observe(probe(1), 1) == []
    assert detector.observe(probe(2), 2) == []
    alerts = detector.observe(probe(3), 3)
    assert len(alerts) == 1 and alerts[0].count == 3 and alerts[0].dport == 3


def test_trigger_window_forgets_old_ports() -> None:
    detector = make(scan_trigger=1, scan_window=10)
    assert detector.observe(probe(1), 0) == []
    assert detector.observe(probe(2), 11) == []  # port 1 was in an expired window


def test_summaries_are_bounded_per_window() -> None:
    detector = make(summary_interval=5, summary_max_lines=2, scan_window=100)
    lines = detector.observe(probe(1), 0)
    for t, port in enumerate(range(2, 1000)):
        lines += detector.observe(probe(port), t * 0.1)
        lines += detector.flush(t * 0.1)
    lines += detector.flush(50)
    lines += detector.flush(200)
    assert len(lines) == 3
    assert lines[0].summary is False
    assert all(a.summary for a in lines[1:])
    assert lines[-1].count == 999


def test_summary_only_when_new_ports() -> None:
    detector = make(summary_interval=1, summary_max_lines=3)
    detector.observe(probe(1), 0)
    assert detector.flush(5) == []
    detector.observe(probe(2), 6)
    summary = detector.flush(8)
    assert len(summary) == 1 and summary[0].count == 2 and summary[0].window == 8


def test_returning_source_is_reported_again() -> None:
    detector = make(scan_window=60)
    assert len(detector.observe(probe(1), 0)) == 1
    assert detector.observe(probe(2), 30) == []
    again = detector.observe(probe(3), 61)  # closing summary of the old window, then a new alert
    assert [(a.summary, a.count) for a in again] == [(True, 2), (False, 1)]


def test_no_summaries_when_max_lines_is_zero() -> None:
    detector = make(summary_max_lines=0, summary_interval=1, scan_window=10)
    lines = detector.observe(probe(1), 0) + detector.observe(probe(2), 1)
    lines += detector.flush(5) + detector.flush(20)
    assert len(lines) == 1


def test_protocols_are_counted_separately() -> None:
    detector = make()
    assert len(detector.observe(probe(1), 0)) == 1
    assert len(detector.observe(probe(1, proto="udp"), 0)) == 1


def test_state_is_bounded_lru() -> None:
    detector = make(max_sources=100, flood_sources=0)  # the table itself, without the flood guard
    for i in range(10_000):
        detector.observe(probe(80, src=f"198.18.{i // 256}.{i % 256}"), i * 0.001)
    assert len(detector) == 100 and detector.evicted == 9_900
    assert ("198.18.39.15", "tcp") in detector.windows  # the newest survive


def test_big_scan_uses_a_bitmap_and_counts_exactly() -> None:
    detector = make()
    for port in list(range(1, 65536)) + list(range(1, 100)):
        detector.observe(probe(port), 1)
    window = detector.windows[("198.51.100.7", "tcp")]
    assert window.count == 65535 and window.ports.bitmap is not None and not window.ports.small


def test_a_window_ends_exactly_scan_window_seconds_after_its_first_probe() -> None:
    """A probe at started + scan_window opens a new window (reported again), not one second later."""
    detector = make(scan_window=10)
    assert len(detector.observe(probe(1), 5.0)) == 1
    assert detector.observe(probe(2), 14.999) == []                          # still the first window
    again = detector.observe(probe(3), 15.0)
    assert [(a.summary, a.count) for a in again] == [(True, 2), (False, 1)]  # closed, then new


def test_flush_closes_a_window_exactly_at_its_end() -> None:
    detector = make(scan_window=10, summary_interval=100, summary_max_lines=2)
    detector.observe(probe(1), 0.0)
    detector.observe(probe(2), 1.0)
    assert detector.flush(9.999) == [] and len(detector) == 1
    closing = detector.flush(10.0)
    assert [(a.summary, a.count, a.window) for a in closing] == [(True, 2, 10)] and len(detector) == 0


def test_the_detectors_defaults_are_the_configs() -> None:
    """Tests (and any caller) that rely on DetectorSettings() get what an empty config gives."""
    from sensor.config import Config
    from sensor.daemon import detector_settings
    assert DetectorSettings() == detector_settings(Config())


def test_intervals_and_windows_are_measured_from_their_own_start() -> None:
    """A clock far from zero: the summary interval counts from the last line, the window from its start."""
    detector = make(scan_window=100, summary_interval=5, summary_max_lines=3)
    assert len(detector.observe(probe(1), 1000.0)) == 1
    detector.observe(probe(2), 1001.0)
    assert detector.flush(1004.999) == []                      # the interval is not over
    summary = detector.flush(1005.0)                            # exactly one interval after the first line
    assert [(a.summary, a.count, a.window) for a in summary] == [(True, 2, 5)]
    detector.observe(probe(3), 1006.0)
    assert detector.flush(1009.999) == []                      # less than an interval after that line
    assert [(a.count, a.window) for a in detector.flush(1010.0)] == [(3, 10)]
    assert detector.flush(1099.0) == [] and len(detector) == 1
    assert detector.flush(1100.0) == [] and len(detector) == 0  # closed, nothing new to say


def test_a_summary_right_after_the_first_line_says_one_second() -> None:
    detector = make(summary_interval=0.1, summary_max_lines=3)
    detector.observe(probe(1), 50.0)
    detector.observe(probe(2), 50.1)
    assert [(a.count, a.window) for a in detector.flush(50.2)] == [(2, 1)]


def test_a_summary_names_the_last_new_port_not_a_repeated_one() -> None:
    for ports in ([1, 2], list(range(1, 100))):               # a small set, then a bitmap
        detector = make(summary_interval=1, summary_max_lines=3)
        for port in ports:
            detector.observe(probe(port), 0)
        assert detector.observe(probe(1), 0.5) == []           # a port it touched already
        (summary,) = detector.flush(1)
        assert (summary.dport, summary.count) == (ports[-1], len(ports))
