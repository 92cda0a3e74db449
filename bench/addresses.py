"""The address holder's hot path: what adding, removing and announcing a VIP costs after a failover decision.

Run (root: it makes a network namespace ``<prefix>Ad``):

    sudo .venv/bin/python bench/addresses.py [--trials N] [--burst N] [--prefix vcAb]

One :class:`~vipcore.net.addresses.AddressHolder` in a namespace with one
veth. Rows:

- ``add`` / ``remove`` / ``announce``: one VIP per call, calls one after the
  other (a lone router taking over): wall time per call.
- ``burst add`` / ``burst remove``: ``--burst`` callers (half IPv4, half
  IPv6, default 128: the routers of a node holding 64 dual-stack groups)
  in the same loop pass, as when the node holding them dies: wall time
  from the first call to the last answer, per trial, and per address.
- ``probe round``: one round of the split-brain probe
  (``AddressHolder.responders``) over the ``--burst`` VIPs while they are
  held, without listening for answers: the interface's address dump and
  one ARP request or Neighbor Solicitation per VIP (``--burst 510``: a node
  holding 255 dual-stack groups).

The CPU column is the process's CPU time per address (``time.process_time``,
the kernel's work in our system calls included). Median and p95 over the
trials.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core.model import IPAddress  # noqa: E402
from vipcore.net.addresses import AddressHolder  # noqa: E402


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (the maximum for fewer than 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def vips(n: int) -> list[IPAddress]:
    half = n // 2
    return ([ipaddress.IPv4Address(f"198.51.100.{1 + i}") for i in range(half)]
            + [ipaddress.IPv6Address(f"2001:db8:ad::{1 + i:x}") for i in range(n - half)])


async def timed(call: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """(wall ms, CPU ms) of one awaited call."""
    wall, cpu = time.perf_counter(), time.process_time()
    await call()
    return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


async def measure(netns: str, link: str, trials: int, burst: int) -> dict[str, tuple[list[float], list[float]]]:
    rows: dict[str, tuple[list[float], list[float]]] = {
        name: ([], []) for name in ("add", "remove", "announce", "burst add", "burst remove", "probe round")}
    many = vips(burst)
    one = many[:1] + many[burst // 2: burst // 2 + 1]  # an IPv4 and an IPv6 VIP, alternately
    async with AddressHolder(netns=netns) as holder:
        # The steady state: sockets opened (netlink, ARP, ND: each a fork in
        # another namespace), the link read.
        await holder.add(link, one)
        await holder.announce(link, one)
        await holder.remove(link, one)
        for trial in range(trials):
            vip = one[trial % 2]
            for name, call in (("add", lambda: holder.add(link, [vip])),
                               ("announce", lambda: holder.announce(link, [vip])),
                               ("remove", lambda: holder.remove(link, [vip]))):
                wall, cpu = await timed(call)
                rows[name][0].append(wall)
                rows[name][1].append(cpu)
        # Bursts after the single calls: the kernel's deferred work after a
        # mass removal (IPv6 route cleanup) must not land on a single add.
        for trial in range(trials):
            for name, method in (("burst add", holder.add), ("burst remove", holder.remove)):
                wall, cpu = await timed(lambda: asyncio.gather(*(method(link, [v]) for v in many)))
                rows[name][0].append(wall)
                rows[name][1].append(cpu / burst)
        await holder.add(link, many)
        for trial in range(trials):
            wall, cpu = await timed(lambda: holder.responders(link, many, wait=0.0))
            rows["probe round"][0].append(wall)
            rows["probe round"][1].append(cpu / burst)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--burst", type=int, default=128)
    parser.add_argument("--prefix", default="vcAb", help="namespace/link prefix (default vcAb)")
    args = parser.parse_args()
    netns, link = f"{args.prefix}Ad", f"{args.prefix}Ad0"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", link, "type", "veth", "peer", "name", f"{link}p"],
                       check=True)
        for name in (link, f"{link}p"):
            subprocess.run(["ip", "-n", netns, "link", "set", name, "up"], check=True)
        rows = asyncio.run(measure(netns, link, args.trials, args.burst))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    print(f"{args.trials} trials; burst = {args.burst} callers, one VIP each (half IPv4, half IPv6)")
    print(f"{'operation':<14} {'wall median ms':>15} {'wall p95 ms':>12} {'per address ms':>15} {'CPU/address ms':>15}")
    for name, (wall, cpu) in rows.items():
        per = args.burst if name.startswith(("burst", "probe")) else 1
        print(f"{name:<14} {statistics.median(wall):>15.3f} {p95(wall):>12.3f} "
              f"{statistics.median(wall) / per:>15.3f} {statistics.median(cpu):>15.3f}")


if __name__ == "__main__":
    main()
