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
from collections.abc import Awaitable, Callable, Iterable

import attrs

from vipcore.net.addresses import AddressHolder, AnnounceSchedule
from vipcore.core.errors import VipcoreError
from vipcore.core.model import Family, IPAddress, State, TransitionCause
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
from vipcore_native_vrrp.liveness.detector import WorkerClaim
from vipcore_native_vrrp.timers import BatchedTimer, TimerBatch
from vipcore_native_vrrp.transport import Link

log = logging.getLogger(__name__)

#: How early, as a fraction of its interval, a master's periodic advert may go out to share a
#: wake-up with others (timers.py): early is safe, and half an interval keeps the adverts of
#: an interface's masters in one or two wake-ups per interval.
ADVANCE = 0.5

#: ``report(change, failover_seconds)``: failover includes the address work.
Reporter = Callable[["RouterDriver", StateChanged, "float | None"], None]

_ADDRESS_WORK = (AddVips, RemoveVips, Announce)

#: Drops that mean someone on the LAN is lying or runs a twin of this node:
#: logged (at most once per LOUD_EVERY seconds and reason), not only counted.
_LOUD = {
    "duplicate_identity": (logging.ERROR, "another speaker uses this node's identity ({source}): its adverts are "
                                          "refused; two agents with the same node name or address?"),
    "priority_mismatch": (logging.WARNING, "advert from {source} with a priority that member never sends: dropped "
                                           "(spoofed, or a keepalived peer missing from keepalived_peers)"),
    "inconsistent_resign": (logging.WARNING, "priority-0 advert from {source}, which keeps advertising at full "
                                             "priority: dropped as forged"),
    "auth": (logging.WARNING, "unauthenticated, forged or replayed advert from {source}: dropped"),
}
LOUD_EVERY = 10.0


@attrs.define(eq=False)
class _Claim:
    """A router's VIPs asked of the holder before its machine decided (:meth:`RouterDriver.claim`)."""

    vips: tuple[IPAddress, ...]
    asked: "asyncio.Future[tuple[IPAddress, ...]]"
    #: Loop time the loss was read (the coordinator's pass began): the election starts there.
    detected: float
    #: Loop time of the claim: the coordinator decided this node takes the group (its rank delay is 0).
    at: float
    #: When the kernel had them (the holder answered in the pass), and when they were first announced.
    added: float | None = None
    announced: float | None = None
    #: Loop time the machine took over with these VIPs (set when the takeover's batch adopted the claim).
    decided: float | None = None
    #: When the liveness worker acted on the expiry, if it put these VIPs in itself (its plan): the
    #: election was decided in advance, ``at`` is its send, ``added`` its acks, ``announced`` its frames.
    worker_detected: float | None = None


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
        batch: TimerBatch | None = None,
        on_master: Callable[[], None] | None = None,
    ) -> None:
        self.group = group
        self.interface = interface
        self.router = router
        self.link = link
        self.holder = holder
        self.schedule = schedule
        self.report = report
        self.loop = loop
        #: Shared by the backend's drivers: a master's advert timer joins a slot (see timers.py).
        self.batch = batch
        #: Called when the master this router hears changed without a transition here (a failover or a
        #: preemption elsewhere): node-level liveness follows who to watch fast.
        self.on_master = on_master
        self.transitions = 0
        self._timer: asyncio.TimerHandle | BatchedTimer | None = None
        #: When the armed timer's input is due (a batched one may fire before: up to then it counts as due).
        self._timer_due = 0.0
        #: Batches to carry out in order: actions, when decided, and the first action's VIPs when they
        #: were already asked of the holder (see :meth:`feed`).
        self._queue: collections.deque[tuple[list[Action], float, Awaitable[object] | None]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        #: Queued batches whose advert must follow their address work.
        self._ordered_sends = 0
        self._logged_at: dict[str, float] = {}
        #: Loop times, in the batch being carried out, when its VIPs were added and first announced:
        #: the address and announce phases of a failover the batch ends with.
        self._added_at: float | None = None
        self._announced_at: float | None = None
        #: The first announcement of the queued takeover, sent at the end of the pass that decided it
        #: (:meth:`announce_early`), and when its VIPs were answered and it went: the worker skips it.
        self._early: tuple[Announce, float, float] | None = None
        #: The VIPs the coordinator's pass put in the kernel before this router decided (:meth:`claim`).
        self._claim: _Claim | None = None
        #: Set by :meth:`close`: an advert queued before it that fails after it changes nothing.
        self.closed = False
        #: Bound once: the steady path hands it to the link with every advert.
        self._on_queued_failure = self._queued_send_failed

    @property
    def family(self) -> Family:
        return self.router.config.family

    @property
    def vrid(self) -> int:
        return self.router.config.vrid

    @property
    def vips(self) -> tuple[IPAddress, ...]:
        return self.router.config.vips

    # -- inputs ---------------------------------------------------------------

    def start(self) -> None:
        self.link.handlers[self.vrid] = self._on_packet
        self.feed(self.router.start(self.loop.time()))

    def _on_packet(self, data: bytes, src: object, dst: object, ttl: int) -> None:
        router = self.router
        master = router.master
        actions = router.receive(data, src, dst, ttl, self.loop.time())  # type: ignore[arg-type]
        if actions:
            self.feed(actions)
        else:
            # A backup hearing its master, every interval of every group: nothing to carry out (and no
            # phase change: that always comes with an action), only the timer it pushed out.
            self._rearm()
        heard = router.master
        if self.on_master is not None and heard is not master and heard is not None and heard != master:
            self.on_master()

    def _on_timer(self) -> None:
        fired, self._timer = self._timer, None
        now = self.loop.time()
        advance = self._timer_due - now
        if advance < 0.0:
            advance = 0.0
        router = self.router
        if not self._ordered_sends:
            # The steady master's advert, every interval of every master: no action objects, no
            # dispatch, straight to the socket and the batch (feed() would do the same, slower).
            sends = router.periodic(now, advance)
            if sends is not None:
                link = self.link
                # One advert (to the group): queued on the link, which sends the pass's adverts together
                # (transport.py); a failure comes back to _queued_send_failed. Adverts to unicast peers go
                # now, each outcome reported in order.
                queued = sends[0] if len(sends) == 1 else None
                if queued is None:
                    failed = False
                    for send in sends:
                        ok = link.send(send.data, send.src, send.dst, self._on_queued_failure)
                        if not ok or failed:
                            failed = True
                            followup = router.sent(ok, self.loop.time())
                            if followup:
                                self.feed(followup)
                    if failed:
                        self._rearm()
                        return
                # _rearm()'s rule for a master's advert, the only timer periodic() leaves armed.
                due = router.advert_at
                assert due is not None
                self._timer_due = due
                batch = self.batch
                if batch is not None:
                    early = ADVANCE * (due - now)  # periodic(): the next advert one interval after now
                    if type(fired) is BatchedTimer:
                        self._timer = batch.again(fired, due, early)
                    else:
                        self._timer = batch.call_at(due, self._on_timer, early)
                else:
                    self._timer = self.loop.call_at(due, self._on_timer)
                if queued is not None:
                    # After the re-arm: a link may report the failure at once.
                    link.queue(queued, self._on_queued_failure)
                return
        if advance == 0.0:
            due = router.next_timer()
            if due is not None and due > now:
                # Fired at its time and nothing is due any more (next_timer()'s contract: handle_timer
                # would do nothing): a backup's Master_Down timer that its master's adverts pushed out
                # since it was armed, about once per three intervals per group followed. Only re-armed.
                self._rearm()
                return
        self.feed(router.handle_timer(now, advance))

    def _queued_send_failed(self) -> None:
        # An advert the link queued (steady, or direct behind queued ones) and could not send after all: what
        # the direct path does with a failed advert, the router knows (its next timer takes the general path,
        # which puts the VIPs back once sending works again).
        if self.closed:
            return
        followup = self.router.sent(False, self.loop.time())
        if followup:
            self.feed(followup)
        self._rearm()

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

    def rejoin(self, reason: str) -> None:
        self.feed(self.router.rejoin(self.loop.time(), reason))

    def follow(self, sibling: str) -> None:
        self.feed(self.router.follow(self.loop.time(), sibling))

    def link_down(self, reason: str, cause: TransitionCause = TransitionCause.LINK_DOWN) -> None:
        self.feed(self.router.link_down(self.loop.time(), reason, cause))

    def link_up(self, reason: str) -> None:
        self.feed(self.router.link_up(self.loop.time(), reason))

    def peer_lost(self, delay: float, what: str, silent_for: float = 0.0,
                  held: list[Callable[[], None]] | None = None) -> None:
        """The master's node stopped answering ``silent_for`` seconds ago (node-level liveness).

        ``held``: the coordinator's pass over every group of the lost node. The adverts a takeover starts
        with are appended to it as calls (the pass sends them after the VIPs of every group it took are
        in the kernel and announced) instead of going out now; the other backups wait at least one rank
        step (100 ms) before they would take over, so a few milliseconds later changes nothing for them.
        """
        now = self.loop.time()
        actions = self.router.peer_lost(now, delay, what, since=now - silent_for)
        due = self.router.next_timer()
        if due is not None and due <= now:
            # The best-ranked survivor decides in this call: a node dying hands all its groups over in the
            # coordinator's one pass over them instead of a loop timer per router that ran after
            # whatever else the loop had queued (bench/failover.py, many groups).
            actions += self.router.handle_timer(now)
            if held is not None and self._worker is None and not self._queue:
                lead = 0
                while lead < len(actions) and type(actions[lead]) is Send:
                    lead += 1
                if lead and lead < len(actions) and type(actions[lead]) is AddVips:
                    sends, actions = actions[:lead], actions[lead:]
                    held.append(lambda: self._send_held(sends))
                    self._adopt_claim(actions, now)
        self.feed(actions)

    def claim(self, detected: float | None = None, worker: WorkerClaim | None = None) -> bool:
        """Before this backup decides in a lost peer's pass (it ranks first among the survivors, so it takes
        over in that pass): ask the holder for its VIPs now, so they join the pass's one netlink batch and
        are announced (:meth:`announce_claim`) before any router's machine runs. Its takeover then finds them
        done (:meth:`peer_lost`); if it does not take over, :meth:`release_claim` removes them. True if asked.

        Only for an idle backup not holding its VIPs (nothing queued may precede or undo the add), on an
        interface the holder knows already (the change queued at once). ``detected``: the loop time the
        loss was read (the failover's elect phase runs from there to the claim; default now).

        ``worker``: the liveness worker already put these VIPs in and announced them (its takeover plan,
        confirmed): the holder is still asked (idempotent, "already so"), :meth:`announce_claim` sends
        nothing, and the phases count from the worker's times (its send is when the address went in)."""
        router = self.router
        if (self.closed or self._claim is not None or router.state is not State.BACKUP or router.released
                or router.holding or self._worker is not None or self._queue):
            return False
        vips = router.config.vips
        try:
            asked = self.holder.add_now(self.interface, vips)
        except Exception:  # the takeover asks again, and reports it
            return False
        if asked is None:  # the interface is not known yet: nothing was queued; the takeover asks the usual way
            return False
        now = self.loop.time()
        read = now if detected is None else min(detected, now)
        if worker is not None and worker.ok and worker.acked is not None:
            self._claim = _Claim(vips=vips, asked=asked, detected=read, at=min(worker.sent, read),
                                 added=min(worker.acked, now), worker_detected=min(worker.expired, worker.sent),
                                 announced=min(worker.announced, now) if worker.announced is not None else None)
        else:
            self._claim = _Claim(vips=vips, asked=asked, detected=read, at=now)
        return True

    def announce_claim(self) -> bool:
        """Once the pass's batch was sent: the claimed VIPs' first announcement, when the kernel answered in
        the pass (the holder's ``send_queued``). True if it went."""
        claim = self._claim
        if claim is not None and claim.worker_detected is not None and claim.announced is not None:
            return True  # the liveness worker's announcement is this claim's first one
        if claim is None or claim.decided is not None or not claim.asked.done():
            return False
        if claim.asked.cancelled() or claim.asked.exception() is not None:
            return False  # the takeover awaits the same answer and reports the failure
        if claim.added is None:  # (the worker's acks, when it put them in: the truer time)
            claim.added = self.loop.time()
        if not self.schedule.count:
            return False
        try:
            if not self.holder.announce_now(self.interface, claim.vips):
                return False
        except VipcoreError as exc:  # one line; the takeover's worker announces instead
            log.error("group %s IPv%d: %s", self.group[:12], self.family, exc)
            return False
        claim.announced = self.loop.time()
        return True

    def _adopt_claim(self, actions: list[Action], now: float) -> None:
        """The takeover's batch (``actions``, its adverts held) starts with the claimed VIPs: it awaits the
        claim's answer instead of asking again, and skips the announcement already sent."""
        claim = self._claim
        if claim is None or self.router.phase is not Phase.MASTER or type(actions[0]) is not AddVips \
                or actions[0].vips != claim.vips:
            return
        claim.decided = now
        if claim.announced is not None and len(actions) > 1 and type(actions[1]) is Announce:
            assert claim.added is not None
            self._early = (actions[1], claim.added, claim.announced)

    def release_claim(self) -> bool:
        """After the pass's decisions: a claim no takeover adopted (the machine did not take over, or failed)
        is undone — its VIPs removed (queued now: the caller sends them in the pass) and announcements
        stopped, unless the router holds them after all. True when a removal was queued."""
        claim = self._claim
        if claim is None or claim.decided is not None:
            return False
        self._claim = None
        if self.router.holding:
            return False  # a master after all (its own batch adds them again: idempotent)
        return self._undo(claim.vips, "added before a takeover that did not happen")

    def release_worker_claim(self) -> bool:
        """The liveness worker put this router's VIPs in (and announced them) at a lost peer's expiry, but
        this router is not taking over (its plan was stale: the master had moved, the router changed since,
        or it was busy): they are removed (queued now: the caller sends them in the pass) unless the router
        holds them or a claim of its own covers them. True when a removal was queued."""
        if self._claim is not None or self.router.holding or self.router.phase is Phase.MASTER:
            return False
        return self._undo(self.router.config.vips, "the liveness worker added")

    def _undo(self, vips: tuple[IPAddress, ...], what: str) -> bool:
        """VIPs put in ahead of a takeover that did not happen: announcements stopped, removal queued (the
        caller sends it in the pass). True when queued."""
        self._stop_announcing()
        try:
            removed = self.holder.remove(self.interface, vips)
        except Exception:
            log.exception("group %s IPv%d: removing VIPs %s failed", self.group[:12], self.family, what)
            return False
        self.loop.create_task(self._confirm_release(removed), name=f"vrrp {self.group[:12]} release")
        return True

    async def _confirm_release(self, removed: Awaitable[object]) -> None:
        try:
            await removed
        except VipcoreError as exc:
            log.error("group %s IPv%d: %s", self.group[:12], self.family, exc)

    def _send_held(self, sends: list[Action]) -> None:
        for action in sends:
            self._do_now(action, self.loop.time())
        self._rearm()

    def announce_early(self) -> bool:
        """At the end of a takeover's pass, once the holder answered its VIPs (``send_queued``): the first
        announcement, which the worker would send in a later pass, now. True if it went."""
        if not self._queue or self._early is not None or not self.schedule.count:
            return False
        batch, _, asked = self._queue[0]
        if not (isinstance(asked, asyncio.Future) and asked.done()) or asked.cancelled() or asked.exception():
            return False
        if len(batch) < 2 or type(batch[0]) is not AddVips or type(batch[1]) is not Announce:
            return False
        announce = batch[1]
        if not self.router.wants(announce):
            return False
        added = self.loop.time()
        try:
            if not self.holder.announce_now(self.interface, announce.vips):
                return False
        except VipcoreError as exc:  # one line; the worker tries again when it comes to the announcement
            log.error("group %s IPv%d: %s", self.group[:12], self.family, exc)
            return False
        self._early = (announce, added, self.loop.time())
        return True

    # -- actions --------------------------------------------------------------

    def feed(self, actions: Iterable[Action]) -> None:
        """Carry out ``actions`` in order, then re-arm the timer."""
        batch = actions if isinstance(actions, list) else list(actions)
        if len(batch) == 1 and type(batch[0]) is Send and (not self._ordered_sends or
                                                           (self._worker is None and not self._queue)):
            # The periodic advert, the path every master takes every interval: the rule below for one Send.
            self._do_now(batch[0], 0.0)
        elif batch:
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
                if idle:
                    # Adverts the machine put before the address work (a failover
                    # from a dead master) go now, not after the next loop pass:
                    # they are what stops the other backups taking over too.
                    lead = 0
                    while lead < len(batch) and type(batch[lead]) is Send:
                        lead += 1
                    for action in batch[:lead]:
                        self._do_now(action, self.loop.time())
                    batch = batch[lead:]
                # Still idle after the lead adverts (their follow-ups may have queued work): nothing queued
                # must precede this batch's first address change.
                asked = self._ask_now(batch) if self._worker is None and not self._queue else None
                if address_work and any(isinstance(a, Send) for a in batch):
                    self._ordered_sends += 1
                self._queue.append((batch, self.loop.time(), asked))
                if self._worker is None:
                    self._worker = self.loop.create_task(self._work(), name=f"vrrp {self.group[:12]} IPv{int(self.family)}")
        if self._announcer is not None and self.router.phase is not Phase.MASTER:
            # Resigning or releasing still reports MASTER (it holds the VIPs), but its
            # announcements would pull neighbours back from the new master: a
            # client's ARP entry refreshed by our burst ignores the new master's
            # first gratuitous ARPs for its locktime, and we let go after the linger.
            self._stop_announcing()
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
        self._timer_due = due
        if self.batch is not None and self.router.phase is Phase.MASTER and due == self.router.advert_at:
            # Adverts only: a backup's Master_Down timer keeps its precision (the failover time).
            self._timer = self.batch.call_at(due, self._on_timer, early=ADVANCE * self.router.config.interval)
        else:
            self._timer = self.loop.call_at(due, self._on_timer)

    def _ask_now(self, batch: list[Action]) -> Awaitable[object] | None:
        """The VIPs a batch starts by adding, asked of the holder in this pass (nothing is queued before
        them): a node dying hands its groups over in one pass, and their VIPs then join one netlink batch
        in the next pass instead of a pass later, once each router's task has started. A takeover whose
        VIPs were claimed before it decided awaits that claim's answer (no second round trip)."""
        if not batch or type(batch[0]) is not AddVips:
            return None
        claim = self._claim
        if claim is not None and claim.decided is not None and batch[0].vips == claim.vips:
            return claim.asked
        try:
            return self.holder.add(self.interface, batch[0].vips)
        except Exception:  # asked again, and reported, when the batch is carried out
            return None

    async def _work(self) -> None:
        try:
            while self._queue:
                batch, decided, asked = self._queue.popleft()
                self._added_at = self._announced_at = None
                ordered = any(isinstance(a, _ADDRESS_WORK) for a in batch) and any(isinstance(a, Send) for a in batch)
                announced = False
                try:
                    for action in batch:
                        # An advert that follows an announcement we did make
                        # must go out even if we have lost the election since:
                        # it makes the winner announce again, pulling back the
                        # neighbours our announcement took.
                        if asked is not None and action is batch[0]:
                            # Already on its way to the kernel: its result is awaited even if the router has
                            # changed its mind since (the opposite change it queued then comes after it).
                            await self._do_address(action, asked)  # type: ignore[arg-type]
                            continue
                        if not (announced and isinstance(action, Send)) and not self.router.wants(action):
                            continue
                        announced = announced or isinstance(action, Announce)
                        if isinstance(action, _ADDRESS_WORK):
                            await self._do_address(action)
                        else:
                            self._do_now(action, decided, defer_report=True)
                finally:
                    if ordered:
                        self._ordered_sends -= 1
                    if self._early is not None and any(action is self._early[0] for action in batch):
                        self._early = None  # its batch is over (the announcement skipped if no longer wanted)
                    if self._claim is not None and asked is self._claim.asked:
                        self._claim = None  # its takeover is carried out (or given up)
        finally:
            self._worker = None

    def _do_now(self, action: Action, decided: float, defer_report: bool = False) -> None:
        if type(action) is Send:
            # True also when it waits behind the link's queued adverts for the send buffer (they go first):
            # a failure then comes back later, the steady path's way.
            ok = self.link.send(action.data, action.src, action.dst, self._on_queued_failure)
            followup = self.router.sent(ok, self.loop.time())
            if followup:
                self.feed(followup)
        elif isinstance(action, Dropped):
            self.link.counters.dropped[action.reason] += 1
            loud = _LOUD.get(action.reason)
            now = self.loop.time()
            if loud is not None and now - self._logged_at.get(action.reason, float("-inf")) >= LOUD_EVERY:
                self._logged_at[action.reason] = now
                level, text = loud
                log.log(level, "group %s IPv%d VRID %d: %s", self.group[:12], self.family, self.vrid,
                        text.format(source=action.source))
        elif isinstance(action, StateChanged):
            self.transitions += 1
            if action.new is not State.MASTER:
                self._stop_announcing()  # a backup must not pull neighbours to itself
            failover = action.failover_seconds
            claim = self._claim
            took = claim.decided if claim is not None else None  # the takeover adopted a claim at this time
            if failover is not None:
                # The machine measured up to its decision; add the address work since (and, when the VIPs
                # were claimed, the pass's work from the loss read to the decision, claim and address included).
                failover += self.loop.time() - decided
                if claim is not None and took is not None:
                    failover += max(0.0, took - claim.detected)
            if action.phases is not None:
                added, announced = self._added_at, self._announced_at
                phases, start = action.phases, decided
                if claim is not None and took is not None:
                    # The VIPs were asked before the machine decided (claim()): the election is the
                    # coordinator's (this node ranks first), from the loss read to the claim; the address
                    # phase runs from the claim. The machine's transition came after the first
                    # announcement, in the same pass: no phase of its own.
                    start = claim.at
                    if claim.worker_detected is not None:
                        # The liveness worker claimed them at the expiry, before the agent read it: detection
                        # ends where the worker acted, the election was its plan (decided in advance).
                        late = max(0.0, claim.detected - claim.worker_detected)
                        detect = phases.detect if phases.detect is None else max(0.0, phases.detect - late)
                        phases = attrs.evolve(phases, detect=detect, elect=claim.at - claim.worker_detected)
                    else:
                        phases = attrs.evolve(phases, elect=claim.at - claim.detected)
                action = attrs.evolve(action, phases=attrs.evolve(
                    phases,
                    address=max(0.0, added - start) if added is not None else None,
                    announce=max(0.0, announced - added) if announced is not None and added is not None else None,
                ))
            self._added_at = self._announced_at = None
            if defer_report:
                # After address work: many routers resume from one netlink batch in the same loop pass
                # (a node dying hands its groups to a survivor at once). Each one's gratuitous ARP / NA
                # goes out first; the reports (log, status, hooks), in order, once the pass is over.
                self.loop.call_soon(self.report, self, action, failover)
            else:
                self.report(self, action, failover)

    async def _do_address(self, action: AddVips | RemoveVips | Announce, asked: Awaitable[object] | None = None) -> None:
        try:
            if isinstance(action, AddVips):
                await (asked if asked is not None else self.holder.add(self.interface, action.vips))
                if self.router.wants(action):
                    claim = self._claim
                    if claim is not None and asked is claim.asked and claim.added is not None:
                        self._added_at = claim.added  # answered in the pass that claimed them
                    else:
                        self._added_at = self.loop.time() if self._early is None else self._early[1]
            elif isinstance(action, RemoveVips):
                if not self.router.holding:
                    self._stop_announcing()
                await self.holder.remove(self.interface, action.vips)
            elif self._early is not None and self._early[0] is action:
                self._announced_at = self._early[2]  # sent at the end of the takeover's pass
                self._early = None
                self._start_announcing()
            else:
                # One announcement now, so it precedes the advert that follows
                # in this batch; the rest of the schedule in the background.
                # (garp.count 0: no burst, only the refresh if configured.)
                if self.schedule.count:
                    await self.holder.announce(self.interface, action.vips)
                    self._announced_at = self.loop.time()
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

    @property
    def busy(self) -> bool:
        """Whether actions wait to be carried out (address work, announcements, adverts after them)."""
        return self._worker is not None or bool(self._queue)

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
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._stop_announcing()
        await self.settled()
        if self.link.handlers.get(self.vrid) == self._on_packet:
            del self.link.handlers[self.vrid]
