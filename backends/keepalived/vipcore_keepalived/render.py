"""keepalived.conf from this node's memberships: a pure function.

Contract:

* One ``vrrp_instance`` per (group, family) that has VIPs, named
  :func:`instance_name` after the router (interface, VRID, family), not the
  group: a group renamed by a membership change keeps its VRID, so a reload
  keeps the instance, its state and its VIPs (keepalived matches instances
  across a reload by name). The full group name is in a comment above it.
* ``state BACKUP`` everywhere: the election decides, never the config.
* ``priority`` is :attr:`Membership.priority`, the core's rendezvous
  placement, the same number the native_vrrp backend uses, so a group with
  keepalived and native_vrrp nodes elects the same holder.
* ``vrrp_version 3``, never ``vrrp_strict`` (it forces ``no_accept``: the
  holder would drop traffic to its own VIPs).
* ``dynamic_interfaces``: a group on an interface that does not exist (yet)
  is FAULT on its own instead of stopping keepalived for every group.
* A group with both families gets a ``vrrp_sync_group`` so its IPv4 and IPv6
  routers move together.
* Identical input gives byte-identical output: everything is sorted, so an
  unchanged desired state never causes a reload.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from vipcore.net.addresses import InterfaceInfo
from vipcore.core.errors import VipcoreError
from vipcore.core.model import Family, IPAddress, Membership
from vipcore.core.placement import TOP_PRIORITY
from vipcore_keepalived.settings import KeepalivedSettings

INSTANCE_PREFIX = "vc"
_INDENT = "    "


class RenderError(VipcoreError):
    """The memberships cannot be expressed as one keepalived configuration."""


def sync_group_name(vrid: int, interface: str) -> str:
    """``vc_<vrid>_<interface>``: at most 22 characters; stable across group renames."""
    return f"{INSTANCE_PREFIX}_{vrid}_{interface}"


def instance_name(vrid: int, interface: str, family: Family) -> str:
    """``vc_<vrid>_<interface>_<4|6>``: at most 24 characters; stable across group renames."""
    return f"{sync_group_name(vrid, interface)}_{family.value}"


@attrs.frozen
class Instance:
    """One rendered ``vrrp_instance``: how a FIFO line maps back to vipcore."""

    name: str
    group: str
    family: Family
    interface: str
    vrid: int
    priority: int
    vips: tuple[IPAddress, ...]
    unicast_src: IPAddress | None = None
    unicast_peers: tuple[IPAddress, ...] = ()


@attrs.frozen
class Rendered:
    """The configuration text and what it contains."""

    text: str
    instances: tuple[Instance, ...]

    def by_name(self) -> dict[str, Instance]:
        return {i.name: i for i in self.instances}

    def vips(self, interface: str) -> frozenset[IPAddress]:
        """Every VIP configured on ``interface``."""
        return frozenset(v for i in self.instances if i.interface == interface for v in i.vips)


def _networks(info: InterfaceInfo | None, family: Family) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """The interface's own (non-host, non-link-local) addresses of ``family``."""
    if info is None:
        return []
    found: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = []
    for item in info.ipv4 if family is Family.IPV4 else info.ipv6:
        if item.network.prefixlen == item.max_prefixlen or item.ip.is_link_local:
            continue
        found.append(item)
    return found


def _on_link(address: IPAddress, networks: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]) -> bool:
    return any(address.version == n.version and address in n.network for n in networks)


def _unicast(membership: Membership, family: Family,
             info: InterfaceInfo | None) -> tuple[IPAddress | None, tuple[IPAddress, ...]]:
    """This node's source address and the peers' addresses for unicast adverts.

    Each peer's address is the first of its (Node) addresses of ``family``
    inside one of this interface's subnets, or its first address of
    ``family`` if none is on-link. A peer with no address of the family is
    left out (it cannot be reached by unicast).
    """
    networks = _networks(info, family)
    source: IPAddress | None = None
    for member in membership.members:
        if member.name == membership.node:
            source = next((a for a in member.addresses if a.version == family and _on_link(a, networks)), None)
    if source is None and networks:
        source = networks[0].ip
    peers: set[IPAddress] = set()
    for peer in membership.peers():
        candidates = [a for a in peer.addresses if a.version == family]
        chosen = next((a for a in candidates if _on_link(a, networks)), candidates[0] if candidates else None)
        if chosen is not None:
            peers.add(chosen)
    return source, tuple(sorted(peers, key=int))


def instances(
    memberships: Iterable[Membership],
    settings: KeepalivedSettings,
    *,
    interfaces: Mapping[str, InterfaceInfo] | None = None,
    released: frozenset[str] = frozenset(),
    taken_over: frozenset[str] = frozenset(),
) -> tuple[Instance, ...]:
    """The instances to render, sorted by name. Groups without a VRID or in ``released`` are left out."""
    interfaces = interfaces or {}
    found: dict[str, Instance] = {}
    for membership in memberships:
        group = membership.group
        if group.vrid is None or group.name in released:
            continue
        priority = TOP_PRIORITY if group.name in taken_over else membership.priority
        for family in group.families:
            source: IPAddress | None = None
            peers: tuple[IPAddress, ...] = ()
            if settings.unicast:
                source, peers = _unicast(membership, family, interfaces.get(group.interface))
            name = instance_name(group.vrid, group.interface, family)
            if name in found and found[name].group != group.name:
                raise RenderError(f"groups {found[name].group} and {group.name} map to the same "
                                  f"keepalived instance name {name}")
            found[name] = Instance(
                name=name, group=group.name, family=family, interface=group.interface, vrid=group.vrid,
                priority=priority, vips=tuple(sorted(group.vips(family), key=int)),
                unicast_src=source, unicast_peers=peers,
            )
    return tuple(found[n] for n in sorted(found))


def _advert(value: float) -> str:
    # keepalived reads a decimal; "0.1", "1", "0.05" (never "1.0e-01").
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _garp_lines(settings: KeepalivedSettings) -> list[str]:
    garp = settings.garp
    lines = []
    if garp.delay is not None:
        lines.append(f"garp_master_delay {garp.delay}")
    if garp.count is not None:
        lines.append(f"garp_master_repeat {garp.count}")
    if garp.refresh is not None:
        lines.append(f"garp_master_refresh {garp.refresh}")
    return lines


def _block(head: str, body: list[str], depth: int = 0) -> list[str]:
    pad = _INDENT * depth
    return [f"{pad}{head} {{", *[f"{pad}{_INDENT}{line}" for line in body], f"{pad}}}"]


def _instance_block(instance: Instance, settings: KeepalivedSettings, services: tuple[str, ...]) -> list[str]:
    body = [
        "state BACKUP",
        f"interface {instance.interface}",
        f"virtual_router_id {instance.vrid}",
        f"priority {instance.priority}",
        f"advert_int {_advert(settings.advert_interval)}",
    ]
    if not settings.preempt:
        body.append("nopreempt")
    if instance.unicast_src is not None:
        body.append(f"unicast_src_ip {instance.unicast_src}")
    if settings.unicast:
        body += _block("unicast_peer", [str(p) for p in instance.unicast_peers])
    body += _garp_lines(settings)
    prefix = 32 if instance.family is Family.IPV4 else 128
    body += _block("virtual_ipaddress", [f"{vip}/{prefix}" for vip in instance.vips])
    comment = [f"# group {instance.group} ({instance.family.k8s_name})"]
    if services:
        comment.append(f"# services: {', '.join(sorted(services))}")
    return comment + _block(f"vrrp_instance {instance.name}", body)


def render(
    memberships: Iterable[Membership],
    settings: KeepalivedSettings,
    *,
    node: str,
    fifo: Path,
    interfaces: Mapping[str, InterfaceInfo] | None = None,
    released: frozenset[str] = frozenset(),
    taken_over: frozenset[str] = frozenset(),
) -> Rendered:
    """The whole keepalived.conf for ``node``.

    ``interfaces`` (this node's interfaces, by name) is needed only with
    ``unicast``: it picks the source address and each peer's on-link
    address. Groups in ``released`` are left out (the node resigns: keepalived
    sends priority 0 and drops their VIPs); groups in ``taken_over`` get
    priority 254.
    """
    by_name = {m.group.name: m for m in memberships}
    rendered = instances(by_name.values(), settings, interfaces=interfaces, released=released,
                         taken_over=taken_over)
    lines = [
        f"# keepalived configuration for vipcore node {node}.",
        "# Generated by the vipcore keepalived backend; every change is overwritten.",
        "# Instance names: vc_<VRID>_<interface>_<4|6> (the group is in the comment above each).",
        "",
    ]
    lines += _block("global_defs", [
        f"router_id {settings.router_id or node}",
        "vrrp_version 3",
        # Without it one group on a missing interface makes keepalived exit (CONFIG error) and
        # takes every group down; with it that group's routers are FAULT until the interface appears.
        "dynamic_interfaces",
        f"notify_fifo {fifo}",
        # keepalived 2.2 knows the announcement spacing only globally.
        *([f"vrrp_garp_interval {_advert(settings.garp.interval)}",
           f"vrrp_gna_interval {_advert(settings.garp.interval)}"] if settings.garp.interval is not None else []),
    ])
    for name in sorted(by_name):
        if name in released:
            lines += ["", f"# group {name} is released: this node does not take part until taken over."]
        elif by_name[name].group.vrid is None:
            lines += ["", f"# group {name} has no VRID yet: not rendered."]
    groups: dict[str, list[Instance]] = {}
    for instance in rendered:
        groups.setdefault(instance.group, []).append(instance)
    for group in sorted(groups):
        members = groups[group]
        membership = by_name[group]
        if len(members) > 1:
            lines += ["", f"# group {group}: IPv4 and IPv6 move together"]
            lines += _block(f"vrrp_sync_group {sync_group_name(members[0].vrid, membership.group.interface)}",
                            _block("group", [i.name for i in members]))
        for instance in members:
            lines += [""] + _instance_block(instance, settings, membership.group.services)
    return Rendered(text="\n".join(lines) + "\n", instances=rendered)
