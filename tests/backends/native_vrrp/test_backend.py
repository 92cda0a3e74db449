"""The backend glue, without root: real drivers and routers, fake sockets and holder.

Each "node" is a :class:`NativeVrrpBackend` whose links share an in-memory
bus and whose address holder records what it would put on the interface.
"""

from __future__ import annotations

import asyncio
import logging
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from vipcore.net.addresses import AnnounceSchedule, InterfaceInfo, LinkEvent
from vipcore.backend import BackendContext
from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, IPAddress, Membership, Node, State, StateChange, TransitionCause, VipGroup
from vipcore.core.resolve import membership
from vipcore_native_vrrp.backend import NativeVrrpBackend
from vipcore_native_vrrp.config import NativeVrrpConfig
from vipcore_native_vrrp.protocol import Send
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
        self.holders: dict[str, FakeHolder] = {}


class FakeLink:
    def __init__(self, bus: Bus, node: str, interface: str, family: Family, *, multicast: bool = True) -> None:
        self.bus, self.node, self.interface, self.family = bus, node, interface, family
        self.counters = LinkCounters()
        self.handlers: dict[int, Handler] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        holder = bus.holders.get(node)
        self.ifindex = holder.index if holder is not None else 2
        bus.links.append(self)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def close(self) -> None:
        self.closed = True
        if self in self.bus.links:
            self.bus.links.remove(self)

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        if not self.send(send.data, send.src, send.dst):
            failed()

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
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
        self.index = 2
        self.up = True
        self.ipv6_prefix = True
        self.events: asyncio.Queue[LinkEvent] = asyncio.Queue()
        self.bus_holders: list[FakeHolder] = []

    async def interface(self, name: str) -> InterfaceInfo:
        i = NODE_NUMBER[self.node]
        ipv6 = [ipaddress.IPv6Interface(f"fe80::{i}/64")]
        if self.ipv6_prefix:
            ipv6.append(ipaddress.IPv6Interface(f"2001:db8:100::{i}/64"))
        return InterfaceInfo(
            name=name, index=self.index, mac=bytes(6), up=self.up,
            ipv4=(ipaddress.IPv4Interface(f"198.51.100.{i}/24"),), ipv6=tuple(ipv6),
        )

    async def responders(self, interface: str, vips: Iterable[IPAddress]) -> dict[IPAddress, frozenset[bytes]]:
        """Every node of the bus holding a VIP answers with its own MAC."""
        return {vip: frozenset(bytes([NODE_NUMBER[h.node]]) * 6 for h in self.bus_holders
                               if vip in h.held and not h.closed) for vip in vips}

    async def link_events(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[LinkEvent]:
        if subscribed is not None:
            subscribed()
        while True:
            yield await self.events.get()

    def link(self, *, present: bool = True, up: bool = True, carrier: bool = True, index: int | None = None,
             prefix: bool = True) -> None:
        """The interface changes as the kernel would report it."""
        self.index = index if index is not None else self.index
        self.up = present and up and carrier
        self.ipv6_prefix = prefix
        self.events.put_nowait(LinkEvent("eth0", self.index, present=present, admin_up=up, carrier=up and carrier))

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
        wanted = tuple(vips)

        async def rounds() -> None:  # the schedule, as the real holder runs it
            await asyncio.sleep(schedule.initial_delay)
            for round_ in range(schedule.count):
                if round_:
                    await asyncio.sleep(schedule.interval)
                self.announced.extend(wanted)
            await asyncio.sleep(3600)

        return asyncio.get_running_loop().create_task(rounds())

    async def close(self) -> None:
        self.closed = True

    def send_queued(self) -> bool:
        return False  # nothing queued to send early: every change is carried out when awaited


class Cluster:
    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.bus = Bus()
        self.settings = {"advert_interval": 0.05, "liveness": False, **(settings or {})}
        self.backends: dict[str, NativeVrrpBackend] = {}
        self.holders: dict[str, FakeHolder] = {}
        self.reports: list[StateChange] = []

    async def start_all(self) -> None:
        """Every node started and joined to the group, one after the other."""
        for node in NODE_NUMBER:
            await self.start(node)
            await self.join(node)

    async def start(self, node: str, preexisting: Iterable[IPAddress] = ()) -> NativeVrrpBackend:
        backend = NativeVrrpBackend()
        holder = FakeHolder(node, preexisting)
        self.bus.holders[node] = holder
        for other in self.bus.holders.values():
            other.bus_holders = list(self.bus.holders.values())
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
        await c.start_all()
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
        await c.start_all()
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
        assert sync and sync[-1].cause is TransitionCause.SYNC and "sync with IPv4" in sync[-1].reason

    run(scenario)


def test_vip_update_moves_nothing_and_release_hands_over() -> None:
    async def scenario() -> None:
        c = Cluster()
        await c.start_all()
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
    assert default.preempt and not default.unicast and default.check_source
    # Liveness (on by default) detects a dead node in tens of ms, so adverts keep RFC 5798's default of 1 s.
    assert default.liveness.enabled and default.advert_interval == 1.0
    assert NativeVrrpConfig().advert_interval == 1.0
    # Without liveness, or with keepalived members (no session with them), VRRP's timers detect failures:
    # 0.1 s keeps that at about 0.3 s.
    assert NativeVrrpConfig.from_mapping({"liveness": False}).advert_interval == 0.1
    assert NativeVrrpConfig.from_mapping({"keepalived_peers": ["node-k"]}).advert_interval == 0.1
    # An explicit value always wins.
    assert NativeVrrpConfig.from_mapping({"liveness": False, "advert_interval": 2}).advert_interval == 2.0
    assert NativeVrrpConfig.from_mapping({"advert_interval": 0.1}).advert_interval == 0.1
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


def _driver(holder: FakeHolder, bus: Bus, report: Callable[..., None] = lambda *a: None) -> Any:
    from vipcore_native_vrrp.driver import RouterDriver
    from vipcore_native_vrrp.protocol import Router, RouterConfig

    config = RouterConfig(vrid=42, family=Family.IPV4, primary=V4("198.51.100.11"), vips=(VIP4,), priority=100,
                          interval_cs=100, destinations=(V4("224.0.0.18"),), sources=None)
    link = FakeLink(bus, "node-a", "eth0", Family.IPV4)
    link.start(asyncio.get_running_loop())
    driver = RouterDriver(group="g", interface="eth0", router=Router(config), link=link, holder=holder,  # type: ignore[arg-type]
                          schedule=AnnounceSchedule(count=1), report=report, loop=asyncio.get_running_loop())
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


# -- link state (issue 12: a node that lost its interface) ------------------------------------


def states(c: Cluster, node: str, family: Family) -> list[tuple[State, TransitionCause | None, str]]:
    return [(r.new, r.cause, r.reason) for r in c.reports if r.node == node and r.family is family]


def test_interface_deleted_and_recreated_faults_reopens_and_rejoins() -> None:
    async def scenario() -> None:
        c = Cluster()
        await c.start_all()
        await asyncio.sleep(0.5)
        top = best()
        assert c.holding(VIP4) == [top] and c.holding(VIP6) == [top]
        backend, holder = c.backends[top], c.holders[top]
        old_links = dict(backend.links)
        c.bus.mute |= {(top, Family.IPV4), (top, Family.IPV6)}  # gone: nothing gets out
        holder.link(present=False)
        await asyncio.sleep(0.3)
        # Honest meanwhile: FAULT with a reason, VIPs dropped, not master in metrics.
        for family in Family:
            new, cause, reason = states(c, top, family)[-1]
            assert new is State.FAULT and cause is TransitionCause.LINK_DOWN and "deleted" in reason
        assert top not in c.holding(VIP4) and top not in c.holding(VIP6)
        masters = [s for s in backend.vipcore_collect_metrics() if s.name == "vipcore_vrrp_master"]
        assert masters and all(s.value == 0 for s in masters)
        assert all(link.closed for link in old_links.values())
        second = [n for n in membership(group(), top, NODES).members if n.name != top][0].name
        assert c.holding(VIP4) == [second] and c.holding(VIP6) == [second]
        # Re-created with a new ifindex: fresh sockets, rejoin as backup, preempt back.
        c.bus.mute.clear()
        holder.link(present=True, up=False, index=7)
        holder.link(present=True, up=True, index=7)
        await asyncio.sleep(0.6)
        assert all(link.ifindex == 7 and not link.closed for link in backend.links.values())
        assert [s[0] for s in states(c, top, Family.IPV4)][-3:] == [State.FAULT, State.BACKUP, State.MASTER]
        assert c.holding(VIP4) == [top] and c.holding(VIP6) == [top]

    run(scenario)


def test_carrier_loss_resigns_at_once_and_ipv6_waits_for_its_prefix() -> None:
    async def scenario() -> None:
        c = Cluster({"advert_interval": 0.2})
        await c.start_all()
        await asyncio.sleep(1.2)
        top = best()
        assert c.holding(VIP4) == [top]
        holder = c.holders[top]
        lost = asyncio.get_running_loop().time()
        holder.link(carrier=False)  # carrier gone; our priority 0 still reached the others (fake bus)
        second = [n for n in membership(group(), top, NODES).members if n.name != top][0].name
        while c.holding(VIP4) != [second]:
            await asyncio.sleep(0.005)
        # Skew_Time after our priority 0, far below Master_Down_Interval (0.6 s here).
        assert asyncio.get_running_loop().time() - lost < 0.3
        assert "carrier" in states(c, top, Family.IPV4)[-1][2]
        # Back, but the kernel dropped the node's IPv6 prefix with the link.
        holder.link(up=True, prefix=False)
        await asyncio.sleep(0.2)
        new, cause, reason = states(c, top, Family.IPV6)[-1]
        assert new is State.FAULT and "no global IPv6 address" in reason
        assert states(c, top, Family.IPV4)[-1][0] in (State.BACKUP, State.MASTER)
        gauge = {s.labels: s.value for s in c.backends[top].vipcore_collect_metrics()
                 if s.name == "vipcore_vrrp_ipv6_prefix_missing"}
        assert gauge == {(("interface", "eth0"),): 1.0}
        holder.ipv6_prefix = True  # the network configuration puts it back
        await asyncio.sleep(2.5)
        assert states(c, top, Family.IPV6)[-1][0] is State.MASTER
        assert c.holding(VIP6) == [top]
        gauge = {s.labels: s.value for s in c.backends[top].vipcore_collect_metrics()
                 if s.name == "vipcore_vrrp_ipv6_prefix_missing"}
        assert gauge == {(("interface", "eth0"),): 0.0}

    run(scenario)


# -- spoofing options and authenticated mode ---------------------------------------------------


def test_priority_check_options_and_keepalived_peers() -> None:
    async def scenario() -> None:
        c = Cluster({"keepalived_peers": ["node-c", "198.51.100.99"]})
        backend = await c.start("node-a")
        m = membership(group(), "node-a", NODES)
        await backend.vipcore_group_join(m)
        v4 = backend.routers[m.name][Family.IPV4].router.config
        peers = {p.name: p.priority for p in m.members}
        assert v4.peer_priorities == {V4("198.51.100.12"): peers["node-b"], V4("198.51.100.13"): peers["node-c"]}
        assert v4.relaxed_sources == {V4("198.51.100.13"), V4("198.51.100.99")}
        assert v4.identity == {V4("198.51.100.11")}
        v6 = backend.routers[m.name][Family.IPV6].router.config
        assert v6.relax_link_local and v6.identity == {V6("2001:db8:100::11")}
        off = NativeVrrpConfig.from_mapping({"check_priority": False})
        assert not off.check_priority

    run(scenario)


def test_auth_key_file_is_validated(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    good = tmp_path / "key"
    good.write_text("x" * 32 + "\n")
    with pytest.raises(ConfigError, match="auth_key_file.*at least 16"):
        NativeVrrpConfig.from_mapping({"auth_key_file": str(short)})
    with pytest.raises(ConfigError, match="auth_key_file.*cannot read"):
        NativeVrrpConfig.from_mapping({"auth_key_file": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match="keepalived_peers"):
        NativeVrrpConfig.from_mapping({"auth_key_file": str(good), "keepalived_peers": ["node-c"]})
    with pytest.raises(ConfigError, match="keepalived_peers"):
        NativeVrrpConfig.from_mapping({"keepalived_peers": "node-c"})
    assert NativeVrrpConfig.from_mapping({"auth_key_file": str(good)}).auth_key == b"x" * 32


def test_authenticated_nodes_elect_and_ignore_an_unauthenticated_node(tmp_path: Path) -> None:
    async def scenario() -> None:
        key = tmp_path / "key"
        key.write_text("s3cret-s3cret-s3cret-s3cret")
        c = Cluster({"auth_key_file": str(key)})
        top = best()
        others = [n for n in NODE_NUMBER if n != top]
        for node in others:
            await c.start(node)
            await c.join(node)
        await asyncio.sleep(0.5)
        # The best-placed node without the key: its adverts are not believed.
        plain = Cluster()
        plain.bus = c.bus
        plain_backend = await plain.start(top)
        c.holders[top] = plain.holders[top]
        await plain_backend.vipcore_group_join(membership(group(), top, NODES))
        await asyncio.sleep(0.5)
        holders = c.holding(VIP4)
        assert top in holders and len(holders) == 2  # it cannot displace the authenticated master
        dropped = sum(s.value for n in others for s in c.backends[n].vipcore_collect_metrics()
                      if s.name == "vipcore_vrrp_packets_dropped" and dict(s.labels)["reason"] == "auth")
        assert dropped > 0

    run(scenario)


# -- split-brain detector ----------------------------------------------------------------------


def test_members_count_who_answers_for_each_vip_after_transitions(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        c = Cluster()
        await c.start_all()
        await asyncio.sleep(1.6)  # elected, then probed after the transitions
        top = best()

        def responders(node: str) -> dict[str, float]:
            return {dict(s.labels)["vip"]: s.value for s in c.backends[node].vipcore_collect_metrics()
                    if s.name == "vipcore_vip_responders"}

        healthy = {str(VIP4): 1.0, str(VIP6): 1.0}
        assert all(responders(n) == healthy for n in NODE_NUMBER), [responders(n) for n in NODE_NUMBER]
        # The holder stalls (its adverts stop arriving) but keeps its VIPs: two holders.
        c.bus.mute |= {(top, Family.IPV4), (top, Family.IPV6)}
        await asyncio.sleep(1.6)
        others = [n for n in NODE_NUMBER if n != top]
        assert any(responders(n) == {str(VIP4): 2.0, str(VIP6): 2.0} for n in others), [responders(n) for n in others]
        assert "answered by 2 MAC addresses" in caplog.text and "split brain" in caplog.text

    run(scenario)


def test_undrain_takes_back_only_the_groups_the_node_ranks_first_for() -> None:
    """The agent's takeover after a drain rejoins the election: a node that does not rank first stays backup
    (before, it became master of the group at once and preemption took it back: VIPs held twice)."""
    async def scenario() -> None:
        c = Cluster()
        await c.start_all()
        await asyncio.sleep(0.5)
        holder = best()
        other = next(n for n in NODE_NUMBER if n != holder)
        for node in (holder, other):
            await c.backends[node].vipcore_group_release(group().name, "node drained")
        await asyncio.sleep(0.5)
        (interim,) = c.holding(VIP4)
        assert interim not in (holder, other)
        c.reports.clear()
        await c.backends[other].vipcore_group_takeover(group().name, "node no longer drained")
        await asyncio.sleep(0.3)
        assert c.holding(VIP4) == [interim] and not [r for r in c.reports if r.node == other]
        gaps = 0
        watching = True

        async def watch() -> None:
            nonlocal gaps
            while watching:
                gaps += not c.holding(VIP4) or not c.holding(VIP6)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        await c.backends[holder].vipcore_group_takeover(group().name, "node no longer drained")
        await asyncio.sleep(0.3)
        watching = False
        await watcher
        assert gaps == 0 and c.holding(VIP4) == [holder] and c.holding(VIP6) == [holder]
        for b in c.backends.values():
            await b.vipcore_backend_stop(graceful=False)

    run(scenario)


def test_a_releasing_master_stops_announcing() -> None:
    """A drained master still holds the VIPs while it hands over, but its gratuitous ARPs would keep clients
    on it (their neighbour entry, refreshed, ignores the new master's first announcements for its locktime)."""
    async def scenario() -> None:
        c = Cluster({"garp": {"count": 20, "interval": 0.02}})
        await c.start_all()
        await asyncio.sleep(0.4)
        holder = best()
        for family in Family:
            c.bus.mute.add((holder, family))  # nobody hears its priority 0: it stays RELEASING, holding
        await c.backends[holder].vipcore_group_release(group().name, "node drained")
        await asyncio.sleep(0)
        before = len(c.holders[holder].announced)
        await asyncio.sleep(0.15)
        assert c.holders[holder].announced[before:] == []
        assert VIP4 in c.holders[holder].held  # still holding: make-before-break
        for b in c.backends.values():
            await b.vipcore_backend_stop(graceful=False)

    run(scenario)


def test_a_failover_from_a_dead_master_advertises_before_the_address_work() -> None:
    """The advert that silences the other backups must not wait behind netlink (many groups failing over
    together on a loaded node made the runner-up's rank delay run out first: two masters)."""

    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        driver = _driver(holder, bus)
        driver.peer_lost(0.0, "liveness session to node-b expired (50 ms)")
        await asyncio.sleep(0.05)  # the timer fires; add() is held at its gate
        assert driver.router.state is State.MASTER
        assert driver.link.counters.sent == 1 and VIP4 not in holder.held  # advertised, address work pending
        holder.add_gate.set()
        holder.announce_gate.set()
        await driver.settled()
        assert VIP4 in holder.held and holder.announced == [VIP4]
        await driver.close()

    run(scenario)


def test_the_best_ranked_survivor_takes_over_within_the_peer_lost_call() -> None:
    """A node dying hands its groups to a survivor at once: the best-ranked backups decide in the
    coordinator's one pass over those groups, each advert out before the call returns, instead of one
    loop timer per router run after whatever the loop had queued (a liveness refresh took 6 ms there)."""

    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        driver = _driver(holder, bus)
        driver.peer_lost(0.0, "liveness session to node-b expired (50 ms)")
        assert driver.router.state is State.MASTER  # no await: decided in the call
        assert driver.link.counters.sent == 1 and VIP4 not in holder.held  # advertised; address work queued
        assert driver.busy
        holder.add_gate.set()
        holder.announce_gate.set()
        await driver.settled()
        assert VIP4 in holder.held and holder.announced == [VIP4] and not driver.busy
        # A ranked-after backup still waits its delay (the best survivor's advert stops it).
        other = _driver(GatedHolder("node-a"), Bus())
        other.peer_lost(0.1, "liveness session to node-b expired (50 ms)")
        assert other.router.state is State.BACKUP and other.link.counters.sent == 0
        await driver.close()
        await other.close()

    run(scenario)


class AskedHolder(GatedHolder):
    """Takes a change when asked, as :class:`AddressHolder` does (the awaitable is awaited later)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.asked: list[tuple[IPAddress, ...]] = []

    def add(self, interface: str, vips: Iterable[IPAddress]) -> Awaitable[tuple[IPAddress, ...]]:  # type: ignore[override]
        self.asked.append(tuple(vips))
        return super().add(interface, vips)


def test_a_takeover_asks_for_its_vips_within_the_pass_that_decided_it() -> None:
    """Many routers taking over in one pass: their VIPs join the holder's next batch in that pass, not
    once each router's task has started (a loop pass later, received adverts and timers first)."""

    async def scenario() -> None:
        bus, holder = Bus(), AskedHolder("node-a")
        driver = _driver(holder, bus)
        driver.peer_lost(0.0, "liveness session to node-b expired (50 ms)")
        assert holder.asked == [(VIP4,)]  # no await: asked in the call
        holder.add_gate.set()
        holder.announce_gate.set()
        await driver.settled()
        assert holder.asked == [(VIP4,)] and VIP4 in holder.held and holder.announced == [VIP4]
        await driver.close()

    run(scenario)


def test_an_early_announcement_that_fails_is_one_line_and_the_worker_announces(
        caplog: pytest.LogCaptureFixture) -> None:
    """The end of a takeover's pass announces for the worker (``announce_early``); when the holder cannot
    (the socket failed), that is one error line naming the group, never a traceback, and the worker
    announces as it would have."""
    from vipcore.core.errors import AddressError

    class AnsweredHolder(FakeHolder):
        def add(self, interface: str, vips: Iterable[IPAddress]) -> Any:  # answered in the pass, as send_queued does
            done = asyncio.get_running_loop().create_future()
            new = tuple(v for v in vips if v not in self.held)
            self.held.update(new)
            done.set_result(new)
            return done

        def announce_now(self, interface: str, vips: Iterable[IPAddress]) -> bool:
            raise AddressError(interface, "announcing 198.51.100.10 failed: No buffer space available")

    async def scenario() -> None:
        bus, holder = Bus(), AnsweredHolder("node-a")
        driver = _driver(holder, bus)
        driver._on_packet(*_higher_advert(), 255)  # node-b is master
        await asyncio.sleep(0.02)
        held: list[Callable[[], None]] = []
        driver.peer_lost(0.0, "liveness session down", held=held)
        assert driver.announce_early() is False
        for send in held:
            send()
        assert holder.announced == []
        await driver.settled()
        assert driver.router.state is State.MASTER and holder.announced  # the worker announced
        await driver.close()

    with caplog.at_level(logging.ERROR):
        run(scenario)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "No buffer space" in errors[0].getMessage() and errors[0].exc_info is None


def test_driver_times_the_address_and_announce_phases_of_a_failover() -> None:
    """The machine decides (detect, elect); the driver measures its I/O: VIPs in the kernel, first announcement."""
    from vipcore_native_vrrp.protocol import StateChanged

    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        reports: list[tuple[StateChanged, float | None]] = []
        driver = _driver(holder, bus, report=lambda d, change, failover: reports.append((change, failover)))
        driver._on_packet(*_higher_advert(), 255)  # node-b is master
        await asyncio.sleep(0.02)
        driver.peer_lost(0.0, "liveness session down", silent_for=0.05)  # best-ranked survivor: no delay
        await asyncio.sleep(0.04)  # the kernel is slow to add the VIP...
        holder.add_gate.set()
        await asyncio.sleep(0.03)  # ...and the first gratuitous ARP slow to go out
        holder.announce_gate.set()
        await driver.settled()
        change, failover = reports[-1]
        assert change.new is State.MASTER and change.cause is TransitionCause.PEER_LOST
        phases = change.phases
        assert phases is not None and None not in (phases.detect, phases.elect, phases.address, phases.announce)
        assert phases.detect == pytest.approx(0.05, abs=0.005)  # silent_for: liveness's own measure
        assert 0.0 <= phases.elect < 0.02  # the timer at once (how late the loop ran it)
        # Each phase ends when the worker resumes after its gate opened: a little after the sleep, never before
        # the sum of the sleeps (the split between them moves by how late the worker resumed).
        assert 0.035 <= phases.address < 0.5 and 0.02 <= phases.announce < 0.5  # type: ignore[operator]
        assert phases.address + phases.announce >= 0.065  # type: ignore[operator]
        assert failover is not None and phases.total is not None and phases.total <= failover + 1e-6
        await driver.close()

    run(scenario)


def test_a_takeover_from_a_live_master_stays_make_before_break() -> None:
    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        driver = _driver(holder, bus)
        driver.takeover("test")  # the master is alive: it lets go on our advert, so the VIPs come first
        await asyncio.sleep(0.05)
        assert driver.link.counters.sent == 0 and VIP4 not in holder.held
        holder.add_gate.set()
        holder.announce_gate.set()
        await driver.settled()
        assert driver.link.counters.sent == 1 and VIP4 in holder.held
        await driver.close()

    run(scenario)


def test_the_backend_reports_the_breakdown_of_a_master_down_failover() -> None:
    async def scenario() -> None:
        c = Cluster()
        await c.start_all()
        await asyncio.sleep(0.5)
        holder = best()
        c.bus.mute.add((holder, Family.IPV4))  # its IPv4 adverts stop arriving
        await asyncio.sleep(0.6)
        took = [r for r in c.reports if r.family is Family.IPV4 and r.new is State.MASTER and r.node != holder]
        assert took and took[-1].cause is TransitionCause.MASTER_DOWN
        phases = took[-1].failover_phases
        assert phases is not None and phases.total is not None and took[-1].failover_seconds is not None
        # Master_Down_Interval at 0.05 s adverts: 3 x 0.05 + skew.
        assert 0.15 <= phases.detect < 0.5  # type: ignore[operator]
        assert phases.address is not None and phases.announce is not None
        assert phases.total == pytest.approx(took[-1].failover_seconds, abs=0.05)

    run(scenario)


class CountingHolder(FakeHolder):
    """Counts interface reads; each takes a netlink round trip (a dump of every address on the real one)."""

    def __init__(self, node: str) -> None:
        super().__init__(node)
        self.reads = 0

    async def interface(self, name: str) -> InterfaceInfo:
        self.reads += 1
        await asyncio.sleep(0.002)
        return await super().interface(name)


def test_a_burst_of_joins_reads_the_interface_once_per_round_not_per_router() -> None:
    # 255 dual-stack groups joined at start-up read (and dumped every address of) the interface
    # four times each: 10-20 CPU-s of start-up for one node in the lab, quadratic in the groups.
    async def scenario() -> None:
        cluster = Cluster()
        backend = await cluster.start("node-a")
        holder = CountingHolder("node-a")
        backend.holder = holder  # type: ignore[assignment]
        groups = [VipGroup(name=f"{i:064x}-eth0", interface="eth0", nodes=tuple(NODE_NUMBER), vrid=i,
                           vips_v4=(V4(f"203.0.113.{i}"),), vips_v6=(V6(f"2001:db8:200::{i:x}"),))
                  for i in range(1, 41)]
        await asyncio.gather(*(backend.vipcore_group_join(membership(g, "node-a", NODES)) for g in groups))
        assert len(backend.routers) == 40 and all(len(d) == 2 for d in backend.routers.values())
        assert holder.reads <= 8, f"{holder.reads} interface reads for 40 groups joined at once"
        await backend.vipcore_backend_stop(graceful=False)

    run(scenario)


def test_a_backup_whose_master_changes_says_so_once_per_change() -> None:
    """Node-level liveness watches a backup's master fast; a failover or preemption elsewhere changes that
    master with no transition here. The driver reports the change (what replaced a 0.1 s poll of every
    router's master), not every advert."""
    from vipcore_native_vrrp.protocol import Advertisement, encode

    async def scenario() -> None:
        bus, holder = Bus(), FakeHolder("node-a")
        driver = _driver(holder, bus)
        changes: list[object] = []
        driver.on_master = lambda: changes.append(driver.router.master)
        dst = V4("224.0.0.18")
        for source, priority in (("198.51.100.12", 200), ("198.51.100.12", 200), ("198.51.100.13", 150),
                                 ("198.51.100.13", 150)):
            src = V4(source)
            driver._on_packet(encode(Advertisement(42, priority, 100, (VIP4,)), src, dst), src, dst, 255)
        assert driver.router.state is State.BACKUP
        assert changes == [V4("198.51.100.12"), V4("198.51.100.13")]
        await driver.close()

    asyncio.run(scenario())


def test_routers_resuming_from_one_address_batch_announce_before_any_reports() -> None:
    """A survivor takes many groups at once and their VIPs come back from one netlink batch: every
    router's first gratuitous ARP must go out before the reports (log, status, hooks) of the others,
    or the last group's clients wait for every report before theirs (bench/failover.py, many groups)."""
    from vipcore_native_vrrp.driver import RouterDriver
    from vipcore_native_vrrp.protocol import Router, RouterConfig

    async def scenario() -> None:
        bus, holder = Bus(), GatedHolder("node-a")
        holder.announce_gate.set()
        events: list[str] = []
        original = holder.announce

        async def announce(interface: str, vips: Iterable[IPAddress]) -> None:
            await original(interface, vips)
            events.append("announce")

        holder.announce = announce  # type: ignore[method-assign]
        loop = asyncio.get_running_loop()
        link = FakeLink(bus, "node-a", "eth0", Family.IPV4)
        link.start(loop)
        drivers = []
        for i in range(5):
            config = RouterConfig(vrid=40 + i, family=Family.IPV4, primary=V4("198.51.100.11"),
                                  vips=(V4(f"198.51.100.{120 + i}"),), priority=100, interval_cs=100,
                                  destinations=(V4("224.0.0.18"),), sources=None)
            driver = RouterDriver(group=f"g{i}", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                                  holder=holder, schedule=AnnounceSchedule(count=1),  # type: ignore[arg-type]
                                  report=lambda d, change, failover: events.append(f"report {change.new.value}"),
                                  loop=loop)
            driver.start()
            drivers.append(driver)
        for driver in drivers:
            driver.takeover("test")
        await asyncio.sleep(0)
        holder.add_gate.set()  # the batch's acks: every router resumes in the same pass
        for driver in drivers:
            await driver.settled()
        await asyncio.sleep(0)
        masters = [i for i, e in enumerate(events) if e == "report master"]
        announces = [i for i, e in enumerate(events) if e == "announce"]
        assert len(masters) == len(announces) == 5
        assert max(announces) < min(masters), events
        for driver in drivers:
            await driver.close()

    asyncio.run(scenario())



@pytest.mark.lab
def test_a_takeover_pass_ends_with_its_vips_in_the_kernel_before_a_packet_read_in_that_pass() -> None:
    """Routers told in one pass that their master's node died (``peer_lost``, as the liveness coordinator
    does) decide in it and queue their VIPs; the pass ends by sending them (``send_queued``, the
    coordinator's last step). A packet the loop read in the same pass, handled after it, finds every VIP
    in the kernel; then each router resumes from the replies and announces."""
    import subprocess
    import uuid

    from vipcore.net.addresses import AddressHolder
    from vipcore_native_vrrp.driver import RouterDriver
    from vipcore_native_vrrp.protocol import Router, RouterConfig, StateChanged

    ns, dev = f"vcM5{uuid.uuid4().hex[:6]}", "vcM5d0"
    vips = [V4(f"198.51.100.{130 + i}") for i in range(6)]

    def held() -> set[str]:
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", dev], check=True,
                             capture_output=True, text=True).stdout
        return {line.split()[3].split("/")[0] for line in out.splitlines()}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        bus = Bus()
        link = FakeLink(bus, "node-a", dev, Family.IPV4)
        link.start(loop)
        changes: list[StateChanged] = []
        async with AddressHolder(netns=ns) as holder:
            await holder.add(dev, [V4("198.51.100.129")])  # the link read once, as a running agent has
            drivers = []
            for i, vip in enumerate(vips):
                config = RouterConfig(vrid=60 + i, family=Family.IPV4, primary=V4("198.51.100.11"), vips=(vip,),
                                      priority=100, interval_cs=100, destinations=(V4("224.0.0.18"),),
                                      sources=None)
                driver = RouterDriver(group=f"g{i}", interface=dev, router=Router(config), link=link,  # type: ignore[arg-type]
                                      holder=holder, schedule=AnnounceSchedule(count=1),
                                      report=lambda d, change, f: changes.append(change), loop=loop)
                driver.start()  # BACKUP
                drivers.append(driver)
            seen: list[set[str]] = []
            counts: list[int] = []

            def takeover_pass() -> None:
                # What the coordinator's pass does: decide, send the VIPs, announce, then the held adverts.
                held: list[Callable[[], None]] = []
                adverts = link.counters.sent
                for driver in drivers:
                    driver.peer_lost(0.0, "test: node-b's session expired", held=held)
                assert link.counters.sent == adverts  # held back until the VIPs are in and announced
                assert holder.send_queued()
                garps = holder.counters.garp_sent
                assert all(driver.announce_early() for driver in drivers)
                assert holder.counters.garp_sent - garps == len(vips)  # on the wire before the pass ends
                for send in held:
                    send()
                assert link.counters.sent - adverts == len(vips)
                counts.append(holder.counters.garp_sent)

            loop.call_soon(takeover_pass)
            loop.call_soon(lambda: seen.append(held()))  # a packet read in the same pass
            before = holder.netlink.batches
            await asyncio.sleep(0)
            assert seen and {str(v) for v in vips} <= seen[0]
            for driver in drivers:
                await driver.settled()
            assert holder.netlink.batches - before == 1 and holder.netlink.early == 1
            assert all(d.router.state is State.MASTER for d in drivers)
            assert holder.counters.garp_sent == counts[0]  # the workers did not announce a second time
            took = [c for c in changes if c.new is State.MASTER]
            assert len(took) == len(vips)
            assert all(c.phases is not None and c.phases.address is not None and c.phases.announce is not None
                       and c.phases.announce >= 0 for c in took)
            for driver in drivers:
                await driver.close()

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", "vcM5d1"], check=True)
        for name in (dev, "vcM5d1"):
            subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        asyncio.run(scenario())
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


class CountingDetector:
    """Stands in for the liveness detector: counts the coordinator's refreshes (each sets the peers)."""

    refreshes = 0

    def __init__(self, interface: str, local: IPAddress, config: object, **kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def set_peers(self, peers: Iterable[IPAddress], relaxed: Iterable[IPAddress] = ()) -> None:
        CountingDetector.refreshes += 1

    def state(self, peer: IPAddress) -> None:
        return None

    def close(self, *, graceful: bool) -> None:
        pass


def test_a_release_of_a_backup_refreshes_liveness_though_no_transition_follows(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A released backup never takes over: the takeover plans must drop its group at once, not at the next
    transition (a stale plan would have the liveness worker claim and announce a drained group's VIPs)."""
    async def scenario() -> None:
        c = Cluster({"liveness": True})
        monkeypatch.setattr(NativeVrrpBackend, "detector_factory", CountingDetector)
        await c.start_all()
        await asyncio.sleep(0.5)
        backup = next(n for n in NODE_NUMBER if n != best())
        backend = c.backends[backup]
        assert all(d.router.state is State.BACKUP for d in backend.routers[group().name].values())
        before, reports = CountingDetector.refreshes, len(c.reports)
        await backend.vipcore_group_release(group().name, "drain")
        await asyncio.sleep(0.05)
        assert len(c.reports) == reports  # no transition
        assert CountingDetector.refreshes > before
        before = CountingDetector.refreshes
        await backend.vipcore_group_takeover(group().name, "undrain")
        await asyncio.sleep(0.05)
        assert CountingDetector.refreshes > before
        for b in c.backends.values():
            await b.vipcore_backend_stop(graceful=False)

    run(scenario)
