"""Ports in use on this host, and live evidence that a datagram was refused.

The one home of "which ports do real services use": :func:`read_ports` asks
sock_diag (:mod:`sensor.raw.sockdiag`) for TCP listeners, else reads
/proc/net/{tcp,udp}[6] (proc(5)).  The port plan (:mod:`sensor.portplan`) is
built from :func:`read_listening` and refreshed every PLAN_REFRESH
seconds; between refreshes a service can start, and a client of ours can get
an answer on an ephemeral port the plan watches.  Before the raw capture
reports a probe it asks here: :class:`PortsInUse` (TCP listeners from
sock_diag, :mod:`sensor.raw.sockdiag`, or /proc/net/tcp[6]; UDP sockets in any
state from /proc/net/udp[6], proc(5)) and :class:`ClosedPortProof` (the UDP
NoPorts counters of /proc/net/snmp and snmp6, RFC 4113 udpNoPorts).
"""

from __future__ import annotations

import time

from sensor.raw.sockdiag import TCP_LISTEN, listening_tcp_ports

UDP_UNCONNECTED = 7   # linux/tcp_states.h TCP_CLOSE: a UDP socket bound without a peer


def parse_socket_ports(text: str, state: int | None = None) -> set[int]:
    """Local ports in a /proc/net/{tcp,udp}[6] table: every socket, or those in ``state``.

    The st column is the kernel's state number in hex (TCP_LISTEN is ``0A``).
    """
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 4)
        if len(parts) < 4 or ":" not in parts[1]:
            continue
        try:
            if state is not None and int(parts[3], 16) != state:
                continue
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    ports.discard(0)
    return ports


def read_ports(proto: str, proc: str = "/proc", state: int | None = None) -> set[int]:
    """Local ports of ``proto`` sockets (IPv4 and IPv6) in ``state`` (None: any state)."""
    if proto == "tcp" and state == TCP_LISTEN and proc == "/proc":
        fast = listening_tcp_ports()  # /proc/net/tcp walks every socket of the host: slow
        if fast is not None:
            return fast
    ports: set[int] = set()
    for name in (proto, f"{proto}6"):
        try:
            with open(f"{proc}/net/{name}", encoding="ascii") as handle:
                ports |= parse_socket_ports(handle.read(), state)
        except OSError:
            continue
    return ports


def read_listening(proto: str, proc: str = "/proc") -> set[int]:
    """Ports real services use on this host (this network namespace): TCP LISTEN, UDP unconnected."""
    return read_ports(proto, proc, TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED)


class PortsInUse:
    """Live view of ports real services use: TCP LISTEN, UDP any socket.

    TCP counts listeners only: a SYN to a port with no listener is a probe even
    if a TIME_WAIT or outgoing connection uses that port number.  UDP counts
    every socket, connected ones included: a DNS reply to a resolver's
    ephemeral port is not a UDP scan, though the plan (unconnected sockets
    only, refreshed every PLAN_REFRESH) may list that port as watched.

    The minimum interval between re-reads is ten times the last read's cost
    (at least ``min_interval``), so a scan burst costs at most ~10% CPU in
    table reads even on a host with very many sockets.
    """

    def __init__(self, proc: str = "/proc", min_interval: float = 0.02) -> None:
        self.proc = proc
        self.min_interval = min_interval
        self._ports: dict[str, set[int]] = {}
        self._read_at: dict[str, float] = {}
        self._interval: dict[str, float] = {}
        self.reads = 0

    def _refresh(self, proto: str, now: float) -> None:
        ports = read_ports(proto, self.proc, TCP_LISTEN if proto == "tcp" else None)
        cost = time.monotonic() - now
        self._ports[proto] = ports
        self._read_at[proto] = now
        self._interval[proto] = max(self.min_interval, 10 * cost)
        self.reads += 1

    def __call__(self, proto: str, port: int) -> bool:
        """True if some local socket of ``proto`` uses ``port`` right now."""
        now = time.monotonic()
        if now - self._read_at.get(proto, -1e9) >= self._interval.get(proto, 0.0):
            self._refresh(proto, now)
        return port in self._ports.get(proto, set())


def parse_noports(text: str, version: int) -> int | None:
    """UDP NoPorts from /proc/net/snmp (``Udp:`` table, IPv4) or /proc/net/snmp6 (Udp6NoPorts)."""
    lines = text.splitlines()
    if version == 6:
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "Udp6NoPorts" and parts[1].isdigit():
                return int(parts[1])
        return None
    rows = [line.split() for line in lines if line.startswith("Udp: ")]
    if len(rows) < 2 or "NoPorts" not in rows[0] or len(rows[1]) != len(rows[0]):
        return None
    value = rows[1][rows[0].index("NoPorts")]
    return int(value) if value.isdigit() else None


class ClosedPortProof:
    """Did a UDP datagram really hit a closed port?  The kernel's NoPorts counters say.

    A reply to one of our own UDP clients (a resolver's query, an NTP poll) is
    addressed to an ephemeral port that may be watched in audp mode, and its
    socket may already be closed when we look (the client got its answer).
    The kernel delivers a datagram to raw sockets and then to UDP in the same
    softirq, counting udpNoPorts (RFC 4113) when no socket takes it, so by the
    time we read a datagram the counter already says whether it was refused.
    Each increment is credit for one report; credit older than ``max_age``
    (noise from unwatched ports) is discarded by re-reading the baseline on a
    timer.  Counters unreadable: every datagram counts (the previous behaviour).
    """

    def __init__(self, proc: str = "/proc", max_age: float = 1.0) -> None:
        self.proc = proc
        self.max_age = max_age
        self.baseline: dict[int, int | None] = {4: None, 6: None}
        self.credit: dict[int, int] = {4: 0, 6: 0}

    def read(self, version: int) -> int | None:
        """The current NoPorts counter of one IP version, or None."""
        name = "snmp6" if version == 6 else "snmp"
        try:
            with open(f"{self.proc}/net/{name}", encoding="ascii") as handle:
                return parse_noports(handle.read(), version)
        except OSError:
            return None

    def rebaseline(self) -> None:
        """Forget old credit: datagrams refused so far are not ours to report."""
        for version in (4, 6):
            self.baseline[version] = self.read(version)
            self.credit[version] = 0

    def __call__(self, version: int) -> bool:
        """True if one more datagram of this IP version is proven to have hit a closed port."""
        if self.credit[version] == 0:
            now = self.read(version)
            before = self.baseline[version]
            if now is None or before is None:
                self.baseline[version] = now
                return True
            self.credit[version] += max(0, now - before)
            self.baseline[version] = now
        if self.credit[version] == 0:
            return False
        self.credit[version] -= 1
        return True
