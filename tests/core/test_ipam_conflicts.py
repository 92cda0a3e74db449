"""IPAM: overlapping pools and pools holding node addresses are refused, with a reason; the others keep working."""

from __future__ import annotations

import ipaddress

from vipcore import DesiredState, Node, Pool, Service, resolve
from vipcore.core import ipam
from vipcore.core.objects import parse_range

ip = ipaddress.ip_address


def pool(name: str, *entries: str, default: bool = False) -> Pool:
    return Pool(name=name, ranges=tuple(parse_range(e) for e in entries), interface="eth0", default=default)


NODES = (Node("node-a", addresses=(ip("198.51.100.11"),)), Node("node-b", addresses=(ip("198.51.100.12"),)))


def services(pool_name: str, count: int, prefix: str = "s") -> list[Service]:
    return [Service("default", f"{prefix}{i}", pool=pool_name) for i in range(count)]


def test_overlapping_pools_never_hand_out_one_address_twice() -> None:
    a = pool("a", "203.0.113.0/29")           # .1-.6
    b = pool("b", "203.0.113.4-203.0.113.9")  # overlaps .4-.6
    state = DesiredState(nodes=NODES, services=tuple(services("a", 6, "a") + services("b", 6, "b")), pools=(a, b))
    result = resolve(state)
    given = [addr for addrs in result.allocations.values() for addr in addrs]
    assert len(given) == len(set(given)), sorted(given)
    reasons = {u.service: u.reason for u in result.unresolved}
    # The later pool (by name) is refused; every Service of pool a keeps working.
    assert all(reasons[f"default/b{i}"].startswith("pool 'b' is refused: it overlaps pool 'a'") for i in range(6))
    assert sorted(k for k in result.allocations) == [f"default/a{i}" for i in range(6)]


def test_pool_containing_node_addresses_is_refused() -> None:
    lan = pool("lan", "198.51.100.0/28", default=True)
    other = pool("other", "203.0.113.0/28")
    state = DesiredState(nodes=NODES, services=tuple(services("lan", 3) + services("other", 2, "o")),
                         pools=(lan, other))
    result = resolve(state)
    node_ips = {a for n in NODES for a in n.addresses}
    assert not node_ips & {a for addrs in result.allocations.values() for a in addrs}
    reasons = {u.service: u.reason for u in result.unresolved}
    assert reasons["default/s0"] == ("pool 'lan' is refused: it contains 198.51.100.11, an address of node "
                                     "'node-a'; leave node addresses out of the pool")
    assert {"default/o0", "default/o1"} <= set(result.allocations)


def test_pool_conflicts_reports_each_refused_pool_once() -> None:
    conflicts = ipam.pool_conflicts(
        [pool("c", "203.0.113.8/29"), pool("a", "203.0.113.0/28"), pool("b", "2001:db8::/120"),
         pool("d", "2001:db8::10-2001:db8::20")],
        NODES,
    )
    assert set(conflicts) == {"c", "d"}
    assert "overlaps pool 'a'" in conflicts["c"] and "overlaps pool 'b'" in conflicts["d"]


def test_allocate_alone_refuses_overlaps_it_sees() -> None:
    # The controller's planner calls allocate directly: it must not hand out one address twice either.
    a, b = pool("a", "203.0.113.1-203.0.113.2"), pool("b", "203.0.113.1-203.0.113.2")
    pairs = [(s, a) for s in services("a", 2, "a")] + [(s, b) for s in services("b", 2, "b")]
    allocation = ipam.allocate(pairs)
    given = [addr for addrs in allocation.addresses.values() for addr in addrs]
    assert len(given) == len(set(given)) == 2
    assert set(allocation.refused) == {"default/b0", "default/b1"}
