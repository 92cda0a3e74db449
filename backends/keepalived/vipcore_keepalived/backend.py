"""The keepalived backend: vipcore's dispatch hooks on top of one supervised keepalived.

Every dispatch hook changes the backend's idea of this node's groups, then
re-renders the whole configuration; keepalived is reloaded only if the text
changed, started when the first group arrives and stopped (SIGTERM: priority
0, VIPs dropped) when the last one leaves. Transitions come from keepalived's
notify FIFO and are reported through ``context.report``.

* ``release`` leaves the group's instances out of the config: keepalived
  resigns (priority 0) and drops the VIPs; the node stays a member.
* ``takeover`` undoes a release, or else renders the group with priority 254.
* At start (every interface) and at the first use of an interface, VIPs
  that vipcore manages but no configured instance carries are removed: a
  killed keepalived leaves its VIPs behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from vipcore.net.addresses import AddressHolder, InterfaceInfo
from vipcore.backend import BackendContext, hookimpl
from vipcore.core.errors import ConfigError, InterfaceNotFoundError, VipcoreError
from vipcore.core.model import IPAddress, Membership, MetricSample, State, StateChange
from vipcore_keepalived import BACKEND_NAME
from vipcore_keepalived.process import FifoEvent, KeepalivedProcess, Paths, check_keepalived
from vipcore_keepalived.render import Instance, Rendered, render
from vipcore_keepalived.settings import KeepalivedSettings

log = logging.getLogger(__name__)

_STATES = {"MASTER": State.MASTER, "BACKUP": State.BACKUP, "FAULT": State.FAULT, "STOP": State.STOPPED}
#: After a reload that drops a group, how long keepalived gets to remove its VIPs itself.
LEAVE_SETTLE = 1.0
#: After removing a dropped group's VIPs, how long to keep them removed while
#: keepalived may still be applying the reload.
RELOAD_GRACE = 0.5
_POLL = 0.02
#: A drained master waits for a peer to take over at most this many advert
#: intervals (a peer preempts after Master_Down_Interval, about three, and
#: reloads keepalived first) plus :data:`HANDOVER_MARGIN` seconds.
HANDOVER_INTERVALS = 5
HANDOVER_MARGIN = 2.0


def _address_key(address: IPAddress) -> tuple[int, int]:
    return (address.version, int(address))


class KeepalivedBackend:
    """Renders, runs and supervises keepalived for this node's groups."""

    name = BACKEND_NAME

    def __init__(self) -> None:
        self.context: BackendContext | None = None
        self.settings = KeepalivedSettings()
        self.holder: AddressHolder | None = None
        self.process: KeepalivedProcess | None = None
        self.memberships: dict[str, Membership] = {}
        self.released: set[str] = set()
        self.taken_over: set[str] = set()
        self.rendered: Rendered | None = None
        #: Every instance rendered since start, by name (FIFO lines may trail a reload).
        self.known: dict[str, Instance] = {}
        #: Last reported state per instance name.
        self.states: dict[str, State] = {}
        self._cleaned: set[str] = set()
        self._lock = asyncio.Lock()

    # -- helpers ------------------------------------------------------------

    def _ctx(self) -> BackendContext:
        if self.context is None:
            raise VipcoreError("the keepalived backend was not started")
        return self.context

    def _report(self, instance: Instance, new: State, reason: str) -> None:
        old = self.states.get(instance.name, State.INIT)
        if old is new:
            return
        self.states[instance.name] = new
        ctx = self._ctx()
        ctx.report(StateChange(
            group=instance.group, family=instance.family, old=old, new=new, reason=reason, at=ctx.clock(),
            node=ctx.node, backend=BACKEND_NAME, vrid=instance.vrid, failover_seconds=None,
        ))

    def _on_event(self, event: FifoEvent) -> None:
        if event.kind != "INSTANCE":
            return
        instance = self.known.get(event.name)
        new = _STATES.get(event.state)
        if instance is None or new is None:
            log.debug("ignoring keepalived event %s", event)
            return
        priority = f" at priority {event.priority}" if event.priority is not None else ""
        self._report(instance, new, f"keepalived entered {event.state}{priority}")

    def _on_exit(self, code: int | None, restarting: bool) -> None:
        current = self.rendered.instances if self.rendered else ()
        what = "restarting it" if restarting else "gave up restarting it"
        for instance in current:
            self._report(instance, State.FAULT, f"keepalived exited (code {code}); {what}")

    async def _interfaces(self, names: set[str]) -> dict[str, InterfaceInfo]:
        """The interfaces that exist; a missing one only loses its unicast source address."""
        assert self.holder is not None
        found = {}
        for name in sorted(names):
            try:
                found[name] = await self.holder.interface(name)
            except InterfaceNotFoundError:
                log.warning("interface %s does not exist: its groups' routers stay FAULT until it does", name)
        return found

    async def _change(self, mutate: Callable[[], None]) -> None:
        """Apply ``mutate`` to the backend's groups and sync; undo it if the sync fails."""
        saved = (dict(self.memberships), set(self.released), set(self.taken_over))
        mutate()
        try:
            await self._sync()
        except BaseException:
            self.memberships, self.released, self.taken_over = saved
            raise

    async def _sync(self) -> Rendered:
        """Render everything; clean stale VIPs on new interfaces; start, reload or stop keepalived."""
        ctx = self._ctx()
        assert self.process is not None and self.holder is not None
        interfaces: dict[str, InterfaceInfo] = {}
        if self.settings.unicast:
            interfaces = await self._interfaces({m.group.interface for m in self.memberships.values()})
        rendered = render(
            self.memberships.values(), self.settings, node=ctx.node, fifo=self.process.paths.fifo,
            interfaces=interfaces, released=frozenset(self.released), taken_over=frozenset(self.taken_over),
        )
        previous = self.rendered
        for interface in sorted({i.interface for i in rendered.instances} - self._cleaned):
            keep = previous.vips(interface) if previous else frozenset()
            try:
                stale = await self.holder.remove_stale(interface, ctx.is_managed, keep=keep)
            except InterfaceNotFoundError:
                continue  # nothing to clean yet; try again at the next change
            if stale:
                log.warning("removed stale VIPs %s from %s", ", ".join(map(str, stale)), interface)
            self._cleaned.add(interface)
        self.known.update(rendered.by_name())
        self.rendered = rendered
        if rendered.instances:
            outcome = await self.process.apply(rendered.text)
            log.debug("keepalived config %s", outcome)
        else:
            await self.process.stop()
        for name in sorted({i.name for i in previous.instances} if previous else set()):
            if name not in rendered.by_name() and name in self.states:
                self._report(self.known[name], State.STOPPED, "instance removed from keepalived's config")
        return rendered

    async def _drop(self, vips: dict[str, set[IPAddress]], settle: float) -> None:
        """Make sure ``vips`` (by interface) are gone: give keepalived ``settle`` s, then remove them."""
        assert self.holder is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        for interface, wanted in sorted(vips.items()):
            if not wanted:
                continue
            try:
                while wanted & await self.holder.held(interface) and loop.time() < deadline:
                    await asyncio.sleep(_POLL)
                ordered: list[IPAddress] = sorted(wanted, key=_address_key)
                removed = await self.holder.remove(interface, ordered)
                if settle:
                    # keepalived gives no acknowledgement of a SIGHUP: until the
                    # reload is applied the old instance may still win an
                    # election (a peer resigning) and add the VIPs back.
                    grace = loop.time() + RELOAD_GRACE
                    while loop.time() < grace:
                        await asyncio.sleep(_POLL)
                        if wanted & await self.holder.held(interface):
                            removed += await self.holder.remove(interface, ordered)
            except InterfaceNotFoundError:
                continue  # the interface went away and its addresses with it
            if removed:
                log.info("removed %s from %s after keepalived let go", ", ".join(map(str, removed)), interface)

    def _unrendered_vips(self, instances: tuple[Instance, ...]) -> dict[str, set[IPAddress]]:
        """VIPs of ``instances`` that no currently rendered instance carries, by interface."""
        still = self.rendered.instances if self.rendered else ()
        carried = {(i.interface, v) for i in still for v in i.vips}
        found: dict[str, set[IPAddress]] = {}
        for instance in instances:
            for vip in instance.vips:
                if (instance.interface, vip) not in carried:
                    found.setdefault(instance.interface, set()).add(vip)
        return found

    async def _remove_group(self, group: str, *, settle: float) -> None:
        before = tuple(i for i in (self.rendered.instances if self.rendered else ()) if i.group == group)
        await self._sync()
        await self._drop(self._unrendered_vips(before), settle)

    # -- dispatch hooks -------------------------------------------------------

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> bool:
        settings = KeepalivedSettings.from_config(context.config)
        await asyncio.to_thread(check_keepalived, settings.binary)
        self.context = context
        self.settings = settings
        state_dir = Path(context.state_dir)
        if any(c.isspace() or c in '"#!{}' for c in str(state_dir)):
            # keepalived.conf has no quoting for paths (notify_fifo).
            raise ConfigError(f"must not contain spaces or any of \" # ! {{ }} for the keepalived backend, "
                              f"got {str(state_dir)!r}", field="state_dir")
        state_dir.mkdir(parents=True, exist_ok=True)
        self.holder = AddressHolder(netns=settings.netns)
        self.process = KeepalivedProcess(Paths.in_dir(state_dir), settings, on_event=self._on_event,
                                         on_exit=self._on_exit)
        # A keepalived left by a killed agent would fight the new one (and keeps its VIPs).
        await self.process.stop_leftovers()
        for interface in await self.holder.interfaces():
            stale = await self.holder.remove_stale(interface, context.is_managed)
            if stale:
                log.warning("removed stale VIPs %s from %s", ", ".join(map(str, stale)), interface)
        return True

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> bool:
        async with self._lock:
            if self.process is None or self.holder is None:
                return True
            before = self.rendered.instances if self.rendered else ()
            # SIGTERM either way: keepalived sends priority 0, so a peer takes over within
            # skew time instead of three advert intervals, and drops its VIPs.
            await self.process.close()
            self.rendered = None
            await self._drop(self._unrendered_vips(before), 0.0)
            for instance in before:
                self._report(instance, State.STOPPED, "vipcore stopped" + (" gracefully" if graceful else ""))
            await self.holder.close()
            return True

    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> bool:
        if membership.group.vrid is None:
            raise VipcoreError(f"group {membership.group.name} has no VRID; keepalived needs one")
        async with self._lock:
            await self._change(lambda: self.memberships.__setitem__(membership.name, membership))
        return True

    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> bool:
        if new.group.vrid is None:
            raise VipcoreError(f"group {new.group.name} has no VRID; keepalived needs one")
        async with self._lock:
            before = tuple(i for i in (self.rendered.instances if self.rendered else ())
                           if i.group in (old.name, new.name))

            def change() -> None:
                # A rename (same VRID) renders the same instance names: keepalived
                # keeps the instances, their state and their VIPs across the reload.
                if old.name != new.name:
                    self.memberships.pop(old.name, None)
                    for marks in (self.released, self.taken_over):
                        if old.name in marks:
                            marks.discard(old.name)
                            marks.add(new.name)
                self.memberships[new.name] = new

            await self._change(change)
            # A VIP taken out of the group (or a family dropped) must not stay behind.
            await self._drop(self._unrendered_vips(before), LEAVE_SETTLE)
        return True

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> bool:
        async with self._lock:
            self.memberships.pop(membership.name, None)
            self.released.discard(membership.name)
            self.taken_over.discard(membership.name)
            await self._remove_group(membership.name, settle=LEAVE_SETTLE if graceful else 0.0)
        return True

    @hookimpl
    async def vipcore_group_release(self, group: str, reason: str) -> bool:
        async with self._lock:
            if group not in self.memberships:
                raise VipcoreError(f"cannot release group {group}: this node is not a member")
            log.info("releasing group %s: %s", group[:12], reason)
            await self._await_handover(group)
            self.released.add(group)
            self.taken_over.discard(group)
            await self._remove_group(group, settle=LEAVE_SETTLE)
        return True

    async def _await_handover(self, group: str) -> None:
        """Make-before-break for a drain: let a peer take over before the instance goes.

        The agent updates a drained node's memberships (priority 1) before it
        releases them, so a preempting peer becomes master at its next
        Master_Down_Interval and this instance falls back to BACKUP, dropping
        the VIPs only then. Removing the instance at once would send priority 0
        and drop them before anyone holds them. Bounded by :data:`HANDOVER_INTERVALS`
        advert intervals and :data:`HANDOVER_MARGIN` s; with preemption off, no
        peer, or a priority that is not the lowest, release at once.
        """
        membership = self.memberships[group]
        if not self.settings.preempt or not membership.peers() or \
                membership.priority > min(m.priority for m in membership.members):
            return
        mine = [i.name for i in (self.rendered.instances if self.rendered else ()) if i.group == group]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + HANDOVER_INTERVALS * self.settings.advert_interval + HANDOVER_MARGIN
        while any(self.states.get(name) is State.MASTER for name in mine) and loop.time() < deadline:
            await asyncio.sleep(_POLL)

    @hookimpl
    async def vipcore_group_takeover(self, group: str, reason: str) -> bool:
        async with self._lock:
            if group not in self.memberships:
                raise VipcoreError(f"cannot take over group {group}: this node is not a member")
            log.info("taking over group %s: %s", group[:12], reason)

            def take() -> None:
                if group in self.released:
                    self.released.discard(group)
                else:
                    self.taken_over.add(group)

            await self._change(take)
        return True

    # -- notification hooks ---------------------------------------------------

    @hookimpl
    def vipcore_collect_metrics(self) -> list[MetricSample]:
        if self.process is None:
            return []
        c = self.process.counters
        return [
            MetricSample("vipcore_keepalived_starts_total", c.starts, help="keepalived processes started"),
            MetricSample("vipcore_keepalived_restarts_total", c.restarts,
                         help="keepalived restarts after it died unasked"),
            MetricSample("vipcore_keepalived_reloads_total", c.reloads,
                         help="SIGHUP reloads (sent only when the rendered config changed)"),
            MetricSample("vipcore_keepalived_up", 1.0 if self.process.running else 0.0, kind="gauge",
                         help="whether keepalived is running"),
        ]
