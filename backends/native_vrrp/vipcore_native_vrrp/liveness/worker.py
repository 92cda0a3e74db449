"""The liveness worker process: BFD sessions with one interface's peers, apart from the agent.

Run by :class:`~vipcore_native_vrrp.liveness.detector.Detector` as
``python -m vipcore_native_vrrp.liveness.worker CONFIG_JSON`` with three inherited
file descriptors: the control socket (see :mod:`.control`), the UDP socket bound to
port 3784 and the UDP socket it sends from. It has its own interpreter (no lock
shared with the agent's event loop), runs at SCHED_RR 1 when allowed, and imports
only the sans-IO liveness modules and the standard library, so it starts in tens
of milliseconds.

At a session's expiry it carries out the takeover plan the agent gave it for that peer (address
datagrams on a ``NETLINK_ROUTE`` socket, then announcement frames on an ``AF_PACKET`` socket, both
inherited, both prebuilt by the agent) before it writes the ``change`` frame: at real-time priority it
acts before the agent's loop, busy at that moment, has read the change (docs/native-vrrp.md, "The worker
claims first").

It lives exactly as long as the agent wants it: EOF on the control socket (the
agent exited or closed it) ends it at once, ``PR_SET_PDEATHSIG`` kills it if the
agent dies first, SIGINT and SIGTERM aimed at the agent's process group are
ignored (the agent closes it: a graceful close still sends AdminDown first).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import gc
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from vipcore_native_vrrp.liveness.control import MAX_FRAME, Frame, FrameReader, encode
from vipcore_native_vrrp.liveness.packet import PORT, Diagnostic, SessionState
from vipcore_native_vrrp.liveness.session import (
    RELAXED_MIN_RX,
    Dropped,
    Send,
    Session,
    SessionConfig,
    StateChanged,
)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_PR_SET_PDEATHSIG = 1
_IP_TTL = 2
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
#: The kernel's receive time of each packet (struct timespec, CLOCK_REALTIME); Python 3.11 does not name it.
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_INT = struct.Struct("i")
_TTL_CMSGS = frozenset({(socket.IPPROTO_IP, _IP_TTL), (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT)})
_TTL_KINDS = frozenset(kind for _, kind in _TTL_CMSGS)
#: A stats frame goes out at the first wake-up at least ``stats_interval`` after the last one if it says
#: something new besides packet and wake-up counts, and after this many intervals (5 s by default) in any
#: case, the only time the worker wakes for one alone. Sessions at the fast rate wake it every few
#: milliseconds anyway; a worker with only slow sessions, or none, need not wake for its stats, and the
#: agent, which wakes for every frame, need not read counts twice a second (issue 14: the idle worker of
#: the 255-group node woke 11 times a second, twice of it for stats).
STATS_IDLE = 10
#: Bound of a graceful close: AdminDown repeats take a few tens of milliseconds at the fast rate.
_CLOSE_BOUND = 1.0
#: Stats frames are skipped while this much output waits for a busy agent (changes never are).
_STATS_BACKLOG = 64 * 1024
EXIT_PARENT_GONE = 3
# -- takeover plans (docs/native-vrrp.md, "The worker claims first") ------------------------------
# Linux ABI numbers (linux/netlink.h, linux/rtnetlink.h): the worker imports nothing that speaks netlink.
_NLMSG_HEADER = struct.Struct("=IHHII")
_NLMSG_ERROR = 2
_RTM_NEWADDR = 20
#: What every message of a plan must be: an acknowledged, exclusive address create (the holder's add).
_ADD_FLAGS = 0x1 | 0x4 | 0x200 | 0x400  # NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
_EEXIST = errno.EEXIST
#: Bounds of one plan: datagrams and their size, messages in all, announcement frames and their size.
MAX_PLAN_DATAGRAMS = 16
MAX_PLAN_DATAGRAM = 16384
MAX_PLAN_MESSAGES = 1024
MAX_PLAN_FRAMES = 1024
PLAN_FRAME_SIZES = (42, 1514)
#: Plans held at once (one per peer with a session).
MAX_PLANS = 4096
_IFNAMSIZ = 16


class _Plan:
    """One peer's takeover plan as the agent sent it: checked bytes, nothing to compute at expiry."""

    __slots__ = ("ups", "interface", "datagrams", "messages", "frames", "vips")

    def __init__(self, ups: int, interface: str, datagrams: list[bytes], messages: int,
                 frames: list[tuple[bytes, int]], vips: list[str]) -> None:
        self.ups = ups
        self.interface = interface
        self.datagrams = datagrams
        self.messages = messages
        self.frames = frames
        self.vips = vips


#: Periodic packets due within this long of a wake-up go out in it (never before 75 % of their
#: interval, RFC 5880 6.8.7): sessions share wake-ups instead of each waking the process alone.
ALIGN = 0.002


class Worker:
    """The sessions of one interface, driven by ``select`` on the packet and control sockets."""

    def __init__(self, config: SessionConfig, local: Address, control: socket.socket, recv: socket.socket,
                 send: socket.socket, *, stats_interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, netlink: socket.socket | None = None,
                 packet: socket.socket | None = None) -> None:
        self.config = config
        self.local = local
        self.control = control
        self.recv = recv
        self.send = send
        self.stats_interval = stats_interval
        self.clock = clock
        self.rng = rng or random.Random()
        self.sessions: dict[Address, Session] = {}
        #: Sessions given up on purpose, still repeating AdminDown so the peer does not take us for dead.
        self.retiring: dict[Address, Session] = {}
        self.drops: Counter[str] = Counter()
        self.send_errors = 0
        #: Times select returned: what the process costs goes with it (issue 14), not with the packet count.
        self.wakeups = 0
        self.stats_skipped = 0
        #: Longest delay of a wake-up past its timer (scheduling latency), and per peer the longest
        #: silence between two of its packets as the kernel received them (not as we read them):
        #: which one explains an expiry, this node or the peer and the path.
        self.wake_late_max = 0.0
        #: Keyed by the peer's address text (a str hashes from a cache; an ip_address in Python, per packet).
        self.longest_silence: dict[str, float] = {}
        self._heard: dict[str, tuple[float, bool]] = {}  # last receive time, and Up then
        #: When the packet socket was last found empty (monotonic): see _receive_all.
        self._empty_at = float("-inf")
        #: Per peer, resolved once (not per packet): the kernel's source text -> (address, session),
        #: and the destination tuple for sendto. Rebuilt by set_peers.
        self._sources: dict[str, tuple[Address, Session, tuple[str, int]]] = {}
        self._dest: dict[Address, tuple[str, int]] = {}
        #: The sessions as tuples for the loop (rebuilt by _reindex): with their peers, and every timed one.
        self._active: tuple[tuple[Address, Session, tuple[str, int]], ...] = ()
        self._timed: tuple[Session, ...] = ()
        #: Peers asked for the slow rate (RFC 5880 Required Min RX = ``config.relaxed_min_rx``).
        self.relaxed: frozenset[Address] = frozenset()
        #: Longest a packet waits unread (a Poll, a handshake): while the next timer is further, a packet
        #: wakes the worker; one fast detection time (50 ms by default).
        self.reply_within = config.desired_min_tx * config.detect_mult
        self.realtime = False
        self.reader = FrameReader("op")
        self._out = bytearray()
        self._closing_until: float | None = None
        #: What the last stats frame said besides counts (see _stats_changed).
        self._stats_key: tuple[Any, ...] | None = None
        #: The sockets a takeover plan is sent with (NETLINK_ROUTE, AF_PACKET), when the agent could open them.
        self.netlink = netlink
        self.packet = packet
        #: Per peer: its takeover plan (the agent's), and how many times its session came Up (a plan names
        #: the count it was built for: one built before the session last left Up is stale).
        self.plans: dict[Address, _Plan] = {}
        self.ups: Counter[Address] = Counter()
        #: Plans carried out at an expiry, those of them that failed in part (the agent's pass then does
        #: it its usual way), and plan frames refused by reason.
        self.claims = 0
        self.claim_failures = 0
        self.plans_refused: Counter[str] = Counter()
        if netlink is not None:
            netlink.setblocking(False)
        for sock in (control, recv, send):
            sock.setblocking(False)
        with contextlib.suppress(OSError):  # diagnostics only: without it, silences include our own lateness
            recv.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the agent closes the channel (or says ``close``); the exit status."""
        clock, retiring = self.clock, self.retiring
        control, control_fd = self.control, self.control.fileno()
        # Registered once: one epoll with the control socket only, one with the packet socket too;
        # each wake-up picks one (no per-call fd lists, no epoll_ctl per wake-up).
        quiet, prompt = select.epoll(), select.epoll()
        quiet.register(control_fd, select.EPOLLIN)
        prompt.register(control_fd, select.EPOLLIN)
        prompt.register(self.recv.fileno(), select.EPOLLIN)
        reply_within = self.reply_within
        next_stats = stats_alone = clock()
        try:
            while True:
                now = clock()
                if now >= next_stats:  # due: rides on this wake-up, whatever woke us
                    next_stats = now + self.stats_interval
                    if self._stats_changed() or now >= stats_alone:  # (the former also notes what it said)
                        self.emit_stats()
                        stats_alone = now + self.stats_interval * STATS_IDLE
                if self._closing_until is not None and (not retiring or now >= self._closing_until):
                    self.emit({"ev": "closed"})
                    self._flush(block_for=0.2)
                    return 0
                # No wake-up of its own for the parent: its death closes the control channel (EOF, read at
                # once) or kills us (PR_SET_PDEATHSIG).
                # The frame held back goes at the first check past its 10th interval: never before the next
                # check (a past stats_alone alone would make every wait zero until then).
                due = stats_alone if stats_alone > next_stats else next_stats
                for session in self._timed:
                    timer = session.next_timer()
                    if timer is not None and timer < due:
                        due = timer
                wait = due - now
                if wait < 0.0:
                    wait = 0.0
                # A packet wakes us only while our next timer is further than ``reply_within``: otherwise
                # the wake-up for that timer reads the socket first (with the kernel's receive times), so no
                # packet that arrived before a detection deadline is missed, and a Poll or a handshake packet
                # waits at most ``reply_within``. Sessions received at the fast rate keep a detection timer
                # within it: their packets never wake us one by one.
                if self._out:
                    readable, writable, _ = select.select([self.recv, control] if wait > reply_within else [control],
                                                          [control], [], wait)
                    ready_control = control in readable
                    if control in writable and not self._flush():
                        return EXIT_PARENT_GONE
                else:
                    try:
                        events = (prompt if wait > reply_within else quiet).poll(wait)
                    except InterruptedError:
                        continue
                    ready_control = any(fd == control_fd for fd, _ in events)
                self.wakeups += 1
                if ready_control and not self._read_control():
                    return EXIT_PARENT_GONE  # EOF: the agent is gone or dropped us; nothing to say to anyone
                woke = clock()
                if woke >= due and woke - due > self.wake_late_max:
                    self.wake_late_max = woke - due
                # Read the socket even when nothing flagged it: a packet that arrived after the wait
                # returned must count before a detection timer is allowed to expire.
                self._receive_all()
                self._fire(clock())
        finally:
            quiet.close()
            prompt.close()

    def _fire(self, now: float) -> None:
        soon, up = now + ALIGN, SessionState.UP
        for peer, session, dest in self._active:  # a tuple: a change of peers while carrying out rebuilds it
            timer = session.next_timer()
            if timer is None:
                continue
            if timer <= soon:
                actions = session.handle_timer(now, ALIGN)
            elif session.state is not up and session.tx_floor <= now:
                # A session that is not Up sends at the slow rate (one second, RFC 5880 6.8.3): past 75 % of
                # its interval (the earliest 6.8.7 allows) it goes with this wake-up instead of waking us
                # again, so any number of silent members (nodes that are down, a one-node cluster's
                # phantoms) share about one wake-up per interval. Up sessions keep ALIGN: the soak's
                # timing (docs/native-vrrp.md, "What a wake-up costs") was measured with it.
                actions = session.handle_timer(now, timer - now + session.tx_interval)
            else:
                continue
            if actions:
                self._carry_out(peer, actions, dest=dest)
        if self.retiring:
            for peer, session in list(self.retiring.items()):
                timer = session.next_timer()
                if timer is not None and timer <= now:
                    self._carry_out(peer, session.handle_timer(now), notify=False)
                if session.retired:
                    del self.retiring[peer]
                    self._reindex()

    # -- control ------------------------------------------------------------------------

    def _read_control(self) -> bool:
        """Read what the agent sent; False on EOF (or a broken channel)."""
        for _ in range(64):  # bounded: a chatty agent cannot starve the timers
            try:
                data = self.control.recv(65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            for frame in self.reader.feed(data):
                self.handle(frame)
        return True

    def handle(self, frame: Frame) -> None:
        """Carry out one control frame; an unknown or malformed one is counted, never fatal."""
        op = frame["op"]
        if op == "peers":
            raw = frame.get("peers")
            if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
                self.reader.bad += 1
                return
            relaxed = frame.get("relaxed", [])
            if not isinstance(relaxed, list) or not all(isinstance(p, str) for p in relaxed):
                self.reader.bad += 1
                return
            try:
                peers = [ipaddress.ip_address(p) for p in raw]
                slow = [ipaddress.ip_address(p) for p in relaxed]
            except ValueError:
                self.reader.bad += 1
                return
            self.set_peers(peers, relaxed=slow)
        elif op == "plan":
            self.set_plan(frame)
        elif op == "close":
            self.close(graceful=frame.get("graceful") is not False)
        else:
            self.reader.bad += 1

    def set_peers(self, peers: Iterable[Address], relaxed: Iterable[Address] = ()) -> None:
        """Keep sessions with exactly ``peers``: new ones start, dropped ones say AdminDown and go.

        The peers in ``relaxed`` are asked to send slowly (we need not see them fail fast), the
        others at the fast rate; a session whose side changes says so with a Poll, staying Up.
        """
        wanted = {p for p in peers if p.version == self.local.version and p != self.local}
        self.relaxed = frozenset(relaxed) & wanted
        now = self.clock()
        for peer in set(self.sessions) - wanted:
            session = self.sessions.pop(peer)
            self.plans.pop(peer, None)
            self.ups.pop(peer, None)
            self._heard.pop(str(peer), None)
            self.longest_silence.pop(str(peer), None)
            self._carry_out(peer, session.admin_down(now), notify=False)
            if not session.retired:
                self.retiring[peer] = session
        fast, slow = self.config.required_min_rx, self.config.relaxed_min_rx
        for peer, session in self.sessions.items():
            self._carry_out(peer, session.set_required_min_rx(slow if peer in self.relaxed else fast, now))
        for peer in sorted(wanted - set(self.sessions)):
            self.retiring.pop(peer, None)
            session = Session(self.config, self._discriminator(), rng=self.rng.random)
            session.set_required_min_rx(slow if peer in self.relaxed else fast, now)
            self.sessions[peer] = session
            self._carry_out(peer, session.start(now))
        self._reindex()

    def _reindex(self) -> None:
        """Rebuild the per-peer caches from the sessions (after any change to them)."""
        self._dest = {peer: self._dest.get(peer) or (str(peer), PORT) for peer in (*self.sessions, *self.retiring)}
        self._active = tuple((peer, session, self._dest[peer]) for peer, session in self.sessions.items())
        self._sources = {dest[0]: (peer, session, dest) for peer, session, dest in self._active}
        self._timed = (*self.sessions.values(), *self.retiring.values())

    def close(self, *, graceful: bool) -> None:
        if self._closing_until is not None:
            return
        if graceful:
            now = self.clock()
            for peer, session in self.sessions.items():
                self._carry_out(peer, session.admin_down(now), notify=False)
                self.retiring[peer] = session
        else:
            self.retiring.clear()
        self.sessions.clear()
        self.plans.clear()
        self._reindex()
        self._closing_until = self.clock() + _CLOSE_BOUND

    # -- output to the agent --------------------------------------------------------------

    def emit(self, frame: Frame) -> None:
        self._out += encode(frame)
        self._flush()

    def _stats_changed(self) -> bool:
        """Whether a stats frame would say more than the last one did besides packet and wake-up counts and
        the worker's own lateness (a diagnostic maximum that creeps up while it runs)."""
        silences = self.longest_silence
        key = (tuple((peer, s.state, s.detection_time, s.my_discriminator, s.remote_discriminator, s.tx_interval,
                      s.required_min_rx, silences.get(str(peer), 0.0)) for peer, s in self.sessions.items()),
               tuple(sorted(self.drops.items())), self.send_errors, self.reader.bad, self.stats_skipped,
               self.realtime, len(self.plans), self.claims, self.claim_failures,
               tuple(sorted(self.plans_refused.items())))
        if key == self._stats_key:
            return False
        self._stats_key = key
        return True

    def emit_stats(self) -> None:
        if len(self._out) > _STATS_BACKLOG:
            self.stats_skipped += 1  # the agent is not reading; the next stats frame says it all
            return
        self.emit({"ev": "stats", **self.stats()})

    def stats(self) -> dict[str, Any]:
        return {
            "sessions": {str(peer): {"state": int(s.state), "detection": s.detection_time, "mine": s.my_discriminator,
                                     "yours": s.remote_discriminator, "received": s.received, "sent": s.sent,
                                     "tx": s.tx_interval, "rx": s.required_min_rx,
                                     "longest_silence": self.longest_silence.get(str(peer), 0.0)}
                         for peer, s in self.sessions.items()},
            "wake_late_max": self.wake_late_max, "wakeups": self.wakeups,
            "drops": dict(self.drops), "send_errors": self.send_errors, "bad_frames": self.reader.bad,
            "stats_skipped": self.stats_skipped, "rss": _rss(), "realtime": self.realtime,
            "plans": len(self.plans), "claims": self.claims, "claim_failures": self.claim_failures,
            "plans_refused": dict(self.plans_refused),
        }

    def _flush(self, block_for: float = 0.0) -> bool:
        """Send what the agent can take now (or within ``block_for``); False if the channel is broken."""
        deadline = self.clock() + block_for
        while self._out:
            try:
                sent = self.control.send(self._out)
            except BlockingIOError:
                if self.clock() >= deadline:
                    return True
                select.select([], [self.control], [], max(deadline - self.clock(), 0.0))
                continue
            except OSError:
                return False
            del self._out[:sent]
        return True

    # -- packets --------------------------------------------------------------------------

    def _receive_all(self) -> None:
        recvmsg, sources, heard, silences = self.recv.recvmsg, self._sources, self._heard, self.longest_silence
        up = SessionState.UP
        offset: float | None = None  # realtime - monotonic, read once per batch (not per packet)
        # No packet waiting now arrived before the socket was last found empty: a floor for the kernel's
        # stamps, which are on the wall clock. NTP or a resumed VM may step that clock between a packet's
        # arrival and its read; a forward step made a packet look a second old and expired its session.
        floor, now = self._empty_at, self.clock()
        for _ in range(256):  # bounded: one flood cannot starve the timers
            try:
                data, ancillary, _, source = recvmsg(128, 128)
            except BlockingIOError:
                self._empty_at = now  # read before this call: anything queued later arrived after it
                return
            except OSError:
                self.drops["socket"] += 1
                return
            known = sources.get(source[0])
            if known is None:
                known = self._lookup(source[0])
                if known is None:
                    self.drops["source"] += 1
                    continue
            peer, session, dest = known
            text = dest[0]
            now = self.clock()
            ttl, arrived = -1, now  # no TTL reported: treated as not 255; no timestamp: read time
            for level, kind, value in ancillary:
                if kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET and len(value) >= _TIMESPEC.size:
                    if offset is None:
                        offset = time.time() - now
                    seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                    arrived = min(now, max(floor, seconds + nanoseconds / 1e9 - offset))
                elif kind in _TTL_KINDS and len(value) >= 4 and (level, kind) in _TTL_CMSGS:
                    ttl = _INT.unpack_from(value)[0]
            last = heard.get(text)
            if last is not None and last[1]:  # Up when we last heard it: this gap counts, expired or not
                gap = arrived - last[0]
                if gap > silences.get(text, 0.0):
                    silences[text] = gap
            actions = session.receive(data, ttl, now, arrived)
            if actions:
                self._carry_out(peer, actions, dest=dest)
            heard[text] = (arrived, session.state is up)

    def _lookup(self, text: str) -> tuple[Address, Session, tuple[str, int]] | None:
        """A source not in the cache (another spelling, a scope suffix): parsed, for members only."""
        try:
            peer = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            return None
        session = self.sessions.get(peer)
        return None if session is None else (peer, session, self._dest.get(peer) or (str(peer), PORT))

    def _carry_out(self, peer: Address, actions: list[Send | StateChanged | Dropped], *, notify: bool = True,
                   dest: tuple[str, int] | None = None) -> None:
        for action in actions:
            if isinstance(action, Send):
                try:
                    if dest is None:
                        dest = self._dest.get(peer)
                        if dest is None:
                            dest = self._dest[peer] = (str(peer), PORT)
                    self.send.sendto(action.data, dest)
                except OSError:
                    self.send_errors += 1
            elif isinstance(action, Dropped):
                self.drops[action.reason] += 1
            elif notify:
                heard = self._heard.get(str(peer))
                claim = None
                if action.new is SessionState.UP:
                    self.ups[peer] += 1
                elif action.old is SessionState.UP:
                    if action.new is SessionState.DOWN and action.diagnostic is Diagnostic.CONTROL_DETECTION_EXPIRED:
                        # A lost peer: its groups' VIPs in the kernel and announced now, before the agent
                        # (normal priority, as busy as the moment makes it) reads the change.
                        claim = self._claim(peer)
                    self.plans.pop(peer, None)  # built for a session that was Up
                # When the peer was last heard (the kernel's receive time, on the monotonic clock the agent
                # shares): the agent counts a failover's detect phase from it, this process's lateness included.
                frame = {"ev": "change", "peer": str(peer), "old": int(action.old), "new": int(action.new),
                         "diag": int(action.diagnostic), "heard": heard[0] if heard is not None else None}
                if claim is not None:
                    frame["claim"] = claim
                self.emit(frame)

    # -- takeover plans -------------------------------------------------------------------

    def set_plan(self, frame: Frame) -> None:
        """Keep (or drop) one peer's takeover plan from a ``plan`` frame; refused ones are counted by reason
        and drop the plan held for that peer, if any (in doubt, no claim)."""
        text = frame.get("peer")
        try:
            peer = ipaddress.ip_address(text) if isinstance(text, str) else None
        except ValueError:
            peer = None
        if peer is None:
            self.plans_refused["malformed"] += 1
            return
        self.plans.pop(peer, None)
        netlink, frames = frame.get("netlink"), frame.get("frames", [])
        if netlink == []:
            return  # dropped on purpose: no group to take from that peer
        reason, plan = self._check_plan(frame.get("ups"), frame.get("interface"), netlink, frames, frame.get("vips"))
        if plan is None:
            self.plans_refused[reason] += 1
            return
        session = self.sessions.get(peer)
        if session is None:
            self.plans_refused["no_session"] += 1
        elif session.state is not SessionState.UP or plan.ups != self.ups[peer]:
            # Built for an earlier Up of this session (or before it went down): what it says may be stale.
            self.plans_refused["stale"] += 1
        elif len(self.plans) >= MAX_PLANS:
            self.plans_refused["too_many"] += 1
        else:
            self.plans[peer] = plan

    @staticmethod
    def _check_plan(ups: object, interface: object, netlink: object, frames: object,
                    vips: object) -> tuple[str, _Plan | None]:
        if isinstance(ups, bool) or not isinstance(ups, int) or ups < 0 or not isinstance(interface, str) \
                or not 0 < len(interface) < _IFNAMSIZ or "/" in interface \
                or not isinstance(netlink, list) or not isinstance(frames, list) or not isinstance(vips, list) \
                or not all(isinstance(item, str) for item in (*netlink, *frames, *vips)):
            return "malformed", None
        if not netlink or len(netlink) > MAX_PLAN_DATAGRAMS or len(frames) > MAX_PLAN_FRAMES \
                or len(vips) > MAX_PLAN_MESSAGES or any(len(item) > 64 for item in vips) \
                or any(len(item) > 2 * MAX_PLAN_DATAGRAM for item in netlink) \
                or any(len(item) > 2 * PLAN_FRAME_SIZES[1] for item in frames):
            return "too_large", None
        try:
            datagrams = [bytes.fromhex(item) for item in netlink]
            raw = [bytes.fromhex(item) for item in frames]
        except ValueError:
            return "malformed", None
        messages = 0
        for datagram in datagrams:
            offset = 0
            while offset < len(datagram):
                if offset + _NLMSG_HEADER.size > len(datagram):
                    return "malformed", None
                length, kind, flags, _, _ = _NLMSG_HEADER.unpack_from(datagram, offset)
                if length < _NLMSG_HEADER.size or offset + length > len(datagram):
                    return "malformed", None
                if kind != _RTM_NEWADDR or flags != _ADD_FLAGS:
                    return "not_an_address_add", None  # the worker adds addresses, nothing else
                messages += 1
                offset += (length + 3) & ~3
            if not datagram:
                return "malformed", None
        if messages > MAX_PLAN_MESSAGES:
            return "too_large", None
        if len(vips) != messages:
            return "malformed", None  # the agent names each address it puts in (echoed in the claim)
        checked: list[tuple[bytes, int]] = []
        for data in raw:
            if not PLAN_FRAME_SIZES[0] <= len(data) <= PLAN_FRAME_SIZES[1]:
                return "malformed", None
            checked.append((data, int.from_bytes(data[12:14], "big")))
        return "", _Plan(ups, interface, datagrams, messages, checked, vips)

    def _claim(self, peer: Address) -> dict[str, Any] | None:
        """Carry out ``peer``'s plan (its session just expired): the address datagrams, their acks read
        without waiting (the kernel answers inside the ``sendmsg``), then — only if every address is in —
        the announcement frames. Every other plan is dropped: the agent rebuilds them once it has acted
        on the loss. What was done, with when (``clock()``), for the change frame; None without a plan."""
        plan = self.plans.pop(peer, None)
        self.plans.clear()
        if plan is None or self.netlink is None:
            return None
        clock, netlink = self.clock, self.netlink
        expired = clock()
        with contextlib.suppress(OSError):  # replies left from an earlier claim are not this one's
            while netlink.recv(65536):
                pass
        self.claims += 1
        sent = clock()
        try:
            for datagram in plan.datagrams:
                netlink.send(datagram)
        except OSError as exc:
            self.claim_failures += 1
            return {"expired": expired, "sent": sent, "acked": None, "announced": None, "ok": False,
                    "vips": plan.vips, "error": exc.errno or 0}
        acks, errors = 0, 0
        error = 0
        for _ in range(plan.messages + 16):  # bounded (one ack a read): never waits, never loops on junk
            try:
                data = netlink.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                error = exc.errno or 0
                break
            offset = 0
            while offset + _NLMSG_HEADER.size <= len(data):
                length, kind, _, _, _ = _NLMSG_HEADER.unpack_from(data, offset)
                if length < _NLMSG_HEADER.size:
                    break
                if kind == _NLMSG_ERROR and offset + _NLMSG_HEADER.size + 4 <= len(data):
                    code = -_INT.unpack_from(data, offset + _NLMSG_HEADER.size)[0]
                    acks += 1
                    if code not in (0, _EEXIST):  # EEXIST: already so (the holder's own rule)
                        errors += 1
                        error = error or code
                offset += (length + 3) & ~3
            if acks >= plan.messages:
                break
        ok = acks == plan.messages and not errors
        acked = clock() if ok else None
        announced = None
        if ok and self.packet is not None:
            try:
                for data, proto in plan.frames:
                    self.packet.sendto(data, (plan.interface, proto))
                announced = clock()
            except OSError as exc:
                error = exc.errno or 0
        if not ok or announced is None:
            self.claim_failures += 1
        return {"expired": expired, "sent": sent, "acked": acked, "announced": announced, "ok": ok,
                "vips": plan.vips, "error": error}

    def _discriminator(self) -> int:
        used = {s.my_discriminator for s in (*self.sessions.values(), *self.retiring.values())}
        while True:
            value = self.rng.randint(1, 0xFFFFFFFF)
            if value not in used:
                return value


def _rss() -> int:
    """Resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _die_with_parent(parent: int) -> bool:
    """SIGKILL when the agent dies (PR_SET_PDEATHSIG); False if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent  # it may have died before the prctl took effect


def _realtime() -> str | None:
    """SCHED_RR 1, like keepalived's bfd_rt_priority; the reason when not allowed."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, AttributeError) as exc:
        return str(exc)
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or len(argv[0]) > MAX_FRAME:
        print("usage: python -m vipcore_native_vrrp.liveness.worker CONFIG_JSON (started by the agent)",
              file=sys.stderr)
        return 2
    spec = json.loads(argv[0])
    if not _die_with_parent(int(spec["parent"])):
        return EXIT_PARENT_GONE
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)  # the agent closes us, AdminDown first
    control = socket.socket(fileno=int(spec["control_fd"]))
    recv = socket.socket(fileno=int(spec["recv_fd"]))
    send = socket.socket(fileno=int(spec["send_fd"]))
    claim_fds = spec.get("claim_fds")
    netlink = packet = None
    if isinstance(claim_fds, list) and len(claim_fds) == 2:
        netlink, packet = (socket.socket(fileno=int(fd)) for fd in claim_fds)
    config = SessionConfig(desired_min_tx=float(spec["tx"]), required_min_rx=float(spec["rx"]),
                           detect_mult=int(spec["mult"]), slow_interval=float(spec["slow"]),
                           relaxed_min_rx=float(spec.get("relaxed", RELAXED_MIN_RX)))
    worker = Worker(config, ipaddress.ip_address(spec["local"]), control, recv, send,
                    stats_interval=float(spec.get("stats_interval", 0.5)), netlink=netlink, packet=packet)
    refused = _realtime() if spec.get("realtime") else "not asked for"
    worker.realtime = refused is None
    if refused is not None and spec.get("realtime"):
        worker.emit({"ev": "log", "level": "info",
                     "message": f"no real-time scheduling ({refused}); timing follows the node's load"})
    # Everything allocated so far lives for the whole run: keep the cyclic collector off it.
    gc.freeze()
    worker.emit({"ev": "ready", "pid": os.getpid(), "realtime": worker.realtime,
                 "rss": _rss()})
    try:
        return worker.run()
    except OSError as exc:
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            return EXIT_PARENT_GONE
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
