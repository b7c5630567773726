"""sensor/prefixwatch.py: rotating addresses of one prefix are one scanner, in at most 3 lines."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from sensor.alert import Alert, format_alert
from sensor.config import ConfigError, load_config
from sensor.detector import Detector
from sensor.ignore import IgnoreList
from sensor.prefixwatch import ADDRESS_CAP, IgnoreRanges
from sensor.probe import Probe
from sensor.settings import DetectorSettings

NET = "2001:db8:77::/64"
VICTIM6 = "2001:db8::1"


def rotating(count: int, net: str = NET) -> list[str]:
    base = ipaddress.ip_network(net).network_address
    return [str(base + 0x1000 + i) for i in range(count)]


def probe(src: str, port: int = 22, verified: bool = False, proto: str = "tcp") -> Probe:
    return Probe(src, VICTIM6 if ":" in src else "192.0.2.1", proto, port,
                 "syn" if proto == "tcp" else "udp", "atcp", verified)


def make(**kw: object) -> Detector:
    return Detector(DetectorSettings(**kw))  # type: ignore[arg-type]


def run(detector: Detector, probes: list[Probe], end: float = 1000.0) -> list[Alert]:
    """All alerts of the probes (1 ms apart), then every flush until ``end``."""
    alerts: list[Alert] = []
    now = 0.0
    for item in probes:
        alerts += detector.observe(item, now)
        now += 0.001
        if int(now) != int(now - 0.001):
            alerts += detector.flush(now)
    t = float(int(now) + 1)
    while t <= end:
        alerts += detector.flush(t)
        t += 1
    return alerts


@pytest.mark.parametrize("count", [50, 10_000])
def test_a_rotating_64_is_at_most_three_lines_one_of_them_the_prefix(count: int) -> None:
    detector = make(scan_window=300)
    ports = [1, 79, 111, 143]
    alerts = run(detector, [probe(a, ports[i % 4]) for i, a in enumerate(rotating(count))])
    assert len(alerts) <= 3, [format_alert(a)[0] for a in alerts]
    nets = [a for a in alerts if a.net]
    assert [a.net for a in nets if not a.summary] == [NET]
    closing = [a for a in nets if a.summary]
    assert len(closing) == 1 and closing[0].addresses == count and closing[0].count == 4
    # The first address is an ordinary address alert, before the prefix is known.
    assert not alerts[0].net and alerts[0].src == rotating(1)[0]
    assert len(detector.windows) <= 1 and len(detector.prefixes) == 0


def test_the_address_alert_of_a_lone_address_is_unchanged() -> None:
    """One address scanning many ports: the same lines, byte for byte, with and without IPV6_PREFIX."""
    scan = [probe("2001:db8:77::5", p) for p in range(1, 200)]
    on = run(make(summary_interval=5, scan_window=100), scan, end=200)
    off = run(make(summary_interval=5, scan_window=100, ipv6_prefix=128), scan, end=200)
    assert [format_alert(a) for a in on] == [format_alert(a) for a in off]
    assert len(on) >= 2 and not any(a.net for a in on)


def test_the_prefix_alert_line_and_fields() -> None:
    detector = make()
    first, second = rotating(2)
    assert [format_alert(a)[0] for a in detector.observe(probe(first, 79), 0)] == [
        f"attackalert: src={first} dst={VICTIM6} proto=tcp dport=79 scan=syn mode=atcp verified=no "
        f"count=1 TCP SYN scan from host {first} to TCP port 79"]
    [alert] = detector.observe(probe(second, 111), 1)
    message, fields = format_alert(alert)
    assert message == (f"attackalert: src={NET} dst={VICTIM6} proto=tcp dport=111 scan=syn mode=atcp "
                       f"verified=no count=2 TCP SYN scan from net {NET} by 2 addresses to TCP port 111")
    assert fields["PORTSENTRY_NET"] == NET and fields["PORTSENTRY_SRC"] == second
    assert fields["PORTSENTRY_ADDRESSES"] == "2"
    assert detector.flush(1000) == []  # nothing moved since the prefix alert: no closing line
    detector = make()
    third = rotating(3)[2]
    detector.observe(probe(first, 79), 0)
    detector.observe(probe(second, 111), 1)
    assert detector.observe(probe(third, 143), 2) == []
    [closing] = detector.flush(1000)
    assert format_alert(closing)[0] == (
        f"attackalert: src={NET} dst={VICTIM6} proto=tcp dport=143 scan=syn mode=atcp verified=no "
        f"count=3 TCP SYN scan from net {NET} by 3 addresses continues: 3 TCP ports in the last 300 s")
    assert format_alert(closing)[1]["PORTSENTRY_SUMMARY"] == "1"
    assert "PORTSENTRY_NET" not in format_alert(detector.observe(probe("198.51.100.7"), 2000)[0])[1]


def test_prefix_alert_never_wider_than_configured_and_rendering_refuses_wide_prefixes() -> None:
    detector = make(ipv6_prefix=48)
    a, b = "2001:db8:77:1::1", "2001:db8:77:2::1"
    detector.observe(probe(a), 0)
    [alert] = detector.observe(probe(b), 1)
    assert alert.net == "2001:db8:77::/48"
    for wide in ("2001:db8::/16", "::/0", "10.0.0.0/8", "2001:db8:77::/96", "2001:db8:77::5/64"):
        with pytest.raises(ValueError):
            format_alert(Alert(src=b, dst=VICTIM6, proto="tcp", dport=1, scan="syn", mode="atcp",
                               verified=False, count=1, net=wide, addresses=2))


def test_ipv4_is_per_address_unless_ipv4_prefix_is_set() -> None:
    sources = [f"203.0.113.{i}" for i in range(1, 51)]
    off = run(make(flood_sources=0), [probe(s) for s in sources])
    assert len(off) == 50 and not any(a.net for a in off)
    on = run(make(ipv4_prefix=24, flood_sources=0), [probe(s) for s in sources])
    assert len(on) <= 3 and [a.net for a in on if a.net and not a.summary] == ["203.0.113.0/24"]


def test_neighbouring_prefixes_are_separate() -> None:
    detector = make()
    alerts = run(detector, [probe(a) for a in rotating(10)] + [probe(a) for a in rotating(10, "2001:db8:78::/64")])
    assert sorted(a.net for a in alerts if a.net and not a.summary) == [NET, "2001:db8:78::/64"]


def test_scan_trigger_counts_the_prefix_ports_together_or_prefix_addresses() -> None:
    detector = make(scan_trigger=3, prefix_addresses=5)
    addrs = rotating(5)
    assert detector.observe(probe(addrs[0], 1), 0) == []
    assert detector.observe(probe(addrs[1], 2), 1) == []
    assert detector.observe(probe(addrs[2], 3), 2) == []
    [alert] = detector.observe(probe(addrs[3], 4), 3)  # 4 ports > SCAN_TRIGGER 3
    assert alert.net == NET and alert.count == 4 and alert.addresses == 4
    same_port = make(scan_trigger=3, prefix_addresses=5)
    alerts = [a for i, src in enumerate(addrs) for a in same_port.observe(probe(src, 22), i)]
    assert [(a.net, a.addresses) for a in alerts] == [(NET, 5)]


def test_an_ignored_address_inside_the_prefix_keeps_it_from_being_banned() -> None:
    """The choice: a prefix that overlaps the ignore list is never alerted; its addresses alert one by one."""
    detector = make()
    ignore = IgnoreList.build([ipaddress.ip_network("2001:db8:77::ffff/128")], [])
    detector.prefixes.ignore = lambda: ignore
    alerts = run(detector, [probe(a) for a in rotating(20)])
    assert not any(a.net for a in alerts) and len(alerts) == 20
    assert detector.prefixes.vetoed > 0
    wide = IgnoreList.build([ipaddress.ip_network("2001:db8::/32")], [])
    detector = make()
    detector.prefixes.ignore = lambda: wide
    assert not any(a.net for a in run(detector, [probe(a) for a in rotating(5)]))


def test_ignore_ranges_overlap() -> None:
    ranges = IgnoreRanges([ipaddress.ip_network(n) for n in ("2001:db8:1::5/128", "2001:db8:2::/48", "10.0.0.0/8")])
    def hit(net: str) -> bool:
        return ranges.overlaps(ipaddress.ip_network(net))
    assert hit("2001:db8:1::/64") and hit("2001:db8:2:5::/64") and hit("2001:db8::/32")
    assert not hit("2001:db8:3::/64") and not hit("2001:db8:1:1::/64") and hit("10.1.2.0/24")
    assert not hit("11.0.0.0/24") and not IgnoreRanges([]).overlaps(ipaddress.ip_network("::/64"))


def test_verified_and_unverified_probes_are_separate_windows() -> None:
    """Forged unverified probes from the scanner's /64 cannot turn its prefix alert into verified=no."""
    detector = make()
    addrs = rotating(6)
    detector.observe(probe(addrs[0], verified=False), 0)
    forged = detector.observe(probe(addrs[1], verified=False), 0.1)
    assert [(a.net, a.verified) for a in forged] == [(NET, False)]
    real = [a for i, src in enumerate(addrs[2:]) for a in detector.observe(probe(src, 80, verified=True), 1 + i)]
    assert [(a.net, a.verified) for a in real if a.net] == [(NET, True)]


def test_during_a_flood_two_forged_packets_per_64_ban_no_prefix() -> None:
    """A forged flood with two sources in each of 5,000 /64s: once the guard sees the flood, no prefix alerts.

    As for addresses, what came before the flood started alerted: at most FLOOD_SOURCES (20)
    prefixes (a prefix's second address alerts as the prefix and is not a new source); the
    other 4,980 prefixes do not."""
    detector = make(flood_sources=20, flood_ports=5)
    probes = []
    for n in range(5000):
        net = f"2001:db8:{n >> 8:x}:{n & 0xff:x}::/64"
        probes += [probe(a, 22) for a in rotating(2, net)]
    alerts = run(detector, probes, end=30)
    nets = [a for a in alerts if a.net]
    assert len(nets) <= 20, len(nets)
    assert len(detector.prefixes.first) <= 4096 and len(detector.prefixes.windows) <= 4096
    assert len(detector.prefixes.alerted) <= 20


def test_during_a_flood_a_rotating_scanner_still_gets_its_prefix_alert() -> None:
    """Decoys from 198.18.0.0/15 start the flood; the /64 that rotates over 6+ ports still alerts once."""
    detector = make(flood_sources=20, flood_ports=5)
    probes = []
    scanner = rotating(200)
    for i in range(200):
        probes.append(probe(f"198.18.{i // 250}.{i % 250 + 1}", 9))
        probes.append(probe(scanner[i], 1000 + i))
    alerts = run(detector, probes, end=10)
    assert [a.net for a in alerts if a.net and not a.summary] == [NET]
    assert detector.flood.floods == 1


def test_state_stays_bounded_under_rotation_across_many_64s() -> None:
    detector = make(max_sources=256)
    for n in range(20_000):
        src = f"2001:db8:{n >> 12:x}:{n & 0xfff:x}::1"
        detector.observe(probe(src), n * 0.0001)
    assert len(detector.prefixes.first) <= 256 and len(detector.prefixes.windows) == 0
    assert len(detector.prefixes.alerted) == 0
    assert detector.prefixes.evicted >= 20_000 - 256


def test_alerted_prefixes_survive_a_flood_of_fresh_prefixes() -> None:
    """Fresh prefixes evict only prefixes that have not alerted: the rotation stays absorbed."""
    detector = make(max_sources=64, flood_sources=0)
    addrs = rotating(3000)
    lines = detector.observe(probe(addrs[0]), 0) + detector.observe(probe(addrs[1]), 0)
    for n in range(1000):
        detector.observe(probe(f"2001:db8:{n:x}:1::1"), 1)   # each its own /64: one address alert each
        lines += detector.observe(probe(addrs[2 + n]), 1)
    assert [a.net for a in lines if a.net] == [NET]
    assert len(lines) == 2


def test_a_window_remembers_at_most_address_cap_addresses() -> None:
    detector = make()
    run(detector, [probe(a) for a in rotating(1000)], end=0)
    [window] = detector.prefixes.alerted.values()
    assert len(window.addrs) <= ADDRESS_CAP and window.address_count == 1000


# -- configuration ----------------------------------------------------------------

def conf(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "portsentry.conf"
    path.write_text(f'TCP_MODE="atcp"\nUDP_MODE="off"\n{extra}\n')
    return path


def test_keys_and_defaults(tmp_path: Path) -> None:
    config = load_config(str(conf(tmp_path, "")), [])
    assert (config.ipv6_prefix, config.ipv4_prefix, config.prefix_addresses) == (64, 32, 2)
    config = load_config(str(conf(tmp_path, 'IPV6_PREFIX="48"\nIPV6_PREFIX_X="1"\nPREFIX_ADDRESSES="4"')), [])
    assert (config.ipv6_prefix, config.prefix_addresses) == (48, 4)
    assert load_config(str(conf(tmp_path, 'IPV6_PREFIX="128"')), []).ipv6_prefix == 128


def test_an_ipv4_prefix_is_an_opt_in_with_a_cgnat_warning(tmp_path: Path) -> None:
    config = load_config(str(conf(tmp_path, 'IPV4_PREFIX="24"')), [])
    assert config.ipv4_prefix == 24
    assert any("IPV4_PREFIX" in w and "carrier-grade NAT" in w and ":3:" in w for w in config.warnings)
    assert not load_config(str(conf(tmp_path, 'IPV4_PREFIX="32"')), []).warnings


@pytest.mark.parametrize(("line", "what"), [
    ('IPV6_PREFIX="0"', "32 to 64, or 128"),
    ('IPV6_PREFIX="16"', "32 to 64, or 128"),
    ('IPV6_PREFIX="96"', "32 to 64, or 128"),
    ('IPV6_PREFIX="/64"', "32 to 64, or 128"),
    ('IPV4_PREFIX="8"', "16 to 32"),
    ('IPV4_PREFIX="33"', "16 to 32"),
    ('PREFIX_ADDRESSES="1"', "2 to 65535"),
])
def test_bad_values_are_one_line_naming_file_line_and_key(tmp_path: Path, line: str, what: str) -> None:
    path = conf(tmp_path, line)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), [])
    key = line.split("=")[0]
    assert str(caught.value).startswith(f"{path}:3: {key}: ") and what in str(caught.value)
    assert "\n" not in str(caught.value)


# -- the daemon's hooks -------------------------------------------------------------

def test_the_daemon_gives_the_ignore_list_and_never_resolves_a_prefix(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensor's ignore list (and this host's addresses) reach the watch; a prefix alert gets no
    reverse-DNS name (RESOLVE_HOST=1 would otherwise look up the address and print it last)."""
    import asyncio
    import io
    import socket

    from sensor.daemon import Sensor
    from sensor.sinks import Emitter, StderrSink

    ignore = tmp_path / "portsentry.ignore"
    ignore.write_text("2001:db8:79::5\n")
    path = tmp_path / "portsentry.conf"
    path.write_text(f'TCP_MODE="atcp"\nUDP_MODE="off"\nRESOLVE_HOST="1"\nIGNORE_FILE="{ignore}"\n')
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    looked_up: list[str] = []
    monkeypatch.setattr(socket, "gethostbyaddr", lambda a: looked_up.append(a) or ("name.example", [], []))

    async def scenario() -> None:
        for i, src in enumerate(rotating(2) + rotating(3, "2001:db8:79::/64")):
            sensor.on_probe(probe(src, 100 + i))
        await asyncio.sleep(0.5)

    asyncio.run(scenario())
    lines = stream.getvalue().splitlines()
    nets = [line for line in lines if f"src={NET} " in line]
    assert len(nets) == 1 and "host=" not in nets[0], lines
    assert not any("src=2001:db8:79::/64" in line for line in lines), lines
    assert sum(1 for line in lines if "src=2001:db8:79::" in line) == 3
    assert rotating(2)[1] not in looked_up
