"""The port plan (sensor.portplan) from sample /proc/net tables.

tests/roots/proc/advanced/net/{tcp,tcp6,udp,udp6} were captured in a fresh
network namespace running: TCP listeners on 0.0.0.0:22, [::]:22, 127.0.0.1:631,
[::]:8080 (v6 only) and 0.0.0.0:443 with one established connection to it
from 127.0.0.1:37630; UDP sockets on 0.0.0.0:53, [::]:123, 127.0.0.1:5353 and
a connected client socket 127.0.0.1:40000 -> 127.0.0.1:53 (state 01).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sensor.config import Config
from sensor.portplan import PortPlan, Skip, build_plan
from sensor.raw.liveports import UDP_UNCONNECTED, parse_socket_ports, read_listening
from sensor.raw.sockdiag import TCP_LISTEN

PROC = Path(__file__).resolve().parents[1] / "roots" / "proc" / "advanced"
ADVANCED = Config(tcp_modes=("atcp",), udp_modes=("audp",), advanced_ports_tcp=1024,
                  advanced_ports_udp=1024, advanced_exclude_tcp=(113, 139),
                  advanced_exclude_udp=(67, 137, 138, 520))


def table(name: str) -> str:
    """One sample table's text."""
    return (PROC / "net" / name).read_text()


def test_tcp_tables_yield_listening_ports_only() -> None:
    assert parse_socket_ports(table("tcp"), TCP_LISTEN) == {22, 443, 631}   # not 37630 (ESTABLISHED)
    assert parse_socket_ports(table("tcp6"), TCP_LISTEN) == {22, 8080}


def test_udp_tables_yield_unconnected_sockets_only() -> None:
    assert parse_socket_ports(table("udp"), UDP_UNCONNECTED) == {53, 5353}        # not 40000 (connected, state 01)
    assert parse_socket_ports(table("udp6"), UDP_UNCONNECTED) == {123}


def test_read_listening_merges_both_families() -> None:
    assert read_listening("tcp", str(PROC)) == {22, 443, 631, 8080}
    assert read_listening("udp", str(PROC)) == {53, 123, 5353}


def test_missing_tables_mean_no_services() -> None:
    assert read_listening("tcp", str(PROC / "nonexistent")) == set()


@pytest.mark.parametrize("text", ["", "header only\n", "header\n  0: garbage\n",
                                  "header\n 0: 00000000:ZZZZ 00000000:0000 0A\n",
                                  "header\n 0: 00000000:0000 00000000:0000 0A\n"])
def test_garbage_tables_yield_nothing(text: str) -> None:
    assert parse_socket_ports(text, TCP_LISTEN) == set()


def test_advanced_plan_watches_every_unused_port_below_the_bound() -> None:
    plan = build_plan(ADVANCED, read_listening("tcp", str(PROC)), read_listening("udp", str(PROC)))
    assert plan.tcp_raw == frozenset(range(1, 1025)) - {22, 113, 139, 443, 631}
    assert plan.udp_raw == frozenset(range(1, 1025)) - {53, 67, 123, 137, 138, 520}
    assert (plan.raw_mode("tcp"), plan.raw_mode("udp")) == ("atcp", "audp")
    assert plan.tcp_bound == plan.udp_bound == ()
    assert Skip("tcp", 22, "a service listens") in plan.skipped
    assert Skip("tcp", 113, "excluded (ADVANCED_EXCLUDE)") in plan.skipped
    assert not any(s.port == 8080 for s in plan.skipped)   # above ADVANCED_PORTS_TCP


def test_advanced_plan_up_to_65535() -> None:
    config = replace(ADVANCED, advanced_ports_tcp=65535, advanced_ports_udp=65535)
    plan = build_plan(config, read_listening("tcp", str(PROC)), read_listening("udp", str(PROC)))
    assert len(plan.tcp_raw) == 65535 - 6      # 22, 113, 139, 443, 631, 8080
    assert 8080 not in plan.tcp_raw and 5353 not in plan.udp_raw
    # A connected client socket's port stays in the plan: the raw capture's live
    # check (sensor.raw.liveports.PortsInUse, any socket state) drops replies to it.
    assert 40000 in plan.udp_raw


def test_a_service_that_starts_or_stops_changes_the_plan() -> None:
    before = build_plan(ADVANCED, {22}, set())
    after = build_plan(ADVANCED, {22, 880}, set())
    assert 880 in before.tcp_raw and 880 not in after.tcp_raw
    assert build_plan(ADVANCED, {22}, set()) == before   # equal plans: the daemon keeps its filter


def test_our_own_bound_tripwires_are_not_watched_twice() -> None:
    config = replace(ADVANCED, tcp_modes=("tcp", "atcp"), tcp_ports=(1, 79, 31337))
    plan = build_plan(config, {22, 1, 79}, set(), own_tcp=frozenset({1, 79}))
    assert plan.tcp_bound == (1, 79, 31337)
    assert not {1, 79} & plan.tcp_raw         # one probe, one detection
    assert not any(s.port in (1, 79) for s in plan.skipped)
    assert 22 not in plan.tcp_raw


def test_stealth_plan_watches_the_configured_list_minus_services() -> None:
    config = replace(ADVANCED, tcp_modes=("stcp",), udp_modes=("sudp",), tcp_ports=(1, 22, 135),
                     udp_ports=(53, 161))
    plan = build_plan(config, read_listening("tcp", str(PROC)), read_listening("udp", str(PROC)))
    assert plan.tcp_raw == {1, 135} and plan.udp_raw == {161}
    assert (plan.raw_mode("tcp"), plan.raw_mode("udp")) == ("stcp", "sudp")


def test_no_raw_mode_no_raw_ports() -> None:
    config = replace(ADVANCED, tcp_modes=("tcp",), udp_modes=(), tcp_ports=(1,))
    plan = build_plan(config, set(), set())
    assert plan.tcp_raw == plan.udp_raw == frozenset()
    assert plan.raw_mode("tcp") == "" and plan.raw_ports("udp") == frozenset()
    assert PortPlan().raw_ports("tcp") == frozenset()
