"""The netlink_static backend driven hook by hook, two "nodes" in two namespaces.

Each node is a namespace with an interface called ``vcBlan`` (the two ends of
one veth pair: the same name on every node, as a pool's interface is). The
backend gets an :class:`AddressHolder` bound to its node's namespace, so the
pytest process stays in the root namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest

from vipcore.net.addresses import AddressHolder, AnnounceSchedule
from vipcore.backend import BackendContext
from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, IPAddress, Membership, Node, State, StateChange, VipGroup
from vipcore.backend.host import load_hooks
from vipcore.core.resolve import group_name, membership
from vipcore_netlink_static import NetlinkStaticBackend, Settings

LAN = "vcBlan"
V4 = (ipaddress.IPv4Address("198.51.100.101"), ipaddress.IPv4Address("198.51.100.102"))
V6 = (ipaddress.IPv6Address("2001:db8:5::101"),)
POOL = ipaddress.ip_network("198.51.100.96/27")
POOL6 = ipaddress.ip_network("2001:db8:5::/64")
FAST = {"garp": {"count": 2, "interval": 0.01}, "verify_interval": None}
#: The hand-over grace in these tests (the default is for real nodes).
GRACE = 0.3


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


def managed(address: IPAddress) -> bool:
    return address in POOL or address in POOL6


# -- pure --------------------------------------------------------------------


def test_settings_defaults_and_errors() -> None:
    settings = Settings.from_config({})
    assert settings.announce == AnnounceSchedule(5, 0.2, None)
    assert settings.verify_interval == 5.0
    assert Settings.from_config({"garp": {"refresh": 30}, "verify_interval": None}) == Settings(
        AnnounceSchedule(5, 0.2, 30.0), None
    )
    with pytest.raises(ConfigError, match=r"netlink_static: unknown keys \['garps'\]"):
        Settings.from_config({"garps": {}})
    with pytest.raises(ConfigError, match=r"netlink_static.garp.count: must be an integer"):
        Settings.from_config({"garp": {"count": "many"}})
    with pytest.raises(ConfigError, match=r"netlink_static.verify_interval: must be"):
        Settings.from_config({"verify_interval": -1})


def test_registered_through_entry_point() -> None:
    info = load_hooks().backend("netlink_static")
    assert info.factory is NetlinkStaticBackend
    assert info.distribution == "vipcore-netlink-static"


# -- lab ---------------------------------------------------------------------


@attrs.frozen
class Lab:
    nodes: dict[str, str]  # node name -> namespace


@pytest.fixture
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    spaces = {"node-a": f"vcB{tag}na", "node-b": f"vcB{tag}nb"}
    created: list[str] = []
    try:
        for ns in spaces.values():
            ip("netns", "add", ns)
            created.append(ns)
        a, b = spaces["node-a"], spaces["node-b"]
        ip("-n", a, "link", "add", LAN, "type", "veth", "peer", "name", LAN, "netns", b)
        for index, ns in enumerate((a, b), start=1):
            ip("-n", ns, "addr", "add", f"198.51.100.{index}/24", "dev", LAN)
            ip("-n", ns, "link", "set", LAN, "up")
        yield Lab(spaces)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def group(nodes: tuple[str, ...], interface: str = LAN, v4: tuple[Any, ...] = V4, v6: tuple[Any, ...] = V6) -> VipGroup:
    return VipGroup(name=group_name(nodes, interface), interface=interface, nodes=nodes, vips_v4=v4, vips_v6=v6)


def member(g: VipGroup, node: str) -> Membership:
    return membership(g, node, [Node(n) for n in g.nodes])


def holding(ns: str, interface: str = LAN) -> set[IPAddress]:
    out = ip("-n", ns, "-o", "addr", "show", "dev", interface)
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if fields[2] in ("inet", "inet6") and fields[3].endswith(("/32", "/128")):
            found.add(ipaddress.ip_address(fields[3].split("/")[0]))
    return found


@attrs.define
class Driven:
    """One backend on one namespace, with what it reported."""

    node: str
    backend: NetlinkStaticBackend
    reports: list[StateChange] = attrs.field(factory=list)

    def states(self, group_name: str) -> dict[Family, State]:
        latest: dict[Family, State] = {}
        for change in self.reports:
            if change.group == group_name:
                latest[change.family] = change.new
        return latest


def drive(lab: Lab, body: Callable[[dict[str, Driven]], Awaitable[None]],
          config: dict[str, Any] | None = None) -> None:
    async def go() -> None:
        driven: dict[str, Driven] = {}
        holders = []
        try:
            for node, ns in lab.nodes.items():
                holder = AddressHolder(netns=ns)
                holders.append(holder)
                d = Driven(node, NetlinkStaticBackend(holder=holder))
                d.backend.handover_grace = GRACE
                context = BackendContext(node=node, config=FAST if config is None else config,
                                         report=d.reports.append, is_managed=managed, backend_name="netlink_static")
                await d.backend.vipcore_backend_start(context=context)
                driven[node] = d
            await body(driven)
            for d in driven.values():
                await d.backend.vipcore_backend_stop(graceful=True)
        finally:
            for holder in holders:
                await holder.close()

    asyncio.run(go())


@pytest.mark.lab
class TestLab:
    def test_only_the_chosen_holder_holds(self, lab: Lab) -> None:
        g = group(("node-a", "node-b"))
        chosen = member(g, "node-a").preferred_holder
        other = "node-b" if chosen == "node-a" else "node-a"

        async def body(nodes: dict[str, Driven]) -> None:
            for d in nodes.values():
                await d.backend.vipcore_group_join(membership=member(g, d.node))
            assert holding(lab.nodes[chosen]) == {*V4, *V6}
            assert holding(lab.nodes[other]) == set()
            assert nodes[chosen].states(g.name) == {Family.IPV4: State.MASTER, Family.IPV6: State.MASTER}
            assert nodes[other].states(g.name) == {Family.IPV4: State.BACKUP, Family.IPV6: State.BACKUP}
            master = [c for c in nodes[chosen].reports if c.new is State.MASTER]
            assert all(c.reason.startswith("chosen holder") and c.backend == "netlink_static" for c in master)
            assert all(c.failover_seconds is not None and 0 <= c.failover_seconds < 1 for c in master)
            assert all(f"{chosen} is the chosen holder" == c.reason for c in nodes[other].reports)
            # The holder announced: a burst of 2 per VIP.
            holder = nodes[chosen].backend.holder
            await asyncio.sleep(0.1)
            assert holder.counters.garp_sent == 2 * len(V4) and holder.counters.na_sent == 2 * len(V6)
            metrics = {(s.name, s.labels): s.value for s in nodes[chosen].backend.vipcore_collect_metrics()}
            assert metrics[("vipcore_netlink_static_announcements_total", (("kind", "garp"),))] == 4
            assert metrics[("vipcore_netlink_static_routers", (("state", "master"),))] == 2

        drive(lab, body)

    def test_holder_moves_when_node_list_changes(self, lab: Lab) -> None:
        both = group(("node-a", "node-b"))
        chosen = member(both, "node-a").preferred_holder
        survivor = "node-b" if chosen == "node-a" else "node-a"
        alone = group((survivor,))

        async def body(nodes: dict[str, Driven]) -> None:
            for d in nodes.values():
                await d.backend.vipcore_group_join(membership=member(both, d.node))
            # The chosen holder turns NotReady: the core re-resolves on every node.
            await nodes[chosen].backend.vipcore_group_leave(membership=member(both, chosen), graceful=True)
            await nodes[survivor].backend.vipcore_group_leave(membership=member(both, survivor), graceful=True)
            await nodes[survivor].backend.vipcore_group_join(membership=member(alone, survivor))
            assert holding(lab.nodes[survivor]) == {*V4, *V6}
            # Make-before-break: the node that left keeps the VIPs until the grace is up.
            assert holding(lab.nodes[chosen]) == {*V4, *V6}
            await asyncio.sleep(GRACE + 0.2)
            assert holding(lab.nodes[chosen]) == set()
            assert nodes[chosen].states(both.name) == {Family.IPV4: State.STOPPED, Family.IPV6: State.STOPPED}
            assert nodes[survivor].states(alone.name) == {Family.IPV4: State.MASTER, Family.IPV6: State.MASTER}

        drive(lab, body)

    def test_update_changes_vips_without_moving(self, lab: Lab) -> None:
        old = group(("node-a", "node-b"))
        new = attrs.evolve(old, vips_v4=(V4[0], ipaddress.IPv4Address("198.51.100.103")), vips_v6=())
        chosen = member(old, "node-a").preferred_holder

        async def body(nodes: dict[str, Driven]) -> None:
            for d in nodes.values():
                await d.backend.vipcore_group_join(membership=member(old, d.node))
            before = len(nodes[chosen].reports)
            for d in nodes.values():
                await d.backend.vipcore_group_update(old=member(old, d.node), new=member(new, d.node))
            assert holding(lab.nodes[chosen]) == {V4[0], ipaddress.IPv4Address("198.51.100.103")}
            assert all(holding(ns) == set() for n, ns in lab.nodes.items() if n != chosen)
            # IPv4 stays MASTER (no report); the IPv6 router stops, having no VIPs.
            changes = nodes[chosen].reports[before:]
            assert [(c.family, c.new) for c in changes] == [(Family.IPV6, State.STOPPED)]

        drive(lab, body)

    def test_unchanged_vips_are_not_announced_again(self, lab: Lab) -> None:
        g = group(("node-a",))

        async def body(nodes: dict[str, Driven]) -> None:
            a = nodes["node-a"]
            await a.backend.vipcore_group_join(membership=member(g, "node-a"))
            await asyncio.sleep(0.05)  # the burst (2 x 10 ms) is over
            sent = (a.backend.holder.counters.garp_sent, a.backend.holder.counters.na_sent)
            assert sent == (2 * len(V4), 2 * len(V6))
            # Same VIPs, new member details (a node address changed): nothing to tell the LAN.
            renamed = membership(g, "node-a", [Node("node-a", addresses=(ipaddress.ip_address("198.51.100.1"),))])
            await a.backend.vipcore_group_update(old=member(g, "node-a"), new=renamed)
            assert await a.backend.verify() == 0
            await asyncio.sleep(0.05)
            assert (a.backend.holder.counters.garp_sent, a.backend.holder.counters.na_sent) == sent

        drive(lab, body)

    def test_release_and_takeover(self, lab: Lab) -> None:
        g = group(("node-a", "node-b"))
        chosen = member(g, "node-a").preferred_holder
        other = "node-b" if chosen == "node-a" else "node-a"

        async def body(nodes: dict[str, Driven]) -> None:
            for d in nodes.values():
                await d.backend.vipcore_group_join(membership=member(g, d.node))
            await nodes[chosen].backend.vipcore_group_release(group=g.name, reason="drain")
            # Make-before-break: the VIPs stay while the next holder learns of the drain.
            assert holding(lab.nodes[chosen]) == {*V4, *V6}
            await asyncio.sleep(GRACE + 0.2)
            assert holding(lab.nodes[chosen]) == set()
            assert nodes[chosen].reports[-1].new is State.BACKUP
            assert nodes[chosen].reports[-1].reason == "released: drain"
            # A release outlives updates: the released node does not grab the group back.
            await nodes[chosen].backend.vipcore_group_update(old=member(g, chosen), new=member(g, chosen))
            assert holding(lab.nodes[chosen]) == set()
            # Takeover on a node that released nothing: hold, whatever the ranking says.
            await nodes[other].backend.vipcore_group_takeover(group=g.name, reason="operator")
            assert holding(lab.nodes[other]) == {*V4, *V6}
            assert nodes[other].reports[-1].new is State.MASTER
            assert nodes[other].reports[-1].reason == "takeover: operator"
            # Takeover after a release only undoes the release: the ranking decides again.
            await nodes[other].backend.vipcore_group_release(group=g.name, reason="done")
            await asyncio.sleep(GRACE + 0.2)
            assert holding(lab.nodes[other]) == set()
            await nodes[other].backend.vipcore_group_takeover(group=g.name, reason="node no longer drained")
            assert holding(lab.nodes[other]) == set()
            assert nodes[other].backend.groups()[g.name].decision() == (False, f"{chosen} is the chosen holder")
            await nodes[chosen].backend.vipcore_group_takeover(group=g.name, reason="node no longer drained")
            assert holding(lab.nodes[chosen]) == {*V4, *V6}
            assert nodes[chosen].reports[-1].new is State.MASTER

        drive(lab, body)

    def test_a_better_holder_adds_before_the_old_one_removes(self, lab: Lab) -> None:
        """A node returning (or joining) that wins the ranking: the old holder keeps
        the VIPs for the hand-over grace, so the new one has them first."""
        both = group(("node-a", "node-b"))
        winner = member(both, "node-a").preferred_holder
        loser = "node-b" if winner == "node-a" else "node-a"
        alone = group((loser,))

        async def body(nodes: dict[str, Driven]) -> None:
            await nodes[loser].backend.vipcore_group_join(membership=member(alone, loser))
            assert holding(lab.nodes[loser]) == {*V4, *V6}
            # The winner comes back: the loser's group is renamed (same router), the winner joins.
            await nodes[loser].backend.vipcore_group_update(old=member(alone, loser), new=member(both, loser))
            assert holding(lab.nodes[loser]) == {*V4, *V6}, "removed before the new holder could add"
            assert nodes[loser].states(both.name) == {}, "a rename keeps the router: no report under the new name"
            await nodes[winner].backend.vipcore_group_join(membership=member(both, winner))
            assert holding(lab.nodes[winner]) == {*V4, *V6}
            await asyncio.sleep(GRACE + 0.2)
            assert holding(lab.nodes[loser]) == set()
            assert nodes[loser].states(both.name) == {Family.IPV4: State.BACKUP, Family.IPV6: State.BACKUP}

        drive(lab, body)

    def test_a_left_group_waiting_for_its_grace_goes_at_stop(self, lab: Lab) -> None:
        both = group(("node-a", "node-b"))
        chosen = member(both, "node-a").preferred_holder
        seen: dict[str, Driven] = {}

        async def body(nodes: dict[str, Driven]) -> None:
            seen.update(nodes)
            for d in nodes.values():
                d.backend.handover_grace = 30.0  # longer than the test
                await d.backend.vipcore_group_join(membership=member(both, d.node))
            await nodes[chosen].backend.vipcore_group_leave(membership=member(both, chosen), graceful=True)
            assert holding(lab.nodes[chosen]) == {*V4, *V6}
            assert nodes[chosen].states(both.name) == {Family.IPV4: State.STOPPED, Family.IPV6: State.STOPPED}

        drive(lab, body)  # stops both backends
        assert holding(lab.nodes[chosen]) == set()

    def test_stop_removes_everything(self, lab: Lab) -> None:
        g = group(("node-a", "node-b"))
        chosen = member(g, "node-a").preferred_holder
        seen: dict[str, Driven] = {}

        async def body(nodes: dict[str, Driven]) -> None:
            seen.update(nodes)
            for d in nodes.values():
                await d.backend.vipcore_group_join(membership=member(g, d.node))
            assert holding(lab.nodes[chosen]) == {*V4, *V6}

        drive(lab, body)  # drive() stops both backends gracefully
        assert all(holding(ns) == set() for ns in lab.nodes.values())
        assert seen[chosen].states(g.name) == {Family.IPV4: State.STOPPED, Family.IPV6: State.STOPPED}
        assert seen[chosen].reports[-1].reason == "agent stopping"

    def test_start_removes_stale_vips(self, lab: Lab) -> None:
        ns = lab.nodes["node-a"]
        foreign = "203.0.113.50"
        for address in (f"{V4[0]}/32", f"{foreign}/32"):
            ip("-n", ns, "addr", "add", address, "dev", LAN)
        ip("-n", ns, "addr", "add", f"{V6[0]}/128", "dev", LAN, "nodad")

        async def body(nodes: dict[str, Driven]) -> None:
            # start() already ran: managed VIPs gone, the foreign address kept.
            assert holding(ns) == {ipaddress.ip_address(foreign)}
            assert nodes["node-a"].backend.counters.stale_removed == 2

        drive(lab, body)

    def test_missing_interface_faults_only_its_group(self, lab: Lab) -> None:
        broken = group(("node-a",), interface="vcBgone", v4=(ipaddress.IPv4Address("198.51.100.110"),), v6=())
        fine = group(("node-a",))

        async def body(nodes: dict[str, Driven]) -> None:
            a = nodes["node-a"]
            await a.backend.vipcore_group_join(membership=member(broken, "node-a"))
            await a.backend.vipcore_group_join(membership=member(fine, "node-a"))
            assert a.states(broken.name) == {Family.IPV4: State.FAULT}
            fault = next(c for c in a.reports if c.group == broken.name)
            assert "'vcBgone' does not exist" in fault.reason
            assert a.states(fine.name) == {Family.IPV4: State.MASTER, Family.IPV6: State.MASTER}
            assert holding(lab.nodes["node-a"]) == {*V4, *V6}
            # The interface appears: the periodic check heals the group.
            ip("-n", lab.nodes["node-a"], "link", "add", "vcBgone", "type", "veth", "peer", "name", "vcBgone2")
            assert await a.backend.verify() == 1
            assert a.states(broken.name) == {Family.IPV4: State.MASTER}
            assert holding(lab.nodes["node-a"], "vcBgone") == {ipaddress.IPv4Address("198.51.100.110")}
            assert await a.backend.verify() == 0

        drive(lab, body)

    def test_verify_re_adds_vanished_vips(self, lab: Lab) -> None:
        g = group(("node-a",))

        async def body(nodes: dict[str, Driven]) -> None:
            a = nodes["node-a"]
            await a.backend.vipcore_group_join(membership=member(g, "node-a"))
            sent = a.backend.holder.counters.na_sent
            # A link flap flushes IPv6 addresses; someone deletes an IPv4 VIP by hand.
            ip("-n", lab.nodes["node-a"], "addr", "del", f"{V6[0]}/128", "dev", LAN)
            ip("-n", lab.nodes["node-a"], "addr", "del", f"{V4[1]}/32", "dev", LAN)
            assert await a.backend.verify() == 1
            assert holding(lab.nodes["node-a"]) == {*V4, *V6}
            assert a.backend.holder.counters.na_sent > sent  # re-announced at once
            assert a.states(g.name) == {Family.IPV4: State.MASTER, Family.IPV6: State.MASTER}

        drive(lab, body)

    def test_verify_loop_runs_on_its_own(self, lab: Lab) -> None:
        g = group(("node-a",))

        async def body(nodes: dict[str, Driven]) -> None:
            a = nodes["node-a"]
            await a.backend.vipcore_group_join(membership=member(g, "node-a"))
            ip("-n", lab.nodes["node-a"], "addr", "del", f"{V4[0]}/32", "dev", LAN)
            for _ in range(50):
                await asyncio.sleep(0.02)
                if V4[0] in holding(lab.nodes["node-a"]):
                    break
            assert V4[0] in holding(lab.nodes["node-a"])

        drive(lab, body, config={"garp": {"count": 1}, "verify_interval": 0.1})
