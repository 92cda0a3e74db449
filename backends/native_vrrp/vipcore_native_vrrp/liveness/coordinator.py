"""Liveness for the native_vrrp backend: which peers need a session, and what a lost peer means.

A node keeps sessions with the members of the groups it takes part in, and asks
for the fast rate only from the peers it must see fail fast: the masters of the
groups it backs up (RFC 5880 Required Min RX, asymmetric rates). Every other peer
(its backups, the other backups) is asked to send once a second, so the node
holding every group sends fast to its backups and hears them slowly. The split
follows the routers' states (refreshed on every transition and group change).

When a session that was Up expires (the peer sent nothing for the detection
time), every group whose master lived on that node acts at once: its backups
run Master_Down after a delay by rank — 0 for the best-ranked surviving member,
one ``step`` more for each live member ranked before this node, at most
``MAX_RANK_STEPS`` (see :meth:`Coordinator._rank` for who counts as live) — so
exactly one takes each group and the others hear it before their own timer fires. The groups
this node takes at once (delay 0) have their VIPs put in the kernel and announced before
their routers decide (``claim``, docs/native-vrrp.md "A node's many groups at once"); the worker
holds a plan of those VIPs per peer and puts them in and announces them itself at the expiry, before
the agent reads it, and the pass adopts its claim ("The worker claims first"). An
AdminDown (a peer stopping gracefully, or no longer needing us) is not a
failure: the VRRP hand-over handles a graceful stop.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Protocol

import attrs

from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, IPAddress, Membership, MetricSample, State, StatusTable
from vipcore.net.addresses import InterfaceInfo, TakeoverPlan
from vipcore_native_vrrp.liveness.detector import Detector, WorkerClaim
from vipcore_native_vrrp.protocol.router_config import MAX_RANK_STEPS, RANK_STEP_MIN
from vipcore_native_vrrp.liveness.packet import Diagnostic, SessionState
from vipcore_native_vrrp.liveness.session import SessionConfig

log = logging.getLogger("vipcore_native_vrrp.liveness")

#: Longest the refreshes wait, after a lost peer, for the routers that took its groups to finish their
#: address work and first announcements (see :meth:`Coordinator.schedule_refresh`).
REFRESH_HOLD = 1.0

KEYS = ("enabled", "interval", "multiplier", "slow_interval", "rank_step", "realtime", "watchers")


@attrs.frozen
class LivenessSettings:
    """The ``native_vrrp.liveness`` section."""

    #: On by default: the sessions run in a worker process of their own (docs/native-vrrp.md, "Isolation").
    enabled: bool = True
    #: Desired Min TX and Required Min RX, seconds.
    interval: float = 0.01
    #: 5 (50 ms, keepalived's BFD default): a real-time worker on a shared 2-core VM was measured
    #: waking up to 32 ms late, more than 4 x 10 ms leaves after one interval (docs/native-vrrp.md).
    multiplier: int = 5
    #: Transmit interval while a session is not Up (RFC 5880 asks for at least 1 s).
    slow_interval: float = 1.0
    #: Extra Master_Down delay per member ranked before this node, after a peer is lost. The same floor
    #: as VRRP's own rank delay: the best survivor's first advert must beat the next one's timer even when
    #: that advert waits behind address work or a stalled loop (tens of ms on a loaded node); it costs
    #: nothing when one node fails (the best survivor waits 0).
    rank_step: float = RANK_STEP_MIN
    #: Run the session worker with the lowest real-time priority (SCHED_RR 1) when allowed.
    realtime: bool = True
    #: How many backups of a group watch its master at the fast rate: the first ones in the order that
    #: would take over (members ranked after the master whose sessions are Up). The others hear it once
    #: a second: they never act first when it fails. 2 covers the master and its first backup failing
    #: together; at 16 nodes a master sends fast to 2 peers per group instead of 15.
    watchers: int = 2

    @property
    def session(self) -> SessionConfig:
        return SessionConfig(desired_min_tx=self.interval, required_min_rx=self.interval,
                             detect_mult=self.multiplier, slow_interval=self.slow_interval)

    @property
    def detection_time(self) -> float:
        return self.interval * self.multiplier

    @classmethod
    def from_mapping(cls, value: object, *, source: str = "native_vrrp") -> "LivenessSettings":
        if value is None:
            return cls()
        if isinstance(value, bool):
            return cls(enabled=value)
        if not isinstance(value, Mapping):
            raise ConfigError("must be true, false or a mapping {enabled, interval, multiplier, slow_interval, "
                              "rank_step}", source=source, field="liveness")
        unknown = sorted(set(value) - set(KEYS))
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(KEYS)}",
                              source=source, field="liveness")
        kwargs: dict[str, object] = {}
        for flag in ("enabled", "realtime"):
            if flag in value:
                if not isinstance(value[flag], bool):
                    raise ConfigError(f"must be true or false, got {value[flag]!r}", source=source,
                                      field=f"liveness.{flag}")
                kwargs[flag] = value[flag]
        for key, low, high in (("interval", 0.001, 10.0), ("slow_interval", 0.001, 60.0), ("rank_step", 0.0, 5.0)):
            if key in value:
                number = value[key]
                if isinstance(number, bool) or not isinstance(number, int | float) or not low <= number <= high:
                    raise ConfigError(f"must be a number of seconds within {low}..{high}, got {number!r}",
                                      source=source, field=f"liveness.{key}")
                kwargs[key] = float(number)
        if "watchers" in value:
            watchers = value["watchers"]
            if isinstance(watchers, bool) or not isinstance(watchers, int) or not 1 <= watchers <= 255:
                raise ConfigError(f"must be a whole number within 1..255, got {watchers!r}", source=source,
                                  field="liveness.watchers")
            kwargs["watchers"] = watchers
        if "multiplier" in value:
            mult = value["multiplier"]
            if isinstance(mult, bool) or not isinstance(mult, int) or not 2 <= mult <= 255:
                raise ConfigError(f"must be a whole number within 2..255, got {mult!r}", source=source,
                                  field="liveness.multiplier")
            kwargs["multiplier"] = mult
        return cls(**kwargs)  # type: ignore[arg-type]


class RouterView(Protocol):
    """What the coordinator reads of a router driver."""

    @property
    def router(self) -> "RouterState": ...

    def peer_lost(self, delay: float, what: str, silent_for: float = 0.0,
                  held: list[Callable[[], None]] | None = None) -> None: ...

    def claim(self, detected: float | None = None, worker: WorkerClaim | None = None) -> bool: ...

    def release_worker_claim(self) -> bool: ...

    @property
    def vips(self) -> tuple[IPAddress, ...]: ...

    def announce_claim(self) -> bool: ...

    def release_claim(self) -> bool: ...

    def announce_early(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    async def settled(self) -> None: ...


class RouterState(Protocol):
    @property
    def state(self) -> State: ...

    master: IPAddress | None
    released: bool


class Coordinator:
    """The detectors of one backend instance, one per interface."""

    def __init__(self, settings: LivenessSettings, loop: asyncio.AbstractEventLoop,
                 groups: Callable[[], Iterable[tuple[Membership, Mapping[Family, RouterView]]]],
                 detector_factory: Callable[..., Detector] = Detector, *,
                 keepalived_peers: Iterable[str] = (), send_addresses: Callable[[], object] | None = None,
                 plan_builder: Callable[[str, tuple[IPAddress, ...]], TakeoverPlan | None] | None = None,
                 remove_addresses: Callable[[str, tuple[IPAddress, ...]], Awaitable[object]] | None = None) -> None:
        self.settings = settings
        #: Builds the bytes of a takeover plan (the holder's ``takeover_plan``): with it, each worker holds,
        #: per peer, the VIPs of the groups this node takes at once if that peer is lost, and claims them
        #: itself at the expiry (docs/native-vrrp.md, "The worker claims first"). None: no plans.
        self.plan_builder = plan_builder
        #: Removes VIPs (the holder's ``remove``): claimed ones no group has any more.
        self.remove_addresses = remove_addresses
        self._tasks: set[asyncio.Task[None]] = set()
        #: The (interface, peer address) pairs a worker holds a plan for.
        self._planned: set[tuple[str, IPAddress]] = set()
        #: Called in the pass over a lost peer's groups: sends the address changes queued in it (the
        #: holder's ``send_queued``) before anything else the loop has ready — the VIPs of the groups taken
        #: at once before their routers decide, then whatever the decisions queued; True when it sent them
        #: (the VIPs are then announced in the pass).
        self.send_addresses = send_addresses
        self.loop = loop
        self.groups = groups
        self.detector_factory = detector_factory
        #: keepalived members (node names or addresses): no session with them, VRRP timers alone.
        self.keepalived_names: frozenset[str] = frozenset()
        self.keepalived_addresses: frozenset[IPAddress] = frozenset()
        names, addresses = set(), set()
        for entry in keepalived_peers:
            try:
                addresses.add(ipaddress.ip_address(entry))
            except ValueError:
                names.add(entry)
        self.keepalived_names, self.keepalived_addresses = frozenset(names), frozenset(addresses)
        self.detectors: dict[str, Detector] = {}
        self.networks: dict[str, tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]] = {}
        #: Peers whose session expired and has not come back, by node name.
        self.lost: set[str] = set()
        #: Every peer we keep a session with, by interface and node name (set by :meth:`refresh`).
        self.watched: dict[str, set[str]] = {}
        self.peers_lost = 0
        self.groups_acted = 0
        #: The last lost peer: how late the agent read the change after the detection time ran out (the
        #: worker's lateness, the control channel and the agent's loop lag together), and how long telling
        #: every group took (the best-ranked survivors' transitions and adverts included).
        self.last_loss_read_late = 0.0
        self.last_loss_act_seconds = 0.0
        self._unavailable: set[str] = set()
        self._refresh_pending = False
        #: Takeovers after a lost peer whose address work is not done yet: refreshes wait for them.
        self._holds: set[asyncio.Task[None]] = set()
        self.refresh_hold = REFRESH_HOLD
        #: Whether we turned the garbage collector off for a takeover (and must turn it on again).
        self._gc_paused = False

    def ensure(self, info: InterfaceInfo) -> None:
        """A detector for ``info``'s interface (IPv4 preferred, else a global IPv6 address)."""
        if not self.settings.enabled or info.name in self.detectors or info.name in self._unavailable:
            return
        local = info.primary(Family.IPV4)
        networks: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...] = tuple(
            n for n in info.ipv4 if n.network.prefixlen < n.max_prefixlen)
        if local is None:
            globals_ = [n for n in info.ipv6 if not n.ip.is_link_local and n.network.prefixlen < n.max_prefixlen]
            local = globals_[0].ip if globals_ else None
            networks = tuple(globals_)
        if local is None:
            log.warning("liveness: %s has no address to run sessions from; VRRP timers alone detect failures there",
                        info.name)
            self._unavailable.add(info.name)
            return
        try:
            detector = self.detector_factory(info.name, local, self.settings.session, loop=self.loop,
                                             on_change=self._changed, realtime=self.settings.realtime)
        except OSError as exc:
            log.warning("liveness: cannot open BFD sockets on %s (%s); VRRP timers alone detect failures there",
                        info.name, exc)
            self._unavailable.add(info.name)
            return
        detector.start()
        self.detectors[info.name] = detector
        self.networks[info.name] = networks
        self.refresh()

    def schedule_refresh(self) -> None:
        """:meth:`refresh` once the current burst of changes is over (a loop pass later), not once per
        change: at start-up 510 routers report their first transitions one after another, and a refresh
        per report walked every group for each — quadratic, a core busy for minutes at 255 groups.

        After a lost peer, not before the routers that took its groups have their VIPs in the kernel and
        announced (at most :attr:`refresh_hold` seconds): a refresh walks every group, and run between
        the loss and the takeover's address batch it delayed every group of the dead node; who watches
        whom can wait that long."""
        if not self._refresh_pending and not self._holds:
            self._refresh_pending = True
            self.loop.call_soon(self._run_refresh)

    def _hold_refreshes(self, drivers: list[RouterView]) -> None:
        """Refreshes wait until ``drivers`` (the ones that acted on a lost peer) are settled; then one runs.

        The garbage collector, turned off for the pass (:meth:`_changed`), stays off until then too: a
        collection of its young generations took 1-16 ms in a takeover's agent (traced in the lab), and
        what a takeover allocates is bounded."""
        task = self.loop.create_task(self._until_settled(drivers), name="liveness refresh hold")
        self._holds.add(task)

    def _end_hold(self, task: "asyncio.Task[None] | None") -> None:
        self._holds.discard(task)
        self._resume_gc()

    def _pause_gc(self) -> None:
        if gc.isenabled():
            gc.disable()
            self._gc_paused = True

    def _resume_gc(self) -> None:
        """On again once no takeover holds it (and only if we turned it off)."""
        if not self._holds and self._gc_paused:
            self._gc_paused = False
            gc.enable()

    async def _until_settled(self, drivers: list[RouterView]) -> None:
        try:
            await asyncio.wait_for(self._settled(drivers), self.refresh_hold)
        except asyncio.TimeoutError:
            pass
        finally:
            self._end_hold(asyncio.current_task())
        self.schedule_refresh()

    @staticmethod
    async def _settled(drivers: list[RouterView]) -> None:
        for driver in drivers:
            await driver.settled()

    def _run_refresh(self) -> None:
        self._refresh_pending = False
        self.refresh()

    def refresh(self) -> None:
        """Recompute which peers each interface needs, and which of them fast, from the routers' states now
        (one pass over the groups)."""
        wanted: dict[str, set[IPAddress]] = {name: set() for name in self.detectors}
        fast: dict[str, set[IPAddress]] = {name: set() for name in self.detectors}
        groups = list(self.groups())
        addresses = self._addresses(groups)
        excluded = self.keepalived_names
        up = self._up(addresses)
        for membership, drivers in groups:
            interface = membership.group.interface
            if interface not in wanted:
                continue
            needed, watched = self._needed(membership, drivers, up[interface])
            for node in needed - excluded:
                address = addresses.get((interface, node))
                if address is not None and address not in self.keepalived_addresses:
                    wanted[interface].add(address)
                    if node in watched:
                        fast[interface].add(address)
        names = {(interface, address): node for (interface, node), address in addresses.items()}
        self.watched = {interface: {names[interface, a] for a in peers if (interface, a) in names}
                        for interface, peers in wanted.items()}
        for interface, detector in self.detectors.items():
            detector.set_peers(wanted[interface], relaxed=wanted[interface] - fast[interface])
        if self.plan_builder is not None:
            self._update_plans(groups, addresses, up)

    def _update_plans(self, groups: list[tuple[Membership, Mapping[Family, RouterView]]],
                      addresses: Mapping[tuple[str, str], IPAddress], up: Mapping[str, set[str]]) -> None:
        """Per interface and peer whose session is Up: the plan of the groups this node takes at once if
        that peer is lost (what :meth:`_takeovers` would return now), handed to the worker. Rebuilt with
        every refresh, so with what it depends on: the routers' states and masters (transitions, a master
        that moved), released routers, memberships, which sessions are Up, links (their transitions)."""
        assert self.plan_builder is not None
        planned: set[tuple[str, IPAddress]] = set()
        taken = self._taken_at_once(groups, up)
        for (interface, node), address in addresses.items():
            detector = self.detectors.get(interface)
            set_plan = getattr(detector, "set_plan", None)
            if set_plan is None or node not in up.get(interface, ()) or node in self.lost \
                    or node in self.keepalived_names or address in self.keepalived_addresses:
                continue
            vips = tuple(vip for driver in taken.get((interface, node), ()) for vip in driver.vips)
            plan = None
            if vips:
                try:
                    plan = self.plan_builder(interface, vips)
                except Exception:  # no plan: the agent's pass claims them as before
                    log.exception("liveness: building the takeover plan for %s failed", node)
            set_plan(address, plan)
            if plan is not None:
                planned.add((interface, address))
        for (interface, address) in self._planned - planned:
            detector = self.detectors.get(interface)
            if detector is not None and hasattr(detector, "set_plan"):
                detector.set_plan(address, None)
        self._planned = planned

    def _taken_at_once(self, groups: list[tuple[Membership, Mapping[Family, RouterView]]],
                       up: Mapping[str, set[str]]) -> dict[tuple[str, str], list[RouterView]]:
        """Per (interface, node): the backups here of the groups :meth:`_split` would put first if that
        node were lost — the same rules (:meth:`_lost_with`), in one pass over the groups instead of one per
        peer (a refresh runs after every burst of transitions; at 16 nodes that was 15 passes)."""
        taken: dict[tuple[str, str], list[RouterView]] = {}
        step = self.settings.rank_step
        for membership, drivers in groups:
            backups, masters = self._lost_with(membership, drivers)
            interface = membership.group.interface
            alive = up.get(interface, set())
            for node in masters:
                if self._rank(membership, node, alive) * step > 0:
                    continue  # another survivor ranks first there
                taken.setdefault((interface, node), []).extend(backups)
        return taken

    def _lost_with(self, membership: Membership,
                   drivers: Mapping[Family, RouterView]) -> tuple[list[RouterView], set[str]]:
        """This group's backups here (idle: not released) and the nodes whose loss is its master's loss —
        the nodes its routers heard as master, else the node expected to be; members, never this node.
        No backups: no node (nothing to take over)."""
        backups = [d for d in drivers.values() if d.router.state is State.BACKUP and not d.router.released]
        if not backups:
            return backups, set()
        known = {self._node_of(membership, d.router.master) for d in drivers.values()} - {None}
        members = {member.name for member in membership.members}
        masters = {node for node in (known or {self._expected_master(membership)})
                   if node is not None and node != membership.node and node in members}
        return backups, masters

    def _clear_plans(self) -> None:
        """No worker claims until the next refresh rebuilds the plans (after a lost peer's takeovers)."""
        for detector in self.detectors.values():
            clear = getattr(detector, "clear_plans", None)
            if clear is not None:
                clear()
        self._planned.clear()

    def close(self, *, graceful: bool) -> None:
        for hold in list(self._holds):
            hold.cancel()
            self._end_hold(hold)
        for detector in self.detectors.values():
            detector.close(graceful=graceful)
        self.detectors.clear()

    # -- decisions -----------------------------------------------------------------

    def _needed(self, membership: Membership, drivers: Mapping[Family, RouterView],
                up: AbstractSet[str] = frozenset()) -> tuple[set[str], set[str]]:
        """The members this node keeps a session with for this group, and those of them it must see fail
        fast: the group's master when this node backs it up and is one of its first ``watchers`` backups
        (in the order that would take over: members ranked after the master, not lost, with a session
        Up — ``up``). The others are asked to send slowly: a master need not watch its backups closely,
        a backup not the other backups nor a master it would not replace first; their sessions stay Up
        so that one becoming needed (the new master after a failover) is sped up by a Poll."""
        states = [d.router.state for d in drivers.values()]
        everyone = {p.name for p in membership.peers()}
        if State.BACKUP not in states:
            return (everyone if State.MASTER in states else set()), set()
        masters = {self._node_of(membership, d.router.master) for d in drivers.values()}
        known = {m for m in masters if m is not None} - {membership.node}
        if not known:
            return everyone, everyone
        watched = set()
        for master in known:
            ahead = 0
            for member in membership.members:
                if member.name == membership.node:
                    break
                if member.name != master and member.name not in self.lost and member.name in up:
                    ahead += 1
            if ahead < self.settings.watchers:
                watched.add(master)
        return everyone, watched

    def _up(self, addresses: Mapping[tuple[str, str], IPAddress]) -> dict[str, set[str]]:
        """The member nodes whose session is Up now, per interface, as the detectors say."""
        up: dict[str, set[str]] = {name: set() for name in self.detectors}
        for (interface, node), where in addresses.items():
            state = getattr(self.detectors.get(interface), "state", None)
            if callable(state) and state(where) is SessionState.UP:
                up[interface].add(node)
        return up

    def _rank(self, membership: Membership, lost: str, up: AbstractSet[str]) -> int:
        """How many live members are ranked before this node once ``lost`` (its master) is gone, at most
        MAX_RANK_STEPS: not one ranked before the lost master unless its session is Up (alive, it would have
        preempted; a node back from a drain preempts only the groups it ranks first for), not one whose
        session we keep but is not Up (named by the group, its agent not running), and any member we keep
        no session with (unknown: counted, so a deep-ranked backup waits rather than races)."""
        order = [m.name for m in membership.members]
        if membership.node not in order:
            return MAX_RANK_STEPS
        watched = self.watched.get(membership.group.interface, set())
        me = order.index(membership.node)
        start = order.index(lost) + 1 if lost in order and order.index(lost) < me else 0
        alive = 0
        for index, node in enumerate(order[:me]):
            if node == lost or node in self.lost:
                continue
            if index < start:
                alive += node in up
            elif node in up or node not in watched:
                alive += 1
        return min(alive, MAX_RANK_STEPS)

    def _changed(self, peer: IPAddress, old: SessionState, new: SessionState, diagnostic: Diagnostic) -> None:
        node = self._node_by_address(peer)
        if not (old is SessionState.UP and new is SessionState.DOWN and node is not None
                and diagnostic is Diagnostic.CONTROL_DETECTION_EXPIRED):
            # Not a failure (AdminDown from the peer, or it stopped needing us), or a session coming Up.
            if SessionState.UP in (old, new):
                self.schedule_refresh()  # who watches which master counts the members with a session Up
            if new is SessionState.UP and node is not None:
                self.lost.discard(node)
            return
        started = self.loop.time()
        self.lost.add(node)
        self.peers_lost += 1
        detect = self.settings.detection_time
        silent = self._silence(peer, detect)
        # The groups first, everything else after: the log line, the refresh (held until the routers
        # that took over have their VIPs in the kernel and announced).
        self._pause_gc()  # from the pass to the routers settled (see _hold_refreshes)
        try:
            held: list[Callable[[], None]] = []
            later: list[tuple[float, Membership, list[RouterView]]] = []
            first = self._takeovers(node, later)
            # The worker may have put VIPs in already (its plan for this peer, carried out at the expiry,
            # before it told us): the routers whose VIPs those are.
            worker, where = self._worker_claim(peer)
            whole, by_worker, orphans = self._drivers_of(worker) if worker is not None else ({}, {}, ())
            adopt = worker if worker is not None and worker.ok else None
            # The groups taken at once: their VIPs to the kernel in one batch and announced before any of
            # their routers' machines runs (a decision costs 60-200 us a router: with 30 routers the last
            # group's VIPs waited milliseconds behind the others' decisions). The set claimed is the set
            # told with no delay below, which take over in the pass. A group the worker claimed is asked
            # again (idempotent: the holder's "already so") and not announced a second time.
            claimed = [driver for _, _, backups in first for driver in backups
                       if self._claim(driver, started, adopt if id(driver) in whole else None)]
            sent = bool(claimed) and self._send_addresses(node)
            for driver in claimed:
                try:
                    driver.announce_claim()  # a no-op for a claim the holder did not answer in the pass
                except Exception:  # its worker announces instead
                    log.exception("liveness: announcing a group taken from %s failed", node)
            acted = self._tell(first, node, detect, silent, held)
            # A claim no takeover adopted (the machine did not take over, or failed): its VIPs removed. So
            # are those the worker put in for a router that is not taking over (a plan gone stale).
            undone = 0
            ids = {id(driver) for driver in claimed}
            for driver in (*claimed, *(d for d in by_worker.values() if id(d) not in ids)):
                try:
                    undone += driver.release_claim() if id(driver) in ids else driver.release_worker_claim()
                except Exception:
                    log.exception("liveness: undoing the VIPs of a group taken from %s failed", node)
            if orphans:
                undone += self._remove_orphans(where, orphans)
            # Then, still in this pass, the address changes the decisions queued if any (a takeover without a
            # claim, a claim undone) and those takeovers' first announcements (when the kernel answered at
            # once: neighbours learn the new holder before anything else the loop has ready runs)...
            unclaimed = [driver for driver in acted if id(driver) not in ids]
            sent = bool(unclaimed or undone) and self._send_addresses(node)
            for driver in unclaimed if sent else ():
                try:
                    driver.announce_early()
                except Exception:  # its worker announces instead
                    log.exception("liveness: announcing a group taken from %s failed", node)
            # ...then the takeover adverts the routers held back.
            for send in held:
                try:
                    send()
                except Exception:
                    log.exception("liveness: an advert of a group taken from %s failed", node)
            # Last, the groups another survivor ranks before us: they only arm a rank delay (>= one step),
            # so being told a few milliseconds later changes nothing, and the groups we take meanwhile
            # did not wait behind them (their silence is counted up to now).
            if later:
                acted += self._tell(later, node, detect, silent + (self.loop.time() - started), None)
            busy = [driver for driver in acted if driver.busy]
            if busy:
                self._hold_refreshes(busy)
        finally:
            self._resume_gc()  # at once unless a hold keeps it off
        # Every plan was built before this loss: none is carried out until the refresh rebuilds them.
        self._clear_plans()
        self.schedule_refresh()
        self.last_loss_read_late = max(0.0, silent - detect)
        self.last_loss_act_seconds = self.loop.time() - started
        log.warning("liveness: session to %s (%s) expired after %.0f ms without a packet; read %.1f ms after "
                    "that, %d router(s) acted in %.1f ms", node, peer, detect * 1000,
                    self.last_loss_read_late * 1000, len(acted), self.last_loss_act_seconds * 1000,
                    extra={"event": "peer_lost", "peer": node})

    def _takeovers(self, node: str,
                   later: list[tuple[float, Membership, list[RouterView]]]) -> list[tuple[float, Membership, list[RouterView]]]:
        """Every group whose master lived on ``node`` and its backups here (not released), with the group's
        Master_Down delay by rank: returned, the groups this node takes at once (delay 0: the best-ranked
        survivor); in ``later``, those another survivor ranks first. Nobody is told yet: the caller puts the
        first ones' VIPs in the kernel, tells them (:meth:`_tell`: they decide in the pass), sends their
        held adverts, and only then tells the later ones."""
        groups = list(self.groups())
        return self._split(node, groups, self._up(self._addresses(groups)), later)

    def _split(self, node: str, groups: list[tuple[Membership, Mapping[Family, RouterView]]],
               up: Mapping[str, set[str]], later: list[tuple[float, Membership, list[RouterView]]],
               ) -> list[tuple[float, Membership, list[RouterView]]]:
        """:meth:`_takeovers` with the groups and the sessions Up given (the same rules for a takeover plan)."""
        first: list[tuple[float, Membership, list[RouterView]]] = []
        for membership, drivers in groups:
            backups, masters = self._lost_with(membership, drivers)
            if node not in masters:
                continue  # no backup here, or this group's master lives elsewhere
            delay = self._rank(membership, node, up.get(membership.group.interface, set())) * self.settings.rank_step
            (later if delay > 0 else first).append((delay, membership, backups))
        return first

    def _worker_claim(self, peer: IPAddress) -> tuple[WorkerClaim | None, str]:
        """What a worker did with ``peer``'s plan at this expiry, if it had one, and its interface."""
        for interface, detector in self.detectors.items():
            claim_of = getattr(detector, "claim_of", None)
            claim = claim_of(peer) if claim_of is not None else None
            if isinstance(claim, WorkerClaim):
                return claim, interface
        return None, ""

    def _drivers_of(self, claim: WorkerClaim) -> tuple[dict[int, RouterView], dict[int, RouterView],
                                                        tuple[IPAddress, ...]]:
        """The routers whose VIPs ``claim`` put in, by id: those it covers whole (their claim can be adopted),
        those it touched at all (their VIPs are removed unless they take over), and the claimed VIPs no
        router has any more (a group that left since the plan)."""
        claimed = set(claim.vips)
        whole: dict[int, RouterView] = {}
        touched: dict[int, RouterView] = {}
        covered: set[IPAddress] = set()
        for _, drivers in self.groups():
            for driver in drivers.values():
                vips = driver.vips
                if not claimed.isdisjoint(vips):
                    touched[id(driver)] = driver
                    covered.update(vips)
                    if claimed.issuperset(vips):
                        whole[id(driver)] = driver
        return whole, touched, tuple(vip for vip in claim.vips if vip not in covered)

    def _remove_orphans(self, interface: str, vips: tuple[IPAddress, ...]) -> bool:
        """Claimed VIPs that belong to no group here any more: removed (queued now, sent in the pass)."""
        log.warning("liveness: the worker claimed %s on %s, which no group here has any more; removing them",
                    ", ".join(map(str, vips)), interface)
        if self.remove_addresses is None:
            return False
        try:
            removed = self.remove_addresses(interface, vips)
        except Exception:
            log.exception("liveness: removing %s failed", ", ".join(map(str, vips)))
            return False
        task = self.loop.create_task(self._confirm_removed(removed, vips), name="liveness orphan VIPs")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    @staticmethod
    async def _confirm_removed(removed: Awaitable[object], vips: tuple[IPAddress, ...]) -> None:
        try:
            await removed
        except Exception as exc:
            log.error("liveness: removing %s failed: %s", ", ".join(map(str, vips)), exc)

    @staticmethod
    def _claim(driver: RouterView, detected: float, worker: WorkerClaim | None = None) -> bool:
        try:
            return driver.claim(detected) if worker is None else driver.claim(detected, worker=worker)
        except Exception:  # it takes over the usual way (its VIPs asked when it decides)
            log.exception("liveness: asking for the VIPs of a group before its takeover failed")
            return False

    def _send_addresses(self, node: str) -> bool:
        """The address changes queued in this pass, sent now (the holder's ``send_queued``): True when sent."""
        if self.send_addresses is None:
            return False
        try:
            return bool(self.send_addresses())
        except Exception:  # the flusher sends them in the next pass instead
            log.exception("liveness: sending the addresses of the groups taken from %s failed", node)
            return False

    def _tell(self, groups: list[tuple[float, Membership, list[RouterView]]], node: str, detect: float,
              silent: float, held: list[Callable[[], None]] | None) -> list[RouterView]:
        """Tell each group's backups that ``node``'s session expired ``silent`` seconds after its last
        packet, with the group's rank delay; the routers told."""
        acted: list[RouterView] = []
        what = f"liveness session to {node} expired ({detect * 1000:.0f} ms)"
        for delay, membership, backups in groups:
            self.groups_acted += 1
            for driver in backups:
                try:
                    driver.peer_lost(delay, what, silent_for=silent, held=held)
                except Exception:  # the routers after it in this pass must still be told
                    log.exception("liveness: group %s could not act on the lost peer %s",
                                  membership.group.short_name, node)
                    continue
                acted.append(driver)
        return acted

    def _silence(self, peer: IPAddress, detect: float) -> float:
        """How long ``peer`` has been silent: from the worker's last receive time when it said (the
        detect phase then includes the worker's lateness and the control channel), else the detection time."""
        for detector in self.detectors.values():
            silence = getattr(detector, "silence", None)
            value = silence(peer) if callable(silence) else None
            if isinstance(value, float) and detect <= value < max(60.0, 10 * detect):
                return value
        return detect

    def _expected_master(self, membership: Membership) -> str | None:
        for member in membership.members:
            if member.name not in self.lost:
                return member.name
        return None

    # -- addresses -----------------------------------------------------------------

    def _node_of(self, membership: Membership, address: IPAddress | None) -> str | None:
        if address is None:
            return None
        for member in membership.members:
            if address in member.addresses:
                return member.name
        return None

    def _node_by_address(self, address: IPAddress) -> str | None:
        for membership, _ in self.groups():
            found = self._node_of(membership, address)
            if found is not None:
                return found
        return None

    def _addresses(self, groups: Iterable[tuple[Membership, object]]) -> dict[tuple[str, str], IPAddress]:
        """Each member node's session address per interface: its first address on that interface's networks
        (the first group that names it decides, as before)."""
        found: dict[tuple[str, str], IPAddress] = {}
        for membership, _ in groups:
            interface = membership.group.interface
            networks = self.networks.get(interface)
            if not networks:
                continue
            for member in membership.members:
                key = (interface, member.name)
                if key in found:
                    continue
                for address in member.addresses:
                    if any(address.version == n.version and address in n.network for n in networks):
                        found[key] = address
                        break
        return found

    # -- status --------------------------------------------------------------------

    def status_table(self) -> StatusTable:
        """The ``liveness`` table of ``vipcore status``: one row per interface and peer, from the same
        snapshot the ``vipcore_liveness_*`` metrics read (times in milliseconds)."""
        rows: list[tuple[str | int | float | bool | None, ...]] = []
        for interface, detector in sorted(self.detectors.items()):
            realtime = "yes" if detector.scheduled_realtime else "no"
            sessions = sorted(detector.snapshot().items(), key=lambda item: str(item[0]))
            planned = getattr(detector, "planned", None)
            claims = getattr(detector, "claims_by_peer", {})
            failures = getattr(detector, "claim_failures_by_peer", {})
            for peer, session in sessions:
                plan = planned(peer) if planned is not None else None
                rows.append((interface, str(peer), self._node_by_address(peer), session.state.name.lower().replace(
                    "_", ""), round(session.detection_time * 1000, 1), session.flaps,
                    round(session.longest_silence * 1000, 1), round(session.required_min_rx * 1000, 1),
                    round(session.tx_interval * 1000, 1), realtime, len(plan.vips) if plan is not None else 0,
                    f"{claims.get(peer, 0)}" + (f" ({failures[peer]} failed)" if failures.get(peer) else "")))
            if not sessions:
                rows.append((interface, None, None, "no peer needed", None, None, None, None, None, realtime, None,
                             None))
        return StatusTable(
            "liveness", ("INTERFACE", "PEER", "NODE", "SESSION", "DETECT MS", "FLAPS", "LONGEST SILENCE MS",
                         "ASKED RX MS", "TX MS", "REALTIME WORKER", "PLANNED VIPS", "WORKER CLAIMS"), tuple(rows),
            note="a session going down while its peer is alive would be a false failover: compare LONGEST "
                 "SILENCE MS with DETECT MS. PLANNED VIPS: what the worker puts in itself if that peer is lost")

    # -- metrics -------------------------------------------------------------------

    def samples(self) -> list[MetricSample]:
        out = [
            MetricSample("vipcore_liveness_peers_lost", float(self.peers_lost),
                         help="Liveness sessions that expired (a peer node stopped answering)"),
            MetricSample("vipcore_liveness_groups_acted", float(self.groups_acted),
                         help="Groups whose backups started Master_Down early after a lost peer"),
            MetricSample("vipcore_liveness_last_loss_read_late_seconds", self.last_loss_read_late, kind="gauge",
                         help="Last lost peer: how long after its detection time ran out the agent read the "
                              "change (the worker's lateness, the control channel and the agent's loop lag)"),
            MetricSample("vipcore_liveness_last_loss_act_seconds", self.last_loss_act_seconds, kind="gauge",
                         help="Last lost peer: how long telling every group took (the best-ranked survivors' "
                              "decisions and adverts included)"),
        ]
        for interface, detector in sorted(self.detectors.items()):
            for peer, session in sorted(detector.snapshot().items(), key=lambda item: str(item[0])):
                labels = (("interface", interface), ("peer", str(peer)))
                out.append(MetricSample("vipcore_liveness_session_up", 1.0 if session.state is SessionState.UP
                                        else 0.0, labels=labels, kind="gauge",
                                        help="1 while the BFD session with the peer is Up"))
                out.append(MetricSample("vipcore_liveness_session_flaps", float(session.flaps), labels=labels,
                                        help="Times the session left Up"))
                out.append(MetricSample("vipcore_liveness_detection_seconds", session.detection_time, labels=labels,
                                        kind="gauge", help="Negotiated detection time of the session"))
                out.append(MetricSample("vipcore_liveness_transmit_interval_seconds", session.tx_interval,
                                        labels=labels, kind="gauge",
                                        help="Negotiated interval of our packets to the peer: fast while it "
                                             "watches us (we master a group it backs up), else the relaxed rate"))
                out.append(MetricSample("vipcore_liveness_required_min_rx_seconds", session.required_min_rx,
                                        labels=labels, kind="gauge",
                                        help="What we ask the peer for (RFC 5880 Required Min RX): fast from "
                                             "the masters of the groups we back up, else the relaxed rate"))
                out.append(MetricSample("vipcore_liveness_longest_silence_seconds", session.longest_silence,
                                        labels=labels, kind="gauge",
                                        help="Longest time between two packets from the peer while the session "
                                             "was Up"))
            worker = (("interface", interface),)
            out.append(MetricSample("vipcore_liveness_expiries", float(detector.expiries), labels=worker,
                                    help="Sessions that expired (Up, then nothing from the peer for the detection "
                                         "time); each one is a lost peer"))
            out.append(MetricSample("vipcore_liveness_worker_claims", float(getattr(detector, "claims", 0)),
                                    labels=worker,
                                    help="Lost peers whose groups' VIPs the liveness worker put in and announced "
                                         "itself at the expiry, before the agent read it (its takeover plan)"))
            out.append(MetricSample("vipcore_liveness_worker_claim_failures",
                                    float(getattr(detector, "claim_failures", 0)), labels=worker,
                                    help="Worker claims that failed in part (an address or an announcement): the "
                                         "agent's pass did that part its usual way"))
            for reason, count in sorted(getattr(detector, "plans_refused", {}).items()):
                out.append(MetricSample("vipcore_liveness_worker_plans_refused", float(count),
                                        labels=(("interface", interface), ("reason", reason)),
                                        help="Takeover plans the liveness worker refused, by reason (stale: "
                                             "built for an earlier Up of the session)"))
            out.append(MetricSample("vipcore_liveness_worker_crashes", float(detector.crashes), labels=worker,
                                    help="Liveness worker processes that exited unasked (each one restarted)"))
            out.append(MetricSample("vipcore_liveness_control_bad_frames", float(detector.bad_frames), labels=worker,
                                    help="Frames from the liveness worker that made no sense (skipped)"))
            out.append(MetricSample("vipcore_liveness_worker_realtime", 1.0 if detector.scheduled_realtime else 0.0,
                                    labels=worker, kind="gauge",
                                    help="1 while the liveness worker runs with real-time scheduling (SCHED_RR)"))
            out.append(MetricSample("vipcore_liveness_worker_rss_bytes", float(detector.worker_rss), labels=worker,
                                    kind="gauge", help="Resident memory of the liveness worker process"))
            out.append(MetricSample("vipcore_liveness_worker_wakeups", float(getattr(detector, "worker_wakeups", 0)),
                                    labels=worker,
                                    help="Times the current liveness worker woke up (its CPU goes with this)"))
            out.append(MetricSample("vipcore_liveness_worker_wake_late_max_seconds", detector.wake_late_max,
                                    labels=worker, kind="gauge",
                                    help="Longest delay of a liveness worker wake-up past its timer"))
            if detector.start_seconds is not None:
                out.append(MetricSample("vipcore_liveness_worker_start_seconds", detector.start_seconds,
                                        labels=worker, kind="gauge",
                                        help="Seconds from starting the liveness worker to its first frame"))
            for reason, count in sorted(detector.drops.items()):
                out.append(MetricSample("vipcore_liveness_drops", float(count),
                                        labels=(("interface", interface), ("reason", reason)),
                                        help="Liveness packets dropped, by reason"))
        return out
