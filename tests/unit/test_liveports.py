"""Live kernel evidence (sensor.raw.liveports): listeners, sockets, UDP NoPorts counters."""

from __future__ import annotations

from pathlib import Path

from sensor.raw.liveports import ClosedPortProof, PortsInUse, parse_noports, parse_socket_ports
from sensor.raw.sockdiag import TCP_LISTEN

PROC = Path(__file__).resolve().parents[1] / "roots" / "proc" / "advanced"


def test_socket_tables_list_every_local_port_in_any_state() -> None:
    assert parse_socket_ports((PROC / "net" / "tcp").read_text()) == {22, 443, 631, 37630}
    assert parse_socket_ports((PROC / "net" / "tcp").read_text(), TCP_LISTEN) == {22, 443, 631}
    assert parse_socket_ports((PROC / "net" / "udp").read_text()) == {53, 5353, 40000}
    assert parse_socket_ports("header\n 0: nonsense\n 1: 0:ZZ\n") == set()


def test_ports_in_use_sees_connected_client_sockets() -> None:
    """A DNS reply to a resolver's connected socket (port 40000) is no UDP scan."""
    live = PortsInUse(str(PROC))
    assert live("udp", 40000) and live("udp", 123) and not live("udp", 161)
    assert live("tcp", 8080) and not live("tcp", 135)
    assert not live("tcp", 37630)   # a connection's port, no listener: a SYN there is a probe
    assert live.reads == 2


def test_ports_in_use_rereads_at_most_once_per_interval() -> None:
    live = PortsInUse(str(PROC), min_interval=3600)
    for port in range(100):
        live("tcp", port)
    assert live.reads == 1
    eager = PortsInUse(str(PROC), min_interval=0)
    eager("tcp", 1)
    eager._interval["tcp"] = 0.0
    eager("tcp", 2)
    assert eager.reads == 2


SNMP = """\
Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 1000
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 595 {noports} 0 596 0 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
"""
SNMP6 = "Udp6InDatagrams                 \t11\nUdp6NoPorts                     \t{noports}\n"


def test_noports_counters_parse() -> None:
    assert parse_noports(SNMP.format(noports=7), 4) == 7
    assert parse_noports(SNMP6.format(noports=3), 6) == 3
    assert parse_noports("Udp: NoPorts\n", 4) is None and parse_noports("", 6) is None


def proof_root(tmp_path: Path, v4: int, v6: int) -> str:
    """A fake /proc with the given NoPorts counters."""
    (tmp_path / "net").mkdir(exist_ok=True)
    (tmp_path / "net" / "snmp").write_text(SNMP.format(noports=v4))
    (tmp_path / "net" / "snmp6").write_text(SNMP6.format(noports=v6))
    return str(tmp_path)


def test_a_udp_reply_to_our_own_client_is_not_a_scan(tmp_path: Path) -> None:
    """Replies reach watched ephemeral ports (audp up to 65535) after the client closed its socket."""
    proof = ClosedPortProof(proof_root(tmp_path, 100, 5))
    proof.rebaseline()
    assert not proof(4) and not proof(6)          # NoPorts did not move: delivered to a socket
    proof_root(tmp_path, 102, 5)                  # two datagrams refused
    assert proof(4) and proof(4) and not proof(4)
    proof_root(tmp_path, 110, 9)
    proof.rebaseline()                            # old refusals are not credit
    assert not proof(4) and not proof(6)


