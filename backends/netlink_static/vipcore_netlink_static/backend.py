"""The netlink_static backend: one deterministic holder per group, no peer protocol.

Every node evaluates the same placement (:mod:`vipcore.core.placement`, already
applied to ``Membership.members``): the first member holds the group's VIPs,
every other member makes sure they are absent. Failover happens when the
core re-dispatches with a new node list (a manifest edit, a Node turning
NotReady, a missing heartbeat Lease): the next node in placement order
becomes the holder. Nothing is exchanged between nodes, so a holder that
dies without the control plane noticing keeps its VIPs "held" in everyone's
view until it does.

Per group the backend reports one router per address family: MASTER while
holding, BACKUP while another node should hold (or after a release), FAULT
when the group's interface is missing or netlink refuses, STOPPED after
leaving. A fault touches only its group; a periodic check retries it and
re-adds VIPs that vanished (a link flap flushes IPv6 addresses).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import ClassVar

import attrs

from vipcore.net.addresses import AddressHolder
from vipcore.backend import BackendContext, hookimpl
from vipcore.core.errors import AddressError, InterfaceNotFoundError, VipcoreError
from vipcore.core.model import Family, IPAddress, Membership, MetricSample, State, StateChange, VipGroup
from vipcore_netlink_static.settings import Settings

log = logging.getLogger(__name__)

#: Interfaces never scanned for stale VIPs.
SKIP_INTERFACES = frozenset({"lo"})
#: Seconds a holder that is no longer the chosen one (a better node joined or
#: returned, a drain) keeps its VIPs: every node reads the change on its own,
#: so without it the old holder may remove before the new one has added and
#: announced (break-before-make). Covers the manifest poll (0.25 s) and a new
#: holder taking over many groups one by one on a loaded node (0.5 s and 1 s
#: still lost echoes in the membership bench at load average 20).
HANDOVER_GRACE = 2.0
METRIC_PREFIX = "vipcore_netlink_static"


def _ordered(vips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    return tuple(sorted(set(vips), key=lambda a: (a.version, int(a))))


def _vips(group: VipGroup) -> frozenset[IPAddress]:
    return frozenset((*group.vips_v4, *group.vips_v6))


@attrs.define
class GroupRecord:
    """What the backend knows about one group it is a member of."""

    membership: Membership
    states: dict[Family, State] = attrs.field(factory=dict)
    #: Set by ``vipcore_group_release``: do not hold, whoever is preferred.
    released: str | None = None
    #: Set by ``vipcore_group_takeover``: hold, whoever is preferred.
    forced: str | None = None
    fault: str | None = None
    announcer: asyncio.Task[None] | None = None
    #: The VIP set the running announcer covers.
    announced: frozenset[IPAddress] = frozenset()
    #: A pending hand-over: removes the VIPs after :data:`HANDOVER_GRACE`.
    handover: asyncio.Task[None] | None = None

    @property
    def holding(self) -> bool:
        return any(state is State.MASTER for state in self.states.values())

    def cancel_handover(self) -> None:
        if self.handover is not None and self.handover is not asyncio.current_task():
            self.handover.cancel()
        self.handover = None

    @property
    def name(self) -> str:
        return self.membership.name

    @property
    def interface(self) -> str:
        return self.membership.group.interface

    @property
    def vips(self) -> frozenset[IPAddress]:
        return _vips(self.membership.group)

    def decision(self) -> tuple[bool, str]:
        """Whether this node should hold the group, and why."""
        if self.released is not None:
            return False, f"released: {self.released}"
        if self.forced is not None:
            return True, f"takeover: {self.forced}"
        preferred = self.membership.preferred_holder
        if preferred == self.membership.node:
            return True, f"chosen holder of {len(self.membership.members)} node(s)"
        return False, f"{preferred} is the chosen holder"

    def stop_announcing(self) -> None:
        if self.announcer is not None:
            self.announcer.cancel()
        self.announcer = None
        self.announced = frozenset()


@attrs.define
class Counters:
    vips_added: int = 0
    vips_removed: int = 0
    stale_removed: int = 0
    faults: int = 0


class NetlinkStaticBackend:
    """Hold each group's VIPs on its chosen node; see the module docstring."""

    name: ClassVar[str] = "netlink_static"
    #: Seconds a no-longer-chosen holder keeps its VIPs (tests shorten it).
    handover_grace: float = HANDOVER_GRACE

    def __init__(self, *, holder: AddressHolder | None = None) -> None:
        # Tests pass a holder bound to a namespace; the agent passes nothing.
        self._holder = holder
        self._owns_holder = holder is None
        self._context = BackendContext(node="")
        self._settings = Settings()
        self._groups: dict[str, GroupRecord] = {}
        self._lock = asyncio.Lock()
        self._verifier: asyncio.Task[None] | None = None
        #: Groups left gracefully while holding: their VIPs go after the hand-over grace.
        self._retiring: dict[asyncio.Task[None], GroupRecord] = {}
        self.counters = Counters()

    # -- helpers -------------------------------------------------------------

    @property
    def holder(self) -> AddressHolder:
        if self._holder is None:
            self._holder = AddressHolder()
        return self._holder

    def groups(self) -> dict[str, GroupRecord]:
        """The groups this node is a member of (read-only view for status and tests)."""
        return dict(self._groups)

    def _set_state(self, record: GroupRecord, family: Family, new: State, reason: str,
                   failover: float | None = None) -> None:
        old = record.states.get(family, State.INIT)
        if old is new:
            return
        record.states[family] = new
        self._context.report(
            StateChange(
                group=record.name, family=family, old=old, new=new, reason=reason,
                at=self._context.clock(), node=self._context.node, backend=self.name,
                vrid=None, failover_seconds=failover if new is State.MASTER else None,
            )
        )

    def _set_all(self, record: GroupRecord, new: State, reason: str, failover: float | None = None) -> None:
        families = record.membership.group.families
        for family in list(record.states):
            if family not in families:
                self._set_state(record, family, State.STOPPED, "no VIPs of this family left")
                del record.states[family]
        for family in families:
            self._set_state(record, family, new, reason, failover)

    def _claimed(self, interface: str, *, besides: str) -> frozenset[IPAddress]:
        """VIPs on ``interface`` that another group this node holds still needs."""
        claimed: set[IPAddress] = set()
        for other in self._groups.values():
            if other.name != besides and other.interface == interface and other.decision()[0]:
                claimed |= other.vips
        return frozenset(claimed)

    async def _remove(self, record: GroupRecord, vips: Iterable[IPAddress]) -> None:
        doomed = set(vips) - self._claimed(record.interface, besides=record.name)
        if doomed:
            removed = await self.holder.remove(record.interface, _ordered(doomed))
            self.counters.vips_removed += len(removed)

    async def _apply(self, record: GroupRecord, trigger: float, previous: frozenset[IPAddress] = frozenset(),
                     *, handing_over: bool = False) -> None:
        """Make the interface match the decision for ``record`` and report the outcome.

        A holder that is no longer chosen keeps its VIPs for :data:`HANDOVER_GRACE`
        (``handing_over``: that time is up).
        """
        hold, reason = record.decision()
        wanted = record.vips
        try:
            if hold:
                record.cancel_handover()
                await self._hold(record, wanted, previous - wanted, reason, trigger)
            elif record.holding and record.fault is None and not handing_over:
                # Make-before-break: the new holder adds and announces first.
                await self._remove(record, previous - wanted)
                if record.handover is None:
                    record.handover = asyncio.get_running_loop().create_task(
                        self._hand_over(record), name=f"netlink_static hand-over {record.name[:12]}")
            else:
                record.cancel_handover()
                record.stop_announcing()
                await self._remove(record, wanted | previous)
                record.fault = None
                self._set_all(record, State.BACKUP, reason)
        except (InterfaceNotFoundError, AddressError) as exc:
            record.stop_announcing()
            if record.fault is None:
                self.counters.faults += 1
                log.error("group %s: %s", record.name[:12], exc,
                          extra={"event": "group_error", "group": record.name})
            record.fault = str(exc)
            self._set_all(record, State.FAULT, str(exc))

    async def _hold(self, record: GroupRecord, wanted: frozenset[IPAddress], dropped: frozenset[IPAddress],
                    reason: str, trigger: float) -> None:
        added = await self.holder.add(record.interface, _ordered(wanted))
        self.counters.vips_added += len(added)
        await self._remove(record, dropped)
        schedule = self._settings.announce
        announces = schedule.count > 0 or schedule.refresh is not None
        # Announce again only what is new to the LAN: VIPs just (re-)added or
        # not covered by the current schedule. An unchanged group stays quiet.
        if announces and (added or record.announced != wanted):
            fresh = _ordered(v for v in wanted if v in added or v not in record.announced)
            if schedule.count and fresh:
                # The first announcement goes out before reporting, so the
                # reported failover time includes it.
                try:
                    await self.holder.announce(record.interface, fresh)
                except (InterfaceNotFoundError, AddressError) as exc:
                    log.warning("group %s: %s", record.name[:12], exc)
            record.stop_announcing()
            rest = attrs.evolve(schedule, count=max(schedule.count - 1, 0),
                                initial_delay=schedule.interval if schedule.count else 0.0)
            if rest.count or rest.refresh is not None:
                record.announcer = self.holder.start_announcing(record.interface, _ordered(wanted), rest)
            record.announced = wanted
        record.fault = None
        self._set_all(record, State.MASTER, reason, failover=time.monotonic() - trigger)

    def _record(self, group: str) -> GroupRecord:
        record = self._groups.get(group)
        if record is None:
            raise VipcoreError(f"backend {self.name}: group {group} is not joined on node {self._context.node!r}")
        return record

    # -- dispatch hooks --------------------------------------------------------

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> None:
        self._settings = Settings.from_config(context.config)
        self._context = context
        async with self._lock:
            for interface in await self.holder.interfaces():
                if interface in SKIP_INTERFACES:
                    continue
                try:
                    stale = await self.holder.remove_stale(interface, context.is_managed)
                except InterfaceNotFoundError:
                    continue  # vanished while we looked
                if stale:
                    self.counters.stale_removed += len(stale)
                    log.warning("removed stale VIPs %s from %s", ", ".join(map(str, stale)), interface,
                                extra={"event": "stale_removed", "interface": interface})
        if self._settings.verify_interval is not None:
            self._verifier = asyncio.get_running_loop().create_task(
                self._verify_loop(self._settings.verify_interval), name="netlink_static verify"
            )

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        if self._verifier is not None:
            self._verifier.cancel()
            await asyncio.gather(self._verifier, return_exceptions=True)
            self._verifier = None
        retiring = list(self._retiring.items())
        for task, _ in retiring:
            task.cancel()
        await asyncio.gather(*(task for task, _ in retiring), return_exceptions=True)
        async with self._lock:
            reason = "agent stopping" if graceful else "agent stopping (hard)"
            for _, record in retiring:
                try:
                    await self._remove(record, record.vips)
                except (InterfaceNotFoundError, AddressError) as exc:
                    log.warning("group %s: %s", record.name[:12], exc)
            for record in list(self._groups.values()):
                await self._drop(record, reason)
            self._groups.clear()
        if self._owns_holder and self._holder is not None:
            await self._holder.close()
            self._holder = None

    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> None:
        trigger = time.monotonic()
        async with self._lock:
            record = self._groups.get(membership.name)
            if record is None:
                record = self._groups[membership.name] = GroupRecord(membership)
                await self._apply(record, trigger)
            else:  # joined again after an earlier failure: an update
                previous = record.vips
                record.membership = membership
                await self._apply(record, trigger, previous)

    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        trigger = time.monotonic()
        async with self._lock:
            if old.name != new.name and old.name in self._groups and new.name not in self._groups:
                # A rename by a membership change: keep the record (its states,
                # announcer, release) so an unchanged holder keeps its VIPs quietly.
                self._groups[new.name] = self._groups.pop(old.name)
            record = self._groups.get(new.name)
            if record is None:
                record = self._groups[new.name] = GroupRecord(new)
                await self._apply(record, trigger, _vips(old.group))
                return
            previous = record.vips
            record.membership = new
            await self._apply(record, trigger, previous)

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        async with self._lock:
            record = self._groups.pop(membership.name, None) or GroupRecord(membership)
            if graceful and record.holding and record.fault is None and membership.peers():
                # This node left (NotReady, say) but still runs: the next holder reads
                # the same change; keep the VIPs until it has added and announced them.
                record.cancel_handover()
                record.stop_announcing()
                self._set_all(record, State.STOPPED, f"left the group (VIPs kept {self.handover_grace:g} s "
                                                     "for the next holder)")
                task = asyncio.get_running_loop().create_task(
                    self._retire(record), name=f"netlink_static retire {record.name[:12]}")
                self._retiring[task] = record
                task.add_done_callback(lambda done: self._retiring.pop(done, None))
                return
            await self._drop(record, "left the group")

    async def _retire(self, record: GroupRecord) -> None:
        """After the grace, remove a left group's VIPs that no group held here claims."""
        await asyncio.sleep(self.handover_grace)
        async with self._lock:
            try:
                await self._remove(record, record.vips)
            except (InterfaceNotFoundError, AddressError) as exc:
                log.warning("group %s: %s", record.name[:12], exc)

    @hookimpl
    async def vipcore_group_release(self, group: str, reason: str) -> None:
        trigger = time.monotonic()
        async with self._lock:
            record = self._record(group)
            record.released, record.forced = reason, None
            await self._apply(record, trigger)

    @hookimpl
    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        """Undo an earlier release (back to the ranking), or else hold regardless of it.

        The agent calls this after a drain ends; then the ranking decides
        again, so an undrained node that is not the chosen holder does not
        grab the group (which would make two holders).
        """
        trigger = time.monotonic()
        async with self._lock:
            record = self._record(group)
            if record.released is not None:
                record.released = None
            else:
                record.forced = reason
            await self._apply(record, trigger)

    async def _hand_over(self, record: GroupRecord) -> None:
        await asyncio.sleep(self.handover_grace)
        async with self._lock:
            if record.handover is not asyncio.current_task():
                return  # cancelled or superseded while waiting for the lock
            record.handover = None
            if self._groups.get(record.name) is record:
                await self._apply(record, time.monotonic(), handing_over=True)

    async def _drop(self, record: GroupRecord, reason: str) -> None:
        """Stop holding ``record`` for good: remove its VIPs, report STOPPED."""
        record.cancel_handover()
        record.stop_announcing()
        try:
            await self._remove(record, record.vips)
        except InterfaceNotFoundError:
            pass  # no interface, no VIPs on it
        except AddressError as exc:
            log.error("group %s: %s", record.name[:12], exc, extra={"event": "group_error", "group": record.name})
        # Not MASTER any more, whatever happened: report it.
        self._set_all(record, State.STOPPED, reason)

    # -- healing -------------------------------------------------------------

    async def _verify_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.verify()
            except Exception:  # a bug here must not stop future checks
                log.exception("netlink_static verify failed")

    async def verify(self) -> int:
        """Re-apply every group whose interface disagrees with its decision, or in FAULT.

        Returns how many groups were re-applied.
        """
        fixed = 0
        async with self._lock:
            held: dict[str, frozenset[IPAddress] | None] = {}
            for record in list(self._groups.values()):
                if record.interface not in held:
                    try:
                        held[record.interface] = await self.holder.held(record.interface)
                    except (InterfaceNotFoundError, AddressError):
                        held[record.interface] = None
                present = held[record.interface]
                if record.handover is not None:
                    continue  # handing over: the VIPs stay until the grace is up
                hold, _ = record.decision()
                if record.fault is None and present is not None:
                    if hold and record.vips <= present:
                        continue
                    if not hold and not (record.vips & present - self._claimed(record.interface, besides=record.name)):
                        continue
                log.warning("group %s: re-applying (%s)", record.name[:12],
                            record.fault or ("VIPs missing" if hold else "VIPs present"),
                            extra={"event": "reapply", "group": record.name})
                await self._apply(record, time.monotonic())
                fixed += 1
        return fixed

    # -- notification hooks -------------------------------------------------------

    @hookimpl
    def vipcore_collect_metrics(self) -> list[MetricSample]:
        holder = self._holder
        sent = holder.counters if holder is not None else None
        samples = [
            MetricSample(f"{METRIC_PREFIX}_announcements_total", float(sent.garp_sent if sent else 0),
                         (("kind", "garp"),), help="Gratuitous ARPs and unsolicited NAs sent"),
            MetricSample(f"{METRIC_PREFIX}_announcements_total", float(sent.na_sent if sent else 0),
                         (("kind", "na"),), help="Gratuitous ARPs and unsolicited NAs sent"),
            MetricSample(f"{METRIC_PREFIX}_announce_errors_total", float(sent.errors if sent else 0),
                         help="Announcements that could not be sent"),
            MetricSample(f"{METRIC_PREFIX}_vip_changes_total", float(self.counters.vips_added),
                         (("op", "added"),), help="VIPs added to or removed from interfaces"),
            MetricSample(f"{METRIC_PREFIX}_vip_changes_total", float(self.counters.vips_removed),
                         (("op", "removed"),), help="VIPs added to or removed from interfaces"),
            MetricSample(f"{METRIC_PREFIX}_vip_changes_total", float(self.counters.stale_removed),
                         (("op", "stale_removed"),), help="VIPs added to or removed from interfaces"),
            MetricSample(f"{METRIC_PREFIX}_faults_total", float(self.counters.faults),
                         help="Times a group went into FAULT"),
        ]
        by_state = {state: 0 for state in (State.MASTER, State.BACKUP, State.FAULT)}
        for record in self._groups.values():
            for state in record.states.values():
                if state in by_state:
                    by_state[state] += 1
        samples.extend(
            MetricSample(f"{METRIC_PREFIX}_routers", float(count), (("state", state.value),), kind="gauge",
                         help="(group, family) routers on this node by state")
            for state, count in by_state.items()
        )
        return samples
