"""vipcore: keep Kubernetes LoadBalancer VIPs reachable on bare metal.

Importing vipcore does no work: no plugin manager, no sockets, no config.
Library users get the model and the pure resolver::

    from vipcore import resolve, group_name, DesiredState
"""

from __future__ import annotations

from vipcore.backend import Backend, BackendContext, BackendInfo, BackendRegistry, hookimpl, rank_nodes
from vipcore.core.errors import (
    AllocationError,
    ConfigError,
    InterfaceNotFoundError,
    ManifestError,
    PluginError,
    UnknownBackendError,
    VipcoreError,
)
from vipcore.core.ipam import allocate
from vipcore.core.model import (
    DesiredState,
    EndpointSlice,
    FailoverPhases,
    Family,
    Membership,
    MetricSample,
    Node,
    PeerNode,
    Pool,
    Resolution,
    Service,
    State,
    StateChange,
    StatusTable,
    TrafficPolicy,
    Unresolved,
    VipGroup,
    VridPolicy,
)
from vipcore.core.placement import holder, priorities, rank
from vipcore.core.resolve import choose_pool, group_name, membership, node_eligible, resolve
from vipcore.core.vrid import allocate_vrids

__version__ = "0.1.0"

__all__ = [
    "AllocationError", "Backend", "BackendContext", "BackendInfo", "BackendRegistry", "ConfigError", "DesiredState",
    "EndpointSlice", "FailoverPhases", "Family", "InterfaceNotFoundError", "ManifestError", "Membership", "MetricSample", "Node",
    "PeerNode", "PluginError", "Pool", "Resolution", "Service", "State", "StateChange", "StatusTable", "TrafficPolicy",
    "UnknownBackendError", "Unresolved", "VipGroup", "VipcoreError", "VridPolicy", "allocate", "allocate_vrids",
    "choose_pool", "group_name", "holder", "hookimpl", "membership", "node_eligible", "priorities", "rank",
    "rank_nodes", "resolve",
]
