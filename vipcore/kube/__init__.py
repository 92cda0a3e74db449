"""Desired state from the Kubernetes API: the one package that talks to the ``kubernetes`` client.

Modules: ``client`` (configuration, errors, retry policies), ``kinds`` (what is
watched), ``informer`` (list+watch cache, wake-ups), ``writes`` (writes),
``leases`` (leader election), ``heartbeat`` (node heartbeat Leases).

Reading: :class:`KubernetesSource` lists and watches Nodes, Services,
EndpointSlices, VipPools (and OpenELB Eips) and VipGroups into a cache, one
thread per kind (the official client blocks). It resumes a watch from the last
resourceVersion it saw; on ``410 Gone`` it re-lists and emits the deletions it
missed; on errors it backs off (tenacity: exponential, jittered, capped), so an
unhealthy API server never sees a reconnect storm. Changes reach asyncio through
``loop.call_soon_threadsafe`` and become :class:`~vipcore.core.model.DesiredState`
values, converted only by :mod:`vipcore.core.objects`.

Writing: :class:`KubernetesWriter` holds the writes the controller and agent
need (Service status through ``/status``, finalizers with compare-and-swap,
VipGroups and their status, Events, Leases), each retried on 5xx/429 and
connection errors, and on 409 Conflict where a re-read makes sense.
"""

from __future__ import annotations

from vipcore.core.model import FINALIZER
from vipcore.kube.client import (
    GROUP,
    VERSION,
    ApiUnavailableError,
    ConflictError,
    KubernetesError,
    api_client,
    list_objects,
    backoff,
    transient,
    write_retrying,
)
from vipcore.kube.kinds import (
    ALL_KINDS,
    EIPS,
    ENDPOINT_SLICES,
    NODES,
    SERVICES,
    VIP_GROUPS,
    VIP_POOLS,
    Kind,
    lease_kind,
    object_key,
)
from vipcore.kube.informer import ConnectionState, KubernetesSource, ObjectChange, wait_event
from vipcore.kube.writes import KubernetesWriter, LeaseRecord, now_rfc3339, vipgroup_manifest



__all__ = [
    "ALL_KINDS", "EIPS", "ENDPOINT_SLICES", "FINALIZER", "GROUP", "NODES", "SERVICES", "VERSION", "VIP_GROUPS",
    "VIP_POOLS", "ApiUnavailableError", "ConflictError", "ConnectionState", "Kind", "KubernetesError",
    "KubernetesSource", "KubernetesWriter", "LeaseRecord", "ObjectChange", "api_client", "lease_kind", "list_objects", "backoff",
    "now_rfc3339", "object_key", "transient", "vipgroup_manifest", "wait_event", "write_retrying",
]
