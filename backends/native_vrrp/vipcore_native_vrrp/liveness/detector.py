"""The liveness detector: BFD sessions with this node's peers on one interface, in a process of their own.

Why a process: detection must keep its timing while the agent is busy (a large
manifest parse, a slow backend hook, both cores saturated). A thread shares the
agent's interpreter lock and was measured to cry wolf on an oversubscribed node
(docs/native-vrrp.md, "Isolation"); a worker process
(:mod:`vipcore_native_vrrp.liveness.worker`) has an interpreter of its own and
runs at SCHED_RR 1 when allowed.

This class is the agent's side. It opens the two UDP sockets (RFC 5881: receive
on port 3784, send from one port in 49152..65535 with TTL 255) so that errors
surface here, at once, and hands them to the worker, which is the only one to use
them. Control frames (:mod:`.control`) go over a Unix socket pair; the agent reads
the worker's on the event loop (``loop.add_reader``): a late read only delays
acting on a change, it cannot make a session expire.

One worker per detector (per interface): a detector is one set of sockets bound
to one device, and a failing worker takes down the fast path of one interface only.

A worker that dies is logged naming the plugin, counted, and started again with
exponential backoff. Meanwhile the groups run on VRRP timers alone (no session
state change is reported, so nothing fails over early), and the agent sends
AdminDown for the sessions that were Up, from the socket it kept, so that peers
do not take the gap for a dead node.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable

import attrs

from vipcore.core.model import Family, IPAddress
from vipcore.net.addresses import TakeoverPlan, claim_sockets
from vipcore_native_vrrp import BACKEND_NAME
from vipcore_native_vrrp.liveness.control import Frame, FrameReader, encode
from vipcore_native_vrrp.liveness.packet import (
    PORT,
    SOURCE_PORTS,
    TTL,
    ControlPacket,
    Diagnostic,
    SessionState,
)
from vipcore_native_vrrp.liveness.packet import encode as encode_packet
from vipcore_native_vrrp.liveness.session import SessionConfig

log = logging.getLogger("vipcore_native_vrrp.liveness")

# Linux values Python 3.11's socket module does not name.
_IP_RECVTTL = 12
_IP_TTL = 2
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)

WORKER_MODULE = "vipcore_native_vrrp.liveness.worker"
#: Restart delays after a worker died: doubling from the first to the last, reset after a stable run.
RESTART_BACKOFF = (0.05, 5.0)
STABLE_RUN = 30.0
#: Bound on a close: the worker repeats AdminDown for a few tens of milliseconds, then exits.
CLOSE_BOUND = 1.5

#: ``on_change(peer, old, new, diagnostic)``, called on the event loop.
ChangeCallback = Callable[[IPAddress, SessionState, SessionState, Diagnostic], None]


@attrs.frozen
class SessionView:
    """What the agent knows of one session (from the worker's change and stats frames)."""

    state: SessionState = SessionState.DOWN
    #: Times the session left Up while this detector ran it (across worker restarts).
    flaps: int = 0
    detection_time: float = 0.0
    received: int = 0
    sent: int = 0
    my_discriminator: int = 0
    your_discriminator: int = 0
    tx_interval: float = 0.0
    #: What we ask the peer for (RFC 5880 Required Min RX): the fast interval, or the relaxed one.
    required_min_rx: float = 0.0
    #: Longest time between two packets from the peer while Up (worker's view; reset by a restart).
    longest_silence: float = 0.0


@attrs.frozen
class WorkerClaim:
    """What the worker did at a session's expiry with the peer's takeover plan (its ``change`` frame's
    ``claim``), times on the monotonic clock both processes share (``loop.time()``)."""

    #: When it acted on the expiry, sent the address datagram(s), had every ack (None: not all read, or
    #: an error other than "already there"), and sent the announcement frames (None: not sent).
    expired: float
    sent: float
    acked: float | None
    announced: float | None
    #: Every address confirmed in the kernel.
    ok: bool
    #: The addresses the plan put in (as the agent named them in it); the errno of the first failure (0: none).
    vips: tuple[IPAddress, ...] = ()
    error: int = 0

    @classmethod
    def from_frame(cls, value: object) -> "WorkerClaim | None":
        """None for anything that is not a claim as the worker writes it."""
        if not isinstance(value, dict):
            return None

        def time_or_none(key: str) -> float | None:
            item = value.get(key)
            return float(item) if isinstance(item, (int, float)) and not isinstance(item, bool) else None

        expired, sent = time_or_none("expired"), time_or_none("sent")
        if expired is None or sent is None:
            return None
        vips, error = value.get("vips", []), value.get("error", 0)
        try:
            addresses = tuple(ipaddress.ip_address(vip) for vip in vips) if isinstance(vips, list) else ()
        except ValueError:
            return None
        return cls(expired=expired, sent=sent, acked=time_or_none("acked"), announced=time_or_none("announced"),
                   ok=value.get("ok") is True, vips=addresses, error=error if isinstance(error, int) else 0)


class Detector:
    """BFD sessions with a set of peers reachable on ``interface``, sending from ``local``, in a worker process."""

    def __init__(self, interface: str, local: IPAddress, config: SessionConfig, *,
                 loop: asyncio.AbstractEventLoop, on_change: ChangeCallback,
                 clock: Callable[[], float] = time.monotonic, realtime: bool = True,
                 stats_interval: float = 0.5) -> None:
        self.interface = interface
        self.local = local
        self.family = Family.IPV4 if local.version == 4 else Family.IPV6
        self.config = config
        self.loop = loop
        self.on_change = on_change
        self.clock = clock
        self.realtime = realtime
        self.stats_interval = stats_interval
        #: Whether the worker runs with a real-time scheduling policy (it says so when ready).
        self.scheduled_realtime = False
        self.sessions: dict[IPAddress, SessionView] = {}
        #: Per peer, when the worker last heard it (``clock()`` time, from its change frames).
        self.last_heard: dict[IPAddress, float] = {}
        #: Session expiries (Up -> Down, detection time expired): each one acts as a lost peer.
        self.expiries = 0
        #: Workers that died without being asked to (each one restarted).
        self.crashes = 0
        self._bad_frames_before = 0  # skipped by the readers of workers that are gone
        #: Frames from the agent the current worker skipped (it says so in its stats).
        self.worker_bad_frames = 0
        #: The current worker's longest delay of a wake-up past its timer (its scheduling latency).
        self.wake_late_max = 0.0
        #: The current worker's wake-ups so far (what its CPU goes with, issue 14).
        self.worker_wakeups = 0
        #: Seconds from spawn to the worker's ready frame, and its resident size (bytes), last start.
        self.start_seconds: float | None = None
        self.worker_rss = 0
        self._drops_before: Counter[str] = Counter()  # counters of workers that are gone
        self._drops_now: Counter[str] = Counter()
        self._send_errors_before = 0
        self._send_errors_now = 0
        self._peers: set[IPAddress] = set()
        #: The peers by the text the worker's frames name them with (``str(peer)``).
        self._by_text: dict[str, IPAddress] = {}
        self._relaxed: frozenset[IPAddress] = frozenset()
        self._process: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None
        self._reader = FrameReader("ev")
        self._out = bytearray()
        self._spawned_at = 0.0
        self._restart: asyncio.TimerHandle | None = None
        self._backoff = RESTART_BACKOFF[0]
        self._closing = False
        self._closed = False
        self._recv, self._send = self._open()
        #: The sockets the worker claims a lost peer's VIPs with (None: not allowed here; the agent's pass
        #: then does all of it, as before).
        self._claim_sockets = self._open_claim()
        #: Per peer: how many times its session came Up (from change frames; the current worker's count),
        #: the takeover plan last sent for it (None: none held), and the worker's claims and failures.
        self._ups: Counter[IPAddress] = Counter()
        self._plans: dict[IPAddress, tuple[int, TakeoverPlan]] = {}
        self._claims: dict[IPAddress, WorkerClaim] = {}
        self.claims_by_peer: Counter[IPAddress] = Counter()
        self.claim_failures_by_peer: Counter[IPAddress] = Counter()
        self._claims_before = self._claim_failures_before = 0
        self._claims_now = self._claim_failures_now = 0
        self._plans_refused_before: Counter[str] = Counter()
        self._plans_refused_now: Counter[str] = Counter()
        #: Plans the current worker holds (its last stats frame).
        self.worker_plans = 0

    # -- sockets ----------------------------------------------------------------

    def _open(self) -> tuple[socket.socket, socket.socket]:
        af = socket.AF_INET if self.family is Family.IPV4 else socket.AF_INET6
        device = self.interface.encode()
        recv = socket.socket(af, socket.SOCK_DGRAM)
        send = socket.socket(af, socket.SOCK_DGRAM)
        try:
            for sock in (recv, send):
                sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, device)
            recv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.family is Family.IPV4:
                recv.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
                send.setsockopt(socket.IPPROTO_IP, _IP_TTL, TTL)
                recv.bind(("0.0.0.0", PORT))
            else:
                recv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                recv.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
                send.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                recv.bind(("::", PORT))
            self._bind_source_port(send)
        except OSError:
            recv.close()
            send.close()
            raise
        return recv, send

    def _open_claim(self) -> tuple[socket.socket, socket.socket] | None:
        try:
            return claim_sockets()
        except OSError as exc:
            log.info("%s liveness on %s: the worker cannot claim a lost peer's VIPs itself (%s); the agent "
                     "does it", BACKEND_NAME, self.interface, exc)
            return None

    def _bind_source_port(self, sock: socket.socket) -> None:
        low, high = SOURCE_PORTS
        rng = random.Random()
        for _ in range(64):
            port = rng.randint(low, high)
            try:
                sock.bind((str(self.local), port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free BFD source port in {low}..{high}")

    # -- the agent's API --------------------------------------------------------------

    def start(self) -> None:
        """Start the worker. Call it on the event loop's thread: the worker dies with that thread."""
        self._spawn()

    def set_peers(self, peers: Iterable[IPAddress], relaxed: Iterable[IPAddress] = ()) -> None:
        """Keep sessions with exactly ``peers``: new ones start, dropped ones say AdminDown and go.

        ``relaxed`` (a subset of ``peers``) are the peers this node need not see fail fast: the
        worker asks them to send slowly (``SessionConfig.relaxed_min_rx``); the others, fast.
        """
        wanted = {p for p in peers if p.version == self.local.version and p != self.local}
        slow = frozenset(relaxed) & wanted
        if wanted == self._peers and slow == self._relaxed:
            return
        self._peers, self._relaxed = wanted, slow
        self._by_text = {str(peer): peer for peer in wanted}
        for peer in set(self.sessions) - wanted:
            del self.sessions[peer]
            self._plans.pop(peer, None)  # the worker drops it with the session
            self._ups.pop(peer, None)
        for peer in wanted - set(self.sessions):
            self.sessions[peer] = SessionView()
        self._write(self._peers_frame())

    def set_plan(self, peer: IPAddress, plan: TakeoverPlan | None) -> None:
        """What the worker claims if ``peer``'s session expires (None or no VIPs: nothing). Only for a
        session Up now, tagged with the count of its Ups (the worker refuses a plan built for an earlier
        one); a frame goes only when that differs from what the worker holds."""
        session = self.sessions.get(peer)
        if plan is not None and (not plan.vips or session is None or session.state is not SessionState.UP
                                 or self._claim_sockets is None):
            plan = None
        held = self._plans.get(peer)
        ups = self._ups[peer]
        if plan is None:
            if held is not None:
                del self._plans[peer]
                self._write({"op": "plan", "peer": str(peer), "netlink": []})
            return
        if held is not None and held == (ups, plan):
            return
        self._plans[peer] = (ups, plan)
        self._write({"op": "plan", "peer": str(peer), "ups": ups, "interface": plan.interface,
                     "netlink": [data.hex() for data in plan.netlink], "frames": [data.hex() for data in plan.frames],
                     "vips": [str(vip) for vip in plan.vips]})

    def clear_plans(self) -> None:
        """No claim by the worker until plans are set again (the agent's view is being rebuilt)."""
        for peer in list(self._plans):
            self.set_plan(peer, None)

    def planned(self, peer: IPAddress) -> TakeoverPlan | None:
        """The plan the worker holds for ``peer`` (as far as the agent knows)."""
        held = self._plans.get(peer)
        return held[1] if held is not None else None

    def claim_of(self, peer: IPAddress) -> WorkerClaim | None:
        """What the worker did with ``peer``'s plan at its last expiry (taken: asked once per loss)."""
        return self._claims.pop(peer, None)

    @property
    def claims(self) -> int:
        """Plans the workers (this one and the ones before) carried out at an expiry."""
        return self._claims_before + self._claims_now

    @property
    def claim_failures(self) -> int:
        return self._claim_failures_before + self._claim_failures_now

    @property
    def plans_refused(self) -> Counter[str]:
        return self._plans_refused_before + self._plans_refused_now

    def _peers_frame(self) -> Frame:
        return {"op": "peers", "peers": sorted(map(str, self._peers)), "relaxed": sorted(map(str, self._relaxed))}

    @property
    def relaxed(self) -> frozenset[IPAddress]:
        """The peers asked to send slowly (see :meth:`set_peers`)."""
        return self._relaxed

    def state(self, peer: IPAddress) -> SessionState | None:
        session = self.sessions.get(peer)
        return session.state if session is not None else None

    def silence(self, peer: IPAddress) -> float | None:
        """Seconds since the worker last heard ``peer`` (its kernel receive time), None if never."""
        heard = self.last_heard.get(peer)
        return self.clock() - heard if heard is not None else None

    def snapshot(self) -> dict[IPAddress, SessionView]:
        return dict(self.sessions)

    @property
    def drops(self) -> Counter[str]:
        return self._drops_before + self._drops_now

    @property
    def bad_frames(self) -> int:
        """Frames from workers (this one and the ones before) that made no sense, skipped."""
        return self._bad_frames_before + self._reader.bad

    @property
    def send_errors(self) -> int:
        return self._send_errors_before + self._send_errors_now

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    def close(self, *, graceful: bool = True) -> None:
        """Stop the worker; ``graceful`` has it tell every peer AdminDown first (not a failure)."""
        if self._closed:
            return
        self._closing = True
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None
        process = self._process
        if process is not None and self._channel is not None:
            if graceful:
                self._write({"op": "close", "graceful": True})
                self._drain_out(deadline=self.clock() + 0.2)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=CLOSE_BOUND)
            self._detach()  # EOF: a worker still running exits at once
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)
            if process.poll() is None:
                process.kill()  # by PID: ours
                process.wait()
        self._process = None
        self._closed = True
        for sock in (self._recv, self._send, *(self._claim_sockets or ())):
            sock.close()

    # -- the worker ------------------------------------------------------------------

    def _spawn(self) -> None:
        self._restart = None
        if self._closing:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        spec = {"parent": os.getpid(), "control_fd": theirs.fileno(), "recv_fd": self._recv.fileno(),
                "send_fd": self._send.fileno(), "local": str(self.local), "tx": self.config.desired_min_tx,
                "rx": self.config.required_min_rx, "mult": self.config.detect_mult,
                "slow": self.config.slow_interval, "relaxed": self.config.relaxed_min_rx, "realtime": self.realtime, "stats_interval": self.stats_interval}
        fds = [theirs.fileno(), self._recv.fileno(), self._send.fileno()]
        if self._claim_sockets is not None:
            claim_fds = [sock.fileno() for sock in self._claim_sockets]
            spec["claim_fds"] = claim_fds
            fds += claim_fds
        # A new worker holds no plan and counts its sessions' Ups from 0.
        self._plans.clear()
        self._ups.clear()
        self._claims.clear()
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, json.dumps(spec)],
                pass_fds=tuple(fds),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            ours.close()
            self._died(f"cannot start: {exc}")
            return
        finally:
            theirs.close()  # the worker has its own copy
        self._spawned_at = self.clock()
        ours.setblocking(False)
        self._channel = ours
        self._bad_frames_before += self._reader.bad
        self._reader = FrameReader("ev")
        self._out.clear()
        self.loop.add_reader(ours, self._readable)
        if self._peers:
            self._write(self._peers_frame())

    def _detach(self) -> None:
        if self._channel is not None:
            with contextlib.suppress(ValueError, RuntimeError):  # the loop may be closed
                self.loop.remove_reader(self._channel)
                self.loop.remove_writer(self._channel)
            self._channel.close()
            self._channel = None

    def _readable(self) -> None:
        channel = self._channel
        if channel is None:
            return
        while True:
            try:
                data = channel.recv(65536)
            except BlockingIOError:
                return
            except OSError as exc:
                self._died(f"control channel failed: {exc}")
                return
            if not data:
                self._died("control channel closed")
                return
            for frame in self._reader.feed(data):
                self._handle(frame)
            if self._channel is not channel:
                return

    def _handle(self, frame: Frame) -> None:
        try:
            kind = frame["ev"]
            if kind == "change":
                peer = ipaddress.ip_address(frame["peer"])
                heard = frame.get("heard")
                if isinstance(heard, (int, float)) and not isinstance(heard, bool):
                    self.last_heard[peer] = float(heard)
                claim = WorkerClaim.from_frame(frame.get("claim"))
                if claim is not None:
                    self._claims[peer] = claim
                    self.claims_by_peer[peer] += 1
                    if not (claim.ok and claim.announced is not None):
                        self.claim_failures_by_peer[peer] += 1
                self._on_change(peer, SessionState(frame["old"]), SessionState(frame["new"]), Diagnostic(frame["diag"]))
            elif kind == "stats":
                self._on_stats(frame)
            elif kind == "ready":
                self.start_seconds = self.clock() - self._spawned_at
                self.scheduled_realtime = bool(frame.get("realtime"))
                self.worker_rss = int(frame.get("rss", 0))
            elif kind == "log":
                level = logging.INFO if frame.get("level") == "info" else logging.WARNING
                log.log(level, "%s liveness on %s: %s", BACKEND_NAME, self.interface, frame.get("message"))
            elif kind != "closed":
                self._reader.bad += 1
        except (KeyError, TypeError, ValueError):
            self._reader.bad += 1

    def _on_change(self, peer: IPAddress, old: SessionState, new: SessionState, diagnostic: Diagnostic) -> None:
        session = self.sessions.get(peer)
        if session is None:
            return  # a peer we dropped since; the worker retires it
        flaps = session.flaps + (1 if old is SessionState.UP and new is not SessionState.UP else 0)
        # The worker's side of the plans, mirrored: a session coming Up counts, one leaving Up drops its
        # plan, an expiry drops every plan (carried out or not).
        if new is SessionState.UP:
            self._ups[peer] += 1
        elif old is SessionState.UP:
            self._plans.pop(peer, None)
            if new is SessionState.DOWN and diagnostic is Diagnostic.CONTROL_DETECTION_EXPIRED:
                self._plans.clear()
        self.sessions[peer] = attrs.evolve(session, state=new, flaps=flaps)
        if old is SessionState.UP and new is SessionState.DOWN and diagnostic is Diagnostic.CONTROL_DETECTION_EXPIRED:
            self.expiries += 1
        self.on_change(peer, old, new, diagnostic)

    def _on_stats(self, frame: Frame) -> None:
        sessions, by_text = self.sessions, self._by_text
        for address, values in frame["sessions"].items():
            peer = by_text.get(address)  # the peers' texts as the worker writes them: no parse per frame
            if peer is None:
                peer = ipaddress.ip_address(address)
            session = sessions.get(peer)
            if session is None:
                continue
            # The state comes from change frames, which are ordered; stats only fill in the rest. Built
            # directly: attrs.evolve looks the fields up again for every session of every frame.
            sessions[peer] = SessionView(
                state=session.state, flaps=session.flaps, detection_time=float(values["detection"]),
                received=int(values["received"]), sent=int(values["sent"]), my_discriminator=int(values["mine"]),
                your_discriminator=int(values["yours"]), tx_interval=float(values["tx"]),
                required_min_rx=float(values.get("rx", 0.0)),
                longest_silence=float(values.get("longest_silence", 0.0)))
        self._drops_now = Counter({str(k): int(v) for k, v in frame["drops"].items()})
        self._send_errors_now = int(frame["send_errors"])
        self.worker_bad_frames = int(frame.get("bad_frames", 0))
        self.wake_late_max = float(frame.get("wake_late_max", 0.0))
        self.worker_wakeups = int(frame.get("wakeups", 0))
        self.worker_rss = int(frame.get("rss", self.worker_rss))
        self.scheduled_realtime = bool(frame.get("realtime", self.scheduled_realtime))
        self.worker_plans = int(frame.get("plans", 0))
        self._claims_now = int(frame.get("claims", 0))
        self._claim_failures_now = int(frame.get("claim_failures", 0))
        refused = frame.get("plans_refused", {})
        self._plans_refused_now = Counter({str(k): int(v) for k, v in refused.items()}) \
            if isinstance(refused, dict) else Counter()

    def _died(self, why: str) -> None:
        """The worker is gone without being asked to: count, say so, cover for it, start another."""
        process = self._process
        self._detach()
        self._process = None
        status = None
        if process is not None:
            if process.poll() is None:
                process.kill()  # it closed the channel but lingers: ours, by PID
            with contextlib.suppress(subprocess.TimeoutExpired):
                status = process.wait(timeout=1.0)
        if self._closing:
            return
        self.crashes += 1
        self._admin_down_from_here()
        self._drops_before += self._drops_now
        self._drops_now = Counter()
        self._send_errors_before += self._send_errors_now
        self._send_errors_now = 0
        self._claims_before += self._claims_now
        self._claim_failures_before += self._claim_failures_now
        self._plans_refused_before += self._plans_refused_now
        self._claims_now = self._claim_failures_now = 0
        self._plans_refused_now = Counter()
        self._plans.clear()
        for peer, session in self.sessions.items():
            # No change is reported: a gap in our own sessions is not a lost peer.
            self.sessions[peer] = attrs.evolve(session, state=SessionState.DOWN)
        if self.clock() - self._spawned_at > STABLE_RUN:
            self._backoff = RESTART_BACKOFF[0]
        delay = self._backoff
        self._backoff = min(self._backoff * 2, RESTART_BACKOFF[1])
        log.warning("%s liveness on %s: worker process %s exited (%s, status %s); restarting it in %.2f s, "
                    "VRRP timers alone detect failures meanwhile", BACKEND_NAME, self.interface,
                    process.pid if process is not None else "-", why, status, delay,
                    extra={"event": "liveness_worker_died", "plugin": BACKEND_NAME})
        self._restart = self.loop.call_later(delay, self._spawn)

    def _admin_down_from_here(self) -> None:
        """Best effort: tell the peers whose sessions were Up that this is not a node failure."""
        for peer, session in self.sessions.items():
            if session.state is not SessionState.UP or not session.my_discriminator:
                continue
            data = encode_packet(ControlPacket(
                state=SessionState.ADMIN_DOWN, my_discriminator=session.my_discriminator,
                your_discriminator=session.your_discriminator,
                desired_min_tx=max(1, round(session.tx_interval * 1_000_000)),
                required_min_rx=max(1, round(self.config.required_min_rx * 1_000_000)),
                detect_mult=self.config.detect_mult, diagnostic=Diagnostic.ADMIN_DOWN))
            for _ in range(2):
                try:
                    self._send.sendto(data, (str(peer), PORT))
                except OSError:
                    self._send_errors_before += 1

    # -- output to the worker ----------------------------------------------------------

    def _write(self, frame: Frame) -> None:
        if self._channel is None:
            return  # not running: the peers go out when it starts
        self._out += encode(frame)
        self._flush()

    def _flush(self) -> None:
        channel = self._channel
        if channel is None:
            return
        while self._out:
            try:
                sent = channel.send(self._out)
            except BlockingIOError:
                self.loop.add_writer(channel, self._flush)
                return
            except OSError:
                self._out.clear()
                return  # the reader sees the EOF and restarts the worker
            del self._out[:sent]
        with contextlib.suppress(ValueError, RuntimeError):
            self.loop.remove_writer(channel)

    def _drain_out(self, deadline: float) -> None:
        channel = self._channel
        if channel is None:
            return
        while self._out and self.clock() < deadline:
            try:
                sent = channel.send(self._out)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            except OSError:
                return
            del self._out[:sent]
