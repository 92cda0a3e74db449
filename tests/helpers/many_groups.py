"""Run the native_vrrp backend with N synthetic dual-stack groups (no agent).

Used by the lab test that checks stability with many groups at a small
advert interval::

    ip netns exec NS python -m tests.helpers.many_groups --node node-a --groups 16 --interval 0.02

Once its groups are joined it prints ``ready`` and reads the measurement
window, ``START END`` (wall-clock seconds), from stdin. Membership comes from the core (:func:`vipcore.core.resolve.membership`), so
every node computes the same priorities. Prints one JSON object at the end:
transitions per (group, family) after the settle time, the final masters,
and the process CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
import signal
import sys
import time

from vipcore.backend import BackendContext
from vipcore.core.model import Node, State, StateChange, VipGroup
from vipcore.core.resolve import membership
from vipcore_native_vrrp.backend import NativeVrrpBackend

NODES = [
    Node(name, (ipaddress.IPv4Address(f"198.51.100.{i}"), ipaddress.IPv6Address(f"2001:db8:100::{i}")))
    for name, i in (("node-a", 11), ("node-b", 12), ("node-c", 13))
]


def groups(count: int) -> list[VipGroup]:
    return [
        VipGroup(
            name=f"{i:064x}-eth0", interface="eth0", nodes=tuple(n.name for n in NODES), vrid=i + 1,
            vips_v4=(ipaddress.IPv4Address(f"198.51.100.{100 + i}"),),
            vips_v6=(ipaddress.IPv6Address(f"2001:db8:100::{0x100 + i:x}"),),
        )
        for i in range(count)
    ]


async def main(args: argparse.Namespace) -> None:
    changes: list[StateChange] = []
    backend = NativeVrrpBackend()
    loop = asyncio.get_running_loop()
    context = BackendContext(
        node=args.node, config={"advert_interval": args.interval}, report=changes.append,
        is_managed=lambda a: a.version == 4 and str(a).startswith("198.51.100.1"), backend_name="native_vrrp",
    )
    await backend.vipcore_backend_start(context)
    for group in groups(args.groups):
        await backend.vipcore_group_join(membership(group, args.node, NODES))
    lags: list[float] = []

    async def monitor() -> None:
        # How late the loop runs a 5 ms sleep: stalls promote backups.
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - start - 0.005)

    monitor_task = asyncio.create_task(monitor())
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Every node measures the same wall-clock window, given on stdin once
    # every node said it is ready; then it keeps running a moment so that
    # other nodes stopping is not counted.
    print("ready", flush=True)
    window = await loop.run_in_executor(None, sys.stdin.readline)
    start, end = (float(v) for v in window.split())
    await asyncio.sleep(max(0.0, start - time.time()))
    settled = len(changes)
    lags.clear()
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, end - time.time()))
    except asyncio.TimeoutError:
        pass
    later = changes[settled:]
    measured_lags = list(lags)
    masters = sorted(
        f"{driver.vrid}/{family.k8s_name}"
        for name, drivers in backend.routers.items()
        for family, driver in drivers.items()
        if driver.router.state is State.MASTER
    )
    await asyncio.sleep(1.0)
    monitor_task.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    await backend.vipcore_backend_stop(graceful=False)
    print(json.dumps({
        "node": args.node,
        "transitions_after_settle": len(later),
        "reasons": sorted({c.reason for c in later}),
        "masters": masters,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "max_loop_lag": max(measured_lags, default=0.0),
        "loop_lags_over_20ms": sum(1 for lag in measured_lags if lag > 0.02),
        "first_reasons": [f"{c.family.k8s_name} {c.old.value}->{c.new.value} {c.reason}" for c in later[:6]],
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.02)
    asyncio.run(main(parser.parse_args()))
