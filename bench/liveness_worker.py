"""What the liveness worker process costs: start time, memory, CPU at rest and with sessions.

Run: sudo .venv/bin/python bench/liveness_worker.py [--runs N] [--sessions 0,8,64] [--seconds S]
Root, for a network namespace of its own (anonymous: it goes when the bench exits):
the worker's sockets are plain UDP sockets there, its peers 127.0.0.x addresses on that
namespace's loopback where nothing listens on port 3784. No packet reaches any other
interface.

Prints median and p95 over ``--runs`` workers of:

- ``start``: spawn to the worker's ``ready`` frame (``python -m``, imports, socket setup);
- ``rss``: resident memory after start, MiB;
- ``cpu``: CPU seconds per minute of the worker process (user + system) with N sessions
  sending at the fast rate (the sessions never come Up, so the bench uses a slow interval
  equal to the fast one to make them send as often as Up sessions do).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.ops.tables import render_table  # noqa: E402
from vipcore_native_vrrp.liveness.detector import Detector  # noqa: E402
from vipcore_native_vrrp.liveness.session import SessionConfig  # noqa: E402


class LoopbackDetector(Detector):
    def _open(self) -> tuple[socket.socket, socket.socket]:
        recv, send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.bind(("127.0.0.1", 0))
        send.bind(("127.0.0.1", 0))
        return recv, send


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one(sessions: int, seconds: float) -> tuple[float, float, float]:
    loop = asyncio.get_running_loop()
    config = SessionConfig(desired_min_tx=0.01, required_min_rx=0.01, detect_mult=4, slow_interval=0.01)
    detector = LoopbackDetector("lo", ipaddress.ip_address("127.0.0.1"), config, loop=loop,
                                on_change=lambda *args: None, realtime=False)
    detector.start()
    try:
        while detector.start_seconds is None:
            await asyncio.sleep(0.001)
        start, rss = detector.start_seconds, detector.worker_rss
        pid = detector.pid
        assert pid is not None
        detector.set_peers([ipaddress.ip_address(f"127.0.0.{10 + i}") for i in range(sessions)])
        before = cpu_seconds(pid)
        await asyncio.sleep(seconds)
        cpu = (cpu_seconds(pid) - before) / seconds * 60
    finally:
        detector.close(graceful=False)
    return start, rss / 2**20, cpu


def own_namespace() -> None:
    """Move this process (one thread so far) to a fresh network namespace with only its loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise SystemExit(f"bench/liveness_worker.py needs root (a network namespace of its own): "
                         f"{os.strerror(ctypes.get_errno())}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sessions", default="0,8,64")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    own_namespace()
    rows = []
    for count in (int(s) for s in args.sessions.split(",")):
        results = [asyncio.run(one(count, args.seconds)) for _ in range(args.runs)]
        starts, rsss, cpus = ([r[i] for r in results] for i in range(3))
        rows.append([str(count), f"{statistics.median(starts) * 1000:.0f} / {percentile(starts, 0.95) * 1000:.0f}",
                     f"{statistics.median(rsss):.1f} / {percentile(rsss, 0.95):.1f}",
                     f"{statistics.median(cpus):.2f} / {percentile(cpus, 0.95):.2f}"])
    print(render_table(["sessions", "start ms (median / p95)", "RSS MiB", "CPU s/min"], rows))


if __name__ == "__main__":
    main()
