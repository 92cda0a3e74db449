"""What the controller should write, given what the cluster holds. Pure: no I/O.

:func:`plan` takes the raw Service and VipGroup objects plus the model values
the Kubernetes source already converted (Nodes, EndpointSlices, pools) and
returns a :class:`Plan`: finalizer and status writes per Service, VipGroup
creates, updates and deletes, and Events. Allocation, grouping and VRIDs are
the core's (:func:`vipcore.core.resolve.resolve`, :func:`vipcore.core.ipam.allocate`);
nothing here chooses an address or a VRID.

Rules the plan follows:

* A Service's ``status.loadBalancer.ingress`` is exactly the addresses IPAM
  gives it. Addresses already in the status are held first, so a Service keeps
  its IP across restarts, even while it has no group (a ``Local`` Service
  without ready endpoints keeps its address).
* A Service is given the finalizer ``vipcore.io/vip`` before its first
  address and loses it only after its status is cleared, or when it is being
  deleted: an address is free for another Service only once the Service that
  held it is gone.
* The VRID of a group that already has a VipGroup object is kept (fed to the
  resolver as ``DesiredState.vrids``); a group no longer resolved is deleted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from vipcore.core import ipam
from vipcore.core.objects import service_from_k8s, service_wanted
from vipcore.core.errors import ManifestError
from vipcore.core.model import (
    LOAD_BALANCER_CLASS,
    DesiredState,
    EndpointSlice,
    IPAddress,
    Node,
    Pool,
    Resolution,
    Service,
    VipGroup,
    VridPolicy,
)
from vipcore.core.model import FINALIZER
from vipcore.core.resolve import choose_pool, resolve

Obj = Mapping[str, Any]

#: The component name on Events.
COMPONENT = "vipcore-controller"

# Event reasons (CamelCase, as Kubernetes components use them).
IP_ALLOCATED = "IPAllocated"
IP_REFUSED = "IPRefused"
IP_RELEASED = "IPReleased"
GROUP_ASSIGNED = "GroupAssigned"
NO_GROUP = "NoGroup"
INVALID_SERVICE = "InvalidService"
HOLDER_CHANGED = "HolderChanged"


@attrs.frozen
class Note:
    """An Event to record on a Service."""

    namespace: str
    name: str
    uid: str | None
    type: str  # "Normal" or "Warning"
    reason: str
    message: str

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class ServiceWrite:
    """Changes to one Service. ``finalizer``: True add, False remove, None leave.

    ``ingress``: the addresses the status must list (empty clears it), or None
    to leave the status alone. The writer applies them in a safe order: add the
    finalizer, then the status; or clear the status, then drop the finalizer.
    """

    namespace: str
    name: str
    resource_version: str | None
    finalizer: bool | None = None
    ingress: tuple[IPAddress, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class GroupWrite:
    """Create (``resource_version`` None) or update the spec of one VipGroup."""

    name: str
    spec: Mapping[str, Any] = attrs.field(hash=False)
    resource_version: str | None = None

    @property
    def create(self) -> bool:
        return self.resource_version is None


@attrs.frozen
class Plan:
    services: tuple[ServiceWrite, ...]
    groups: tuple[GroupWrite, ...]
    #: VipGroup names to delete.
    deletes: tuple[str, ...]
    notes: tuple[Note, ...]
    resolution: Resolution
    #: Service key -> addresses newly written to its status in this plan.
    allocated: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict, hash=False)
    #: Service key -> why it got no address.
    refused: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @property
    def empty(self) -> bool:
        return not (self.services or self.groups or self.deletes)


@attrs.frozen
class Selection:
    """Which Services the controller serves (see :func:`vipcore.core.objects.service_wanted`)."""

    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS})
    default_class: bool = False
    openelb: bool = True

    def wants(self, obj: Obj) -> bool:
        return service_wanted(obj, classes=self.classes, default_class=self.default_class, openelb=self.openelb)


# -- small readers of raw objects ---------------------------------------------------


def _meta(obj: Obj) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def key_of(obj: Obj) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name')}"


def has_finalizer(obj: Obj) -> bool:
    return FINALIZER in (_meta(obj).get("finalizers") or [])


def deleting(obj: Obj) -> bool:
    return bool(_meta(obj).get("deletionTimestamp"))


def ingress_of(obj: Obj) -> tuple[IPAddress, ...]:
    """The IPs in ``status.loadBalancer.ingress`` (hostnames ignored)."""
    status = obj.get("status") or {}
    lb = status.get("loadBalancer") or {} if isinstance(status, Mapping) else {}
    found: list[IPAddress] = []
    for entry in lb.get("ingress") or []:
        if isinstance(entry, Mapping) and entry.get("ip"):
            try:
                found.append(ipaddress.ip_address(str(entry["ip"])))
            except ValueError:
                continue
    return tuple(found)


def ingress_body(addresses: Sequence[IPAddress]) -> list[dict[str, str]]:
    """The ``status.loadBalancer.ingress`` list for ``addresses``."""
    return [{"ip": str(ip)} for ip in addresses]


def group_spec(group: VipGroup) -> dict[str, Any]:
    """A VipGroup object's spec for a resolved group."""
    return {
        "interface": group.interface,
        "nodes": list(group.nodes),
        "vrid": group.vrid,
        "vips": {"ipv4": [str(ip) for ip in group.vips_v4], "ipv6": [str(ip) for ip in group.vips_v6]},
        "services": list(group.services),
    }


def _normal_spec(spec: Any) -> dict[str, Any]:
    """An existing spec in the shape :func:`group_spec` writes, for comparison."""
    spec = spec if isinstance(spec, Mapping) else {}
    vips = spec.get("vips") if isinstance(spec.get("vips"), Mapping) else {}
    return {
        "interface": spec.get("interface"),
        "nodes": list(spec.get("nodes") or []),
        "vrid": spec.get("vrid"),
        "vips": {"ipv4": list(vips.get("ipv4") or []), "ipv6": list(vips.get("ipv6") or [])},
        "services": list(spec.get("services") or []),
    }


def persisted_vrids(vipgroups: Iterable[Obj]) -> dict[str, int]:
    """Group name -> VRID of every existing VipGroup with a valid one."""
    vrids: dict[str, int] = {}
    for obj in vipgroups:
        spec = obj.get("spec") or {}
        vrid = spec.get("vrid") if isinstance(spec, Mapping) else None
        name = _meta(obj).get("name")
        if isinstance(name, str) and isinstance(vrid, int) and not isinstance(vrid, bool) and 1 <= vrid <= 255:
            vrids[name] = vrid
    return vrids


def holders_of(obj: Obj) -> dict[str, str]:
    """``{"ipv4": node, "ipv6": node}`` from a VipGroup's status (families with a holder only)."""
    status = obj.get("status") or {}
    holders = status.get("holders") if isinstance(status, Mapping) else None
    found: dict[str, str] = {}
    for family, entry in (holders or {}).items():
        if isinstance(entry, Mapping) and entry.get("node"):
            found[str(family)] = str(entry["node"])
    return found


def _describe_group(group: VipGroup) -> str:
    return (f"VIP group {group.short_name} (VRID {group.vrid}, interface {group.interface}, "
            f"nodes {','.join(group.nodes)})")


# -- the plan ------------------------------------------------------------------------


def plan(
    services: Iterable[Obj],
    *,
    nodes: Sequence[Node],
    endpoint_slices: Sequence[EndpointSlice],
    pools: Sequence[Pool],
    vipgroups: Iterable[Obj],
    selection: Selection = Selection(),
    vrid_policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
) -> Plan:
    """Everything the controller should write so the cluster matches the resolver's answer."""
    service_objs = sorted(services, key=key_of)
    group_objs = {str(_meta(o).get("name")): o for o in vipgroups}
    notes: list[Note] = []
    writes: list[ServiceWrite] = []

    def note(obj: Obj, kind: str, reason: str, message: str) -> None:
        meta = _meta(obj)
        notes.append(Note(namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name")),
                          uid=meta.get("uid"), type=kind, reason=reason, message=message))

    served: dict[str, tuple[Obj, Service]] = {}
    for obj in service_objs:
        meta = _meta(obj)
        rv = meta.get("resourceVersion")
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        if not selection.wants(obj):
            # Only Services this controller once served (its finalizer) are touched.
            if has_finalizer(obj):
                writes.append(ServiceWrite(ns, name, rv, finalizer=False,
                                           ingress=None if deleting(obj) else ()))
                if not deleting(obj) and ingress_of(obj):
                    note(obj, "Normal", IP_RELEASED,
                         f"released {', '.join(map(str, ingress_of(obj)))}: the Service is no longer served by vipcore")
            continue
        if deleting(obj):
            if has_finalizer(obj):
                writes.append(ServiceWrite(ns, name, rv, finalizer=False))
            continue
        try:
            served[key_of(obj)] = (obj, service_from_k8s(obj))
        except ManifestError as exc:
            note(obj, "Warning", INVALID_SERVICE, str(exc))

    state = DesiredState(
        nodes=tuple(nodes),
        services=tuple(svc for _, svc in served.values()),
        endpoint_slices=tuple(endpoint_slices),
        pools=tuple(pools),
        vrids=persisted_vrids(group_objs.values()),
    )
    resolution = resolve(state, vrid_policy=vrid_policy, allocate=True)
    addresses = _addresses(state)
    unresolved = {u.service: u.reason for u in resolution.unresolved}

    old_group_of: dict[str, str] = {}
    for gname, gobj in group_objs.items():
        for svc_key in (gobj.get("spec") or {}).get("services") or []:
            old_group_of[str(svc_key)] = gname
    new_group_of = {svc_key: g for g in resolution.groups for svc_key in g.services}

    allocated: dict[str, tuple[IPAddress, ...]] = {}
    refused: dict[str, str] = {}
    for key, (obj, svc) in served.items():
        meta = _meta(obj)
        ns, name, rv = svc.namespace, svc.name, meta.get("resourceVersion")
        want = addresses.get(key, ())
        have = ingress_of(obj)
        finalizer: bool | None = None
        ingress: tuple[IPAddress, ...] | None = None
        if want:
            if not has_finalizer(obj):
                finalizer = True
            if set(want) != set(have) or len(want) != len(have):
                ingress = want
                allocated[key] = want
                fresh = [ip for ip in want if ip not in have]
                pool = svc.pool or _pool_name(svc, pools)
                note(obj, "Normal", IP_ALLOCATED,
                     f"allocated {', '.join(map(str, fresh or want))}" + (f" from pool {pool}" if pool else ""))
        else:
            reason = unresolved.get(key, "no address")
            refused[key] = reason
            note(obj, "Warning", IP_REFUSED, reason)
            if have:
                ingress = ()
            if has_finalizer(obj):
                finalizer = False
        if want:
            group = new_group_of.get(key)
            if group is None:
                note(obj, "Warning", NO_GROUP, unresolved.get(key, "no VIP group"))
            elif old_group_of.get(key) != group.name:
                note(obj, "Normal", GROUP_ASSIGNED, _describe_group(group))
        if finalizer is not None or ingress is not None:
            writes.append(ServiceWrite(ns, name, rv, finalizer=finalizer, ingress=ingress))

    group_writes: list[GroupWrite] = []
    for group in resolution.groups:
        spec = group_spec(group)
        existing = group_objs.get(group.name)
        if existing is None:
            group_writes.append(GroupWrite(group.name, spec))
        elif _normal_spec(existing.get("spec")) != spec:
            group_writes.append(GroupWrite(group.name, spec, str(_meta(existing).get("resourceVersion"))))
    wanted_groups = {g.name for g in resolution.groups}
    deletes = tuple(sorted(name for name in group_objs if name not in wanted_groups))

    return Plan(
        services=tuple(writes),
        groups=tuple(group_writes),
        deletes=deletes,
        notes=tuple(notes),
        resolution=resolution,
        allocated=allocated,
        refused=refused,
    )


def _addresses(state: DesiredState) -> dict[str, tuple[IPAddress, ...]]:
    """The addresses IPAM gives each Service, whether or not it also got a group.

    The same call :func:`vipcore.core.resolve.resolve` makes on the same input, so
    the answers agree; the resolver drops Services without a group from its
    ``allocations``, but their addresses must stay in their status.
    """
    pools = {p.name: p for p in state.pools}
    chosen = []
    for service in state.services:
        pool = choose_pool(service, pools)
        if not isinstance(pool, str):
            chosen.append((service, pool))
    refused_pools = ipam.pool_conflicts(state.pools, state.nodes)
    return dict(ipam.allocate(chosen, allocate_new=True, refused_pools=refused_pools).addresses)


def _pool_name(service: Service, pools: Sequence[Pool]) -> str | None:
    chosen = choose_pool(service, {p.name: p for p in pools})
    return None if isinstance(chosen, str) else chosen.name


def holder_notes(
    before: Mapping[str, Mapping[str, str]],
    groups: Iterable[Obj],
) -> tuple[dict[str, dict[str, str]], list[Note]]:
    """Events for holder changes between the holders seen ``before`` and ``groups`` now.

    Returns the holders now (group name -> family -> node) and one
    ``HolderChanged`` note per Service of each group whose holder changed.
    A group seen for the first time produces notes only if it has a holder.
    """
    now: dict[str, dict[str, str]] = {}
    notes: list[Note] = []
    for obj in groups:
        name = str(_meta(obj).get("name"))
        holders = holders_of(obj)
        now[name] = holders
        old = before.get(name, {})
        spec = obj.get("spec") or {}
        vips = spec.get("vips") or {}
        for family, node in sorted(holders.items()):
            if old.get(family) == node:
                continue
            family_name = "IPv4" if family == "ipv4" else "IPv6" if family == "ipv6" else family
            addresses = ", ".join(vips.get(family) or []) or "its VIPs"
            was = f" (was {old[family]})" if old.get(family) else ""
            for svc_key in spec.get("services") or []:
                ns, _, svc_name = str(svc_key).partition("/")
                notes.append(Note(ns, svc_name, None, "Normal", HOLDER_CHANGED,
                                  f"node {node} holds {addresses} ({family_name}){was}"))
    return now, notes


__all__ = [
    "FINALIZER", "COMPONENT", "Note", "ServiceWrite", "GroupWrite", "Plan", "Selection", "plan",
    "holder_notes", "group_spec", "persisted_vrids", "ingress_body", "ingress_of",
]
