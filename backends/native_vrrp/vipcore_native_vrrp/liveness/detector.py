"""The liveness detector: BFD sessions with this node's peers on one interface, in a thread of their own.

Why a thread: detection must keep its timing while the agent's event loop is busy
(a large manifest parse, a slow backend hook). The thread owns two UDP sockets
(RFC 5881: receive on port 3784, send from one port in 49152..65535 with TTL 255),
sleeps in ``select`` until the next session timer or packet, and reports session
changes to the event loop with ``call_soon_threadsafe``. Only packets from the
addresses of current peers are accepted (the member-source filter), only with
TTL / hop limit 255, and a session sends at most once per negotiated interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from vipcore.core.model import Family, IPAddress
from vipcore_native_vrrp.liveness.packet import PORT, SOURCE_PORTS, TTL, Diagnostic, SessionState
from vipcore_native_vrrp.liveness.session import Dropped, Send, Session, SessionConfig, StateChanged

log = logging.getLogger("vipcore_native_vrrp.liveness")

# Linux values Python 3.11's socket module does not name.
_IP_RECVTTL = 12
_IP_TTL = 2
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_MAX_WAIT = 0.5

#: ``on_change(peer, old, new, diagnostic)``, called on the event loop.
ChangeCallback = Callable[[IPAddress, SessionState, SessionState, Diagnostic], None]


class Detector:
    """BFD sessions with a set of peers reachable on ``interface``, sending from ``local``."""

    def __init__(self, interface: str, local: IPAddress, config: SessionConfig, *,
                 loop: asyncio.AbstractEventLoop, on_change: ChangeCallback,
                 clock: Callable[[], float] = time.monotonic, realtime: bool = True) -> None:
        self.interface = interface
        self.local = local
        self.family = Family.IPV4 if local.version == 4 else Family.IPV6
        self.config = config
        self.loop = loop
        self.on_change = on_change
        self.clock = clock
        self.realtime = realtime
        #: Whether the thread runs with a real-time scheduling policy (see :meth:`_run`).
        self.scheduled_realtime = False
        self.sessions: dict[IPAddress, Session] = {}
        #: Sessions given up on purpose, still repeating AdminDown so the peer does not take us for dead.
        self._retiring: dict[IPAddress, Session] = {}
        self.drops: Counter[str] = Counter()
        self.send_errors = 0
        self._lock = threading.Lock()
        self._closed = False
        self._rng = random.Random()
        self._recv, self._send = self._open()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=f"vipcore-liveness-{interface}", daemon=True)

    # -- sockets ----------------------------------------------------------------

    def _open(self) -> tuple[socket.socket, socket.socket]:
        af = socket.AF_INET if self.family is Family.IPV4 else socket.AF_INET6
        device = self.interface.encode()
        recv = socket.socket(af, socket.SOCK_DGRAM)
        send = socket.socket(af, socket.SOCK_DGRAM)
        try:
            for sock in (recv, send):
                sock.setsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, device)
                sock.setblocking(False)
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

    def _bind_source_port(self, sock: socket.socket) -> None:
        low, high = SOURCE_PORTS
        for _ in range(64):
            port = self._rng.randint(low, high)
            try:
                sock.bind((str(self.local), port))
                return
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        raise OSError(errno.EADDRINUSE, f"no free BFD source port in {low}..{high}")

    # -- control (event-loop side) ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def set_peers(self, peers: Iterable[IPAddress]) -> None:
        """Keep sessions with exactly ``peers``: new ones start, dropped ones say AdminDown and go."""
        wanted = {p for p in peers if p.version == self.local.version and p != self.local}
        with self._lock:
            now = self.clock()
            for peer in set(self.sessions) - wanted:
                session = self.sessions.pop(peer)
                self._carry_out(peer, session.admin_down(now), notify=False)
                if not session.retired:
                    self._retiring[peer] = session
            for peer in wanted - set(self.sessions):
                self._retiring.pop(peer, None)
                session = Session(self.config, self._discriminator(), rng=self._rng.random)
                self.sessions[peer] = session
                self._carry_out(peer, session.start(now))
        self._wake()

    def state(self, peer: IPAddress) -> SessionState | None:
        with self._lock:
            session = self.sessions.get(peer)
            return session.state if session is not None else None

    def snapshot(self) -> dict[IPAddress, Session]:
        with self._lock:
            return dict(self.sessions)

    def close(self, *, graceful: bool = True) -> None:
        """Stop the thread; ``graceful`` tells every peer AdminDown first (not a failure)."""
        with self._lock:
            if self._closed:
                return
            if graceful:
                now = self.clock()
                for peer, session in self.sessions.items():
                    self._carry_out(peer, session.admin_down(now), notify=False)
                    self._retiring[peer] = session
                self.sessions.clear()
        if graceful and self._thread.is_alive():
            # Let the thread repeat AdminDown (a few tens of milliseconds at the fast rate), bounded.
            self._wake()
            deadline = self.clock() + 1.0
            while self.clock() < deadline:
                with self._lock:
                    if not self._retiring:
                        break
                time.sleep(0.005)
        with self._lock:
            self._closed = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        for sock in (self._recv, self._send, self._wake_r, self._wake_w):
            sock.close()

    # -- the thread -------------------------------------------------------------------

    def _run(self) -> None:
        if self.realtime:
            # Like keepalived's bfd_rt_priority: the lowest real-time priority, so a loaded node
            # (other processes, or this process's event loop) cannot delay a packet past the
            # detection time. The thread sleeps in select() and does bounded work per wake-up.
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_RR, os.sched_param(1))
                self.scheduled_realtime = True
            except (OSError, AttributeError) as exc:
                log.info("liveness on %s: no real-time scheduling (%s); timing follows the node's load",
                         self.interface, exc)
        while True:
            with self._lock:
                if self._closed:
                    return
                timers = [t for t in (s.next_timer() for s in (*self.sessions.values(), *self._retiring.values()))
                          if t is not None]
            wait = min(timers) - self.clock() if timers else _MAX_WAIT
            try:
                readable, _, _ = select.select([self._recv, self._wake_r], [], [], min(max(wait, 0.0), _MAX_WAIT))
            except (OSError, ValueError):
                return  # closed under us
            if self._wake_r in readable:
                with contextlib.suppress(OSError):
                    while self._wake_r.recv(64):
                        pass
            with self._lock:
                if self._closed:
                    return
                if self._recv in readable:
                    self._receive_all()
                now = self.clock()
                for peer, session in list(self.sessions.items()):
                    timer = session.next_timer()
                    if timer is not None and timer <= now:
                        self._carry_out(peer, session.handle_timer(now))
                for peer, session in list(self._retiring.items()):
                    timer = session.next_timer()
                    if timer is not None and timer <= now:
                        self._carry_out(peer, session.handle_timer(now), notify=False)
                    if session.retired:
                        del self._retiring[peer]

    def _receive_all(self) -> None:
        for _ in range(256):  # bounded: one flood cannot starve the timers
            try:
                data, ancillary, _, source = self._recv.recvmsg(128, 64)
            except BlockingIOError:
                return
            except OSError:
                self.drops["socket"] += 1
                return
            peer = ipaddress.ip_address(source[0].split("%", 1)[0])
            session = self.sessions.get(peer)
            if session is None:
                self.drops["source"] += 1
                continue
            self._carry_out(peer, session.receive(data, _ttl(ancillary), self.clock()))

    def _carry_out(self, peer: IPAddress, actions: list[Send | StateChanged | Dropped], *, notify: bool = True) -> None:
        for action in actions:
            if isinstance(action, Send):
                try:
                    self._send.sendto(action.data, (str(peer), PORT))
                except OSError:
                    self.send_errors += 1
            elif isinstance(action, Dropped):
                self.drops[action.reason] += 1
            elif notify:
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    self.loop.call_soon_threadsafe(self.on_change, peer, action.old, action.new, action.diagnostic)

    def _discriminator(self) -> int:
        used = {s.my_discriminator for s in self.sessions.values()}
        while True:
            value = self._rng.randint(1, 0xFFFFFFFF)
            if value not in used:
                return value

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")


def _ttl(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if (level, kind) in ((socket.IPPROTO_IP, _IP_TTL), (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT)) and len(data) >= 4:
            value: int = struct.unpack("i", data[:4])[0]
            return value
    return -1  # no TTL reported: treat as not 255
