"""Drives one sans-IO :class:`~vipcore_native_vrrp.protocol.Router` with asyncio.

The driver feeds the router its inputs with ``loop.time()`` as ``now``,
re-arms the router's one timer with ``loop.call_at``, and carries out the
actions it returns **in order**: a batch that adds VIPs and announces them
before sending the advert that ends a hand-over is executed exactly so,
even though adding an address is a netlink round trip. Batches without
address work run inline when nothing is pending, so periodic adverts never
wait for a task switch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable

import attrs

from vipcore.net.addresses import AddressHolder, AnnounceSchedule
from vipcore.core.errors import VipcoreError
from vipcore.core.model import Family, State
from vipcore_native_vrrp.protocol import (
    Action,
    AddVips,
    Announce,
    Dropped,
    Phase,
    RemoveVips,
    Router,
    Send,
    StateChanged,
)
from vipcore_native_vrrp.transport import Link

log = logging.getLogger(__name__)

#: ``report(change, failover_seconds)``: failover includes the address work.
Reporter = Callable[["RouterDriver", StateChanged, "float | None"], None]

_ADDRESS_WORK = (AddVips, RemoveVips, Announce)


class RouterDriver:
    """One (group, family) router bound to a link, a timer and the address holder."""

    def __init__(
        self,
        *,
        group: str,
        interface: str,
        router: Router,
        link: Link,
        holder: AddressHolder,
        schedule: AnnounceSchedule,
        report: Reporter,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.group = group
        self.interface = interface
        self.router = router
        self.link = link
        self.holder = holder
        self.schedule = schedule
        self.report = report
        self.loop = loop
        self.transitions = 0
        self._timer: asyncio.TimerHandle | None = None
        self._queue: collections.deque[tuple[list[Action], float]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._send_failed = False
        #: Queued batches whose advert must follow their address work.
        self._ordered_sends = 0

    @property
    def family(self) -> Family:
        return self.router.config.family

    @property
    def vrid(self) -> int:
        return self.router.config.vrid

    # -- inputs ---------------------------------------------------------------

    def start(self) -> None:
        self.link.handlers[self.vrid] = self._on_packet
        self.feed(self.router.start(self.loop.time()))

    def _on_packet(self, data: bytes, src: object, dst: object, ttl: int) -> None:
        self.feed(self.router.receive(data, src, dst, ttl, self.loop.time()))  # type: ignore[arg-type]

    def _on_timer(self) -> None:
        self._timer = None
        self.feed(self.router.handle_timer(self.loop.time()))

    def update(self, **changes: object) -> None:
        self.feed(self.router.update(self.loop.time(), **changes))  # type: ignore[arg-type]

    def resign(self) -> None:
        self.feed(self.router.resign(self.loop.time()))

    def shutdown(self) -> None:
        self.feed(self.router.shutdown(self.loop.time()))

    def release(self, reason: str) -> None:
        self.feed(self.router.release(self.loop.time(), reason))

    def takeover(self, reason: str) -> None:
        self.feed(self.router.takeover(self.loop.time(), reason))

    def peer_lost(self, delay: float, what: str) -> None:
        self.feed(self.router.peer_lost(self.loop.time(), delay, what))

    # -- actions --------------------------------------------------------------

    def feed(self, actions: Iterable[Action]) -> None:
        """Carry out ``actions`` in order, then re-arm the timer."""
        batch = list(actions)
        if batch:
            idle = self._worker is None and not self._queue
            address_work = any(isinstance(a, _ADDRESS_WORK) for a in batch)
            # Periodic adverts must not wait behind slow netlink work (the
            # holder is shared by every router): backups would declare us
            # dead. They wait only while an advert that must follow address
            # work (make-before-break) has not gone out yet.
            send_only = all(isinstance(a, Send | Dropped) for a in batch)
            if (idle and not address_work) or (send_only and not self._ordered_sends):
                for action in batch:
                    self._do_now(action, self.loop.time())
            else:
                if address_work and any(isinstance(a, Send) for a in batch):
                    self._ordered_sends += 1
                self._queue.append((batch, self.loop.time()))
                if self._worker is None:
                    self._worker = self.loop.create_task(self._work(), name=f"vrrp {self.group[:12]} IPv{int(self.family)}")
        self._rearm()

    def _rearm(self) -> None:
        due = self.router.next_timer()
        if due is None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        if self._timer is not None:
            if self._timer.when() <= due:
                # Every advert a backup hears pushes its timer out; let the
                # armed one fire early (a no-op) and re-arm then, instead of
                # a cancel and a new timer per advert.
                return
            self._timer.cancel()
        self._timer = self.loop.call_at(due, self._on_timer)

    async def _work(self) -> None:
        try:
            while self._queue:
                batch, decided = self._queue.popleft()
                ordered = any(isinstance(a, _ADDRESS_WORK) for a in batch) and any(isinstance(a, Send) for a in batch)
                announced = False
                try:
                    for action in batch:
                        # An advert that follows an announcement we did make
                        # must go out even if we have lost the election since:
                        # it makes the winner announce again, pulling back the
                        # neighbours our announcement took.
                        if not (announced and isinstance(action, Send)) and not self._still_wanted(action):
                            continue
                        announced = announced or isinstance(action, Announce)
                        if isinstance(action, _ADDRESS_WORK):
                            await self._do_address(action)
                        else:
                            self._do_now(action, decided)
                finally:
                    if ordered:
                        self._ordered_sends -= 1
        finally:
            self._worker = None

    def _still_wanted(self, action: Action) -> bool:
        """Whether a queued action still matches the router's state.

        Under churn a router can flip several times while netlink work is
        queued; every flip queued its own opposite action, so work the router
        no longer wants (adding VIPs it has already given up, announcing as a
        backup, an advert from a router that has become backup) is skipped
        instead of feeding the churn. Address changes are idempotent, so the
        last wanted action decides the result.
        """
        if isinstance(action, AddVips):
            return self.router.holding
        if isinstance(action, Announce):
            return self.router.phase is Phase.MASTER
        if isinstance(action, RemoveVips):
            return not self.router.holding or not set(action.vips) <= set(self.router.config.vips)
        if isinstance(action, Send):
            return self.router.phase is not Phase.BACKUP
        return True

    def _do_now(self, action: Action, decided: float) -> None:
        if isinstance(action, Send):
            if not self.link.send(action.data, action.src, action.dst):
                self._send_failed = True
            elif self._send_failed:
                self._send_failed = False
                if self.router.phase.holds:
                    # The link was down: Linux flushed our IPv6 VIPs with it, and
                    # neighbours may have moved on. Put them back and announce.
                    vips = self.router.config.vips
                    self.feed([AddVips(vips), Announce(vips)])
        elif isinstance(action, Dropped):
            self.link.counters.dropped[action.reason] += 1
        elif isinstance(action, StateChanged):
            self.transitions += 1
            if action.new is not State.MASTER:
                self._stop_announcing()  # a backup must not pull neighbours to itself
            failover = action.failover_seconds
            if failover is not None:
                # The machine measured up to its decision; add the address work since.
                failover += self.loop.time() - decided
            self.report(self, action, failover)

    async def _do_address(self, action: AddVips | RemoveVips | Announce) -> None:
        try:
            if isinstance(action, AddVips):
                await self.holder.add(self.interface, action.vips)
            elif isinstance(action, RemoveVips):
                if not self.router.holding:
                    self._stop_announcing()
                await self.holder.remove(self.interface, action.vips)
            else:
                # One announcement now, so it precedes the advert that follows
                # in this batch; the rest of the schedule in the background.
                # (garp.count 0: no burst, only the refresh if configured.)
                if self.schedule.count:
                    await self.holder.announce(self.interface, action.vips)
                self._start_announcing()
        except VipcoreError as exc:
            log.error("group %s IPv%d: %s", self.group[:12], self.family, exc)
        except Exception:  # keep the worker alive: later actions must still run
            log.exception("group %s IPv%d: %s failed", self.group[:12], self.family, type(action).__name__)

    def _start_announcing(self) -> None:
        self._stop_announcing()
        rest = attrs.evolve(self.schedule, count=max(0, self.schedule.count - 1),
                            initial_delay=self.schedule.interval if self.schedule.count else 0.0)
        if rest.count or rest.refresh is not None:
            self._announcer = self.holder.start_announcing(self.interface, self.router.config.vips, rest)

    def _stop_announcing(self) -> None:
        if self._announcer is not None:
            self._announcer.cancel()
            self._announcer = None

    # -- ending -----------------------------------------------------------------

    async def settled(self) -> None:
        """Wait until every queued action has been carried out."""
        while self._worker is not None:
            await asyncio.shield(self._worker)

    async def wait_stopped(self, timeout: float) -> bool:
        """Wait for the router to reach STOPPED (hand-over done); False on timeout."""
        deadline = self.loop.time() + timeout
        while self.router.phase is not Phase.STOPPED and self.loop.time() < deadline:
            await asyncio.sleep(0.005)
        await self.settled()
        return self.router.phase is Phase.STOPPED

    async def close(self) -> None:
        """Stop timers and announcements and unhook from the link (VIPs untouched)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_announcing()
        await self.settled()
        if self.link.handlers.get(self.vrid) == self._on_packet:
            del self.link.handlers[self.vrid]
