"""The VipGroup view: memberships from the controller's VipGroups equal the full view's, and a change
reaches only the memberships it can change."""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import Any

import attrs
import pytest

from tests.helpers import objects as o
from vipcore.core.model import DesiredState, EndpointSlice, Node, Pool, Service, TrafficPolicy, VipGroup
from vipcore.core.objects import vipgroup_spec
from vipcore.core import shards
from vipcore.core.resolve import membership, resolve
from vipcore.sources.vipgroups import GroupView

NODES = [f"node-{i}" for i in range(8)]


def group_obj(group: VipGroup, rv: int = 1) -> dict[str, Any]:
    """The VipGroup object the controller writes for ``group``."""
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
            "metadata": {"name": group.name, "resourceVersion": str(rv)}, "spec": vipgroup_spec(group)}


class Publisher:
    """Writes groups as the controller does: whole, or (``bound`` set) as shards of at most ``bound`` VIPs
    on average, only the objects that changed, additions before removals (the planner's order)."""

    def __init__(self, views: list[GroupView], bound: int | None) -> None:
        self.views, self.bound = views, bound
        self.written: dict[str, dict[str, dict[str, Any]]] = {}  # group name -> object name -> object

    def objects(self, group: VipGroup, rv: int) -> dict[str, dict[str, Any]]:
        if self.bound is None:
            return {group.name: group_obj(group, rv)}
        # Each VIP to one of the group's Services (the planner has each Service's own addresses).
        vips = group.vips_v4 + group.vips_v6
        keys = group.services or ("default/none",)
        addresses = {k: [ip for i, ip in enumerate(vips) if i % len(keys) == j] for j, k in enumerate(keys)}
        zero = self.written.get(group.name, {}).get(group.name)
        count = zero["spec"].get("shard", {}).get("count") if zero else None
        return {part.name: group_obj(part, rv) for part in shards.split(group, addresses, count, bound=self.bound)}

    def rename(self, old: str, group: VipGroup, rv: int) -> None:
        """``old`` renamed to ``group`` (a member came or went): shard 0 written under the new name,
        the other shards rewritten only if they changed, the old shard 0 deleted."""
        self.written[group.name] = self.written.pop(old, {})
        self.publish(group.name, group, rv)

    def publish(self, name: str, group: VipGroup | None, rv: int) -> None:
        old = self.written.pop(name, {})
        new = self.objects(group, rv) if group is not None else {}
        if group is not None:
            self.written[name] = new
        changed = [(k, obj) for k, obj in new.items() if old.get(k, {}).get("spec") != obj["spec"]]
        changed.sort(key=lambda item: bool(set(old.get(item[0], {}).get("spec", {}).get("vips", {}).get("ipv4", ()))
                                            - set(item[1]["spec"]["vips"]["ipv4"])))
        for view in self.views:
            for k, obj in changed:
                view.change("vipgroups", "MODIFIED" if k in old else "ADDED", k, obj)
            for k in sorted(set(old) - set(new)):
                view.change("vipgroups", "DELETED", k, old[k])


def node_obj(name: str, address: str, drained: bool = False) -> dict[str, Any]:
    return o.node(name, address, labels={"vipcore.io/drain": "true"} if drained else {})


def random_cluster(rng: random.Random) -> DesiredState:
    nodes = tuple(Node(n, (ipaddress.ip_address(f"198.51.100.{i + 1}"),),
                       labels={"vipcore.io/drain": "true"} if rng.random() < 0.2 else {})
                  for i, n in enumerate(NODES))
    services, slices = [], []
    for i in range(rng.randint(1, 12)):
        local = rng.random() < 0.6
        services.append(Service("default", f"s{i}", TrafficPolicy.LOCAL if local else TrafficPolicy.CLUSTER))
        if local:
            slices.append(EndpointSlice("default", f"s{i}-x", f"s{i}", frozenset(rng.sample(NODES, rng.randint(1, 4)))))
    pool = Pool("lan", ((ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("203.0.113.60")),
                        (ipaddress.ip_address("2001:db8::1"), ipaddress.ip_address("2001:db8::60"))),
                interface="eth0", default=True)
    return DesiredState(nodes=nodes, services=tuple(services), endpoint_slices=tuple(slices), pools=(pool,))


def feed(view: GroupView, state: DesiredState) -> dict[str, VipGroup]:
    groups = {g.name: g for g in resolve(state).groups}
    for n in state.nodes:
        view.change("nodes", "ADDED", n.name, node_obj(n.name, str(n.addresses[0]), n.drained))
    for g in groups.values():
        view.change("vipgroups", "ADDED", g.name, group_obj(g))
    return groups


@pytest.mark.parametrize("bound", [None, 1, 2], ids=["whole", "shards-of-1", "shards-of-2"])
@pytest.mark.parametrize("seed", range(20))
def test_memberships_equal_the_full_views_through_changes(seed: int, bound: int | None) -> None:
    """Incremental == full, with groups written whole or as shards (merged back by the view)."""
    rng = random.Random(seed)
    state = random_cluster(rng)
    views = {n: GroupView(n) for n in NODES}
    for n in state.nodes:
        for view in views.values():
            view.change("nodes", "ADDED", n.name, node_obj(n.name, str(n.addresses[0]), n.drained))
    groups = {g.name: g for g in resolve(state).groups}
    publisher = Publisher(list(views.values()), bound)
    for g in groups.values():
        publisher.publish(g.name, g, 1)
    nodes = {n.name: n for n in state.nodes}
    rv = 1
    for _ in range(15):
        for name, view in views.items():
            view.take()
            resolved = {g.name: membership(g, name, nodes) for g in groups.values() if name in g.nodes}
            assert dict(view.state().memberships) == resolved
            # The count of VIP texts held (what bounds the parsed addresses) is kept, not summed.
            assert view._held == sum(len(t) for texts in view._texts.values() for t in texts)
        # One random change, as the watch delivers it to every agent.
        rv += 1
        what = rng.choice(["drain", "address", "group", "drop", "vips", "flip"])
        if what in ("drain", "address"):
            n = nodes[rng.choice(NODES)]
            if what == "drain":
                n = Node(n.name, n.addresses, labels={} if n.drained else {"vipcore.io/drain": "true"})
            else:
                n = Node(n.name, (ipaddress.ip_address(f"198.51.100.{rng.randint(100, 200)}"),), labels=n.labels)
            nodes[n.name] = n
            for view in views.values():
                view.change("nodes", "MODIFIED", n.name, node_obj(n.name, str(n.addresses[0]), n.drained))
        elif what == "vips" and groups:
            # The controller adds a Service to a group: a new VIP, and (sometimes) a new first Service,
            # which moves placement.
            g = groups[rng.choice(sorted(groups))]
            first = rng.random() < 0.5
            key = f"a/{rv}" if first else f"z/{rv}"
            # Sorted, as the controller writes VIPs (make_group).
            g = attrs.evolve(g, vips_v4=tuple(sorted(g.vips_v4 + (ipaddress.IPv4Address(f"198.51.100.{150 + rv}"),))),
                             services=tuple(sorted(g.services + (key,))))
            groups[g.name] = g
            publisher.publish(g.name, g, rv)
        elif what == "flip" and groups:
            # A Node flip: the controller renames the group (its name hashes its nodes), same router and
            # Services; the view edits the membership it had (sharded) or computes the new one (whole).
            g = groups.pop(rng.choice(sorted(groups)))
            members = set(g.nodes) ^ {rng.choice(NODES)}
            members = members or set(g.nodes)
            renamed = attrs.evolve(g, name=f"r{rv}-{g.interface}", nodes=tuple(sorted(members)))
            groups[renamed.name] = renamed
            publisher.rename(g.name, renamed, rv)
        elif what == "group" or not groups:
            members = tuple(sorted(rng.sample(NODES, rng.randint(1, 5))))
            # On eth1: its own VRIDs (two groups on one router would be a rename in flight).
            g = VipGroup(name=f"g{rv}-eth1", interface="eth1", nodes=members, vrid=rv,
                         vips_v4=(ipaddress.IPv4Address(f"203.0.113.{100 + rv % 100}"),), services=(f"default/x{rv}",))
            groups[g.name] = g
            publisher.publish(g.name, g, rv)
        else:
            gone = groups.pop(rng.choice(sorted(groups)))
            publisher.publish(gone.name, None, rv)


def two_groups() -> tuple[GroupView, dict[str, VipGroup]]:
    view = GroupView("node-a")
    groups = {
        "g1-eth0": VipGroup("g1-eth0", "eth0", ("node-a", "node-b"), vrid=1,
                            vips_v4=(ipaddress.IPv4Address("203.0.113.1"),), services=("default/a",)),
        "g2-eth0": VipGroup("g2-eth0", "eth0", ("node-a", "node-c"), vrid=2,
                            vips_v6=(ipaddress.IPv6Address("2001:db8::2"),), services=("default/b",)),
        "g3-eth0": VipGroup("g3-eth0", "eth0", ("node-d",), vrid=3, services=("default/c",)),
    }
    for i, n in enumerate(["node-a", "node-b", "node-c", "node-d"]):
        view.change("nodes", "ADDED", n, node_obj(n, f"198.51.100.{i + 1}"))
    for g in groups.values():
        view.change("vipgroups", "ADDED", g.name, group_obj(g))
    assert view.take()
    return view, groups


def test_a_change_reaches_only_the_memberships_it_changes() -> None:
    view, groups = two_groups()
    before = dict(view.state().memberships)
    assert set(before) == {"g1-eth0", "g2-eth0"}
    # A node outside this node's groups, a readiness flip, an unrelated label: nothing to dispatch.
    view.change("nodes", "MODIFIED", "node-d", node_obj("node-d", "198.51.100.99"))
    view.change("nodes", "MODIFIED", "node-b", o.node("node-b", "198.51.100.2", ready=False, labels={"x": "y"}))
    assert not view.take()
    # node-b's address: g1 recomputed (its peer's address), g2 the very same object.
    view.change("nodes", "MODIFIED", "node-b", node_obj("node-b", "198.51.100.22"))
    assert view.take()
    after = view.state().memberships
    assert after["g2-eth0"] is before["g2-eth0"]
    assert after["g1-eth0"] != before["g1-eth0"]
    assert [str(a) for m in after["g1-eth0"].members if m.name == "node-b" for a in m.addresses] == ["198.51.100.22"]
    # The VIPs of every group, this node's or not, are managed.
    state = view.state()
    assert state.managed(ipaddress.ip_address("203.0.113.1")) and state.managed(ipaddress.ip_address("2001:db8::2"))
    view.change("vipgroups", "DELETED", "g2-eth0", group_obj(groups["g2-eth0"]))
    assert view.take()
    assert set(view.state().memberships) == {"g1-eth0"}
    assert not view.state().managed(ipaddress.ip_address("2001:db8::2"))


def test_this_nodes_drain_label_reaches_its_groups() -> None:
    view, _ = two_groups()
    view.change("nodes", "MODIFIED", "node-a", node_obj("node-a", "198.51.100.1", drained=True))
    assert view.take()
    state = view.state()
    assert state.drained and all(m.priority == 1 for m in state.memberships.values())


def test_an_invalid_vipgroup_edit_keeps_the_last_valid_one(caplog: pytest.LogCaptureFixture) -> None:
    view, groups = two_groups()
    before = view.state().memberships["g1-eth0"]
    broken = group_obj(groups["g1-eth0"], rv=2)
    broken["spec"]["vips"]["ipv4"] = ["not-an-address"]
    with caplog.at_level(logging.ERROR):
        view.change("vipgroups", "MODIFIED", "g1-eth0", broken)
        view.change("vipgroups", "MODIFIED", "g1-eth0", broken)
    assert not view.take()
    assert view.state().memberships["g1-eth0"] is before
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "spec.vips.ipv4[0]" in lines[0] and "g1-eth0" in lines[0]
    assert list(view.invalid) == ["vipgroups/g1-eth0"]


def test_a_rename_in_flight_hands_on_the_newer_group_only() -> None:
    view, groups = two_groups()
    old = groups["g1-eth0"]
    # The controller renamed g1 (a node joined): the successor keeps the router (interface, VRID).
    new = VipGroup("g9-eth0", "eth0", ("node-a", "node-b", "node-c"), vrid=old.vrid, vips_v4=old.vips_v4,
                   services=old.services)
    view.change("vipgroups", "ADDED", new.name, group_obj(new, rv=5))
    assert view.take()
    assert set(view.state().memberships) == {"g9-eth0", "g2-eth0"}
    view.change("vipgroups", "DELETED", old.name, group_obj(old, rv=6))
    view.take()
    assert set(view.state().memberships) == {"g9-eth0", "g2-eth0"}


def test_addresses_no_group_holds_are_forgotten_and_not_managed() -> None:
    view = GroupView("node-a")
    for rv in range(1, 40):
        # One group whose 100 VIPs are replaced every time: the parsed addresses must not pile up.
        g = VipGroup("g-eth0", "eth0", ("node-a",), vrid=1,
                     vips_v6=tuple(ipaddress.IPv6Address(f"2001:db8::{rv:x}:{k:x}") for k in range(100)))
        view.change("vipgroups", "MODIFIED" if rv > 1 else "ADDED", g.name, group_obj(g, rv))
    assert sum(len(m) for m in view._parsed.values()) <= 2 * 100 + 1024
    state = view.state()
    assert state.managed(ipaddress.ip_address("2001:db8::27:5"))
    assert not state.managed(ipaddress.ip_address("2001:db8::1:5"))


def test_a_node_flip_edits_the_membership_and_later_changes_of_the_new_member_reach_it() -> None:
    """A sharded group renamed by a Node flip: the membership is edited (the members that stayed are the
    very same entries), and the member that came is followed (its address change reaches the group)."""
    view = GroupView("node-0")
    nodes = {n: Node(n, (ipaddress.ip_address(f"198.51.100.{i + 1}"),)) for i, n in enumerate(NODES)}
    for n in nodes.values():
        view.change("nodes", "ADDED", n.name, node_obj(n.name, str(n.addresses[0])))
    vips = tuple(ipaddress.IPv4Address(f"203.0.113.{i + 1}") for i in range(4))
    g = VipGroup("a-eth0", "eth0", tuple(NODES[:6]), vrid=9, vips_v4=vips, services=("default/a", "default/b"))
    publisher = Publisher([view], 1)
    publisher.publish(g.name, g, 1)
    view.take()
    before = view.state().memberships["a-eth0"]
    renamed = attrs.evolve(g, name="b-eth0", nodes=tuple(NODES[:5] + NODES[6:]))  # node-5 out, node-6, node-7 in
    publisher.rename(g.name, renamed, 2)
    assert view.take()
    after = view.state().memberships
    assert set(after) == {"b-eth0"} and after["b-eth0"] == membership(renamed, "node-0", nodes)
    kept = {m.name: m for m in before.members}
    assert all(m is kept[m.name] for m in after["b-eth0"].members if m.name in kept and m.priority == kept[m.name].priority)
    nodes["node-7"] = Node("node-7", (ipaddress.ip_address("198.51.100.77"),))
    view.change("nodes", "MODIFIED", "node-7", node_obj("node-7", "198.51.100.77"))
    nodes["node-5"] = Node("node-5", (ipaddress.ip_address("198.51.100.55"),))
    view.change("nodes", "MODIFIED", "node-5", node_obj("node-5", "198.51.100.55"))
    assert view.take()
    assert view.state().memberships["b-eth0"] == membership(renamed, "node-0", nodes)
    # node-5 left the group: its change reaches nothing.
    nodes["node-5"] = Node("node-5", (ipaddress.ip_address("198.51.100.56"),))
    view.change("nodes", "MODIFIED", "node-5", node_obj("node-5", "198.51.100.56"))
    assert not view.take()


def test_a_shard_rewritten_twice_and_a_renamed_shard_0_count_each_vip_once() -> None:
    """A shard modified in place (a VIP added, then removed) and a shard 0 renamed with the same VIPs
    between them: the merged group holds exactly the VIPs written, every time."""
    view = GroupView("node-0")
    for i, n in enumerate(NODES):
        view.change("nodes", "ADDED", n, node_obj(n, f"198.51.100.{i + 1}"))
    vips = tuple(ipaddress.IPv4Address(f"203.0.113.{i + 1}") for i in range(6))
    g = VipGroup("a-eth0", "eth0", tuple(NODES[:4]), vrid=9, vips_v4=vips, services=("c/c", "default/a", "default/b"))
    publisher = Publisher([view], 2)
    publisher.publish(g.name, g, 1)
    extra = ipaddress.IPv4Address("203.0.113.99")
    more = ipaddress.IPv4Address("203.0.113.100")
    steps = [attrs.evolve(g, vips_v4=vips + (extra,)), attrs.evolve(g, vips_v4=vips + (extra, more)),
             attrs.evolve(g, name="b-eth0", nodes=tuple(NODES[:3]), vips_v4=vips + (extra, more)),
             attrs.evolve(g, name="b-eth0", nodes=tuple(NODES[:3]), vips_v4=vips + (more,)),
             attrs.evolve(g, name="b-eth0", nodes=tuple(NODES[:3])), attrs.evolve(g, name="c-eth0")]
    name = g.name
    for rv, step in enumerate(steps, start=2):
        if step.name == name:
            publisher.publish(name, step, rv)
        else:
            publisher.rename(name, step, rv)
        name = step.name
        view.take()
        assert view.state().memberships[name].group == step
