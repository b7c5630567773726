"""Coverage-guided fuzzing with atheris, on demand (not in the suite: atheris is no test dependency).

The suite fuzzes the same targets with hypothesis (tests/unit/test_fuzz.py); atheris
adds coverage guidance for longer searches.  The targets hold the same contracts:
attacker bytes end as a valid alert line or as Malformed, config and ignore text
end as a value or as one error line starting with the file's path.

    python3 -m venv --system-site-packages /tmp/fz && /tmp/fz/bin/pip install atheris
    PYTHONPATH=. /tmp/fz/bin/python tests/fuzz/atheris_targets.py packet -runs=500000
    (targets: packet, config, ignore; any libFuzzer flag after the target)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris  # type: ignore[import-not-found]

with atheris.instrument_imports():
    from sensor.alert import format_alert
    from sensor.config import ConfigError, build_config, parse_text
    from sensor.detector import Detector
    from sensor.ignore import IgnoreFileError, parse_ignore
    from sensor.portplan import PortPlan
    from sensor.probe import Probe
    from sensor.raw.capture import RawCapture
    from sensor.raw.packet import Malformed, parse_ip, parse_transport
    from sensor.settings import DetectorSettings

EVERY = frozenset(range(65536))
PLAN = PortPlan(tcp_raw=EVERY, udp_raw=EVERY, tcp_raw_mode="atcp", udp_raw_mode="audp")
PATH = "/etc/portsentry-sensor/portsentry.conf"


def packet(data: bytes) -> None:
    """Bytes -> parse (IPv4/IPv6 header, or a bare transport header) -> capture -> detector -> line."""
    fdp = atheris.FuzzedDataProvider(data)
    bare = fdp.ConsumeBool()
    raw = fdp.ConsumeBytes(fdp.remaining_bytes())
    try:
        pkt = parse_transport(raw, 6 if raw[:1] < b"\x80" else 17, "2001:db8::7", "2001:db8::1") \
            if bare else parse_ip(raw)
    except Malformed:
        return
    probes: list[Probe] = []
    capture = RawCapture(probes.append, ports_in_use=lambda proto, port: False)
    capture.set_plan(PLAN)
    capture.set_local([pkt.dst])
    capture.handle(pkt)
    detector = Detector(DetectorSettings())
    for probe in probes:
        for alert in [*detector.observe(probe, 0.0), *detector.observe(probe, 1.0), *detector.flush(1e9)]:
            line = format_alert(alert)[0]
            assert line.startswith(f"attackalert: src={pkt.src} ") and "\n" not in line, line


def config(data: bytes) -> None:
    """Text -> parse_text -> build_config: a Config or one ConfigError line starting with the path."""
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        settings, warnings = parse_text(text, PATH)
        build_config(settings, PATH, warnings)
    except ConfigError as exc:
        assert str(exc).startswith(PATH) and len(str(exc).splitlines()) == 1, str(exc)


def ignore(data: bytes) -> None:
    """Text -> parse_ignore: networks or one IgnoreFileError line starting with the path."""
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
    try:
        parse_ignore(text, "/etc/portsentry-sensor/portsentry.ignore")
    except IgnoreFileError as exc:
        assert str(exc).startswith("/etc/") and len(str(exc).splitlines()) == 1, str(exc)


TARGETS: dict[str, Callable[[bytes], None]] = {"packet": packet, "config": config, "ignore": ignore}

if __name__ == "__main__":
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
