"""Values the core works with: nodes, services, endpoint slices, pools, groups.

All are frozen attrs classes. Conversion from Kubernetes objects lives in
:mod:`vipcore.core.objects`, never here.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import operator
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Union

import attrs

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: The annotation a Service uses to choose its pool.
POOL_ANNOTATION = "vipcore.io/pool"
#: The annotation a Service uses to request addresses (comma-separated, one per family).
IP_ANNOTATION = "vipcore.io/ip"
#: Nodes carrying this label never hold a VIP of a ``Cluster`` Service.
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
#: A node labelled with this (value "true") is drained: ranked last everywhere.
DRAIN_LABEL = "vipcore.io/drain"
#: The finalizer the controller holds on every Service it gave an address.
FINALIZER = "vipcore.io/vip"
#: The load balancer class vipcore implements.
LOAD_BALANCER_CLASS = "vipcore.io/vip"

VRID_MIN = 1
VRID_MAX = 255


class Family(enum.IntEnum):
    """An address family; its value is the IP version."""

    IPV4 = 4
    IPV6 = 6

    @classmethod
    def of(cls, address: IPAddress) -> "Family":
        return _FAMILIES[address.version]

    @property
    def k8s_name(self) -> str:
        return "IPv4" if self is Family.IPV4 else "IPv6"


#: Family by IP version (a dict lookup: calling the enum class is a microsecond of Python).
_FAMILIES = {4: Family.IPV4, 6: Family.IPV6}


class TrafficPolicy(enum.Enum):
    CLUSTER = "Cluster"
    LOCAL = "Local"


def _vrid(instance: object, attribute: "attrs.Attribute[Any]", value: int | None) -> None:
    if value is not None and not VRID_MIN <= value <= VRID_MAX:
        raise ValueError(f"{attribute.name} must be in {VRID_MIN}..{VRID_MAX}, got {value}")


def _interface_name(instance: object, attribute: "attrs.Attribute[str]", value: str) -> None:
    # Linux IFNAMSIZ is 16 including the NUL byte.
    if not value or len(value) > 15 or "/" in value or any(c.isspace() for c in value):
        raise ValueError(f"{attribute.name} {value!r} is not a valid Linux interface name")


def _sorted_unique(names: "tuple[str, ...] | list[str] | frozenset[str]") -> tuple[str, ...]:
    # Node lists come sorted and unique (as the controller writes them, as a merged group copies its
    # shard 0's): checked at C speed, 0.1 ms for 5,000 names where sorting their set takes 1 ms.
    if isinstance(names, (tuple, list)) and all(map(operator.lt, names, itertools.islice(names, 1, None))):
        return names if isinstance(names, tuple) else tuple(names)
    return tuple(sorted(set(names)))


@attrs.frozen
class Node:
    """A Kubernetes Node as far as VIPs care."""

    name: str
    addresses: tuple[IPAddress, ...] = ()
    ready: bool = True
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)

    @property
    def excluded(self) -> bool:
        """Whether the node opted out of external load balancers."""
        return EXCLUDE_LABEL in self.labels

    @property
    def drained(self) -> bool:
        """Whether an operator asked the node to give up its VIPs (label ``vipcore.io/drain=true``)."""
        return self.labels.get(DRAIN_LABEL, "").lower() == "true"

    def address(self, family: Family) -> IPAddress | None:
        """The node's first address of ``family`` (its InternalIP), if any."""
        for addr in self.addresses:
            if addr.version == family:
                return addr
        return None


@attrs.frozen
class EndpointSlice:
    """A ``discovery.k8s.io/v1`` EndpointSlice reduced to what placement needs."""

    namespace: str
    name: str
    service: str
    ready_nodes: frozenset[str] = frozenset()

    @property
    def service_key(self) -> str:
        return f"{self.namespace}/{self.service}"


@attrs.frozen
class Service:
    """A LoadBalancer Service."""

    namespace: str
    name: str
    traffic_policy: TrafficPolicy = TrafficPolicy.CLUSTER
    #: Addresses the user asked for (``spec.loadBalancerIP`` or the ip annotation).
    requested_ips: tuple[IPAddress, ...] = ()
    #: The pool chosen by annotation, or None for the default pool.
    pool: str | None = None
    #: Addresses already allocated (``status.loadBalancer.ingress``).
    vips: tuple[IPAddress, ...] = ()
    #: Families the Service wants, in order (``spec.ipFamilies``); empty means "as the pool offers, IPv4 first".
    families: tuple[Family, ...] = ()
    ports: tuple[tuple[str, int], ...] = ()
    #: Services with the same key may share an address when their ports do not clash
    #: (MetalLB's ``metallb.universe.tf/allow-shared-ip``, or OpenELB's shared requested IP).
    sharing_key: str | None = None
    #: ``spec.ipFamilyPolicy: RequireDualStack``: one address of each family, or none.
    require_dual_stack: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class VridPolicy:
    """Which VRIDs vipcore may use on one L2 network (interface)."""

    first: int = attrs.field(default=VRID_MIN, validator=_vrid)
    last: int = attrs.field(default=VRID_MAX, validator=_vrid)
    exclude: frozenset[int] = frozenset()

    def __attrs_post_init__(self) -> None:
        if self.first > self.last:
            raise ValueError(f"VRID range {self.first}-{self.last} is empty")

    @property
    def usable(self) -> tuple[int, ...]:
        return tuple(v for v in range(self.first, self.last + 1) if v not in self.exclude)

    def describe(self) -> str:
        text = f"{self.first}-{self.last}"
        if self.exclude:
            text += " excluding " + ",".join(str(v) for v in sorted(self.exclude))
        return text


@attrs.frozen
class Pool:
    """An address pool (``VipPool``, or an OpenELB ``Eip`` with protocol vip)."""

    name: str
    #: Address ranges as (first, last) inclusive pairs; network and broadcast
    #: addresses of CIDRs are already left out.
    ranges: tuple[tuple[IPAddress, IPAddress], ...]
    interface: str = attrs.field(validator=_interface_name)
    default: bool = False
    node_selector: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    disabled: bool = False
    #: Namespaces allowed to use the pool; empty means all.
    namespaces: frozenset[str] = frozenset()
    #: Namespaces whose Services get this pool when they name none (OpenELB's Eip ``spec.namespaces``).
    auto_namespaces: frozenset[str] = frozenset()
    #: Being deleted: allocates nothing new, like ``disabled``, until no Service holds an address from it.
    deleting: bool = False

    @property
    def families(self) -> tuple[Family, ...]:
        present = {Family(first.version) for first, _ in self.ranges}
        return tuple(sorted(present))

    def contains(self, address: IPAddress) -> bool:
        return any(
            first.version == address.version and first <= address <= last  # type: ignore[operator]
            for first, last in self.ranges
        )

    def size(self, family: Family) -> int:
        return sum(int(last) - int(first) + 1 for first, last in self.ranges if first.version == family)


@attrs.frozen
class Shard:
    """Which part of a big group one VipGroup object holds (see :mod:`vipcore.core.shards`).

    ``key``: the shard set's (:func:`vipcore.core.shards.set_key`: the group's router, which a rename
    keeps); ``index`` in ``0..count-1`` (0 is named as the group and has its nodes).
    """

    key: str
    index: int
    count: int = attrs.field()

    @count.validator
    def _check(self, attribute: "attrs.Attribute[int]", value: int) -> None:
        if not 0 <= self.index < value:
            raise ValueError(f"shard index {self.index} is not in 0..{value - 1}")


@attrs.frozen
class VipGroup:
    """A set of VIPs held together by one VRRP router per family.

    The name is OpenELB's: ``sha256(",".join(sorted(nodes))).hexdigest() + "-" + interface``.
    ``shard``: set on the part of a big group one VipGroup object holds (the
    controller writes those; an agent merges them back into one group).
    """

    name: str
    interface: str
    nodes: tuple[str, ...] = attrs.field(converter=_sorted_unique)
    vrid: int | None = attrs.field(default=None, validator=_vrid)
    vips_v4: tuple[ipaddress.IPv4Address, ...] = ()
    vips_v6: tuple[ipaddress.IPv6Address, ...] = ()
    services: tuple[str, ...] = ()
    shard: Shard | None = None

    def vips(self, family: Family) -> tuple[IPAddress, ...]:
        return self.vips_v4 if family is Family.IPV4 else self.vips_v6

    @property
    def families(self) -> tuple[Family, ...]:
        return tuple(f for f in Family if self.vips(f))

    @property
    def placement_key(self) -> str:
        """What placement ranks nodes by: the interface and the group's first Service.

        Deliberately not the group name: the name hashes the node list, so it
        changes whenever a node joins or leaves (a node failing, a Local
        Service scaling). Keyed by the first Service, the ranking of the
        remaining nodes survives that, and a node leaving moves only what it
        held. Adding a Service moves nothing unless its key sorts first.
        """
        return f"{self.interface}/{self.services[0]}" if self.services else self.name

    @property
    def short_name(self) -> str:
        """A 12-hex-digit prefix of the hash plus the interface, for tables."""
        digest, _, interface = self.name.partition("-")
        return f"{digest[:12]}-{interface}"


@attrs.frozen
class Unresolved:
    """A Service that got no group, and why."""

    service: str
    reason: str


@attrs.frozen
class Resolution:
    """What :func:`vipcore.core.resolve.resolve` decided."""

    groups: tuple[VipGroup, ...]
    unresolved: tuple[Unresolved, ...] = ()
    #: The addresses each Service ended up with (allocated or honoured).
    allocations: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict, hash=False)
    #: IPAM's answer for every Service it gave addresses, with or without a group (the
    #: controller keeps those in the Service status: a Local Service without endpoints keeps its IP).
    addresses: Mapping[str, tuple[IPAddress, ...]] = attrs.field(factory=dict, hash=False)

    def group(self, name: str) -> VipGroup | None:
        for group in self.groups:
            if group.name == name:
                return group
        return None

    def groups_of(self, node: str) -> tuple[VipGroup, ...]:
        return tuple(g for g in self.groups if node in g.nodes)


@attrs.frozen
class DesiredState:
    """Everything a source knows: the input of the resolver."""

    nodes: tuple[Node, ...] = ()
    services: tuple[Service, ...] = ()
    endpoint_slices: tuple[EndpointSlice, ...] = ()
    pools: tuple[Pool, ...] = ()
    #: Persisted or pinned VRIDs: group name -> VRID.
    vrids: Mapping[str, int] = attrs.field(factory=dict, hash=False)
    #: Services of each persisted group (group name -> Service keys): a renamed
    #: group inherits the VRID of the one it shares Services with.
    lineage: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict, hash=False)


class State(enum.Enum):
    """A VRRP-like router state, used by every backend when it reports."""

    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    FAULT = "fault"
    STOPPED = "stopped"


class TransitionCause(enum.Enum):
    """Why a router changed state: a bounded label any backend can attach to a
    :class:`StateChange` (metrics label transitions with it; the free-text
    ``reason`` stays for people)."""

    STARTED = "started"
    ADDRESS_OWNER = "address_owner"
    #: No advert from the master for Master_Down_Interval.
    MASTER_DOWN = "master_down"
    #: The master advertised priority 0 (it is stopping).
    PEER_RESIGNED = "peer_resigned"
    #: Node-level liveness lost the master's node (faster than Master_Down_Interval).
    PEER_LOST = "peer_lost"
    #: A better router advertised.
    PREEMPTED = "preempted"
    #: A graceful hand-over finished (or timed out).
    HANDED_OVER = "handed_over"
    RELEASED = "released"
    #: A control-plane decision to hold.
    TAKEOVER = "takeover"
    #: Following the other family of the same group.
    SYNC = "sync"
    CONFIG = "config"
    STOPPED = "stopped"
    PLACEMENT = "placement"
    #: The interface went away, went down or lost carrier.
    LINK_DOWN = "link_down"
    #: The interface came back.
    LINK_UP = "link_up"
    FAULT = "fault"


@attrs.frozen
class PeerNode:
    """Another member of a group, as a backend sees it."""

    name: str
    priority: int
    addresses: tuple[IPAddress, ...] = ()


@attrs.frozen
class Membership:
    """This node's part in one group: what the core hands a backend."""

    group: VipGroup
    node: str
    #: This node's priority (1..254), the same on every node and backend.
    priority: int
    #: Every member, this node included, in placement order (best first).
    members: tuple[PeerNode, ...]

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def preferred_holder(self) -> str:
        return self.members[0].name

    def peers(self) -> tuple[PeerNode, ...]:
        return tuple(m for m in self.members if m.name != self.node)


def _nothing_managed(address: IPAddress) -> bool:
    return False


@attrs.frozen
class GroupState:
    """An agent's desired state in the VipGroup view: its groups as the controller wrote them.

    The agent resolves nothing: each VipGroup already says its nodes, VRID and
    VIPs per family; only this node's part (priority, members in placement
    order, by :func:`vipcore.core.resolve.membership`) is computed, and only
    for the groups a change reached.
    """

    node: str
    #: This node's memberships by group name.
    memberships: Mapping[str, Membership] = attrs.field(factory=dict, hash=False)
    #: Every group the controller wrote (status pages and metrics show them).
    groups: tuple[VipGroup, ...] = ()
    pools: tuple[Pool, ...] = ()
    #: This node carries ``vipcore.io/drain=true``.
    drained: bool = False
    #: Whether an address is a VIP of any group (a backend's clean-up asks).
    managed: Callable[[IPAddress], bool] = attrs.field(default=_nothing_managed, eq=False, repr=False)


@attrs.frozen
class FailoverPhases:
    """Where the time of one failover into MASTER went, in seconds (None: the backend does not know that phase).

    ``detect``: from the previous master last heard to the failure being
    detected (Master_Down_Interval running out, or node-level liveness
    losing the master's node); ``elect``: detection to the decision to take
    over (any rank delay a backup ranked after the best survivor waits);
    ``address``: decision to the VIPs being in the kernel; ``announce``: from
    then to the first gratuitous ARP / unsolicited NA sent.
    """

    detect: float | None = None
    elect: float | None = None
    address: float | None = None
    announce: float | None = None

    #: The phases in order, as they are named in metrics (``phase`` label) and on ``/status``.
    NAMES: ClassVar[tuple[str, ...]] = ("detect", "elect", "address", "announce")

    def items(self) -> list[tuple[str, float | None]]:
        """``(name, seconds)`` in order."""
        return [(name, getattr(self, name)) for name in self.NAMES]

    @property
    def total(self) -> float | None:
        """The sum of the known phases, None when none is known."""
        known = [value for _, value in self.items() if value is not None]
        return sum(known) if known else None


@attrs.frozen
class StateChange:
    """A transition a backend reports through ``vipcore_state_changed``."""

    group: str
    family: Family
    old: State
    new: State
    reason: str
    #: Wall-clock time (``time.time()``) of the transition.
    at: float
    node: str
    backend: str
    vrid: int | None = None
    #: For transitions into MASTER: seconds from the trigger (the previous
    #: holder's adverts stopping, or a control-plane decision) to the VIPs
    #: being added and the first announcement sent. None when unknown.
    failover_seconds: float | None = None
    #: Why, as a bounded label; None for backends that give only ``reason``.
    cause: TransitionCause | None = None
    #: For a failover into MASTER after the master failed: its phases (None when unknown).
    failover_phases: FailoverPhases | None = None


#: What a cell of a :class:`StatusTable` may hold: it goes into JSON as it is.
StatusCell = str | int | float | bool | None


@attrs.frozen
class StatusTable:
    """One table a plugin adds to the agent's ``/status`` document through ``vipcore_status_sections``.

    ``rows`` hold one cell per column; cells are JSON scalars (numbers stay
    numbers in ``-o json``; ``vipcore status`` prints None as ``-``). Put the
    unit in the column name (``"DETECT MS"``).
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[StatusCell, ...], ...] = ()
    #: One line printed under the table (what it means, what to look at).
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(row) for row in self.rows],
                "note": self.note}


@attrs.frozen
class MetricSample:
    """One metric value a plugin offers through ``vipcore_collect_metrics``."""

    name: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()
    kind: str = "counter"  # "counter" or "gauge"
    help: str = ""
