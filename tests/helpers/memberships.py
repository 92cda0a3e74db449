"""Memberships for the keepalived tests, built with the core's own resolver functions."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from vipcore.net.addresses import InterfaceInfo
from vipcore.core.model import Membership, Node, VipGroup
from vipcore.core.resolve import group_name, membership

A = ipaddress.ip_address

NODES = (
    Node("node-a", (A("198.51.100.11"), A("2001:db8:100::11"), A("203.0.113.11"), A("2001:db8:200::11"))),
    Node("node-b", (A("198.51.100.12"), A("2001:db8:100::12"), A("203.0.113.12"), A("2001:db8:200::12"))),
    Node("node-c", (A("198.51.100.13"), A("2001:db8:100::13"), A("203.0.113.13"), A("2001:db8:200::13"))),
)


def group(nodes: Sequence[str], interface: str, vrid: int, v4: Sequence[str] = (), v6: Sequence[str] = (),
          services: Sequence[str] = ()) -> VipGroup:
    return VipGroup(
        name=group_name(nodes, interface), interface=interface, nodes=tuple(nodes), vrid=vrid,
        vips_v4=tuple(ipaddress.IPv4Address(v) for v in v4),
        vips_v6=tuple(ipaddress.IPv6Address(v) for v in v6), services=tuple(services),
    )


def member(g: VipGroup, node: str, nodes: Sequence[Node] = NODES) -> Membership:
    return membership(g, node, nodes)


def interface(name: str, index: int, v4: Sequence[str] = (), v6: Sequence[str] = ()) -> InterfaceInfo:
    return InterfaceInfo(
        name=name, index=index, mac=bytes.fromhex("02000000000" + str(index)), up=True,
        ipv4=tuple(ipaddress.IPv4Interface(a) for a in v4), ipv6=tuple(ipaddress.IPv6Interface(a) for a in v6),
    )


#: node-a's interfaces in the example lab (eth0 on "lan", eth1 on "dmz").
NODE_A_INTERFACES = {
    "eth0": interface("eth0", 2, ["198.51.100.11/24", "198.51.100.100/32"],
                      ["2001:db8:100::11/64", "fe80::1/64"]),
    "eth1": interface("eth1", 3, ["203.0.113.11/24"], ["2001:db8:200::11/64", "fe80::2/64"]),
}
