"""vipcore: keep Kubernetes LoadBalancer VIPs reachable on bare metal.

Importing vipcore does no work: no plugin manager, no sockets, no config; each public name
is imported on first use.
Library users get the model and the pure resolver::

    from vipcore import resolve, group_name, DesiredState
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below are imported on first use (PEP 562): ``vipcore resolve`` needs few
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

#: Public name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(("Backend", "BackendContext", "BackendInfo", "BackendRegistry", "hookimpl", "rank_nodes"),
                    "vipcore.backend"),
    **dict.fromkeys(("AllocationError", "ConfigError", "InterfaceNotFoundError", "ManifestError", "PluginError",
                     "UnknownBackendError", "VipcoreError"), "vipcore.core.errors"),
    "allocate": "vipcore.core.ipam",
    **dict.fromkeys(("DesiredState", "EndpointSlice", "FailoverPhases", "Family", "Membership", "MetricSample",
                     "Node", "PeerNode", "Pool", "Resolution", "Service", "State", "StateChange", "StatusTable",
                     "TrafficPolicy", "Unresolved", "VipGroup", "VridPolicy"), "vipcore.core.model"),
    **dict.fromkeys(("holder", "priorities", "rank"), "vipcore.core.placement"),
    **dict.fromkeys(("choose_pool", "group_name", "membership", "node_eligible", "resolve"), "vipcore.core.resolve"),
    "allocate_vrids": "vipcore.core.vrid",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vipcore' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AllocationError", "Backend", "BackendContext", "BackendInfo", "BackendRegistry", "ConfigError", "DesiredState",
    "EndpointSlice", "FailoverPhases", "Family", "InterfaceNotFoundError", "ManifestError", "Membership", "MetricSample", "Node",
    "PeerNode", "PluginError", "Pool", "Resolution", "Service", "State", "StateChange", "StatusTable", "TrafficPolicy",
    "UnknownBackendError", "Unresolved", "VipGroup", "VipcoreError", "VridPolicy", "allocate", "allocate_vrids",
    "choose_pool", "group_name", "holder", "hookimpl", "membership", "node_eligible", "priorities", "rank",
    "rank_nodes", "resolve",
]
