"""A client-side pinger that measures outages to the millisecond.

Two halves in one file:

* the **program** (``python probe.py TARGET``, run inside the client
  namespace): an ICMP echo every ``--interval`` seconds (default 10 ms) over a
  raw socket, IPv4 or IPv6; every reply is written to stdout as a JSON line
  with its send time and the kernel's receive timestamp (``SO_TIMESTAMPNS``,
  so a descheduled prober does not inflate gaps), both on a timeline that a
  wall-clock step during the run does not move (:class:`_Timeline`). It stops on SIGTERM,
  SIGINT or when its stdin closes (the parent died), after a final ``end``
  line with the number of echoes sent;
* :class:`Probe`, the parent side: starts the program in a namespace, collects
  replies in a thread and computes :class:`ProbeResult` (longest gap between
  replies, lost echoes, time to first reply) for any window.

The program imports only the standard library: it is run by file path, so it
starts in a few tens of milliseconds without importing vipcore.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

SO_TIMESTAMPNS = 35
ICMP_ECHO, ICMP_ECHOREPLY = 8, 0
ICMP6_ECHO, ICMP6_ECHOREPLY = 128, 129
DEFAULT_INTERVAL = 0.01
#: SCHED_FIFO priority of the program, when it may have one: above the nodes' liveness workers (SCHED_RR 1).
#: The lab's client shares the machine's cores with the nodes; at a failover the survivors' agents and
#: workers delayed its echoes by 1-2 ms, which a gap counted as outage. A real client is not slowed by
#: the nodes' CPU use. It only ever sends an echo and reads replies, then sleeps in select.
REALTIME_PRIORITY = 10
#: An echo is "lost" when no reply came this long after it was sent.
LOSS_TIMEOUT = 0.25


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _echo(version: int, ident: int, seq: int) -> bytes:
    payload = b"vipcore-lab-probe"
    if version == 6:
        # The kernel computes the ICMPv6 checksum (it needs the pseudo-header).
        return struct.pack("!BBHHH", ICMP6_ECHO, 0, 0, ident, seq) + payload
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO, 0, _checksum(header + payload), ident, seq) + payload


def _parse_reply(version: int, data: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an echo reply, else None."""
    if version == 4:
        if len(data) < 20:
            return None
        data = data[(data[0] & 0x0F) * 4:]  # raw IPv4 sockets deliver the IP header
        want = ICMP_ECHOREPLY
    else:
        want = ICMP6_ECHOREPLY
    if len(data) < 8 or data[0] != want:
        return None
    _, _, _, ident, seq = struct.unpack("!BBHHH", data[:8])
    return ident, seq


class _Timeline:
    """The program's times: epoch seconds as of its start, advancing with the monotonic clock.

    The kernel stamps replies on the wall clock, which NTP or a resumed VM may
    step during a run (a CI machine once did, by about a second): a gap across
    the step would be off by the step. A stamp is converted to the monotonic
    clock with the offset at its read, and bounded by when the socket was last
    found empty and by the read itself.
    """

    def __init__(self, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.wall, self.monotonic = wall, monotonic
        self.base = wall() - monotonic()
        self.empty_at = float("-inf")

    def now(self) -> float:
        return self.monotonic() + self.base

    def drained(self, read_at: float) -> None:
        """The socket was found empty by a read started after ``read_at`` (monotonic)."""
        self.empty_at = read_at

    def stamp(self, seconds: int, nanoseconds: int, read_at: float) -> float:
        """A kernel stamp of a packet read at ``read_at`` (monotonic), on the timeline."""
        arrived = seconds + nanoseconds / 1e9 - (self.wall() - read_at)
        return min(read_at, max(self.empty_at, arrived)) + self.base


def _emit(out: TextIO, **record: Any) -> None:
    out.write(json.dumps(record, separators=(",", ":")) + "\n")
    out.flush()


def run_probe(target: str, interval: float, duration: float | None, out: TextIO = sys.stdout,
              watch_stdin: bool = False) -> int:
    """The program: ping ``target`` until told to stop; JSON lines on ``out``.

    With ``watch_stdin`` it also stops when its stdin reaches end of file.
    """
    address = ipaddress.ip_address(target)
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    proto = socket.IPPROTO_ICMP if address.version == 4 else socket.IPPROTO_ICMPV6
    sock = socket.socket(family, socket.SOCK_RAW, proto)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    ident = os.getpid() & 0xFFFF
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sent: dict[int, tuple[int, float]] = {}  # 16-bit seq -> (full seq, send time)
    unanswered: list[float] = []  # send times of echoes whose 16-bit seq was reused unanswered
    count = 0
    errors = 0
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        realtime = True
    except (OSError, AttributeError):  # not root (or no such policy): on time as the machine allows
        realtime = False
    timeline = _Timeline()
    start = time.monotonic()
    _emit(out, e="start", t=timeline.now(), target=target, interval=interval, id=ident, rt=realtime)
    next_send = start
    watch: list[Any] = [sock, sys.stdin] if watch_stdin else [sock]
    while not stopping:
        now = time.monotonic()
        if duration is not None and now - start >= duration:
            break
        if now >= next_send:
            try:
                sock.sendto(_echo(address.version, ident, count & 0xFFFF), (target, 0))
            except OSError:
                errors += 1  # e.g. no neighbour yet; the echo counts as sent and lost
            if count & 0xFFFF in sent:
                unanswered.append(sent[count & 0xFFFF][1])
            sent[count & 0xFFFF] = (count, timeline.now())
            count += 1
            # Never burst to catch up after a stall: keep the cadence from now.
            next_send = max(next_send + interval, now + interval / 2)
            continue
        try:
            ready, _, _ = select.select(watch, [], [], max(0.0, next_send - now))
        except InterruptedError:
            continue
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            break  # the parent went away
        if sock not in ready:
            continue
        read_at = time.monotonic()
        while True:
            try:
                data, ancdata, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
            except BlockingIOError:
                timeline.drained(read_at)
                break
            read_at = time.monotonic()
            parsed = _parse_reply(address.version, data)
            if parsed is None or parsed[0] != ident or parsed[1] not in sent:
                continue
            rx = read_at + timeline.base
            for level, kind, value in ancdata:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    rx = timeline.stamp(sec, nsec, read_at)
            seq, tx = sent.pop(parsed[1])
            _emit(out, e="r", s=seq, tx=round(tx, 6), rx=round(rx, 6))
    unanswered += [tx for _, tx in sent.values()]
    _emit(out, e="end", t=timeline.now(), sent=count, errors=errors, unanswered=[round(t, 6) for t in sorted(unanswered)])
    sock.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="ICMP echo every INTERVAL seconds; JSON lines out")
    parser.add_argument("target")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--watch-stdin", action="store_true", help="stop when stdin closes")
    args = parser.parse_args(argv)
    return run_probe(args.target, args.interval, args.duration, watch_stdin=args.watch_stdin)


# -- the parent side ------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """What the client saw in a window of a probe's life. Times are epoch seconds."""

    target: str
    sent: int
    received: int
    lost: int
    #: Longest time between two consecutive replies (or from the last reply to
    #: the end of the window when replies never came back), seconds.
    longest_gap: float
    gap_start: float | None
    #: Whether replies came back after the longest gap.
    recovered: bool
    #: From the probe's start to its first reply, seconds (None: no reply at all).
    first_reply: float | None

    @property
    def longest_gap_ms(self) -> float:
        return self.longest_gap * 1000.0

    def summary(self) -> str:
        first = f"{self.first_reply * 1000:.0f} ms" if self.first_reply is not None else "never"
        outage = f"{self.longest_gap_ms:.0f} ms" + ("" if self.recovered else " (not recovered)")
        return (f"{self.target}: longest gap {outage}, {self.lost} of {self.sent} echoes lost, "
                f"first reply after {first}")


@dataclass
class _Replies:
    started: float | None = None
    ended: float | None = None
    sent: int | None = None
    interval: float = DEFAULT_INTERVAL
    #: Send times of echoes never answered (known once the program ended).
    unanswered: list[float] | None = None
    #: (seq, tx, rx) in arrival order.
    items: list[tuple[int, float, float]] = field(default_factory=list)


class Probe:
    """Runs the probe program in a namespace and measures what it sees.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The
    program's stdin is a pipe from this process: if this process dies, the
    program stops by itself.
    """

    def __init__(self, netns: str, target: str, interval: float = DEFAULT_INTERVAL) -> None:
        self.netns = netns
        self.target = str(ipaddress.ip_address(target))
        self.interval = interval
        self._data = _Replies(interval=interval)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self.stderr = ""
        #: Whether the program runs at real-time priority (:data:`REALTIME_PRIORITY`); known once started.
        self.realtime: bool | None = None

    def start(self) -> "Probe":
        """Start the program; LabError if it does not report its start within 10 s."""
        from vipcore.core.errors import LabError  # here, not at the top: the program side imports nothing of vipcore

        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-I", str(Path(__file__).resolve()),
                self.target, "--interval", str(self.interval), "--watch-stdin"]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"probe-{self.target}", daemon=True)
        self._reader.start()
        with self._changed:
            if not self._changed.wait_for(lambda: self._data.started is not None or self._done(), timeout=10):
                self._kill()
                raise LabError(f"probe to {self.target} did not start within 10 s")
        if self._data.started is None:
            detail = self._proc.stderr.read().strip().splitlines() if self._proc.stderr else []
            raise LabError(f"probe to {self.target} failed: {detail[-1] if detail else 'no output'}")
        return self

    def _done(self) -> bool:
        return self._proc is not None and self._proc.poll() is not None and self._data.ended is not None

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                kind = record.get("e")
                if kind == "r":
                    self._data.items.append((int(record["s"]), float(record["tx"]), float(record["rx"])))
                elif kind == "start":
                    self._data.started = float(record["t"])
                    self.realtime = record.get("rt") is True
                elif kind == "end":
                    self._data.ended = float(record["t"])
                    self._data.sent = int(record["sent"])
                    self._data.unanswered = [float(t) for t in record.get("unanswered", [])]
                self._changed.notify_all()
        with self._changed:
            if self._data.ended is None:
                self._data.ended = time.time()
            self._changed.notify_all()

    def wait_replies(self, count: int = 1, *, after: float | None = None, timeout: float = 5.0) -> bool:
        """Wait until ``count`` replies were received after epoch time ``after`` (default: ever)."""
        def enough() -> bool:
            return sum(1 for _, _, rx in self._data.items if after is None or rx > after) >= count
        with self._changed:
            return self._changed.wait_for(lambda: enough() or self._data.ended is not None, timeout=timeout) \
                and enough()

    def replies(self) -> list[float]:
        """Kernel receive times (epoch seconds) of every reply so far, in arrival order."""
        with self._lock:
            return [rx for _, _, rx in self._data.items]

    def last_reply(self) -> float | None:
        with self._lock:
            return self._data.items[-1][2] if self._data.items else None

    def result(self, *, after: float | None = None, until: float | None = None) -> ProbeResult:
        """Statistics for replies around ``after`` .. ``until`` (epoch seconds).

        The longest gap counts every pair of consecutive replies whose later
        one arrived after ``after``, so a gap that spans ``after`` counts whole.
        """
        with self._lock:
            data = _Replies(self._data.started, self._data.ended, self._data.sent, self._data.interval,
                            None if self._data.unanswered is None else list(self._data.unanswered),
                            list(self._data.items))
        end = until if until is not None else (data.ended or time.time())
        rx_times = sorted(rx for _, _, rx in data.items if rx <= end)
        longest, gap_start, recovered = 0.0, None, True
        for earlier, later in zip(rx_times, rx_times[1:]):
            if (after is None or later > after) and later - earlier > longest:
                longest, gap_start = later - earlier, earlier
        if rx_times and end - rx_times[-1] > max(longest, 5 * data.interval):
            longest, gap_start, recovered = end - rx_times[-1], rx_times[-1], False
        if not rx_times:
            longest, gap_start, recovered = end - (after or data.started or end), after, False
        # Echoes sent in the window and old enough to have been answered.
        begin = after if after is not None else float("-inf")
        horizon = end - LOSS_TIMEOUT
        received = sum(1 for _, tx, rx in data.items if begin <= tx <= horizon and rx <= end)
        if data.unanswered is not None:
            lost = sum(1 for tx in data.unanswered if begin <= tx <= horizon)
        else:
            # Still running: echoes below the newest answered sequence number that have no reply.
            answered = sorted(seq for seq, tx, _ in data.items if begin <= tx <= horizon)
            lost = (answered[-1] - answered[0] + 1 - len(answered)) if answered else 0
        first_reply = (min(rx_times) - data.started) if rx_times and data.started is not None else None
        return ProbeResult(target=self.target, sent=received + lost, received=received, lost=lost,
                           longest_gap=longest, gap_start=gap_start, recovered=recovered, first_reply=first_reply)

    def stop(self, *, after: float | None = None) -> ProbeResult:
        """Stop the program and return the result (see :meth:`result`)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._kill()
        if self._reader is not None:
            self._reader.join(5)
        if self._proc is not None and self._proc.stderr is not None:
            self.stderr = self._proc.stderr.read()
        self._close()
        return self.result(after=after)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def _close(self) -> None:
        if self._proc is not None:
            for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass

    def __enter__(self) -> "Probe":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self.stop()


if __name__ == "__main__":
    sys.exit(main())
