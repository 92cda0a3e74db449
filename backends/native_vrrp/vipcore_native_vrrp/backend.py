"""The ``native_vrrp`` backend: vipcore's dispatch hooks over our own VRRPv3.

One :class:`~vipcore_native_vrrp.driver.RouterDriver` per (group, family),
priorities straight from :attr:`Membership.priority` (the core's rendezvous
placement), VIPs only through :class:`vipcore.net.addresses.AddressHolder`.

**Family sync.** Both routers of a group get the same priority; which
sibling follows a router that became master is decided in the protocol
(:func:`vipcore_native_vrrp.protocol.followers`, on the typed cause); this
module only carries it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vipcore.net.addresses import AddressHolder, InterfaceInfo, LinkEvent
from vipcore.backend import BackendContext, hookimpl
from vipcore.core.errors import AddressError, AllocationError, VipcoreError
from vipcore.core.model import (
    Family,
    IPAddress,
    Membership,
    MetricSample,
    State,
    StateChange,
    StatusTable,
    TransitionCause,
)
from vipcore_native_vrrp import BACKEND_NAME
from vipcore_native_vrrp.config import NativeVrrpConfig, keepalived_addresses
from vipcore_native_vrrp.driver import RouterDriver
from vipcore_native_vrrp.liveness.coordinator import Coordinator
from vipcore_native_vrrp.liveness.detector import Detector
from vipcore_native_vrrp.protocol import Authenticator, Router, RouterConfig, StateChanged, followers
from vipcore_native_vrrp.protocol.machine import RECEIVE_REASONS
from vipcore_native_vrrp.protocol.router_config import Member
from vipcore_native_vrrp.protocol.packet import DECODE_REASONS, MULTICAST
from vipcore_native_vrrp.timers import TimerBatch
from vipcore_native_vrrp.transport import Link

log = logging.getLogger(__name__)

#: Extra wait beyond the router's own hand-over bound before forcing a stop.
STOP_MARGIN = 1.0
#: Seconds between re-checks of an interface that came back incomplete
#: (no address to send from, or no global IPv6 prefix).
RECHECK_INTERVAL = 1.0
#: Seconds to wait before re-subscribing to link events after an error.
WATCH_RETRY = 1.0
#: Split-brain detector: ask the LAN who answers for each VIP this long after
#: a transition (announcements have gone out by then) ...
PROBE_AFTER_TRANSITION = 1.0
#: ... and this often in any case.
PROBE_EVERY = 30.0


class NativeVrrpBackend:
    """vipcore backend ``native_vrrp``."""

    name = BACKEND_NAME
    #: Seams for tests without root: how the holder and the sockets are made.
    holder_factory: Callable[[], AddressHolder] = AddressHolder
    link_factory: Callable[..., Link] = Link
    detector_factory: Callable[..., Detector] = Detector

    def __init__(self) -> None:
        self.context: BackendContext | None = None
        self.settings = NativeVrrpConfig()
        self.holder: AddressHolder | None = None
        self.links: dict[tuple[str, Family], Link] = {}
        self.routers: dict[str, dict[Family, RouterDriver]] = {}
        self.memberships: dict[str, Membership] = {}
        #: Interfaces that came back from a link flap without a global IPv6 address.
        self.ipv6_prefix_missing: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: TimerBatch | None = None
        self._watcher: asyncio.Task[None] | None = None
        #: Split-brain detector: how many MACs answered for each VIP at the last probe.
        self.responders: dict[IPAddress, int] = {}
        self._prober: asyncio.Task[None] | None = None
        self._probe_handle: asyncio.TimerHandle | None = None
        self._probe_tasks: set[asyncio.Task[None]] = set()
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        #: Interface reads under way for group joins and updates, shared by the calls that come meanwhile.
        self._reads: dict[str, asyncio.Task[InterfaceInfo]] = {}
        self.liveness: Coordinator | None = None

    # -- lifecycle ----------------------------------------------------------------

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> None:
        self.settings = NativeVrrpConfig.from_mapping(context.config)
        self.context = context
        self._loop = asyncio.get_running_loop()
        self.holder = self.holder_factory()
        if self.settings.liveness.enabled:
            self.liveness = Coordinator(self.settings.liveness, self._loop, self._groups, self.detector_factory,
                                        keepalived_peers=self.settings.keepalived_peers,
                                        send_addresses=self.holder.send_queued,
                                        plan_builder=getattr(self.holder, "takeover_plan", None),
                                        remove_addresses=self.holder.remove)
        # A killed predecessor leaves its VIPs behind: remove every managed
        # host address before any router of ours holds something.
        for interface in await self.holder.interfaces():
            try:
                removed = await self.holder.remove_stale(interface, context.is_managed)
            except VipcoreError as exc:
                log.warning("stale VIP cleanup on %s: %s", interface, exc)
                continue
            if removed:
                log.info("removed stale VIPs %s from %s", ", ".join(map(str, removed)), interface)
        self._watcher = self._loop.create_task(self._watch_links(), name="native_vrrp link events")
        self._prober = self._loop.create_task(self._probe_periodically(), name="native_vrrp responders")

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for handle in self._rechecks.values():
            handle.cancel()
        self._rechecks.clear()
        for read in self._reads.values():
            read.cancel()
        self._reads.clear()
        if self._probe_handle is not None:
            self._probe_handle.cancel()
            self._probe_handle = None
        tasks = [t for t in (self._prober, *self._probe_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._prober = None
        names = list(self.routers)
        await asyncio.gather(*(self._stop_group(name, graceful) for name in names))
        if self.liveness is not None:
            self.liveness.close(graceful=graceful)
            self.liveness = None
        for link in self.links.values():
            link.close()
        self.links.clear()
        if self.holder is not None:
            await self.holder.close()
            self.holder = None

    # -- groups -------------------------------------------------------------------

    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> None:
        if membership.name in self.routers:
            await self.vipcore_group_update(self.memberships[membership.name], membership)
            return
        self.memberships[membership.name] = membership
        self.routers[membership.name] = {}
        for family in membership.group.families:
            await self._add_router(membership, family)
        self._refresh_liveness()

    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        name = new.name
        if old.name != name and old.name in self.routers and name not in self.routers:
            # A rename by a membership change: same VRID, same router. Keep it
            # (state, timers, VIPs) under the new name; no election.
            self.routers[name] = self.routers.pop(old.name)
            self.memberships.pop(old.name, None)
            for kept in self.routers[name].values():
                kept.group = name
        if name not in self.routers:
            await self.vipcore_group_join(new)
            return
        if old.group.vrid != new.group.vrid or old.group.interface != new.group.interface:
            await self._stop_group(name, graceful=True)
            await self.vipcore_group_join(new)
            return
        self.memberships[name] = new
        drivers = self.routers[name]
        for family in list(drivers):
            if family not in new.group.families:
                await self._stop_router(drivers.pop(family), graceful=True)
        for family in new.group.families:
            driver = drivers.get(family)
            if driver is None:
                await self._add_router(new, family)
                continue
            config = await self._router_config(new, family)
            driver.update(
                priority=config.priority, vips=config.vips, sources=config.sources, destinations=config.destinations,
                peer_priorities=config.peer_priorities, identity=config.identity,
                members=config.members,
            )
        self._refresh_liveness()

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        await self._stop_group(membership.name, graceful)

    @hookimpl
    async def vipcore_group_release(self, group: str, reason: str) -> None:
        for driver in self.routers.get(group, {}).values():
            driver.release(reason)
        # A released backup makes no transition, but it no longer takes over: the takeover plans (and who
        # watches whom) follow (docs/native-vrrp.md, "The worker claims first").
        self._refresh_liveness()

    @hookimpl
    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        # Undoing a release (undrain) rejoins the election: taking every group
        # at once made the returning node master where it does not rank first
        # until preemption took those back (VIPs held twice). A router that
        # was not released is a control-plane order to hold now.
        for driver in self.routers.get(group, {}).values():
            if driver.router.released:
                driver.rejoin(reason)
            else:
                driver.takeover(reason)
        self._refresh_liveness()

    # -- metrics ---------------------------------------------------------------------

    @hookimpl
    def vipcore_collect_metrics(self) -> list[MetricSample]:
        samples: list[MetricSample] = []
        for (interface, family), link in sorted(self.links.items(), key=lambda item: (item[0][0], item[0][1])):
            labels = (("interface", interface), ("family", family.k8s_name))
            c = link.counters
            samples += [
                MetricSample("vipcore_vrrp_packets_received", c.received, labels,
                             help="VRRP messages received (before validation)"),
                MetricSample("vipcore_vrrp_packets_sent", c.sent, labels, help="VRRP adverts sent"),
                MetricSample("vipcore_vrrp_send_errors", c.send_errors, labels, help="VRRP adverts that failed to send"),
            ]
            for reason in sorted({*DECODE_REASONS, *RECEIVE_REASONS, "unknown_vrid", *c.dropped}):
                samples.append(MetricSample("vipcore_vrrp_packets_dropped", c.dropped[reason],
                                            (*labels, ("reason", reason)), help="VRRP messages discarded, by reason"))
        for name, drivers in sorted(self.routers.items()):
            for family, driver in sorted(drivers.items()):
                router_labels = (("group", name), ("family", family.k8s_name), ("vrid", str(driver.vrid)))
                samples += [
                    MetricSample("vipcore_vrrp_master", float(driver.router.state is State.MASTER), router_labels,
                                 kind="gauge", help="1 if this node is master for the router"),
                    MetricSample("vipcore_vrrp_transitions", driver.transitions, router_labels,
                                 help="state transitions of the router"),
                ]
        for vip, count in sorted(self.responders.items(), key=lambda item: (item[0].version, item[0])):
            samples.append(MetricSample(
                "vipcore_vip_responders", count, (("vip", str(vip)),), kind="gauge",
                help="MAC addresses that answered ARP / neighbour solicitation for the VIP at the last probe "
                     "(1 is healthy; 0: no holder; 2 or more: split brain)"))
        for interface in sorted({i for i, _ in self.links} | self.ipv6_prefix_missing):
            samples.append(MetricSample(
                "vipcore_vrrp_ipv6_prefix_missing", float(interface in self.ipv6_prefix_missing),
                (("interface", interface),), kind="gauge",
                help="1 if the interface came back from a link flap without a global IPv6 address "
                     "(IPv6 VIPs would have no route back; its IPv6 routers stay in fault)"))
        if self.liveness is not None:
            samples += self.liveness.samples()
        return samples

    # -- status --------------------------------------------------------------------------

    @hookimpl
    def vipcore_status_sections(self) -> list[StatusTable]:
        """The liveness sessions (per interface and peer) for ``vipcore status``; none while liveness is off."""
        return [self.liveness.status_table()] if self.liveness is not None else []

    # -- internals -------------------------------------------------------------------

    def _require_started(self) -> tuple[BackendContext, AddressHolder, asyncio.AbstractEventLoop]:
        if self.context is None or self.holder is None or self._loop is None:
            raise VipcoreError("native_vrrp: vipcore_backend_start was not called")
        return self.context, self.holder, self._loop

    async def _interface(self, interface: str) -> InterfaceInfo:
        """``interface`` as the holder reads it; calls made while a read is under way share that read.

        Each read dumps every address of the interface, the VIPs held
        included, and every router's join or update needs one: 255
        dual-stack groups joined at start-up made about a thousand dumps of
        up to a thousand addresses (10-20 s of CPU for one node in the lab).
        Joins and updates run concurrently, so sharing the read under way
        makes a burst cost a few reads. A link event reads afresh.
        """
        _, holder, loop = self._require_started()
        read = self._reads.get(interface)
        if read is None:
            read = self._reads[interface] = loop.create_task(holder.interface(interface))
            read.add_done_callback(lambda done: self._reads.pop(interface, None)
                                   if self._reads.get(interface) is done else None)
        return await asyncio.shield(read)

    async def _router_config(self, membership: Membership, family: Family) -> RouterConfig:
        self._require_started()
        group = membership.group
        if group.vrid is None:
            raise AllocationError(f"group {group.short_name} has no VRID; native_vrrp needs one")
        info = await self._interface(group.interface)
        if self.liveness is not None:
            self.liveness.ensure(info)
        peers = membership.peers()
        peer_addresses = [a for p in peers for a in p.addresses if a.version == family]
        own_networks: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = [n for n in (info.ipv4 if family is Family.IPV4 else info.ipv6)
                        if not n.ip.is_link_local and n.network.prefixlen < n.max_prefixlen]
        primary: IPAddress | None
        destinations: tuple[IPAddress, ...]
        if self.settings.unicast:
            destinations = tuple(_peer_destinations(peers, family, own_networks))
            primary = next((n.ip for n in own_networks if destinations and destinations[0] in n.network), None)
            if primary is None:
                primary = own_networks[0].ip if own_networks else None
        else:
            destinations = (MULTICAST[family],)
            primary = info.primary(family)
        if primary is None:
            what = "an IPv4 address" if family is Family.IPV4 else (
                "a global IPv6 address" if self.settings.unicast else "an IPv6 link-local address")
            raise AddressError(group.interface, f"has no {what} to send VRRP adverts from (group {group.short_name})")
        members = membership.members
        own = next((m for m in members if m.name == membership.node), None)
        relaxed_names = self.settings.keepalived_peers
        relaxed = {a for m in members if m.name in relaxed_names for a in m.addresses if a.version == family}
        relaxed |= {a for a in keepalived_addresses(relaxed_names) if a.version == family}
        priorities = {a: m.priority for m in members if m.name != membership.node
                      for a in m.addresses if a.version == family}
        key = self.settings.auth_key
        return RouterConfig(
            vrid=group.vrid,
            family=family,
            primary=primary,
            vips=group.vips(family),
            priority=membership.priority,
            interval_cs=self.settings.interval_cs,
            preempt=self.settings.preempt,
            destinations=destinations,
            sources=frozenset(peer_addresses) if self.settings.check_source else None,
            # Multicast IPv6 adverts come from link-local addresses the core does not know.
            link_local_sources=family is Family.IPV6 and not self.settings.unicast,
            resign_timeout=self.settings.resign_timeout,
            peer_priorities=priorities if self.settings.check_priority else None,
            relaxed_sources=frozenset(relaxed),
            # Multicast IPv6 keepalived peers send from link-local addresses the core does not know.
            relax_link_local=bool(relaxed_names) and family is Family.IPV6,
            identity=frozenset(a for a in (own.addresses if own else ()) if a.version == family),
            members=[Member(m.priority, frozenset(a for a in m.addresses if a.version == family))
                     for m in members if m.name != membership.node],
            auth=Authenticator(key) if key is not None else None,
            wall_offset=time.time() - self._require_started()[2].time(),
        )

    async def _add_router(self, membership: Membership, family: Family) -> None:
        _, holder, loop = self._require_started()
        config = await self._router_config(membership, family)
        interface = membership.group.interface
        link = self.links.get((interface, family))
        if link is None:
            try:
                link = self.link_factory(interface, family, multicast=not self.settings.unicast)
            except OSError as exc:
                raise AddressError(interface, f"cannot open a VRRP socket for IPv{int(family)}: {exc}") from None
            link.start(loop)
            self.links[(interface, family)] = link
        if config.vrid in link.handlers:
            raise AllocationError(
                f"VRID {config.vrid} is used twice on {interface} for IPv{int(family)} (group {membership.group.short_name})"
            )
        driver = RouterDriver(
            group=membership.name, interface=interface, router=Router(config), link=link, holder=holder,
            schedule=self.settings.garp, report=self._report, loop=loop, batch=self._timer_batch(loop),
            on_master=self._refresh_liveness,
        )
        self.routers[membership.name][family] = driver
        driver.start()
        info = await self._interface(interface)
        if not info.up:
            driver.link_down(f"{interface} is down or has no carrier")

    def _timer_batch(self, loop: asyncio.AbstractEventLoop) -> TimerBatch:
        if self._batch is None or self._batch.loop is not loop:
            self._batch = TimerBatch(loop)
        return self._batch

    def _report(self, driver: RouterDriver, change: StateChanged, failover: float | None) -> None:
        context, _, _ = self._require_started()
        context.report(StateChange(
            group=driver.group, family=driver.family, old=change.old, new=change.new, reason=change.reason,
            at=context.clock(), node=context.node, backend=self.name, vrid=driver.vrid, failover_seconds=failover,
            cause=change.cause, failover_phases=change.phases,
        ))
        self._refresh_liveness()
        self._probe_soon()
        siblings = [d for d in self.routers.get(driver.group, {}).values() if d is not driver]
        pulled = followers(change, [d.router for d in siblings])
        for sibling in siblings:
            if any(router is sibling.router for router in pulled):
                sibling.follow(f"IPv{int(driver.family)}")

    # -- link state ------------------------------------------------------------------

    async def _watch_links(self) -> None:
        """Feed link events to the routers until cancelled; re-subscribe after an error."""
        _, holder, loop = self._require_started()
        while True:
            subscribed = asyncio.Event()
            resync = loop.create_task(self._resync(subscribed))
            try:
                async for event in holder.link_events(subscribed.set):
                    await self._on_link(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an overflowed or broken socket: events were lost
                log.warning("link events: %s; re-reading link state", exc)
                await asyncio.sleep(WATCH_RETRY)
            finally:
                resync.cancel()

    async def _resync(self, subscribed: asyncio.Event) -> None:
        """After (re)subscribing: the current state of every interface we use."""
        await subscribed.wait()
        for interface in sorted({i for i, _ in self.links}):
            await self._recheck(interface)

    async def _recheck(self, interface: str) -> None:
        self._rechecks.pop(interface, None)
        _, holder, _ = self._require_started()
        try:
            info = await holder.interface(interface)
        except VipcoreError:
            event = LinkEvent(interface, 0, present=False)
        else:
            event = LinkEvent(interface, info.index, present=True, admin_up=info.up, carrier=info.up)
        await self._on_link(event)

    def _drivers_on(self, interface: str) -> list[RouterDriver]:
        return [d for drivers in self.routers.values() for d in drivers.values() if d.interface == interface]

    async def _on_link(self, event: LinkEvent) -> None:
        """An interface we use changed: FAULT while it is unusable, rejoin as backup when it is back."""
        interface = event.name
        if not any(i == interface for i, _ in self.links):
            return
        drivers = self._drivers_on(interface)
        if not event.up:
            reason = event.describe()
            if any(d.router.state is not State.FAULT for d in drivers):
                log.warning("%s: its routers resign and wait for it to come back", reason)
            for driver in drivers:
                driver.link_down(reason)
            if not event.present:
                self._close_links(interface)  # the sockets are bound to an ifindex that is gone
            return
        if not self._reopen_links(interface, event.index, drivers):
            self._schedule_recheck(interface)
            return
        holder = self._require_started()[1]
        try:
            info = await holder.interface(interface)
        except VipcoreError as exc:
            log.warning("%s", exc)
            self._schedule_recheck(interface)
            return
        has_prefix = any(not n.ip.is_link_local and n.network.prefixlen < n.max_prefixlen for n in info.ipv6)
        if has_prefix and interface in self.ipv6_prefix_missing:
            log.info("%s has a global IPv6 address again", interface)
            self.ipv6_prefix_missing.discard(interface)
        incomplete = False
        for driver in self._drivers_on(interface):
            membership = self.memberships.get(driver.group)
            if membership is None or driver.router.state is not State.FAULT:
                continue
            if driver.family is Family.IPV6 and not has_prefix:
                if interface not in self.ipv6_prefix_missing:
                    log.warning("%s came back without a global IPv6 address (the kernel drops it with the link): "
                                "IPv6 VIPs here would have no route back, so IPv6 routers stay in fault", interface)
                    self.ipv6_prefix_missing.add(interface)
                driver.link_down(f"{interface} has no global IPv6 address after the link flap (no route back)",
                                 TransitionCause.FAULT)
                incomplete = True
                continue
            try:
                config = await self._router_config(membership, driver.family)
            except VipcoreError as exc:
                driver.link_down(f"{interface} is up but not usable yet: {exc}", TransitionCause.FAULT)
                incomplete = True
                continue
            if config.primary != driver.router.config.primary:
                driver.update(primary=config.primary)
            driver.link_up(event.describe())
        if incomplete:
            self._schedule_recheck(interface)

    def _schedule_recheck(self, interface: str) -> None:
        _, _, loop = self._require_started()
        if interface not in self._rechecks:
            self._rechecks[interface] = loop.call_later(
                RECHECK_INTERVAL, lambda: loop.create_task(self._recheck(interface)))

    def _close_links(self, interface: str) -> None:
        for (name, _family), link in self.links.items():
            if name == interface:
                link.close()

    def _reopen_links(self, interface: str, index: int, drivers: list[RouterDriver]) -> bool:
        """Sockets on the interface's current ifindex (a re-created interface); False if not possible yet."""
        _, _, loop = self._require_started()
        for (name, family), link in list(self.links.items()):
            if name != interface or (link.ifindex == index and not link.closed):
                continue
            try:
                fresh = self.link_factory(interface, family, multicast=not self.settings.unicast)
            except OSError as exc:
                log.warning("cannot reopen the VRRP socket on %s for IPv%d: %s", interface, family, exc)
                return False
            link.close()
            fresh.handlers.update(link.handlers)
            fresh.counters = link.counters
            fresh.start(loop)
            self.links[(name, family)] = fresh
            for driver in drivers:
                if driver.link is link:
                    driver.link = fresh
            log.info("reopened the VRRP socket on %s for IPv%d (ifindex %d)", interface, family, fresh.ifindex)
        return True

    # -- split-brain detector -------------------------------------------------------

    def _probe_soon(self) -> None:
        """Probe every VIP once the announcements after a transition have gone out.

        Debounced: transitions of many groups at once (a node dying) make
        one round, not one per group.
        """
        loop = self._loop
        if loop is None or self._probe_handle is not None:
            return

        def fire() -> None:
            self._probe_handle = None
            task = loop.create_task(self._probe_all())
            self._probe_tasks.add(task)
            task.add_done_callback(self._probe_tasks.discard)

        self._probe_handle = loop.call_later(PROBE_AFTER_TRANSITION, fire)

    async def _probe_periodically(self) -> None:
        while True:
            await asyncio.sleep(PROBE_EVERY)
            try:
                await self._probe_all()
            except Exception:  # the detector must outlive a bad round
                log.exception("split-brain probe failed")

    async def _probe_all(self) -> None:
        """Ask the LAN who answers for each VIP of our groups (one round per interface);
        log anything but one answer."""
        holder = self.holder
        if holder is None:
            return
        by_interface: dict[str, list[IPAddress]] = {}
        for membership in self.memberships.values():
            group = membership.group
            by_interface.setdefault(group.interface, []).extend((*group.vips(Family.IPV4), *group.vips(Family.IPV6)))
        for interface, vips in sorted(by_interface.items()):
            try:
                answers = await holder.responders(interface, vips)
            except VipcoreError as exc:
                log.debug("who answers on %s: %s", interface, exc)
                continue
            current = {v for m in self.memberships.values() for v in (*m.group.vips(Family.IPV4),
                                                                        *m.group.vips(Family.IPV6))}
            for vip, macs in answers.items():
                if vip not in current:
                    continue  # its group left meanwhile
                self.responders[vip] = len(macs)
                if len(macs) != 1:
                    log.warning("VIP %s is answered by %d MAC addresses%s: %s", vip, len(macs),
                                f" ({', '.join(_responder(m) for m in sorted(macs))})" if macs else "",
                                "split brain: two holders" if macs else "nobody holds it",
                                extra={"event": "vip_responders", "vip": str(vip), "responders": len(macs)})

    async def _stop_group(self, name: str, graceful: bool) -> None:
        drivers = self.routers.pop(name, {})
        left = self.memberships.pop(name, None)
        if left is not None:
            for vip in (*left.group.vips(Family.IPV4), *left.group.vips(Family.IPV6)):
                self.responders.pop(vip, None)

        await asyncio.gather(*(self._stop_router(d, graceful) for d in drivers.values()))
        self._refresh_liveness()

    def _groups(self) -> list[tuple[Membership, dict[Family, RouterDriver]]]:
        return [(self.memberships[name], drivers) for name, drivers in self.routers.items()
                if name in self.memberships]

    def _refresh_liveness(self) -> None:
        if self.liveness is not None:
            self.liveness.schedule_refresh()

    async def _stop_router(self, driver: RouterDriver, graceful: bool) -> None:
        _, holder, _ = self._require_started()
        if graceful:
            driver.resign()
            bound = driver.router.resign_timeout_bound + STOP_MARGIN
            if not await driver.wait_stopped(bound):
                log.warning("group %s IPv%d: hand-over did not finish in %.2fs; stopping now",
                            driver.group[:12], driver.family, bound)
        driver.shutdown()
        await driver.settled()
        await driver.close()
        # After a stop this node holds none of the group's VIPs, whatever happened above.
        await holder.remove(driver.interface, driver.router.config.vips)
        link = driver.link
        if not link.handlers:
            link.close()
            self.links.pop((link.interface, link.family), None)


def _peer_destinations(
    peers: Iterable[Any], family: Family, own: Sequence[ipaddress.IPv4Interface | ipaddress.IPv6Interface]
) -> Iterable[IPAddress]:
    """Each peer's first address of ``family`` inside one of our interface's subnets."""
    for peer in peers:
        for address in peer.addresses:
            if address.version == family and any(address in n.network for n in own):
                yield address
                break


def _responder(identity: bytes) -> str:
    """A MAC as aa:bb:..., or the source address an NA without a link-layer option came from."""
    return identity.hex(":") if len(identity) == 6 else identity.decode(errors="replace")
