"""The ``native_vrrp`` backend: vipcore's dispatch hooks over our own VRRPv3.

One :class:`~vipcore_native_vrrp.driver.RouterDriver` per (group, family),
priorities straight from :attr:`Membership.priority` (the core's rendezvous
placement), VIPs only through :class:`vipcore.net.addresses.AddressHolder`.

**Family sync.** Both routers of a group get the same priority, so with
preemption they elect the same node. To keep them together when timing
differs (one family fails over first, or preemption is off), a router that
becomes master for any reason other than a sync nudges its sibling: a
sibling in BACKUP (not released) whose current master it outranks (lower
priority, or none heard) takes over at once. A sibling that hears a better
master stays put, so the nudge never fights the election — and a backup
promoted only because its process stalled does not drag the other family along.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vipcore.net.addresses import AddressHolder
from vipcore.backend import BackendContext, hookimpl
from vipcore.core.errors import AddressError, AllocationError, VipcoreError
from vipcore.core.model import Family, IPAddress, Membership, MetricSample, State, StateChange
from vipcore_native_vrrp import BACKEND_NAME
from vipcore_native_vrrp.config import NativeVrrpConfig
from vipcore_native_vrrp.driver import RouterDriver
from vipcore_native_vrrp.protocol import Router, RouterConfig, StateChanged
from vipcore_native_vrrp.protocol.machine import RECEIVE_REASONS
from vipcore_native_vrrp.protocol.packet import DECODE_REASONS, MULTICAST
from vipcore_native_vrrp.transport import Link

log = logging.getLogger(__name__)

SYNC_PREFIX = "sync"
#: Extra wait beyond the router's own hand-over bound before forcing a stop.
STOP_MARGIN = 1.0


class NativeVrrpBackend:
    """vipcore backend ``native_vrrp``."""

    name = BACKEND_NAME
    #: Seams for tests without root: how the holder and the sockets are made.
    holder_factory: Callable[[], AddressHolder] = AddressHolder
    link_factory: Callable[..., Link] = Link

    def __init__(self) -> None:
        self.context: BackendContext | None = None
        self.settings = NativeVrrpConfig()
        self.holder: AddressHolder | None = None
        self.links: dict[tuple[str, Family], Link] = {}
        self.routers: dict[str, dict[Family, RouterDriver]] = {}
        self.memberships: dict[str, Membership] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> None:
        self.settings = NativeVrrpConfig.from_mapping(context.config)
        self.context = context
        self._loop = asyncio.get_running_loop()
        self.holder = self.holder_factory()
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

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        names = list(self.routers)
        await asyncio.gather(*(self._stop_group(name, graceful) for name in names))
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
                priority=config.priority, vips=config.vips, sources=config.sources, destinations=config.destinations
            )

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        await self._stop_group(membership.name, graceful)

    @hookimpl
    async def vipcore_group_release(self, group: str, reason: str) -> None:
        for driver in self.routers.get(group, {}).values():
            driver.release(reason)

    @hookimpl
    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        for driver in self.routers.get(group, {}).values():
            driver.takeover(reason)

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
        return samples

    # -- internals -------------------------------------------------------------------

    def _require_started(self) -> tuple[BackendContext, AddressHolder, asyncio.AbstractEventLoop]:
        if self.context is None or self.holder is None or self._loop is None:
            raise VipcoreError("native_vrrp: vipcore_backend_start was not called")
        return self.context, self.holder, self._loop

    async def _router_config(self, membership: Membership, family: Family) -> RouterConfig:
        _, holder, _ = self._require_started()
        group = membership.group
        if group.vrid is None:
            raise AllocationError(f"group {group.short_name} has no VRID; native_vrrp needs one")
        info = await holder.interface(group.interface)
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
            schedule=self.settings.garp, report=self._report, loop=loop,
        )
        self.routers[membership.name][family] = driver
        driver.start()

    def _report(self, driver: RouterDriver, change: StateChanged, failover: float | None) -> None:
        context, _, _ = self._require_started()
        context.report(StateChange(
            group=driver.group, family=driver.family, old=change.old, new=change.new, reason=change.reason,
            at=context.clock(), node=context.node, backend=self.name, vrid=driver.vrid, failover_seconds=failover,
        ))
        if change.new is State.MASTER and not change.reason.startswith(f"takeover: {SYNC_PREFIX}"):
            for sibling in self.routers.get(driver.group, {}).values():
                router = sibling.router
                # Only pull a sibling whose master we outrank: a sibling that
                # hears a better master stays put (no flap under load).
                if sibling is not driver and router.state is State.BACKUP and not router.released \
                        and router.outranks_master():
                    sibling.takeover(f"{SYNC_PREFIX} with IPv{int(driver.family)} (became master)")

    async def _stop_group(self, name: str, graceful: bool) -> None:
        drivers = self.routers.pop(name, {})
        self.memberships.pop(name, None)
        await asyncio.gather(*(self._stop_router(d, graceful) for d in drivers.values()))

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
