"""Legitimate HTTP load, run inside the attacker namespace: N requests, new connection each.

A new TCP connection per request is the fair test: every SYN reaches a raw
socket sensor, and PortSentry's raw socket sees every packet of every
connection.  Bounded by --requests and --max-seconds; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def worker(host: str, port: int, todo: list[int], done: list[int], deadline: float) -> None:
    """Take request tickets until none are left or time is up."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while todo and time.monotonic() < deadline:
        todo.pop()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(request)
            await writer.drain()
            data = await reader.read()
            writer.close()
            if data.startswith(b"HTTP/1.1 200"):
                done[0] += 1
            else:
                done[1] += 1
        except OSError:
            done[1] += 1


async def main(args: argparse.Namespace) -> dict[str, float]:
    """Run the workers; return the totals."""
    todo = list(range(args.requests))
    done = [0, 0]
    start = time.monotonic()
    deadline = start + args.max_seconds
    await asyncio.gather(*(worker(args.host, args.port, todo, done, deadline)
                           for _ in range(args.concurrency)))
    seconds = time.monotonic() - start
    return {"ok": done[0], "failed": done[1], "seconds": round(seconds, 3),
            "per_second": round(done[0] / seconds, 1)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=80)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
    sys.exit(0)
