"""What the liveness worker process costs: start time, memory, CPU at rest and with sessions.

Run: sudo .venv/bin/python bench/liveness_worker.py [--runs N] [--sessions 0,2,8] [--seconds S] [--against TREE]
(``--against``: an export of another commit, e.g. ``git archive main | tar -x -C /tmp/main``, whose
worker runs next to this tree's in the same windows: before / after on a shared machine.)
Root, for a network namespace of its own (anonymous: it goes when the bench exits):
the workers' sockets are plain UDP sockets on that namespace's loopback (127.0.0.x).
No packet reaches any other interface.

Prints median and p95 over ``--runs`` workers of:

- ``start``: spawn to the worker's ``ready`` frame (``python -m``, imports, socket setup);
- ``rss``: resident memory after start, MiB;
- CPU seconds per minute of the measured worker process (its time on a CPU, /proc/PID/schedstat),
  with N sessions:
  - ``never-up``: peers on addresses where nothing listens (the sessions never come Up; the
    bench uses a slow interval equal to the fast one so they send as often as Up sessions);
  - ``symmetric``: Up, N peer workers, every session fast both ways (the rule before
    asymmetric rates: a master watched its backups as closely as they watched it);
  - ``master``: Up, the measured worker asks its N peers for the relaxed rate (1 s) and they
    ask it for the fast one: the node holding every group, its backups watching it
    (N = 2: the master of a 3-node cluster);
  - ``backup``: Up, the reverse, N masters sending fast to a node that sends to them slowly.
  - ``bare``: not a worker: the floor under ``master``, a Python loop that only waits 7.5-10 ms in
    ``epoll`` (RFC 5880's jitter), sends one 24-byte datagram to each of N listening sockets and asks
    an epoll without waiting whether a packet came; wake-ups from its voluntary context switches.
  Each with the process's wake-ups per second (its voluntary context switches). ``-`` where the code under test has no
  asymmetric rates (run against an older tree with PYTHONPATH).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from vipcore_native_vrrp.liveness.packet import PORT, TTL, SessionState  # noqa: E402
from vipcore_native_vrrp.liveness.session import SessionConfig  # noqa: E402

_IP_RECVTTL = 12
MODES = ("never-up", "symmetric", "master", "backup", "bare")
#: The ``bare`` mode's process: what any sender at the fast rate pays per wake-up, with nothing else.
BARE_LOOP = """
import random, select, socket, sys
local, port = sys.argv[1], int(sys.argv[2])
dests = [(peer, port) for peer in sys.argv[3:]]
send, recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
send.bind((local, 0))
recv.bind((local, port))
recv.setblocking(False)
wait, ready = select.epoll(), select.epoll()
ready.register(recv.fileno(), select.EPOLLIN)
packet = bytes(24)
while True:
    wait.poll(0.01 * (0.75 + 0.25 * random.random()))
    for dest in dests:
        send.sendto(packet, dest)
    ready.poll(0)
"""


class LoopbackDetector(Detector):
    """A detector on the namespace's loopback: receives on ``local``:3784, sends from ``local`` with TTL 255."""

    def _open(self) -> tuple[socket.socket, socket.socket]:
        recv, send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
        send.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
        recv.bind((str(self.local), PORT))
        send.bind((str(self.local), 0))
        return recv, send


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """CPU time of the process so far, in nanoseconds' resolution (/proc/PID/schedstat: time on a CPU);
    utime + stime from /proc/PID/stat move in 10 ms ticks, 0.12 CPU-s/min over 5 s."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def address(index: int, rig: int = 0) -> ipaddress.IPv4Address:
    """The ``index``-th peer of the ``rig``-th measured worker (127.0.<rig>.1)."""
    return ipaddress.IPv4Address(f"127.0.{rig}.{10 + index}")


async def started(detector: Detector) -> None:
    detector.start()
    while detector.start_seconds is None:
        await asyncio.sleep(0.001)


def voluntary_switches(pid: int) -> int:
    """How often the process went to sleep (/proc/PID/status): its wake-ups."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


async def bare(sessions: int, seconds: float) -> tuple[float, float, float, float]:
    """The ``bare`` mode: (0, 0, CPU s/min, wake-ups/s) of BARE_LOOP sending to ``sessions`` sockets of ours."""
    loop = asyncio.get_running_loop()
    sinks = []
    for i in range(sessions):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind((str(address(i)), PORT))
        sink.setblocking(False)
        loop.add_reader(sink.fileno(), drain, sink)
        sinks.append(sink)
    process = subprocess.Popen([sys.executable, "-c", BARE_LOOP, "127.0.0.1", str(PORT),
                                *(str(address(i)) for i in range(sessions))])
    try:
        await asyncio.sleep(1.0)
        before, switches, at = cpu_seconds(process.pid), voluntary_switches(process.pid), time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - at
        cpu = (cpu_seconds(process.pid) - before) / elapsed * 60
        rate = (voluntary_switches(process.pid) - switches) / elapsed
    finally:
        process.kill()  # ours, by PID
        process.wait()
        for sink in sinks:
            loop.remove_reader(sink.fileno())
            sink.close()
    return 0.0, 0.0, cpu, rate


def drain(sink: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            sink.recv(128)


async def one(sessions: int, seconds: float, mode: str,
              trees: tuple[str | None, ...] = (None,)) -> list[tuple[float, float, float, float]]:
    """(start s, RSS MiB, CPU s/min, wake-ups/s) of one measured worker per tree (None: this one; else the
    root of another checkout, whose worker runs with PYTHONPATH pointing at it), all in the same window."""
    if mode == "bare":
        return [await bare(sessions, seconds)]
    loop = asyncio.get_running_loop()
    never_up = mode == "never-up"
    config = SessionConfig(desired_min_tx=0.01, required_min_rx=0.01, detect_mult=5,
                           slow_interval=0.01 if never_up else 1.0)
    rigs: list[tuple[Detector, list[Detector]]] = []
    try:
        for index, tree in enumerate(trees):
            rigs.append(await rig(tree, index, sessions, mode, config))
        if not never_up:
            deadline = time.monotonic() + 10
            while not all(s.state is SessionState.UP for measured, _ in rigs for s in measured.snapshot().values()):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: sessions never came Up: {[m.snapshot() for m, _ in rigs]}")
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.5)  # past the slow packets scheduled before the rates settled
        pids = [measured.pid for measured, _ in rigs]
        assert all(pid is not None for pid in pids)
        # Wake-ups from the kernel's count of the worker's sleeps: its stats frames (and their wake-up
        # counter) come only every ten stats intervals while nothing but counters changes.
        wakeups = [voluntary_switches(pid) for pid in pids if pid]
        before, at = [cpu_seconds(pid) for pid in pids if pid], time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - at
        return [(measured.start_seconds or 0.0, measured.worker_rss / 2**20,
                 (cpu_seconds(pid) - cpu) / elapsed * 60, (voluntary_switches(pid) - woke) / elapsed)
                for (measured, _), pid, cpu, woke in zip(rigs, [p for p in pids if p], before, wakeups)]
    finally:
        for measured, peers in rigs:
            for detector in (measured, *peers):
                detector.close(graceful=False)


async def rig(tree: str | None, index: int, sessions: int, mode: str,
              config: SessionConfig) -> tuple[Detector, list[Detector]]:
    """A measured worker on 127.0.<index>.1 (from ``tree`` if given) and its ``sessions`` peers (this tree's)."""
    loop = asyncio.get_running_loop()
    local = ipaddress.IPv4Address(f"127.0.{index}.1")
    measured = LoopbackDetector("lo", local, config, loop=loop, on_change=lambda *args: None, realtime=False,
                                stats_interval=0.5)
    saved = os.environ.get("PYTHONPATH")
    if tree is not None:  # the worker process inherits the environment when it is spawned
        os.environ["PYTHONPATH"] = f"{tree}:{tree}/backends/native_vrrp"
    try:
        await started(measured)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    everyone = [address(i, index) for i in range(sessions)]
    peers = [] if mode == "never-up" else [
        LoopbackDetector("lo", peer, config, loop=loop, on_change=lambda *args: None, realtime=False,
                         stats_interval=0.5) for peer in everyone]
    for peer in peers:
        await started(peer)
    measured.set_peers(everyone, relaxed=everyone if mode == "master" else [])
    for peer in peers:
        peer.set_peers([local], relaxed=[local] if mode == "backup" else [])
    return measured, peers


def own_namespace() -> None:
    """Move this process (one thread so far) to a fresh network namespace with only its loopback up."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise SystemExit(f"bench/liveness_worker.py needs root (a network namespace of its own): "
                         f"{os.strerror(ctypes.get_errno())}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def cell(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} / {percentile(values, 0.95):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--sessions", default="0,2,8")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--modes", default=",".join(MODES), help=f"a subset of: {', '.join(MODES)}")
    parser.add_argument("--against", metavar="TREE",
                        help="also measure the worker of another checkout (e.g. an export of main) in the same "
                             "windows, side by side: a shared machine's load hits both alike")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; known: {', '.join(MODES)}")
    trees: tuple[str | None, ...] = (None,) if not args.against else (str(Path(args.against).resolve()), None)
    labels = ["this tree"] if not args.against else ["against", "this tree"]
    own_namespace()
    rows = []
    for count in (int(s) for s in args.sessions.split(",")):
        starts: list[list[float]] = [[] for _ in trees]
        rsss: list[list[float]] = [[] for _ in trees]
        cells: list[list[str]] = [[] for _ in trees]
        for mode in modes:
            if count == 0 and mode != "never-up":
                for column in cells:
                    column.append("-")
                continue
            runs = [asyncio.run(one(count, args.seconds, mode, trees)) for _ in range(args.runs)]
            for t in range(len(trees)):
                done = [r[t if mode != "bare" else 0] for r in runs]
                if mode == "bare" and trees[t] is not None:
                    cells[t].append("-")  # the same loop whatever the tree: shown once
                    continue
                if mode != "bare":  # not a worker: no start time, no memory of its own to report
                    starts[t] += [r[0] for r in done]
                    rsss[t] += [r[1] for r in done]
                cells[t].append(f"{cell([r[2] for r in done])} ({statistics.median(r[3] for r in done):.0f}/s)")
        for t, label in enumerate(labels):
            rows.append([str(count), label, cell([s * 1000 for s in starts[t]], 0) if starts[t] else "-",
                         cell(rsss[t], 1) if rsss[t] else "-", *cells[t]])
    print(render_table(["sessions", "tree", "start ms", "RSS MiB", *(f"CPU s/min {m} (wake-ups)" for m in modes)],
                       rows))
    print("cells: median / p95 over the runs; wake-ups: median per second"
          + ("; against and this tree measured in the same windows" if args.against else ""))


if __name__ == "__main__":
    main()
