"""Fuzzing with a fixed budget: everything that reads attacker or admin bytes (issue 7).

Three inputs reach the sensor from outside: packets (attacker bytes, through
sensor.raw.packet and the raw capture into the detector and the alert line), the
configuration (admin text, through sensor.config) and the ignore file
(sensor.ignore).  Each parser may refuse its input only with its own error
type: Malformed for packets, ConfigError for configuration, IgnoreFileError for
the ignore list, and those messages are one line that starts with the file's
path (the admin reads it in the journal).  Budgets are fixed
(``max_examples``) and ``deadline=None`` so the suite's time is predictable
on CI's two cores; ``derandomize`` keeps a CI run reproducible.  For a deeper
search on demand: ``PORTSENTRY_FUZZ_EXAMPLES=20000 pytest tests/unit/test_fuzz.py``
(then runs are random, not derandomized).
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sensor.alert import format_alert
from sensor.config import KNOWN_KEYS, ConfigError, Setting, build_config, load_config, parse_text
from sensor.detector import Detector
from sensor.ignore import IgnoreFileError, IgnoreList, parse_ignore
from sensor.portplan import PortPlan
from sensor.probe import Probe
from sensor.raw.capture import RawCapture
from sensor.raw.packet import Malformed, Packet, classify, parse_ip, parse_ipv4, parse_ipv6, parse_transport
from sensor.settings import DetectorSettings

DEEP = int(os.environ.get("PORTSENTRY_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=DEEP or 200, deadline=None, derandomize=not DEEP, database=None,
                suppress_health_check=[HealthCheck.too_slow])
PATH = "/etc/portsentry-sensor/portsentry.conf"
IGNORE_PATH = "/etc/portsentry-sensor/portsentry.ignore"


# --------------------------------------------------------------------------
# Packets: structurally plausible headers with fuzzed fields, then the whole
# raw path (parse -> classify -> capture -> detector -> alert line).

ipv4_addr = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
ipv6_addr = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))


@st.composite
def transport(draw: st.DrawFn, proto: int) -> bytes:
    """A TCP or UDP header with random fields (data offset and length included), maybe cut short."""
    if proto == 6:
        head = struct.pack("!HHIIBBHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                           0, 0, draw(st.integers(0, 255)), draw(st.integers(0, 255)), 1024, 0, 0)
    else:
        head = struct.pack("!HHHH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)),
                           draw(st.integers(0, 65535)), 0)
    data = head + draw(st.binary(max_size=24))
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


@st.composite
def ipv4_packet(draw: st.DrawFn) -> bytes:
    """An IPv4 header with fuzzed IHL, length, fragment field and protocol."""
    proto = draw(st.sampled_from([6, 17, 1, 0, 255]))
    payload = draw(transport(6 if proto != 17 else 17))
    ihl = draw(st.integers(0, 15))
    options = draw(st.binary(min_size=max(0, ihl * 4 - 20), max_size=max(0, ihl * 4 - 20)))
    total = draw(st.one_of(st.just(20 + len(options) + len(payload)), st.integers(0, 65535)))
    frag = draw(st.one_of(st.just(0), st.just(0x4000), st.integers(0, 65535)))
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(draw(ipv4_addr)).packed,
                       ipaddress.IPv4Address(draw(ipv4_addr)).packed)
    return head + options + payload


@st.composite
def ipv6_packet(draw: st.DrawFn) -> bytes:
    """An IPv6 header followed by a random chain of extension headers, then TCP/UDP."""
    final = draw(st.sampled_from([6, 17, 58, 59]))
    chain = draw(st.lists(st.sampled_from([0, 43, 44, 51, 60]), max_size=10))
    kinds = [*chain, final]
    ext = b""
    for kind, following in itertools.pairwise(kinds):
        size = draw(st.integers(0, 3))
        if kind == 44:
            offset = draw(st.one_of(st.just(0), st.integers(0, 65535)))
            ext += struct.pack("!BBHI", following, 0, offset, 1)
        elif kind == 51:
            ext += bytes([following, size]) + b"\0" * ((size + 2) * 4 - 2)
        else:
            ext += bytes([following, size]) + b"\0" * ((size + 1) * 8 - 2)
    payload = draw(transport(6 if final != 17 else 17))
    head = struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(payload), kinds[0], 64,
                       ipaddress.IPv6Address(draw(ipv6_addr)).packed,
                       ipaddress.IPv6Address(draw(ipv6_addr)).packed)
    data = head + ext + payload
    return data[:draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


def flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
    """Overwrite some bytes of a packet (bit rot on top of a plausible header)."""
    out = bytearray(data)
    for pos, value in zip(positions, values, strict=False):
        if out:
            out[pos % len(out)] = value
    return bytes(out)


packets = st.builds(flip, st.one_of(ipv4_packet(), ipv6_packet()),
                    st.lists(st.integers(0, 200), max_size=4), st.lists(st.integers(0, 255), max_size=4))


EVERY_PORT = frozenset(range(0, 65536))
ALL_PORTS_PLAN = PortPlan(tcp_raw=EVERY_PORT, udp_raw=EVERY_PORT, tcp_raw_mode="stcp", udp_raw_mode="sudp")


@FUZZ
@given(packets)
def test_parsers_raise_only_malformed_on_plausible_packets(data: bytes) -> None:
    """parse_ip/parse_ipv4/parse_ipv6 return a sane Packet or raise Malformed, nothing else."""
    for parse in (parse_ip, parse_ipv4, parse_ipv6):
        try:
            packet = parse(data)
        except Malformed:
            continue
        assert packet.proto in ("tcp", "udp")
        assert 0 <= packet.sport <= 65535 and 0 <= packet.dport <= 65535 and 0 <= packet.flags <= 255
        ipaddress.ip_address(packet.src)
        ipaddress.ip_address(packet.dst)


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 255), st.one_of(ipv4_addr, ipv6_addr),
       st.one_of(ipv4_addr, ipv6_addr))
def test_transport_parser_raises_only_malformed(data: bytes, proto: int, src: str, dst: str) -> None:
    """The IPv6 raw-socket path hands bare transport headers to parse_transport."""
    try:
        packet = parse_transport(data, proto, src, dst)
    except Malformed:
        return
    assert packet.proto == {6: "tcp", 17: "udp"}[proto]


@settings(FUZZ, max_examples=DEEP or 120)
@given(st.lists(packets, min_size=1, max_size=12))
def test_packets_end_as_valid_alert_lines_or_nothing(batch: list[bytes]) -> None:
    """The whole raw path: any packets -> capture -> detector -> format_alert never raises."""
    probes: list[Probe] = []
    capture = RawCapture(probes.append, ports_in_use=lambda proto, port: False)
    capture.set_plan(ALL_PORTS_PLAN)
    parsed: list[Packet] = []
    for data in batch:
        try:
            parsed.append(parse_ip(data))
        except Malformed:
            continue
    capture.set_local(p.dst for p in parsed)
    for packet in parsed:
        capture.handle(packet)
    detector = Detector(DetectorSettings(scan_trigger=0, summary_interval=1.0, summary_max_lines=3))
    lines = []
    for step, probe in enumerate(probes):
        for alert in detector.observe(probe, float(step)):
            lines.append(format_alert(alert)[0])
    for alert in detector.flush(float("inf")):
        lines.append(format_alert(alert)[0])
    for line in lines:
        assert line.startswith("attackalert: src=") and "\n" not in line
    assert capture.stats["probes"] == len(probes)


@FUZZ
@given(st.sampled_from(["tcp", "udp", "icmp", ""]), st.integers(-1, 512))
def test_classify_is_total(proto: str, flags: int) -> None:
    """classify() answers for every protocol name and flag value without raising."""
    kind = classify(proto, flags)
    assert kind is None or kind.scan in ("syn", "fin", "null", "xmas", "udp", "unknown")


# --------------------------------------------------------------------------
# Configuration: only ConfigError escapes, as one line starting with the path.

key_names = st.one_of(st.sampled_from(KNOWN_KEYS), st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True))
value_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"[0-9,\- a-z]{0,20}", fullmatch=True),
    st.sampled_from(["tcp", "udp", "stcp", "sudp", "atcp", "audp", "off", "tcp,stcp", "atcp udp",
                     "0", "1", "65535", "65536", "-1", "1-1024", "1024-1", "", "/tmp/x", "rel/x",
                     "auto", "journal", "stderr", "syslog", "١٢", "²", "1e3", " 7 "]),
)


@st.composite
def config_line(draw: st.DrawFn) -> str:
    """A line that is mostly a plausible KEY="value", sometimes not."""
    key, value = draw(key_names), draw(value_text)
    shape = draw(st.sampled_from(['{k}="{v}"', "{k}={v}", '  {k} = "{v}"  # note', '{k}="{v}', "# {k}={v}",
                                  '{k}="{v}" tail', "{v}", ""]))
    return shape.format(k=key, v=value)


config_text = st.one_of(st.text(max_size=200),
                        st.lists(config_line(), max_size=12).map("\n".join))


one_line_values = value_text.map(lambda v: " ".join(v.splitlines()))


def assert_one_line_naming(exc: Exception, path: str) -> None:
    """The error is a single line starting with the file's path."""
    message = str(exc)
    assert message.startswith(path), message
    assert len(message.splitlines()) == 1, message


@FUZZ
@given(config_text)
@example('TCP_PORTS="1,\u2028 2"')
@example('TCP_MODE="\x85"')
def test_config_text_raises_only_one_line_config_errors(text: str) -> None:
    """parse_text + build_config on any text: a Config or one ConfigError line naming the file."""
    try:
        settings_, warnings = parse_text(text, PATH)
        config = build_config(settings_, PATH, warnings)
    except ConfigError as exc:
        assert_one_line_naming(exc, PATH)
        return
    assert config.tcp_modes or config.udp_modes
    assert all(1 <= p <= 65535 for p in (*config.tcp_ports, *config.udp_ports))
    for warning in config.warnings:
        assert len(warning.splitlines()) == 1, warning


@FUZZ
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), one_line_values, max_size=10))
def test_build_config_on_any_known_key_values(values: dict[str, str]) -> None:
    """Every known key with any one-line value (what parse_text yields): Config or a one-line ConfigError."""
    settings_ = {key: Setting(value, PATH, line) for line, (key, value) in enumerate(values.items(), 1)}
    try:
        build_config(settings_, PATH)
    except ConfigError as exc:
        assert_one_line_naming(exc, PATH)
        if exc.line:
            assert str(exc).startswith(f"{PATH}:{exc.line}: ")


@FUZZ
@given(st.one_of(st.binary(max_size=200), config_text.map(lambda t: t.encode("utf-8", "surrogatepass"))),
       st.one_of(st.none(), st.binary(max_size=80), config_text.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_load_config_on_any_file_bytes(conf: bytes, defaults: bytes | None) -> None:
    """load_config on any bytes (not UTF-8, NULs, surrogates), with or without a defaults file."""
    with tempfile.TemporaryDirectory(prefix="fuzz-conf-") as tmp:
        path = os.path.join(tmp, "portsentry.conf")
        default_path = os.path.join(tmp, "portsentry.default")
        with open(path, "wb") as handle:
            handle.write(conf)
        if defaults is not None:
            with open(default_path, "wb") as handle:
                handle.write(defaults)
        try:
            load_config(path, [default_path])
        except ConfigError as exc:
            message = str(exc)
            assert message.startswith((path, default_path)), message
            assert len(message.splitlines()) == 1, message


# --------------------------------------------------------------------------
# The ignore list: only IgnoreFileError escapes, as one line starting with the path.

ignore_token = st.one_of(
    ipv4_addr, ipv6_addr,
    st.builds(lambda a, n: f"{a}/{n}", st.one_of(ipv4_addr, ipv6_addr), st.integers(-1, 200)),
    st.from_regex(r"[0-9a-fA-F:.%/]{0,40}", fullmatch=True),
    st.sampled_from(["0.0.0.0", "0.0.0.0/0", "::", "::/0", "127.0.0.1/8", "fe80::1%eth0", "fe80::1%eth0/64",
                     "::ffff:192.0.2.1", "192.0.2.1/255.255.255.0", "192.0.2.1/0.0.0.255", "1.2.3", "٣.1.1.1"]),
    st.text(max_size=20),
)


@FUZZ
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.tuples(ignore_token, st.sampled_from(["", " # c", "\t", "#x"])),
                          max_size=10).map(lambda items: "\n".join(t + c for t, c in items))))
def test_ignore_text_raises_only_one_line_ignore_errors(text: str) -> None:
    """parse_ignore on any text: networks or one IgnoreFileError line naming the file."""
    try:
        networks = parse_ignore(text, IGNORE_PATH)
    except IgnoreFileError as exc:
        assert_one_line_naming(exc, IGNORE_PATH)
        return
    ignore = IgnoreList.build(networks, ())
    for probe in ("192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "not an address", "fe80::1%eth0"):
        assert isinstance(probe in ignore, bool)
