"""The six measurements (grid, latency, lines, cpu, memory, ban), one function each.

Each takes the :class:`World`, puts its cells into :class:`Results` and its numbers into
``Results.metric`` (what the targets are judged on).  Every loop is bounded.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import netio
from lab import ATTACKER4, ATTACKER6, SYSTEM_PYTHON, VICTIM4, VICTIM6, wait_until
from report import Results, ms, pct
from sensors import Line, alive, cpu_ns, cpu_seconds, memory_kb
from world import (
    BENCH,
    GRID_TCP,
    GRID_UDP,
    LATENCY_PORT,
    MODE_PAIRS,
    SCANS,
    SERVICE_PORT,
    Contender,
    Settings,
    World,
    drain_time_wait,
    is_alert,
    nmap,
    settle,
    start_ours,
    start_ps,
)


def grid_attackers(world: World) -> list[tuple[str, str, str]]:
    """One attacker namespace per scan type (so each cell is its own first alert)."""
    if not world.grid_attackers:
        for i, _ in enumerate(SCANS):
            addr4, addr6 = f"192.0.2.{11 + i}", f"2001:db8::1{i}"
            ns = world.lab.add_attacker(f"g{i}", addr4, addr6)
            world.grid_attackers.append((ns, addr4, addr6))
    return world.grid_attackers


def run_grid_once(world: World, target: Contender, modes: Sequence[str]) -> dict[str, str]:
    """Every scan type from its own attacker, IPv4 and IPv6; cell -> yes/no."""
    mark = target.mark()
    for (flag, _proto), (ns, _a4, _a6) in zip(SCANS, grid_attackers(world), strict=False):
        ports = GRID_UDP if flag == "-sU" else GRID_TCP
        for family in ("4", "6"):
            extra = ["-6"] if family == "6" else []
            dst = VICTIM6 if family == "6" else VICTIM4
            nmap(world.lab, ns, [*extra, flag, "--max-retries", "1", "-T4", "-p", ports, dst], timeout=60)
    settle(target, 1.0, 10)
    found = [line for line in target.lines(mark) if is_alert(line)]
    cells = {}
    for (flag, _proto), (_ns, addr4, addr6) in zip(SCANS, grid_attackers(world), strict=False):
        for family, addr in (("v4", addr4), ("v6", addr6)):
            hits = [line for line in found if line.src == addr]
            label = ""
            if hits and hits[0].fields:
                label = f" ({hits[0].fields.get('PORTSENTRY_SCAN', '')})"
            cells[f"{flag} {family}"] = ("yes" + label) if hits else "no"
    return cells


def section_grid(world: World, results: Results, settings: Settings) -> None:
    """Detection grid for both sensors."""
    for tcp, udp in MODE_PAIRS:
        # PortSentry first, then no TIME_WAIT left before ours binds (see drain_time_wait).
        start_ps(world, (tcp, udp))
        try:
            ps_cells = run_grid_once(world, world.ps, (tcp, udp))
        finally:
            world.ps.stop()
        if tcp == "tcp":
            drain_time_wait(world.lab)
        start_ours(world, (tcp, udp))
        try:
            cells = run_grid_once(world, world.ours, (tcp, udp))
        finally:
            world.ours.stop()
        for key, value in cells.items():
            results.put(f"grid {tcp}/{udp} {key}", "ours", value)
            # Bound sockets cannot see half-open or stealth scans (in either program): those
            # cells are shown but not counted against the target.
            if tcp != "tcp" or key.startswith(("-sT", "-sU")):
                results.metric["grid_missed"] = results.metric.get("grid_missed", 0) + (value == "no")
                results.metric["grid_cells"] = results.metric.get("grid_cells", 0) + 1
        for key, value in ps_cells.items():
            results.put(f"grid {tcp}/{udp} {key}", "portsentry", value)


def latency_samples(world: World, target: Contender, count: int, fresh: Callable[[], str],
                    dst: str, timeout: float = 2.0,
                    visible: list[float] | None = None) -> tuple[list[float], int]:
    """Send one SYN from a new spoofed source per sample; time until its alert line appears.

    ``visible`` collects when the harness itself saw the line (for the journal: when Reader.wait() woke).
    """
    values: list[float] = []
    missed = 0
    for _ in range(count):
        src = fresh()
        mark = target.mark()
        ethertype, data = netio.packet(src, dst, LATENCY_PORT)
        t0 = time.time()
        world.injector.send(ethertype, data)
        seen: list[Line] = []

        def arrived(src: str = src, mark: int = mark, seen: list[Line] = seen) -> bool:
            seen[:] = [line for line in target.lines(mark) if line.src == src and is_alert(line)]
            return bool(seen)

        if wait_until(arrived, timeout, step=0.001):
            values.append(min(line.at for line in seen) - t0)
            if visible is not None:
                visible.append(time.time() - t0)
        else:
            missed += 1
        time.sleep(0.05)
    return values, missed


def put_latency(results: Results, row: str, who: str, values: list[float], missed: int) -> None:
    """median / p95 / n cell."""
    if not values:
        results.put(row, who, f"no alert ({missed} probes)")
        return
    text = (f"median {ms(statistics.median(values))}, p95 {ms(pct(values, 0.95))} "
            f"(n={len(values)}{f', {missed} missed' if missed else ''})")
    results.put(row, who, text)
    results.raw[f"{row}/{who}"] = [round(v * 1000, 3) for v in values]
    results.metric[f"latency {row}/{who}"] = statistics.median(values)


def connect_samples(world: World, target: Contender, count: int) -> tuple[list[float], int]:
    """Bound mode: a full TCP connect from a new attacker address per sample; time to the alert."""
    values: list[float] = []
    missed = 0
    for i in range(count):
        src = f"192.0.2.{100 + (world.connect_round * count + i) % 150}"
        world.lab.run_attacker(["ip", "addr", "add", f"{src}/32", "dev", "eth0"], check=False)
        sock = netio.socket_in_netns(world.lab.attacker, socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(2.0)
        mark = target.mark()
        seen: list[Line] = []

        def arrived(src: str = src, mark: int = mark, seen: list[Line] = seen) -> bool:
            seen[:] = [line for line in target.lines(mark) if line.src == src and is_alert(line)]
            return bool(seen)

        try:
            sock.bind((src, 0))
            t0 = time.time()
            sock.connect((VICTIM4, LATENCY_PORT))
        except OSError:
            missed += 1
            sock.close()
            continue
        if wait_until(arrived, 2.0, step=0.001):
            values.append(min(line.at for line in seen) - t0)
        else:
            missed += 1
        sock.close()
        time.sleep(0.05)
    world.connect_round += 1
    return values, missed


def section_latency(world: World, results: Results, settings: Settings) -> None:
    """First-alert latency in advanced mode, both sensors; IPv6 too for ours."""
    start_ours(world, ("atcp", "audp"))
    try:
        idle = memory_kb(world.ours.pids[0], "VmRSS")
        results.put("idle RSS, journald sink (atcp+audp, 1 process)", "ours", f"{idle / 1024:.1f} MB")
        results.metric["idle_kb"] = max(results.metric.get("idle_kb", 0), idle)
        visible: list[float] = []
        values, missed = latency_samples(world, world.ours, settings.samples, world.fresh4, VICTIM4,
                                         visible=visible)
        put_latency(results, "first alert latency, atcp, IPv4 SYN", "ours", values, missed)
        if visible:
            results.put("  same probes: when a journal reader wakes (Reader.wait)", "ours",
                        f"median {ms(statistics.median(visible))}, p95 {ms(pct(visible, 0.95))}")
            results.put("  same probes: when a journal reader wakes (Reader.wait)", "portsentry",
                        "(its /dev/log line is read at once: same as above)")
        values, missed = latency_samples(world, world.ours, settings.samples, world.fresh6, VICTIM6)
        put_latency(results, "first alert latency, atcp, IPv6 SYN", "ours", values, missed)
    finally:
        world.ours.stop()
    start_ps(world, ("atcp", "audp"))
    try:
        values, missed = latency_samples(world, world.ps, settings.samples, world.fresh4, VICTIM4)
        put_latency(results, "first alert latency, atcp, IPv4 SYN", "portsentry", values, missed)
        results.put("first alert latency, atcp, IPv6 SYN", "portsentry", "no IPv6 support")
    finally:
        world.ps.stop()
    # PortSentry first, and no TIME_WAIT left on the tripwires before the next one binds them
    # (see drain_time_wait).
    row = "first alert latency, tcp (bound), IPv4 connect"
    start_ps(world, ("tcp",))
    try:
        values, missed = connect_samples(world, world.ps, settings.samples)
        put_latency(results, row, "portsentry", values, missed)
    finally:
        world.ps.stop()
    drain_time_wait(world.lab)
    start_ours(world, ("tcp",))
    try:
        values, missed = connect_samples(world, world.ours, settings.samples)
        put_latency(results, row, "ours", values, missed)
    finally:
        world.ours.stop()


def count_scan(world: World, target: Contender, ports: str, nmap_extra: Sequence[str],
               stop_first: bool, family: int = 4) -> tuple[int, int, int]:
    """(alert lines, lines naming the source, ports reported) for one SYN scan from the attacker."""
    mark = target.mark()
    dst, src = (VICTIM4, ATTACKER4) if family == 4 else (VICTIM6, ATTACKER6)
    six = ["-6"] if family == 6 else []
    nmap(world.lab, world.lab.attacker, [*six, "-sS", "-p", ports, *nmap_extra, dst], timeout=300)
    settle(target, 2.0, 60)
    if stop_first:
        target.stop()  # ours writes its closing summary at exit: count everything the scan ever causes
        settle(target, 1.0, 10)
    lines = [line for line in target.lines(mark) if is_alert(line)]
    naming = [line for line in lines if line.src == src]
    ports_seen = {line.text.rsplit("port:", 1)[-1].strip() for line in naming if not line.fields}
    if naming and naming[-1].fields:
        return len(lines), len(naming), max(int(line.fields.get("PORTSENTRY_COUNT", 0)) for line in naming)
    return len(lines), len(naming), len(ports_seen)


def section_lines(world: World, results: Results, settings: Settings) -> None:
    """Lines per source for a 1,024-port and a 65,535-port SYN scan."""
    sizes = [(1024, "1-1024", ["-T4", "--max-retries", "1"])]
    if settings.full_scan:
        sizes.append((65535, "1-65535", ["-T4", "--max-retries", "0", "--min-rate", "5000"]))
    for advanced, ports, extra in sizes:
        row = f"alert lines per source, -sS -p {ports} (atcp {advanced})"
        start_ours(world, ("atcp", "audp"), advanced)
        try:
            total, naming, counted = count_scan(world, world.ours, ports, extra, stop_first=True)
        finally:
            world.ours.stop()
        results.put(row, "ours", f"{naming} lines (count={counted} ports in the last line)")
        results.metric[f"lines {advanced}"] = naming
        start_ps(world, ("atcp", "audp"), advanced)
        try:
            total, naming, counted = count_scan(world, world.ps, ports, extra, stop_first=False)
        finally:
            world.ps.stop()
        results.put(row, "portsentry", f"{total} lines ({naming} naming the source; {counted} ports logged)")
        if advanced == 1024:
            row = "alert lines per source, -6 -sS -p 1-1024 (atcp 1024)"
            start_ours(world, ("atcp", "audp"), advanced)
            try:
                total, naming, counted = count_scan(world, world.ours, ports, extra, stop_first=True, family=6)
            finally:
                world.ours.stop()
            results.put(row, "ours", f"{naming} lines (count={counted} ports in the last line)")
            results.put(row, "portsentry", "no IPv6 support")
            results.metric["lines 1024 IPv6"] = naming


def http_flood(world: World, requests: int) -> dict[str, Any]:
    """The legitimate load from the attacker namespace; returns its JSON summary."""
    out = world.lab.run_attacker([SYSTEM_PYTHON, str(BENCH / "httpflood.py"), "--host", VICTIM4,
                                  "--port", str(SERVICE_PORT), "--requests", str(requests),
                                  "--concurrency", "8", "--max-seconds", "150"], timeout=200)
    try:
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"ok": 0, "failed": requests, "seconds": 0, "error": out.stderr[-500:]}


def cpu_during_flood(world: World, target: Contender, requests: int) -> tuple[float, dict[str, Any], int]:
    """(CPU seconds of the target's processes, flood summary, alert lines) during one flood.

    CPU time comes from schedstat (ns); utime+stime (10 ms ticks) is kept in raw as a cross-check.
    """
    time.sleep(1.0)
    mark = target.mark()
    before = sum(cpu_ns(p) for p in target.pids)
    ticks = sum(cpu_seconds(p) for p in target.pids)
    flood = http_flood(world, requests)
    time.sleep(0.5)
    flood["stat_seconds"] = round(sum(cpu_seconds(p) for p in target.pids) - ticks, 2)
    spent = (sum(cpu_ns(p) for p in target.pids) - before) / 1e9
    alerts = [line for line in target.lines(mark) if is_alert(line)]
    return spent, flood, len(alerts)


def section_cpu(world: World, results: Results, settings: Settings) -> None:
    """CPU seconds during >= 20,000 new-connection HTTP requests to the real service."""
    row = f"CPU s during {settings.http_requests:,} HTTP requests (atcp+audp)"
    start_ours(world, ("atcp", "audp"))
    try:
        ours, flood, alerts = cpu_during_flood(world, world.ours, settings.http_requests)
    finally:
        world.ours.stop()
    results.put(row, "ours", f"{ours:.3f} s ({flood.get('ok')} ok in {flood.get('seconds')} s, "
                f"{alerts} alerts)")
    results.raw["cpu_flood_ours"] = flood
    start_ps(world, ("atcp", "audp"))
    try:
        theirs, flood, alerts = cpu_during_flood(world, world.ps, settings.http_requests)
    finally:
        world.ps.stop()
    results.put(row, "portsentry", f"{theirs:.3f} s ({flood.get('ok')} ok in {flood.get('seconds')} s, "
                f"{alerts} alerts; 2 processes)")
    results.raw["cpu_flood_portsentry"] = flood
    ratio = f"ours = {ours / theirs:.3f} x PortSentry's" if theirs > 0 else "-"
    results.put("CPU ratio", "ours", ratio)
    results.raw["cpu"] = {"ours": ours, "portsentry": theirs}
    results.metric["cpu_ours"], results.metric["cpu_ps"] = ours, theirs


def spoof_flood(world: World, target: Contender, settings: Settings, udp: bool) -> dict[str, Any]:
    """Run bench/spoof.py in the attacker; sample the target's RSS meanwhile."""
    tcp_ports = [p for p in range(1, 1025) if p not in (SERVICE_PORT, 113, 139)]
    udp_ports = [p for p in range(1, 1025) if p not in (67, 137, 138, 520)] if udp else []
    cmd = ["ip", "netns", "exec", world.lab.attacker, SYSTEM_PYTHON, str(BENCH / "spoof.py"),
           "--mac", world.mac, "--dst4", VICTIM4, "--dst6", VICTIM6,
           "--count4", str(settings.spoof4), "--count6", str(settings.spoof6),
           "--tcp-ports", ",".join(map(str, tcp_ports)), "--udp-ports", ",".join(map(str, udp_ports)),
           "--rate", str(settings.spoof_rate), "--max-seconds", "90"]
    sender = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak_rss = 0
    deadline = time.monotonic() + 120
    try:
        while sender.poll() is None and time.monotonic() < deadline:
            peak_rss = max(peak_rss, sum(memory_kb(p, "VmRSS") for p in target.pids if alive(p)))
            time.sleep(0.25)
    finally:
        if sender.poll() is None:
            sender.kill()
        out = sender.communicate(timeout=10)[0]
    try:
        summary = dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        summary = {"sent": 0}
    summary["sampled_peak_kb"] = peak_rss
    return summary


def memory_run(world: World, target: Contender, settings: Settings, who: str, results: Results) -> None:
    """Idle RSS, the flood, peak (VmHWM), after-flood RSS, alive, still detecting."""
    time.sleep(2.0)
    idle = sum(memory_kb(p, "VmRSS") for p in target.pids)
    mark = target.mark()
    summary = spoof_flood(world, target, settings, udp=True)
    settle(target, 2.0, 120)
    hwm = sum(memory_kb(p, "VmHWM") for p in target.pids if alive(p))
    after = sum(memory_kb(p, "VmRSS") for p in target.pids if alive(p))
    survived = all(alive(p) for p in target.pids)
    alerts = [line for line in target.lines(mark) if is_alert(line)]
    sources = len({line.src for line in alerts if line.src})
    probe, _missed = latency_samples(world, target, 1, world.fresh4, VICTIM4, 10.0) if survived else ([], 1)
    after_probe = f"detects a new probe after it ({ms(probe[0])})" if probe else "NO alert for a new probe in 10 s"
    n = len(target.pids)
    results.put("idle RSS (atcp+audp)", who, f"{idle / 1024:.1f} MB" + (f" ({n} processes)" if n > 1 else ""))
    results.put(f"peak RSS, {summary.get('sent', 0):,} spoofed sources", who,
                f"{hwm / 1024:.1f} MB (VmHWM); {after / 1024:.1f} MB after; "
                f"{'alive' if survived else 'DIED'}; {after_probe}; "
                f"{len(alerts):,} alert lines, {sources:,} sources named; sent in {summary.get('seconds')} s")
    results.raw[f"memory/{who}"] = {"idle_kb": idle, "hwm_kb": hwm, "after_kb": after, "alert_lines": len(alerts),
                                    **summary}
    if who == "ours":
        results.metric["idle_kb"] = max(results.metric.get("idle_kb", 0), idle)
        results.metric["hwm_kb"] = hwm
        results.metric["alive"] = float(survived and bool(probe))


def section_memory(world: World, results: Results, settings: Settings) -> None:
    """RSS under a spoofed flood: ours logs to a journald of its own, PortSentry to a harness /dev/log."""
    start_ours(world, ("atcp", "audp"), log_target="private-journal")
    try:
        memory_run(world, world.ours, settings, "ours", results)
    finally:
        world.ours.stop()
    start_ps(world, ("atcp", "audp"))
    try:
        memory_run(world, world.ps, settings, "portsentry", results)
    finally:
        world.ps.stop()


def f2b_stages(log: str, sent: dict[str, float]) -> dict[str, list[float]]:
    """Seconds from each sample's first probe to fail2ban's own 'Found' and 'Ban' log lines."""
    stages: dict[str, list[float]] = {"Found": [], "Ban": []}
    seen: set[tuple[str, str]] = set()
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*\[portsentry\] (Found|Ban) (\S+)", line)
        if not match or match.group(4) not in sent or (match.group(3), match.group(4)) in seen:
            continue
        seen.add((match.group(3), match.group(4)))
        at = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
        stages[match.group(3)].append(at - sent[match.group(4)])
    return stages


def ban_jail_local(uid: int) -> str:
    """The test .local: journal lines of the sensor's UID (no systemd unit here); lab addresses exempt."""
    return (f"[portsentry]\njournalmatch = _UID={uid}\n"
            "ignoreip = 127.0.0.0/8 ::1 192.0.2.0/24 2001:db8::/64\n")


def section_ban(world: World, results: Results, settings: Settings) -> None:
    """Scan-to-ban: first probe of a 10-port SYN scan -> address in the victim's nft set."""
    import tempfile

    from f2b import Fail2Ban
    from f2bbench import NftMonitor
    start_ours(world, ("atcp", "audp"))
    workdir = Path(tempfile.mkdtemp(prefix="psbench-f2b-", dir="/tmp"))
    f2b = Fail2Ban(world.lab, workdir, ban_jail_local(world.ours.user[1]))
    monitor = NftMonitor(world.lab)
    try:
        f2b.start()
        time.sleep(1.0)
        values: list[float] = []
        alert_part: list[float] = []
        missed = 0
        sent: dict[str, float] = {}
        for _ in range(settings.ban_samples):
            src = world.fresh4()
            mark = world.ours.mark()
            t0 = time.time()
            sent[src] = t0
            for port in range(20, 30):
                world.injector.send(*netio.packet(src, VICTIM4, port))
            if wait_until(lambda src=src: src in monitor.added, 10, step=0.005):  # type: ignore[misc]
                values.append(monitor.added[src] - t0)
                seen = [line.at for line in world.ours.lines(mark) if line.src == src]
                if seen:
                    alert_part.append(min(seen) - t0)
            else:
                missed += 1
            # A random gap: fail2ban polls on a fixed cycle, and a fixed gap would phase-lock the samples.
            time.sleep(random.uniform(0.3, 1.5))
        stages = f2b_stages(f2b.log_text(), sent)
        row = "scan-to-ban (first probe -> nft set), fail2ban + our jail pack"
        if values:
            results.put(row, "ours", f"median {statistics.median(values):.3f} s, p95 {pct(values, 0.95):.3f} s "
                        f"(n={len(values)}{f', {missed} missed' if missed else ''})")
            results.put("  of which first probe -> journal", "ours",
                        f"median {ms(statistics.median(alert_part))}" if alert_part else "n/a")
            for stage, vals in stages.items():
                if vals:
                    results.put(f"  of which first probe -> fail2ban '{stage}'", "ours",
                                f"median {ms(statistics.median(vals))}, p95 {ms(pct(vals, 0.95))}")
            results.raw["ban"] = [round(v, 4) for v in values]
            results.metric["ban"] = statistics.median(values)
            results.raw["ban_alert_part"] = [round(v, 4) for v in alert_part]
        else:
            results.put(row, "ours", f"no ban in 10 s ({missed} scans); f2b log: {f2b.log_tail(5)!r}")
        results.put(row, "portsentry", "n/a (bans itself if BLOCK_TCP=1; here 0)")
    finally:
        f2b.stop()
        monitor.close()
        world.ours.stop()
        shutil.rmtree(workdir, ignore_errors=True)


SECTIONS: dict[str, Callable[[World, Results, Settings], None]] = {
    "grid": section_grid, "latency": section_latency, "lines": section_lines,
    "cpu": section_cpu, "memory": section_memory, "ban": section_ban,
}
