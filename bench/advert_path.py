"""native_vrrp's advert path in Python alone: CPU per periodic advert of many masters, no sockets.

Run: .venv/bin/python bench/advert_path.py [--routers N] [--interval S] [--trials N] [--seconds S] [--receive]

``--routers`` masters (default 128: one node holding 64 dual-stack groups)
run in one event loop with the real sans-IO router, driver and batched
timers, coming up one after the other over an interval (as a node joins its
groups: started together, they would share timers by accident); their link
counts sends instead of making syscalls. CPU time of the process
(``time.process_time``) per advert sent, and the timer wake-ups per second,
per trial; the table gives median and p95 over the trials. What the lab's
CPU section (``failover.py --sections cpu``) adds on top is the kernel's
side of each ``sendmsg`` and the agent's other work.

``--receive`` measures the other side: ``--routers`` backups, each handed
its master's unchanged periodic advert once per interval (as the link
hands them over after ``recvmsg``; the kernel's side is not counted), the
CPU per received advert.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core.model import Family, IPAddress  # noqa: E402
from vipcore.net.addresses import AnnounceSchedule  # noqa: E402
from vipcore_native_vrrp.driver import RouterDriver  # noqa: E402
from vipcore_native_vrrp.protocol import Advertisement, Router, RouterConfig, Send, encode  # noqa: E402
from vipcore_native_vrrp.timers import TimerBatch  # noqa: E402
from vipcore_native_vrrp.transport import Handler, LinkCounters  # noqa: E402


class CountingLink:
    """A link that counts what it would send."""

    def __init__(self) -> None:
        self.handlers: dict[int, Handler] = {}
        self.counters = LinkCounters()

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
        self.counters.sent += 1
        return True

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        self.counters.sent += 1


async def trial(routers: int, interval: float, seconds: float) -> tuple[float, float]:
    """µs of CPU per advert and timer wake-ups per second over ``seconds`` of ``routers`` masters."""
    loop = asyncio.get_running_loop()
    link, batch = CountingLink(), TimerBatch(loop)
    drivers = []
    for i in range(routers):
        # Masters come up one after the other over an interval, as on a node that joins its groups.
        await asyncio.sleep(interval / routers)
        config = RouterConfig(
            vrid=1 + i % 255, family=Family.IPV4, primary=ipaddress.IPv4Address("198.51.100.11"),
            vips=(ipaddress.IPv4Address(f"198.51.100.{100 + i % 150}"),), priority=254,
            interval_cs=RouterConfig.seconds(interval), destinations=(ipaddress.IPv4Address("224.0.0.18"),),
        )
        driver = RouterDriver(group=f"group-{i}", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                              holder=None, schedule=AnnounceSchedule(count=0), report=lambda *a: None,  # type: ignore[arg-type]
                              loop=loop, batch=batch)
        driver.router.start(loop.time())
        driver.router.takeover(loop.time(), "bench")  # master; its address work is not carried out here
        driver.feed([])
        drivers.append(driver)
    await asyncio.sleep(2 * interval)  # past the first round
    sent, cpu, armed = link.counters.sent, time.process_time(), batch.armed
    await asyncio.sleep(seconds)
    cpu, sent, armed = time.process_time() - cpu, link.counters.sent - sent, batch.armed - armed
    for driver in drivers:
        await driver.close()
    return cpu / max(1, sent) * 1e6, armed / seconds


async def receive_trial(routers: int, interval: float, seconds: float) -> tuple[float, float]:
    """µs of CPU per received advert, over ``seconds``, for ``routers`` backups hearing their master."""
    loop = asyncio.get_running_loop()
    link, batch = CountingLink(), TimerBatch(loop)
    group = ipaddress.IPv4Address("224.0.0.18")
    members = [ipaddress.IPv4Address(f"198.51.100.{11 + i}") for i in range(3)]
    feeds, drivers = [], []
    for i in range(routers):
        vips = (ipaddress.IPv4Address(f"203.0.113.{1 + i % 250}"),)
        config = RouterConfig(
            vrid=1 + i % 255, family=Family.IPV4, primary=members[1], vips=vips, priority=150,
            interval_cs=RouterConfig.seconds(interval), destinations=(group,), sources=frozenset(members),
            peer_priorities={members[0]: 200, members[1]: 150, members[2]: 100},
        )
        driver = RouterDriver(group=f"group-{i}", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                              holder=None, schedule=AnnounceSchedule(count=0), report=lambda *a: None,  # type: ignore[arg-type]
                              loop=loop, batch=batch, on_master=lambda: None)
        driver.start()
        advert = encode(Advertisement(config.vrid, 200, config.interval_cs, vips), members[0], group)
        feeds.append((driver._on_packet, advert))
        drivers.append(driver)
    received = 0

    def deliver() -> None:
        nonlocal received
        for handler, advert in feeds:
            handler(advert, members[0], group, 255)
        received += len(feeds)
        loop.call_later(interval, deliver)

    deliver()
    await asyncio.sleep(2 * interval)
    count, cpu = received, time.process_time()
    await asyncio.sleep(seconds)
    cpu, count = time.process_time() - cpu, received - count
    for driver in drivers:
        await driver.close()
    return cpu / max(1, count) * 1e6, 0.0


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--routers", type=int, default=128, help="masters in the loop (default 128)")
    parser.add_argument("--interval", type=float, default=0.1, help="advert interval in seconds (default 0.1)")
    parser.add_argument("--trials", type=int, default=10, help="trials (default 10)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per trial (default 3)")
    parser.add_argument("--receive", action="store_true",
                        help="backups hearing their master's advert instead of masters sending")
    args = parser.parse_args()
    run = receive_trial if args.receive else trial
    trials = [asyncio.run(run(args.routers, args.interval, args.seconds)) for _ in range(args.trials)]
    results = [cost for cost, _ in trials]
    wakeups = [rate for _, rate in trials]
    adverts = args.routers / args.interval
    rows: list[Any] = [
        ("µs CPU per advert", f"{statistics.median(results):.1f}", f"{p95(results):.1f}"),
        ("CPU s / min", f"{statistics.median(results) * adverts * 60 / 1e6:.2f}",
         f"{p95(results) * adverts * 60 / 1e6:.2f}"),
    ]
    if not args.receive:
        rows.append(("timer wake-ups / s", f"{statistics.median(wakeups):.1f}", f"{p95(wakeups):.1f}"))
    print(f"{args.routers} {'backups hearing' if args.receive else 'masters,'} adverts every {args.interval:g} s ({adverts:.0f} / s), "
          f"{args.trials} trials of {args.seconds:g} s; Python only (no syscalls)")
    print(f"{'':<20}{'median':>8}{'p95':>8}")
    for name, median, worst in rows:
        print(f"{name:<20}{median:>8}{worst:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
