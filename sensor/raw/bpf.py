"""Classic BPF programs for the raw-socket capture: only probes reach Python.

A raw socket receives every TCP (or UDP) packet the host accepts, including
every segment of every real connection.  The program built here runs in the
kernel (``SO_ATTACH_FILTER``, see Linux Documentation/networking/filter.rst)
and drops, before any copy to user space:

* packets that came in on the loopback interface (our own traffic);
* IPv4 packets to multicast/broadcast addresses (224.0.0.0 and up);
* TCP segments with ACK or RST (established traffic and replies, never a
  scan probe: see :mod:`sensor.raw.packet`);
* packets to ports the plan does not watch, including every port a real
  service listens on.

The watched ports are compiled to sorted ranges, tested in one forward pass
of four instructions per range with the verdicts inline, so no jump ever
needs more than the 8-bit offset classic BPF allows.  An advanced plan over
1-65535 with 30 listening services is 31 ranges (~130 instructions).  Above
:data:`MAX_RANGES` the closest ranges are merged: the kernel then lets a few
unwatched ports through and Python rejects them, it never drops a watched one.
The kernel charges a filter to the socket's option memory (net.core.optmem_max:
20480 bytes by default before Linux 6.9, Debian 12 included, which holds about
400 ranges); :mod:`sensor.raw.capture` retries with fewer ranges when it is refused.

Pure: this module only builds, encodes and (for tests) simulates programs;
:mod:`sensor.raw.capture` attaches them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Instruction classes, sizes, modes and jump kinds (linux/bpf_common.h).
LD, LDX, JMP, RET = 0x00, 0x01, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH = 0x20, 0x40, 0xA0
JA, JEQ, JGT, JGE, JSET = 0x00, 0x10, 0x20, 0x30, 0x40
K = 0x00

SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
ANCILLARY_IFINDEX = (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF

MAX_INSNS = 4096            # BPF_MAXINSNS
MAX_RANGES = 1000           # 4 instructions each, plus the prologue
SNAPLEN = 256               # bytes copied per accepted packet: headers only
TCP_ACK_OR_RST = 0x14
IPV4_MULTICAST = 0xE0000000


@dataclass(frozen=True)
class Insn:
    """One classic BPF instruction (struct sock_filter)."""

    code: int
    jt: int = 0
    jf: int = 0
    k: int = 0


def port_ranges(ports: Iterable[int], limit: int = MAX_RANGES) -> list[tuple[int, int]]:
    """Sorted inclusive ranges covering ``ports``; at most ``limit`` (gaps filled)."""
    ranges: list[list[int]] = []
    for port in sorted(set(ports)):
        if ranges and port == ranges[-1][1] + 1:
            ranges[-1][1] = port
        else:
            ranges.append([port, port])
    if len(ranges) > limit:
        gaps = sorted(range(len(ranges) - 1), key=lambda i: ranges[i + 1][0] - ranges[i][1])
        fill = set(gaps[:len(ranges) - limit])
        merged: list[list[int]] = [ranges[0]]
        for i in range(1, len(ranges)):
            if i - 1 in fill:
                merged[-1][1] = ranges[i][1]
            else:
                merged.append(ranges[i])
        ranges = merged
    return [(low, high) for low, high in ranges]


def _reject_if(code: int, k: int) -> list[Insn]:
    """``if (A <op> k) return 0``: the verdict inline, the jump one step."""
    return [Insn(JMP | code | K, 0, 1, k), Insn(RET | K, k=0)]


def _range_block(low: int, high: int, snaplen: int) -> list[Insn]:
    """``if A > high: next block; return A >= low ? accept : reject``."""
    return [Insn(JMP | JGT | K, 3, 0, high), Insn(JMP | JGE | K, 0, 1, low),
            Insn(RET | K, k=snaplen), Insn(RET | K, k=0)]


def build_filter(proto: str, ports: Iterable[int], ipv4_header: bool,
                 loopback_ifindex: int | None = None, snaplen: int = SNAPLEN,
                 max_ranges: int = MAX_RANGES) -> list[Insn]:
    """The program for one raw socket: ``proto`` tcp/udp, IPv4 (header first) or IPv6."""
    ranges = port_ranges(ports, max_ranges)
    if not ranges:
        return [Insn(RET | K, k=0)]
    program: list[Insn] = []
    if loopback_ifindex is not None:
        program += [Insn(LD | W | ABS, k=ANCILLARY_IFINDEX), *_reject_if(JEQ, loopback_ifindex)]
    if ipv4_header:
        program += [Insn(LD | W | ABS, k=16), *_reject_if(JGE, IPV4_MULTICAST),
                    Insn(LDX | B | MSH, k=0)]
    mode = IND if ipv4_header else ABS
    if proto == "tcp":
        program += [Insn(LD | B | mode, k=13), *_reject_if(JSET, TCP_ACK_OR_RST)]
    program.append(Insn(LD | H | mode, k=2))
    for low, high in ranges:
        program += _range_block(low, high, snaplen)
    program.append(Insn(RET | K, k=0))
    if len(program) > MAX_INSNS:
        raise ValueError(f"BPF program too long: {len(program)} instructions")
    return program


def encode(program: Sequence[Insn]) -> bytes:
    """The program as an array of struct sock_filter (native byte order)."""
    return b"".join(struct.pack("=HBBI", i.code, i.jt, i.jf, i.k) for i in program)


def _load(packet: bytes, offset: int, size: int) -> int | None:
    if offset < 0 or offset + size > len(packet):
        return None
    return int.from_bytes(packet[offset:offset + size], "big")


def _jump(insn: Insn, acc: int) -> bool:
    op = insn.code & 0xF0
    if op == JEQ:
        return acc == insn.k
    if op == JGT:
        return acc > insn.k
    if op == JGE:
        return acc >= insn.k
    if op == JSET:
        return bool(acc & insn.k)
    return True


def _step_load(insn: Insn, packet: bytes, x: int, ifindex: int) -> int | None:
    size = {W: 4, H: 2, B: 1}[insn.code & 0x18]
    if insn.code & 0xE0 == ABS and insn.k == ANCILLARY_IFINDEX:
        return ifindex
    offset = insn.k + (x if insn.code & 0xE0 == IND else 0)
    return _load(packet, offset, size)


def simulate(program: Sequence[Insn], packet: bytes, ifindex: int = 2) -> int:
    """Run the instructions this module emits in Python; the kernel's verdict."""
    acc = x = pc = 0
    for _ in range(len(program) + 1):
        insn = program[pc]
        kind = insn.code & 0x07
        if kind == RET:
            return insn.k
        if kind == LDX:
            byte = _load(packet, insn.k, 1)
            if byte is None:
                return 0
            x = (byte & 0x0F) * 4
        elif kind == LD:
            value = _step_load(insn, packet, x, ifindex)
            if value is None:
                return 0
            acc = value
        elif kind == JMP:
            pc += insn.k if insn.code & 0xF0 == JA else (insn.jt if _jump(insn, acc) else insn.jf)
        pc += 1
    raise ValueError("program does not terminate")
