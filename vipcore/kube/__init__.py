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

Writing: :class:`KubernetesWriter` is the one writer: Service status through
``/status`` and finalizers (compare-and-swap), VipGroup specs (with
resourceVersion preconditions) and status, Events, Leases. Every request has
a timeout and transient failures are retried with one policy
(:data:`API_RETRY`); the controller's writer is fenced by its leadership.
"""

from __future__ import annotations

from vipcore.core.model import FINALIZER
from vipcore.kube.client import (
    API_RETRY,
    GROUP,
    MERGE_PATCH,
    VERSION,
    VIPGROUPS,
    VIPPOOLS,
    ApiUnavailableError,
    KubernetesError,
    NotLeaderError,
    RetryPolicy,
    api_client,
    backoff,
    describe,
    list_objects,
    micro_time,
    rfc3339,
    status_of,
    transient,
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
from vipcore.kube.informer import ConnectionState, KubernetesSource, ObjectChange, Wakeup, wait_event
from vipcore.kube.writes import EventRecorder, Fence, KubernetesWriter, RateLimit

__all__ = [
    "ALL_KINDS", "API_RETRY", "EIPS", "ENDPOINT_SLICES", "FINALIZER", "GROUP", "MERGE_PATCH", "NODES", "SERVICES",
    "VERSION", "VIPGROUPS", "VIPPOOLS", "VIP_GROUPS", "VIP_POOLS", "ApiUnavailableError", "ConnectionState", "Fence", "Kind", "KubernetesError", "KubernetesSource", "EventRecorder", "KubernetesWriter", "NotLeaderError", "RateLimit",
    "ObjectChange", "RetryPolicy", "Wakeup", "api_client", "backoff", "describe", "lease_kind", "list_objects",
    "micro_time", "object_key", "rfc3339", "status_of", "transient", "wait_event",
]
