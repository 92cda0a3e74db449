"""The backend glue, without root: real drivers and routers, fake sockets and holder.

Each "node" is a :class:`NativeVrrpBackend` whose links share an in-memory
bus and whose address holder records what it would put on the interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from vipcore.net.addresses import AnnounceSchedule, InterfaceInfo
from vipcore.backend import BackendContext
from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, IPAddress, Membership, Node, State, StateChange, VipGroup
from vipcore.core.resolve import membership
from vipcore_native_vrrp.backend import NativeVrrpBackend
from vipcore_native_vrrp.config import NativeVrrpConfig
from vipcore_native_vrrp.transport import Handler, LinkCounters

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
NODE_NUMBER = {"node-a": 11, "node-b": 12, "node-c": 13}
NODES = [Node(n, (V4(f"198.51.100.{i}"), V6(f"2001:db8:100::{i}"))) for n, i in NODE_NUMBER.items()]
VIP4, VIP6 = V4("198.51.100.100"), V6("2001:db8:100::100")


def group(vips4: Iterable[V4] = (VIP4,), vips6: Iterable[V6] = (VIP6,)) -> VipGroup:
    return VipGroup(name="g" * 64 + "-eth0", interface="eth0", nodes=tuple(NODE_NUMBER), vrid=42,
                    vips_v4=tuple(vips4), vips_v6=tuple(vips6))


class Bus:
    """An L2 segment: a message sent by one link reaches every other link."""

    def __init__(self) -> None:
        self.links: list[FakeLink] = []
        #: (node, family) pairs whose sends are lost (a broken link).
        self.mute: set[tuple[str, Family]] = set()


class FakeLink:
    def __init__(self, bus: Bus, node: str, interface: str, family: Family, *, multicast: bool = True) -> None:
        self.bus, self.node, self.interface, self.family = bus, node, interface, family
        self.counters = LinkCounters()
        self.handlers: dict[int, Handler] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        bus.links.append(self)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def close(self) -> None:
        if self in self.bus.links:
            self.bus.links.remove(self)

    def send(self, data: bytes, src: IPAddress, dst: IPAddress) -> bool:
        self.counters.sent += 1
        if (self.node, self.family) in self.bus.mute:
            return True
        for other in self.bus.links:
            if other is not self and other.family is self.family and other.loop is not None:
                other.loop.call_soon(other.deliver, data, src, dst)
        return True

    def deliver(self, data: bytes, src: IPAddress, dst: IPAddress) -> None:
        self.counters.received += 1
        handler = self.handlers.get(data[1])
        if handler is None:
            self.counters.dropped["unknown_vrid"] += 1
        else:
            handler(data, src, dst, 255)


class FakeHolder:
    def __init__(self, node: str, preexisting: Iterable[IPAddress] = ()) -> None:
        self.node = node
        self.held: set[IPAddress] = set(preexisting)
        self.announced: list[IPAddress] = []
        self.closed = False

    async def interface(self, name: str) -> InterfaceInfo:
        i = NODE_NUMBER[self.node]
        return InterfaceInfo(
            name=name, index=2, mac=bytes(6), up=True,
            ipv4=(ipaddress.IPv4Interface(f"198.51.100.{i}/24"),),
            ipv6=(ipaddress.IPv6Interface(f"fe80::{i}/64"), ipaddress.IPv6Interface(f"2001:db8:100::{i}/64")),
        )

    async def interfaces(self) -> tuple[str, ...]:
        return ("lo", "eth0")

    async def add(self, interface: str, vips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
        new = tuple(v for v in vips if v not in self.held)
        self.held.update(new)
        await asyncio.sleep(0.001)  # netlink takes a moment
        return new

    async def remove(self, interface: str, vips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
        gone = tuple(v for v in vips if v in self.held)
        self.held.difference_update(gone)
        return gone

    async def remove_stale(self, interface: str, is_managed: Callable[[IPAddress], bool],
                           keep: Iterable[IPAddress] = ()) -> tuple[IPAddress, ...]:
        if interface != "eth0":
            return ()
        return await self.remove(interface, [a for a in self.held if is_managed(a)])

    async def announce(self, interface: str, vips: Iterable[IPAddress]) -> None:
        self.announced.extend(vips)

    def start_announcing(self, interface: str, vips: Iterable[IPAddress], schedule: AnnounceSchedule) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(asyncio.sleep(3600))

    async def close(self) -> None:
        self.closed = True


class Cluster:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.bus = Bus()
        self.settings = {"advert_interval": 0.05, "liveness": False, **(settings or {})}
        self.backends: dict[str, NativeVrrpBackend] = {}
        self.holders: dict[str, FakeHolder] = {}
        self.reports: list[StateChange] = []

    async def start(self, node: str, preexisting: Iterable[IPAddress] = ()) -> NativeVrrpBackend:
        backend = NativeVrrpBackend()
        holder = FakeHolder(node, preexisting)
        backend.holder_factory = lambda: holder  # type: ignore[assignment,method-assign,return-value]
        bus = self.bus
        backend.link_factory = lambda interface, family, multicast=True: FakeLink(  # type: ignore[assignment,method-assign]
            bus, node, interface, family, multicast=multicast)
        context = BackendContext(node=node, config=self.settings, report=self.reports.append,
                                 is_managed=lambda a: a in (VIP4, VIP6), backend_name="native_vrrp")
        await backend.vipcore_backend_start(context)
        self.backends[node], self.holders[node] = backend, holder
        return backend

    async def join(self, node: str, g: VipGroup | None = None) -> None:
        await self.backends[node].vipcore_group_join(membership(g or group(), node, NODES))

    def holding(self, vip: IPAddress) -> list[str]:
        return sorted(n for n, h in self.holders.items() if vip in h.held and not h.closed)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def best() -> str:
    return membership(group(), "node-a", NODES).preferred_holder


def test_three_nodes_elect_the_placed_holder_for_both_families() -> None:
    async def scenario() -> None:
        c = Cluster()
        for node in NODE_NUMBER:
            await c.start(node)
            await c.join(node)
        await asyncio.sleep(0.5)
        assert c.holding(VIP4) == [best()] and c.holding(VIP6) == [best()]
        masters = [r for r in c.reports if r.new is State.MASTER and r.node == best()]
        assert {r.family for r in masters} == {Family.IPV4, Family.IPV6}
        assert all(r.backend == "native_vrrp" and r.vrid == 42 for r in c.reports)
        assert VIP4 in c.holders[best()].announced
        for b in c.backends.values():
            await b.vipcore_backend_stop(graceful=False)
        assert c.holding(VIP4) == [] and c.holding(VIP6) == []

    run(scenario)


def test_graceful_stop_never_leaves_the_vips_unheld() -> None:
    async def scenario() -> None:
        c = Cluster()
        for node in NODE_NUMBER:
            await c.start(node)
            await c.join(node)
        await asyncio.sleep(0.5)
        holder = best()
        gaps = 0
        watching = True

        async def watch() -> None:
            nonlocal gaps
            while watching:
                gaps += not c.holding(VIP4) or not c.holding(VIP6)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await c.backends[holder].vipcore_backend_stop(graceful=True)
        watching = False
        await watcher
        assert gaps == 0
        assert holder not in c.holding(VIP4) and holder not in c.holding(VIP6)
        new = c.holding(VIP4)
        assert len(new) == 1 and c.holding(VIP6) == new
        stopped = [r for r in c.reports if r.node == holder and r.new is State.STOPPED]
        assert stopped and all("handed over" in r.reason for r in stopped)
        assert c.holders[holder].closed

    run(scenario)


def test_family_sync_keeps_ipv4_and_ipv6_together() -> None:
    async def scenario() -> None:
        # Without preemption nothing else would pull IPv6 over after IPv4 moved.
        c = Cluster({"preempt": False})
        first = next(n for n in NODE_NUMBER if n != best())
        await c.start(first)
        await c.join(first)
        await asyncio.sleep(0.5)
        assert c.holding(VIP4) == [first] and c.holding(VIP6) == [first]
        await c.start(best())
        await c.join(best())
        await asyncio.sleep(0.5)
        assert c.holding(VIP4) == [first]  # no preemption
        c.bus.mute.add((first, Family.IPV4))  # first's IPv4 adverts stop arriving
        await asyncio.sleep(0.6)
        # best() took IPv4 (master down; first yields to its higher-priority
        # adverts) and pulled IPv6 along (sync): first let IPv6 go too.
        assert c.holding(VIP4) == [best()]
        assert c.holding(VIP6) == [best()]
        sync = [r for r in c.reports if r.node == best() and r.family is Family.IPV6 and r.new is State.MASTER]
        assert sync and sync[-1].reason.startswith("takeover: sync with IPv4")

    run(scenario)


def test_vip_update_moves_nothing_and_release_hands_over() -> None:
    async def scenario() -> None:
        c = Cluster()
        for node in NODE_NUMBER:
            await c.start(node)
            await c.join(node)
        await asyncio.sleep(0.5)
        holder = best()
        before = len(c.reports)
        extra = V4("198.51.100.101")
        for node, b in c.backends.items():
            old = b.memberships[group().name]
            await b.vipcore_group_update(old, membership(group((VIP4, extra)), node, NODES))
        await asyncio.sleep(0.5)
        assert c.holding(extra) == [holder] and len(c.reports) == before
        await c.backends[holder].vipcore_group_release(group().name, "drain")
        await asyncio.sleep(0.5)
        assert holder not in c.holding(VIP4) and len(c.holding(VIP4)) == 1
        await c.backends[holder].vipcore_group_takeover(group().name, "undrain")
        await asyncio.sleep(0.5)
        assert c.holding(VIP4) == [holder] and c.holding(VIP6) == [holder]

    run(scenario)


def test_stale_vips_are_removed_at_start_and_metrics_count() -> None:
    async def scenario() -> None:
        c = Cluster()
        stale = await c.start("node-a", preexisting=(VIP4, V4("198.51.100.7")))
        assert c.holders["node-a"].held == {V4("198.51.100.7")}  # only managed ones go
        await c.start("node-b")
        await c.join("node-a")
        await c.join("node-b")
        await asyncio.sleep(0.5)
        samples = stale.vipcore_collect_metrics()
        by_name: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {(s.name, s.labels): s.value for s in samples}
        sent = [v for (n, _), v in by_name.items() if n == "vipcore_vrrp_packets_sent"]
        assert sent and sum(sent) > 0
        reasons = {dict(labels)["reason"] for (n, labels) in by_name if n == "vipcore_vrrp_packets_dropped"}
        assert {"ttl", "checksum", "addr_mismatch", "source", "unknown_vrid"} <= reasons
        assert any(n == "vipcore_vrrp_master" for n, _ in by_name)

    run(scenario)


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"advert_interval": 0.005}, "advert_interval"),
        ({"advert_interval": 0.015}, "advert_interval"),
        ({"advert_interval": "fast"}, "advert_interval"),
        ({"preempt": "yes"}, "preempt"),
        ({"unicast": 1}, "unicast"),
        ({"check_source": None}, "check_source"),
        ({"resign_timeout": -1}, "resign_timeout"),
    ],
)
def test_bad_config_names_the_key(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        NativeVrrpConfig.from_mapping(section)
    assert field in str(info.value) and "native_vrrp" in str(info.value)


def test_bad_garp_and_unknown_keys_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="garp"):
        NativeVrrpConfig.from_mapping({"garp": {"count": "many"}})
    with pytest.raises(ConfigError, match="advert_intreval"):
        NativeVrrpConfig.from_mapping({"advert_intreval": 1})


def test_config_defaults_and_values() -> None:
    default = NativeVrrpConfig.from_mapping({})
    assert default.advert_interval == 0.1 and default.preempt and not default.unicast and default.check_source
    cfg = NativeVrrpConfig.from_mapping({"advert_interval": 1, "garp": {"count": 2, "refresh": 30}})
    assert cfg.interval_cs == 100 and cfg.garp.count == 2 and cfg.garp.refresh == 30 and cfg.garp.interval == 0.2


def test_plugin_registers_the_backend() -> None:
    from vipcore.backend import BackendRegistry
    from vipcore_native_vrrp.plugin import vipcore_register_backends

    registry = BackendRegistry()
    vipcore_register_backends(registry)
    assert registry.backends["native_vrrp"].factory is NativeVrrpBackend


def test_membership_priority_is_used_unchanged() -> None:
    async def scenario() -> None:
        c = Cluster()
        backend = await c.start("node-c")
        m: Membership = membership(group(), "node-c", NODES)
        await backend.vipcore_group_join(m)
        for driver in backend.routers[m.name].values():
            assert driver.router.config.priority == m.priority
            assert driver.router.config.sources == frozenset(
                a for p in m.peers() for a in p.addresses if a.version == driver.family)
        await backend.vipcore_backend_stop(graceful=False)

    run(scenario)


class GatedHolder(FakeHolder):
    """A holder whose add() and announce() wait until the test opens a gate."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.add_gate = asyncio.Event()
        self.announce_gate = asyncio.Event()

    async def add(self, interface: str, vips: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
        await self.add_gate.wait()
        return await super().add(interface, vips)

    async def announce(self, interface: str, vips: Iterable[IPAddress]) -> None:
        await self.announce_gate.wait()
        await super().announce(interface, vips)


def _driver(holder: FakeHolder, bus: Bus) -> Any:
    from vipcore_native_vrrp.driver import RouterDriver
    from vipcore_native_vrrp.protocol import Router, RouterConfig

    config = RouterConfig(vrid=42, family=Family.IPV4, primary=V4("198.51.100.11"), vips=(VIP4,), priority=100,
                          interval_cs=100, destinations=(V4("224.0.0.18"),), sources=None)
    link = FakeLink(bus, "node-a", "eth0", Family.IPV4)
    link.start(asyncio.get_running_loop())
    driver = RouterDriver(group="g", interface="eth0", router=Router(config), link=link, holder=holder,  # type: ignore[arg-type]
                          schedule=AnnounceSchedule(count=1), report=lambda *a: None, loop=asyncio.get_running_loop())
    driver.start()  # BACKUP, waiting 3.6 s for a master
    return driver


def _higher_advert() -> tuple[bytes, IPAddress, IPAddress]:
    from vipcore_native_vrrp.protocol import Advertisement, encode

    src, dst = V4("198.51.100.12"), V4("224.0.0.18")
    return encode(Advertisement(42, 200, 100, (VIP4,)), src, dst), src, dst


def test_queued_work_the_router_no_longer_wants_is_skipped() -> None:
    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        driver = _driver(holder, bus)
        driver.takeover("test")  # MASTER: [AddVips, Announce, Send, StateChanged] queued behind add()
        assert driver.router.state is State.MASTER
        await asyncio.sleep(0.01)
        driver._on_packet(*_higher_advert(), 255)  # preempted before the address work ran
        assert driver.router.state is State.BACKUP
        holder.add_gate.set()
        holder.announce_gate.set()
        await driver.settled()
        await asyncio.sleep(1.1)  # past the yield linger
        assert holder.announced == [] and driver.link.counters.sent == 0  # neither announced nor advertised
        assert VIP4 not in holder.held
        await driver.close()

    run(scenario)


def test_an_advert_after_our_announcement_is_sent_even_after_losing() -> None:
    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        driver = _driver(holder, bus)
        holder.add_gate.set()
        driver.takeover("test")
        await asyncio.sleep(0.01)  # add() done, announce() waiting
        driver._on_packet(*_higher_advert(), 255)  # preempted while announcing
        holder.announce_gate.set()
        await driver.settled()
        # We did announce: the advert goes out so the winner announces again.
        assert holder.announced == [VIP4] and driver.link.counters.sent == 1
        await driver.close()

    run(scenario)


def test_update_adds_and_removes_a_family_and_changes_vrid() -> None:
    async def scenario() -> None:
        c = Cluster()
        v4_only = group(vips6=())
        for node in NODE_NUMBER:
            await c.start(node)
            await c.join(node, v4_only)
        await asyncio.sleep(0.5)
        holder = best()
        assert c.holding(VIP4) == [holder] and c.holding(VIP6) == []
        for node, b in c.backends.items():  # IPv6 added to the group
            await b.vipcore_group_update(b.memberships[v4_only.name], membership(group(), node, NODES))
        await asyncio.sleep(0.5)
        assert c.holding(VIP6) == [holder] and c.holding(VIP4) == [holder]
        for node, b in c.backends.items():  # IPv4 removed: its VIPs go, IPv6 stays put
            await b.vipcore_group_update(b.memberships[v4_only.name], membership(group(vips4=()), node, NODES))
        await asyncio.sleep(0.3)
        assert c.holding(VIP4) == [] and c.holding(VIP6) == [holder]
        renumbered = VipGroup(name=group().name, interface="eth0", nodes=tuple(NODE_NUMBER), vrid=43,
                              vips_v6=(VIP6,))
        for node, b in c.backends.items():  # a new VRID re-creates the router (graceful)
            await b.vipcore_group_update(b.memberships[v4_only.name], membership(renumbered, node, NODES))
        await asyncio.sleep(0.5)
        assert c.holding(VIP6) == [holder]
        assert all(d.vrid == 43 for b in c.backends.values() for d in b.routers[renumbered.name].values())

    run(scenario)
