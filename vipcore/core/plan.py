"""What the controller should write, given what the cluster holds. Pure: no I/O.

:func:`plan` takes the raw Service and VipGroup objects plus the model values
the Kubernetes source already converted (Nodes, EndpointSlices, pools) and
returns a :class:`Plan`: status writes per Service, VipGroup
creates, updates and deletes, and Events. Allocation, grouping and VRIDs are
the core's (:func:`vipcore.core.resolve.resolve`, :func:`vipcore.core.ipam.allocate`);
nothing here chooses an address or a VRID.

Rules the plan follows:

* A Service's ``status.loadBalancer.ingress`` is exactly the addresses IPAM
  gives it. Addresses already in the status are held first, so a Service keeps
  its IP across restarts, even while it has no group (a ``Local`` Service
  without ready endpoints keeps its address).
* A Service carries no finalizer of vipcore's: the steady path of a new
  Service is one write, its status. An address is free for another Service
  once no live Service holds it; what the controller already holds says which
  addresses were given out (the persisted VipGroups' VIPs, and the previous
  pass's addresses, ``previous``), so an address whose Service was deleted,
  even while no controller ran, is listed in :attr:`Plan.released` and rests
  in quarantine before reuse. The finalizer ``vipcore.io/vip`` that older
  releases added is removed (once, and from a Service being deleted too).
* The VRID of a group that already has a VipGroup object is kept (fed to the
  resolver as ``DesiredState.vrids``); a group no longer resolved is deleted.
* An OpenELB Service whose Eip is a ``bgp`` or ``layer2`` one is OpenELB's:
  its status is never written (at most vipcore's legacy finalizer is removed).
* Addresses a pass frees are listed in :attr:`Plan.released`, so the
  controller can keep them in quarantine before they are given out again.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

import attrs

from vipcore.core.objects import openelb_foreign, service_from_k8s, service_wanted, vipgroup_spec
from vipcore.core.errors import ManifestError
from vipcore.core.model import (
    LOAD_BALANCER_CLASS,
    DesiredState,
    EndpointSlice,
    Family,
    IPAddress,
    Node,
    Pool,
    Resolution,
    Service,
    VipGroup,
    VridPolicy,
)
from vipcore.core.model import FINALIZER
from vipcore.core.resolve import NO_READY_ENDPOINT, choose_pool, membership, resolve
from vipcore.core.shards import SHARD_VIPS, shard_name, split

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
#: The API server refused the controller's write to a Service (an admission webhook, a quota, a field).
WRITE_FAILED = "WriteFailed"


@attrs.frozen
class Note:
    """An Event to record on a Service."""

    namespace: str
    name: str
    uid: str | None
    type: str  # "Normal" or "Warning"
    reason: str
    message: str
    #: The steady path of a new Service (its first address, group or holder): nothing a user can act on,
    #: and what its status already says. The controller logs it and writes no Event.
    routine: bool = False

    @property
    def service(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class ServiceWrite:
    """Changes to one Service.

    ``ingress``: the addresses the status must list (empty clears it), or None
    to leave the status alone. ``drop_finalizer``: remove the finalizer
    ``vipcore.io/vip`` older releases added (after the status write, if any).
    """

    namespace: str
    name: str
    resource_version: str | None
    ingress: tuple[IPAddress, ...] | None = None
    drop_finalizer: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class GroupWrite:
    """Create (``resource_version`` None) or update the spec of one VipGroup.

    ``resource_version``: the version the plan read; the update is made only if
    the object is still at it (the plan's decision depends on that read).
    """

    group: VipGroup
    resource_version: str | None = None

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def create(self) -> bool:
        return self.resource_version is None

    @property
    def spec(self) -> dict[str, Any]:
        """The spec to write (:func:`~vipcore.core.objects.vipgroup_spec`)."""
        return vipgroup_spec(self.group)


@attrs.frozen
class Plan:
    services: tuple[ServiceWrite, ...]
    groups: tuple[GroupWrite, ...]
    #: VipGroup names to delete (each only at the resourceVersion in ``group_versions``).
    deletes: tuple[str, ...]
    notes: tuple[Note, ...]
    resolution: Resolution
    #: Service key -> addresses newly written to its status in this plan.
    allocated: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict, hash=False)
    #: Service key -> why it got no address.
    refused: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    #: VipGroup name -> the resourceVersion the plan read (the precondition of its update or delete).
    group_versions: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    #: Addresses some Service listed before this plan and none lists after it.
    released: frozenset[IPAddress] = frozenset()
    #: Service key -> every address it has after this plan (held or new).
    addresses: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict, hash=False)

    @property
    def empty(self) -> bool:
        return not (self.services or self.groups or self.deletes)


@attrs.frozen
class Selection:
    """Which Services the controller serves (see :func:`vipcore.core.objects.service_wanted`)."""

    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS})
    default_class: bool = False
    openelb: bool = True

    def wants(self, obj: Obj, eips: Iterable[Obj] | None = None) -> bool:
        return service_wanted(obj, classes=self.classes, default_class=self.default_class, openelb=self.openelb,
                              eips=eips)


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


def _normal_spec(spec: Any) -> dict[str, Any]:
    """An existing spec in the shape :func:`~vipcore.core.objects.vipgroup_spec` writes, for comparison."""
    spec = spec if isinstance(spec, Mapping) else {}
    vips = spec.get("vips") if isinstance(spec.get("vips"), Mapping) else {}
    return {
        "interface": spec.get("interface"),
        "nodes": list(spec.get("nodes") or []),
        "vrid": spec.get("vrid"),
        "vips": {"ipv4": list(vips.get("ipv4") or []), "ipv6": list(vips.get("ipv6") or [])},
        "services": list(spec.get("services") or []),
        **({"shard": spec["shard"]} if spec.get("shard") is not None else {}),
    }


def _spec_list(obj: Obj, field: str) -> list[Any]:
    """A list field of a VipGroup object's spec (empty when absent or malformed)."""
    spec = obj.get("spec")
    value = spec.get(field) if isinstance(spec, Mapping) else None
    return value if isinstance(value, list) else []


def _persisted_vips(vipgroups: Iterable[Obj]) -> set[IPAddress]:
    """Every valid address the VipGroup objects list."""
    found: set[IPAddress] = set()
    for obj in vipgroups:
        spec = obj.get("spec")
        vips = spec.get("vips") if isinstance(spec, Mapping) else None
        for family in ("ipv4", "ipv6"):
            for raw in (vips.get(family) if isinstance(vips, Mapping) else None) or []:
                try:
                    found.add(ipaddress.ip_address(str(raw)))
                except ValueError:
                    continue
    return found


def _shard(obj: Obj) -> tuple[str, int] | None:
    """A VipGroup object's (set key, index) when it is a shard (``spec.shard``)."""
    spec = obj.get("spec")
    shard = spec.get("shard") if isinstance(spec, Mapping) else None
    if isinstance(shard, Mapping) and isinstance(shard.get("set"), str) and isinstance(shard.get("index"), int):
        return str(shard["set"]), int(shard["index"])
    return None


def group_names(vipgroups: Iterable[Obj]) -> dict[str, list[str]]:
    """VipGroup object name -> the groups whose VIPs it holds: itself (a group, or a shard 0, which is
    named as its group), or for another shard the shard 0s of its set (two while a rename is in flight)."""
    objs = list(vipgroups)
    zeros: dict[str, list[str]] = {}
    for obj in objs:
        shard = _shard(obj)
        if shard is not None and shard[1] == 0:
            zeros.setdefault(shard[0], []).append(str(_meta(obj).get("name")))
    out: dict[str, list[str]] = {}
    for obj in objs:
        name, shard = str(_meta(obj).get("name")), _shard(obj)
        out[name] = sorted(zeros.get(shard[0], [])) if shard is not None and shard[1] > 0 else [name]
    return out


def _shard_count(obj: Obj | None) -> int | None:
    """The ``spec.shard.count`` of a group's shard 0 object, if it has one."""
    spec = (obj or {}).get("spec")
    shard = spec.get("shard") if isinstance(spec, Mapping) else None
    count = shard.get("count") if isinstance(shard, Mapping) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


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


def persisted_lineage(vipgroups: Iterable[Obj]) -> dict[str, tuple[str, ...]]:
    """Group name -> the Services of every existing VipGroup (of all its shards): a renamed group inherits
    its VRID."""
    lineage: dict[str, tuple[str, ...]] = {}
    objs = list(vipgroups)
    names = group_names(objs)
    for obj in objs:
        spec = obj.get("spec") or {}
        services = spec.get("services") if isinstance(spec, Mapping) else None
        if isinstance(_meta(obj).get("name"), str) and isinstance(services, list):
            for name in names[str(_meta(obj).get("name"))]:
                lineage[name] = lineage.get(name, ()) + tuple(str(s) for s in services)
    return lineage


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


def _same_router(previous: Obj | None, group: VipGroup, nodes: Sequence[Node]) -> bool:
    """Whether ``group`` only renames ``previous``: same interface, VRID and holder.

    Every membership change renames groups (the name hashes the node list);
    such a rename is nothing a user can act on, so it is not an Event. The
    holder is the one ``previous`` reports, else the one placement predicted.
    """
    if previous is None:
        return False
    spec = previous.get("spec") or {}
    if not isinstance(spec, Mapping) or spec.get("interface") != group.interface or spec.get("vrid") != group.vrid:
        return False
    holder = membership(group, group.nodes[0], nodes).preferred_holder if group.nodes else None
    held = set(holders_of(previous).values())
    if held:
        return held == {holder}
    services = [str(s) for s in spec.get("services") or []]
    old_nodes = [str(n) for n in spec.get("nodes") or []]
    if not services or not old_nodes:
        return False
    old = VipGroup(name=str(_meta(previous).get("name")), interface=group.interface, nodes=tuple(old_nodes),
                   vrid=group.vrid, services=tuple(services))
    return membership(old, old.nodes[0], nodes).preferred_holder == holder


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
    convert: Callable[[Obj], Service] = service_from_k8s,
    eips: Iterable[Obj] = (),
    quarantined: Collection[IPAddress] = (),
    shard_vips: int = SHARD_VIPS,
    previous: Mapping[str, Sequence[IPAddress]] | None = None,
    rest_released: bool = False,
) -> Plan:
    """Everything the controller should write so the cluster matches the resolver's answer.

    ``convert``: Service object to model (raises ManifestError); the controller
    passes its cache's, so a Service is converted once per resourceVersion.
    ``eips``: every OpenELB Eip object (any protocol), to leave OpenELB's own
    Services alone; ``quarantined``: addresses not to give out fresh; ``shard_vips``: a group of
    more VIPs is written as shards (:mod:`vipcore.core.shards`). ``previous``: Service key -> the
    addresses the controller's previous pass gave it (:attr:`Plan.addresses`): with the VIPs and
    Services of the persisted ``vipgroups``, what was given out before, so an address whose Service is
    gone is :attr:`Plan.released`, and a Service no longer served has its status cleared.
    ``rest_released``: addresses freed by this pass are not given out fresh in it either (the
    controller's quarantine, which starts after the pass, is on).
    """
    eip_objs = list(eips)
    service_objs = sorted(services, key=key_of)
    group_objs = {str(_meta(o).get("name")): o for o in vipgroups}
    notes: list[Note] = []
    writes: list[ServiceWrite] = []
    earlier = previous or {}
    # Services vipcore gave an address before (no finalizer marks them): its previous pass's and those
    # its VipGroups list; the legacy finalizer marks them too.
    served_before = set(earlier) | {str(s) for obj in group_objs.values() for s in _spec_list(obj, "services")}

    def ours(obj: Obj) -> bool:
        return has_finalizer(obj) or key_of(obj) in served_before

    def note(obj: Obj, kind: str, reason: str, message: str, routine: bool = False) -> None:
        meta = _meta(obj)
        notes.append(Note(namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name")),
                          uid=meta.get("uid"), type=kind, reason=reason, message=message, routine=routine))

    served: dict[str, tuple[Obj, Service]] = {}
    for obj in service_objs:
        meta = _meta(obj)
        rv = meta.get("resourceVersion")
        ns, name = str(meta.get("namespace") or "default"), str(meta.get("name"))
        if not selection.wants(obj, eip_objs):
            # Only Services this controller served before are touched.
            if openelb_foreign(obj, eip_objs) and selection.openelb:
                # OpenELB's own Service: its status is OpenELB's; drop only our legacy finalizer.
                if has_finalizer(obj):
                    writes.append(ServiceWrite(ns, name, rv, drop_finalizer=True))
            elif ours(obj):
                clear = not deleting(obj) and bool(ingress_of(obj))
                if clear or has_finalizer(obj):
                    writes.append(ServiceWrite(ns, name, rv, ingress=() if clear else None,
                                               drop_finalizer=has_finalizer(obj)))
                if clear:
                    note(obj, "Normal", IP_RELEASED,
                         f"released {', '.join(map(str, ingress_of(obj)))}: the Service is no longer served by vipcore")
            continue
        if deleting(obj):
            if has_finalizer(obj):
                writes.append(ServiceWrite(ns, name, rv, drop_finalizer=True))
            continue
        try:
            served[key_of(obj)] = (obj, convert(obj))
        except ManifestError as exc:
            note(obj, "Warning", INVALID_SERVICE, str(exc))

    # What was given out before: the statuses of the Services vipcore serves (or served), the VIPs its
    # VipGroups list and its previous pass's addresses (a Service deleted, even while no controller ran).
    before = {ip for obj in service_objs
              if (selection.wants(obj, eip_objs) or ours(obj)) and not openelb_foreign(obj, eip_objs)
              for ip in ingress_of(obj)}
    before.update(ip for ips in earlier.values() for ip in ips)
    before.update(_persisted_vips(group_objs.values()))
    if rest_released:
        # Freed now (their Service is gone or no longer served): not handed out fresh in this pass either.
        # A served Service's addresses are not: its status, or what the previous pass gave it (its status
        # write may not be in the cache yet).
        still = {ip for key, (obj, _) in served.items() for ip in (*ingress_of(obj), *earlier.get(key, ()))}
        quarantined = frozenset(quarantined) | (before - still)
    state = DesiredState(
        nodes=tuple(nodes),
        services=tuple(svc for _, svc in served.values()),
        endpoint_slices=tuple(endpoint_slices),
        pools=tuple(pools),
        vrids=persisted_vrids(group_objs.values()),
        lineage=persisted_lineage(group_objs.values()),
    )
    resolution = resolve(state, vrid_policy=vrid_policy, allocate=True, quarantined=quarantined)
    addresses = resolution.addresses
    unresolved = {u.service: u.reason for u in resolution.unresolved}

    old_group_of: dict[str, str] = {}
    names_of = group_names(group_objs.values())
    for gname, gobj in group_objs.items():
        for svc_key in (gobj.get("spec") or {}).get("services") or []:
            old_group_of[str(svc_key)] = (names_of[gname] or [gname])[0]
    new_group_of = {svc_key: g for g in resolution.groups for svc_key in g.services}

    allocated: dict[str, tuple[IPAddress, ...]] = {}
    refused: dict[str, str] = {}
    for key, (obj, svc) in served.items():
        meta = _meta(obj)
        ns, name, rv = svc.namespace, svc.name, meta.get("resourceVersion")
        want = addresses.get(key, ())
        have = ingress_of(obj)
        ingress: tuple[IPAddress, ...] | None = None
        if want:
            if set(want) != set(have) or len(want) != len(have):
                ingress = want
                allocated[key] = want
                fresh = [ip for ip in want if ip not in have]
                pool = svc.pool or _pool_name(svc, pools)
                note(obj, "Normal", IP_ALLOCATED,
                     f"allocated {', '.join(map(str, fresh or want))}" + (f" from pool {pool}" if pool else ""),
                     routine=not have)
        else:
            reason = unresolved.get(key, "no address")
            refused[key] = reason
            note(obj, "Warning", IP_REFUSED, reason)
            if have:
                ingress = ()
        if want:
            group = new_group_of.get(key)
            if group is None:
                why = unresolved.get(key, "no VIP group")
                # A Local Service before its pods are ready (every new one, for a moment): its
                # EndpointSlices say so; only a failure of vipcore's own is worth an Event.
                note(obj, "Warning", NO_GROUP, why, routine=why == NO_READY_ENDPOINT)
            elif old_group_of.get(key) != group.name and not _same_router(
                    group_objs.get(old_group_of.get(key, "")), group, state.nodes):
                note(obj, "Normal", GROUP_ASSIGNED, _describe_group(group), routine=key not in old_group_of)
        if ingress is not None or has_finalizer(obj):
            writes.append(ServiceWrite(ns, name, rv, ingress=ingress, drop_finalizer=has_finalizer(obj)))

    # A big group is written as shards (vipcore.core.shards); writes that only add VIPs go first, so an
    # agent never misses a VIP moving between shards (it has it twice for a moment, and merges).
    growing: list[tuple[int, GroupWrite]] = []
    shrinking: list[tuple[int, GroupWrite]] = []
    wanted_groups: set[str] = set()
    for group in resolution.groups:
        # The count it is written with: its shard 0's, or (renamed) its set's.
        current = _shard_count(group_objs.get(group.name)) or _shard_count(group_objs.get(shard_name(group, 1)))
        reach = len(group.nodes)
        for part in split(group, addresses, current, bound=shard_vips):
            wanted_groups.add(part.name)
            existing = group_objs.get(part.name)
            if existing is None:
                growing.append((reach, GroupWrite(part)))
                continue
            spec, old = vipgroup_spec(part), _normal_spec(existing.get("spec"))
            if old != spec:
                write = GroupWrite(part, str(_meta(existing).get("resourceVersion")))
                gone = any(set(old["vips"][f]) - set(spec["vips"][f]) for f in ("ipv4", "ipv6"))
                (shrinking if gone else growing).append((reach, write))
    group_writes = by_reach(growing) + by_reach(shrinking)
    deletes = tuple(sorted(name for name in group_objs if name not in wanted_groups))

    after = {ip for ips in addresses.items() for ip in ips[1]}
    return Plan(
        services=tuple(writes),
        groups=tuple(group_writes),
        deletes=deletes,
        notes=tuple(notes),
        resolution=resolution,
        allocated=allocated,
        refused=refused,
        group_versions={name: str(_meta(obj).get("resourceVersion")) for name, obj in group_objs.items()
                        if _meta(obj).get("resourceVersion")},
        released=frozenset(before - after),
        addresses=addresses,
    )


def _pool_name(service: Service, pools: Sequence[Pool]) -> str | None:
    chosen = choose_pool(service, {p.name: p for p in pools})
    return None if isinstance(chosen, str) else chosen.name


#: The finalizer vipcore puts on a VipPool: deleting the pool waits until no Service holds an address from it.
POOL_FINALIZER = "vipcore.io/pool"


def by_reach(writes: Iterable[tuple[int, GroupWrite]]) -> list[GroupWrite]:
    """``(members, write)`` pairs as the order to write them in: the groups with the most member nodes first.

    Every agent waits for the write that carries its group, and the controller writes one after
    another: a Node flip renames the ``Cluster`` group (every node is a member) and a few ``Local``
    groups (the nodes of one Service's endpoints); written in name order (a hash), most agents would
    wait for groups that are not theirs. Stable: a group's shards, and equal counts, keep their order.
    """
    return [write for _, write in sorted(writes, key=lambda pair: -pair[0])]


def pool_status(
    pool: Pool,
    addresses: Mapping[str, tuple[IPAddress, ...]],
    *,
    invalid: str | None = None,
    generation: int | None = None,
    previous: Mapping[str, Any] | None = None,
    now: str = "",
) -> dict[str, Any]:
    """A VipPool's status: allocated and free addresses per family, and a ``Valid`` condition.

    ``pool`` is the pool in force (the last valid one when the object's
    current spec is ``invalid``, with why). ``previous``: the status now,
    so the condition keeps its ``lastTransitionTime`` while it does not change.
    """
    status: dict[str, Any] = {}
    used = {ip for ips in addresses.values() for ip in ips if pool.contains(ip)}
    for family in pool.families:
        allocated = sum(1 for ip in used if Family.of(ip) is family)
        status["ipv4" if family is Family.IPV4 else "ipv6"] = {"allocated": allocated, "free": pool.size(family) - allocated}
    if invalid is None:
        cond: dict[str, Any] = {"type": "Valid", "status": "True", "reason": "Valid", "message": "the spec is in force"}
    else:
        cond = {"type": "Valid", "status": "False", "reason": "InvalidSpec",
                "message": f"{invalid}; the last valid spec stays in force"}
    if generation is not None:
        cond["observedGeneration"] = generation
        status["observedGeneration"] = generation
    old = next((c for c in (previous or {}).get("conditions") or []
                if isinstance(c, Mapping) and c.get("type") == "Valid"), None)
    same = old is not None and old.get("status") == cond["status"] and old.get("reason") == cond["reason"]
    cond["lastTransitionTime"] = str(old.get("lastTransitionTime")) if same and old else now
    status["conditions"] = [cond]
    return status


def pool_in_use(pool: Pool, addresses: Mapping[str, tuple[IPAddress, ...]]) -> bool:
    """Whether any Service still holds an address from ``pool``."""
    return any(pool.contains(ip) for ips in addresses.values() for ip in ips)


def group_status(obj: Obj, *, now: str = "") -> dict[str, Any] | None:
    """The status fields the controller owns on a VipGroup (``observedGeneration`` and the ``Held``
    condition), or None when they are already right. Agents own ``status.holders``.
    """
    meta = _meta(obj)
    generation = meta.get("generation")
    raw_spec, raw_status = obj.get("spec"), obj.get("status")
    spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
    raw_vips = spec.get("vips")
    vips: Mapping[str, Any] = raw_vips if isinstance(raw_vips, Mapping) else {}
    holders = holders_of(obj)
    families = [f for f in ("ipv4", "ipv6") if vips.get(f)]
    missing = [f for f in families if f not in holders]
    shard = _shard(obj)
    if shard is not None and shard[1] > 0:
        cond: dict[str, Any] = {"type": "Held", "status": "Unknown", "reason": "Shard",
                                "message": f"shard {shard[1]} of set {shard[0]}: holders are recorded on its group "
                                           "(shard 0)"}
    elif missing:
        cond = {"type": "Held", "status": "False", "reason": "NoHolder",
                                "message": "no node holds the " + " and ".join(
                                    "IPv4" if f == "ipv4" else "IPv6" for f in missing) + " VIPs"}
    else:
        cond = {"type": "Held", "status": "True", "reason": "Held",
                "message": ", ".join(f"{holders[f]} holds {'IPv4' if f == 'ipv4' else 'IPv6'}" for f in families)
                or "no VIPs"}
    if isinstance(generation, int):
        cond["observedGeneration"] = generation
    status: Mapping[str, Any] = raw_status if isinstance(raw_status, Mapping) else {}
    old = next((c for c in status.get("conditions") or []
                if isinstance(c, Mapping) and c.get("type") == "Held"), None)
    same = old is not None and old.get("status") == cond["status"]
    cond["lastTransitionTime"] = str(old.get("lastTransitionTime")) if same and old else now
    if old is not None and {k: v for k, v in old.items()} == cond and status.get("observedGeneration") == generation:
        return None
    result: dict[str, Any] = {"conditions": [cond]}
    if isinstance(generation, int):
        result["observedGeneration"] = generation
    return result


def holder_notes(
    before: Mapping[str, Mapping[str, str]],
    groups: Iterable[Obj],
) -> tuple[dict[str, dict[str, str]], list[Note]]:
    """Events for holder changes between the holders seen ``before`` and ``groups`` now.

    Holders are tracked per Service (Service key -> family -> node), not per
    group: a membership change renames the group, and a renamed group whose
    holder did not change is no Event. Returns the holders now and one
    ``HolderChanged`` note per Service whose holder changed. A Service whose
    group reports no holder yet (just created by a rename) keeps its last one.
    """
    seen: dict[str, dict[str, set[str]]] = {}
    vips_of: dict[tuple[str, str], str] = {}
    objs = sorted(groups, key=lambda o: str(_meta(o).get("name")))
    by_name = {str(_meta(o).get("name")): o for o in objs}
    names = group_names(objs)
    for obj in objs:
        spec = obj.get("spec") or {}
        vips = spec.get("vips") or {}
        # Agents record the holders of a sharded group on its shard 0 (named as the group).
        holders: dict[str, str] = {}
        for zero in names[str(_meta(obj).get("name"))]:
            holders.update(holders_of(by_name[zero]))
        for svc_key in spec.get("services") or []:
            families = seen.setdefault(str(svc_key), {})
            for family, node in holders.items():
                families.setdefault(family, set()).add(node)
                vips_of.setdefault((str(svc_key), family), ", ".join(vips.get(family) or []) or "its VIPs")
    now: dict[str, dict[str, str]] = {}
    notes: list[Note] = []
    for svc_key, families in sorted(seen.items()):
        old = before.get(svc_key, {})
        now[svc_key] = dict(old)
        for family, nodes in sorted(families.items()):
            if old.get(family) in nodes:
                continue  # still held where it was (perhaps by the renamed group)
            node = sorted(nodes)[0]
            now[svc_key][family] = node
            family_name = "IPv4" if family == "ipv4" else "IPv6" if family == "ipv6" else family
            was = f" (was {old[family]})" if old.get(family) else ""
            ns, _, svc_name = svc_key.partition("/")
            notes.append(Note(ns, svc_name, None, "Normal", HOLDER_CHANGED,
                              f"node {node} holds {vips_of[(svc_key, family)]} ({family_name}){was}",
                              routine=not was))
    return now, notes


__all__ = [
    "FINALIZER", "COMPONENT", "Note", "ServiceWrite", "GroupWrite", "Plan", "Selection", "plan",
    "holder_notes", "group_names", "persisted_vrids", "persisted_lineage", "ingress_body", "ingress_of", "POOL_FINALIZER",
    "pool_status", "pool_in_use", "group_status",
]
