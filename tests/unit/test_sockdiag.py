"""sensor/raw/sockdiag.py: the sock_diag request, reply parsing, and a live listener found."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from sensor.raw import sockdiag


def _message(kind: int, payload: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, 1, 0) + payload


def _diag_msg(sport: int) -> bytes:
    """An inet_diag_msg payload with only family, state and sport set (72 bytes)."""
    return struct.pack("=BBBB", socket.AF_INET, sockdiag.TCP_LISTEN, 0, 0) + struct.pack("!H", sport) + b"\0" * 66


def test_dump_request_layout() -> None:
    data = sockdiag.dump_request(socket.AF_INET6, socket.IPPROTO_TCP, 1 << 10, seq=7)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", data)
    assert length == len(data) == 16 + 56
    assert kind == sockdiag.SOCK_DIAG_BY_FAMILY
    assert flags == sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_DUMP and seq == 7
    family, proto, _ext, _pad, states = struct.unpack_from("=BBBBI", data, 16)
    assert (family, proto, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 1 << 10)


def test_parse_messages_and_ports() -> None:
    data = _message(sockdiag.SOCK_DIAG_BY_FAMILY, _diag_msg(80)) + _message(20, _diag_msg(8080)) \
        + _message(sockdiag.NLMSG_DONE, b"\0\0\0\0")
    parsed = list(sockdiag.parse_messages(data))
    assert [k for k, _ in parsed] == [20, 20, sockdiag.NLMSG_DONE]
    assert [sockdiag.source_port(p) for _, p in parsed[:2]] == [80, 8080]


def test_truncated_message_stops_parsing() -> None:
    data = _message(20, _diag_msg(22))
    assert list(sockdiag.parse_messages(data[:-1])) == []
    assert sockdiag.source_port(b"\0\0\0") is None


@given(st.binary(max_size=300))
def test_parse_messages_never_raises(data: bytes) -> None:
    for _kind, payload in sockdiag.parse_messages(data):
        sockdiag.source_port(payload)


def test_live_listener_is_found() -> None:
    """A listener this test opens shows up (no privilege needed); a closed one does not."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        ports = sockdiag.listening_tcp_ports()
        assert ports is not None, "sock_diag netlink unavailable"
        assert port in ports
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound_only:
        bound_only.bind(("127.0.0.1", 0))
        after = sockdiag.listening_tcp_ports()
        assert after is not None and bound_only.getsockname()[1] not in after
