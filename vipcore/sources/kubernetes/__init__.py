"""Desired state from the Kubernetes API: the one package that talks to the ``kubernetes`` client.

Modules: ``client`` (configuration, errors, retry policies), ``kinds`` (what is
watched), ``source`` (list+watch cache), ``writer`` (writes). Import from here.

Reading: :class:`KubernetesSource` lists and watches Nodes, Services,
EndpointSlices, VipPools (and OpenELB Eips) and VipGroups into a cache, one
thread per kind (the official client blocks). It resumes a watch from the last
resourceVersion it saw; on ``410 Gone`` it re-lists and emits the deletions it
missed; on errors it backs off (tenacity: exponential, jittered, capped), so an
unhealthy API server never sees a reconnect storm. Changes reach asyncio through
``loop.call_soon_threadsafe`` and become :class:`~vipcore.model.DesiredState`
values, converted only by :mod:`vipcore.convert`.

Writing: :class:`KubernetesWriter` holds the writes the controller and agent
need (Service status through ``/status``, finalizers with compare-and-swap,
VipGroups and their status, Events, Leases), each retried on 5xx/429 and
connection errors, and on 409 Conflict where a re-read makes sense.
"""

from typing import Any

from vipcore.model import FINALIZER
from vipcore.sources.kubernetes.client import (
    GROUP,
    VERSION,
    ApiUnavailableError,
    ConflictError,
    KubernetesError,
    api_client,
    backoff,
    transient,
    write_retrying,
)
from vipcore.sources.kubernetes.kinds import (
    ALL_KINDS,
    EIPS,
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    VIP_GROUPS,
    VIP_POOLS,
    Kind,
    object_key,
)
from vipcore.sources.kubernetes.source import ConnectionState, KubernetesSource, ObjectChange
from vipcore.sources.kubernetes.writer import KubernetesWriter, LeaseRecord, now_rfc3339, vipgroup_manifest



def agent_source(config: Any) -> Any:
    """The agent's source for ``source: kubernetes`` (what :func:`vipcore.agent.make_source` looks up here).

    It lives in :mod:`vipcore.sources.kubernetes_agent`, which builds on this
    package; imported lazily so that neither imports the other at load time.
    """
    from vipcore.sources.kubernetes_agent import agent_source as factory

    return factory(config)


__all__ = [
    "ALL_KINDS", "EIPS", "ENDPOINT_SLICES", "FINALIZER", "GROUP", "NODES", "SERVICES", "VERSION", "VIP_GROUPS",
    "VIP_POOLS", "ApiUnavailableError", "ConflictError", "ConnectionState", "Kind", "KubernetesError",
    "KubernetesSource", "KubernetesWriter", "LeaseRecord", "ObjectChange", "agent_source", "api_client", "backoff",
    "now_rfc3339", "object_key", "transient", "vipgroup_manifest", "write_retrying",
]
