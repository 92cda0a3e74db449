"""The one writer: every write vipcore makes to the Kubernetes API goes through :class:`KubernetesWriter`.

Service finalizers and status, VipGroup specs and status, Events and Leases.
Each request goes through :func:`vipcore.kube.client.request`: a timeout on
every request, transient failures (5xx, 429, connection errors, timeouts)
retried with the one policy :data:`vipcore.kube.client.API_RETRY`, errors as
:class:`~vipcore.kube.client.KubernetesError` described by
:func:`~vipcore.kube.client.describe`.

Writes whose decision depends on what was read carry that read's
``resourceVersion`` (compare-and-swap): a concurrent change makes them fail
with 409, and the caller decides whether to re-read and write again.

A writer built with a ``limit`` (a :class:`RateLimit`: client-side QPS and
burst, a token bucket) takes a token before every try of every request but
the Lease's, so a controller creating thousands of addresses at once stays
within what the API server was promised; Lease requests are exempt so a busy
writer never starves its own leadership renewals. Writers of one process
share one bucket (the controller builds a writer per pass).

A writer built with a ``fence`` (the controller's: "seconds of leadership
left") refuses every write, before each try, once the fence says 0, and
bounds each request by the time left, so a replica that lost its Lease stops
writing even in the middle of a reconcile pass. Reads and Lease writes are
not fenced (a candidate needs them to become leader).

The client is synchronous: call these from a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from vipcore.core.model import FINALIZER, FailoverPhases, Family, IPAddress
from vipcore.core.model import VipGroup as ModelVipGroup
from vipcore.core.objects import family_key, vipgroup_spec
from vipcore.kube.client import (
    API_RETRY,
    GROUP,
    MERGE_PATCH,
    REQUEST_TIMEOUT,
    VERSION,
    VIPGROUPS,
    NotLeaderError,
    RetryPolicy,
    object_path,
    request,
    rfc3339,
    status_of,
)

log = logging.getLogger("vipcore.kube")

Obj = dict[str, Any]
#: Seconds this writer may still write (its leadership left); 0 or less refuses every fenced write.
Fence = Callable[[], float]

LEASES = "coordination.k8s.io/v1"
#: Lease requests are tried once: the elector retries on its own clock, under its renew deadline.
LEASE_RETRY = RetryPolicy(attempts=1)


class RateLimit:
    """A token bucket: ``qps`` tokens a second, at most ``burst`` saved up; thread-safe.

    :meth:`take` blocks until a token is free (first come, first served within
    the waiting threads' wake-ups). ``qps`` 0 means no limit.
    """

    def __init__(self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if qps < 0 or burst < 1:
            raise ValueError("qps must be >= 0 and burst >= 1")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()
        #: Seconds callers spent waiting for a token (for metrics and the bench).
        self.waited = 0.0

    def reserve(self) -> float:
        """Take a token now, possibly on credit: the seconds the caller must wait before using it."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1.0
            delay = -self._tokens / self.qps if self._tokens < 0 else 0.0
            self.waited += delay
            return delay

    def take(self) -> None:
        """Block until a token is ours."""
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)


def _spec(group: ModelVipGroup) -> Obj:
    if group.vrid is None:
        raise ValueError(f"group {group.name} has no VRID; the controller must assign one before writing it")
    return vipgroup_spec(group)


def _vipgroup_path(name: str | None = None, subresource: str | None = None) -> str:
    return object_path(f"{GROUP}/{VERSION}", VIPGROUPS, name, subresource=subresource)


def _vippool_path(name: str | None = None, subresource: str | None = None) -> str:
    return object_path(f"{GROUP}/{VERSION}", "vippools", name, subresource=subresource)


def _service_path(namespace: str, name: str, subresource: str | None = None) -> str:
    return object_path("v1", "services", name, namespace=namespace, subresource=subresource)


def _lease_path(namespace: str, name: str | None = None) -> str:
    return object_path(LEASES, "leases", name, namespace=namespace)


class KubernetesWriter:
    """Writes (and the reads they build on) of the controller and the agent."""

    def __init__(self, client: Any, *, component: str = "vipcore", instance: str | None = None,
                 retry: RetryPolicy = API_RETRY, timeout: float = REQUEST_TIMEOUT,
                 fence: Fence | None = None, limit: RateLimit | None = None) -> None:
        self.client = client
        self.limit = limit
        self.component = component
        self.instance = instance or os.uname().nodename
        self.retry = retry
        self.timeout = timeout
        self.fence = fence

    # -------------------------------------------------------------- the request

    def _request(self, method: str, path: str, body: Any = None, *, fenced: bool = True,
                 content_type: str = "application/json", retry: RetryPolicy | None = None,
                 timeout: float | None = None, limited: bool = True) -> Obj:
        """One API call, retried by policy; fenced writes are checked before every try.

        ``limited``: takes a token of the writer's :class:`RateLimit` before every try (Lease requests do not).
        """
        limited = limited and self.limit is not None
        for attempt in (retry or self.retry).retrying():
            with attempt:
                if limited:
                    assert self.limit is not None
                    self.limit.take()
                limit = min(self.timeout, timeout) if timeout is not None else self.timeout
                if fenced and self.fence is not None:
                    left = self.fence()
                    if left <= 0:
                        raise NotLeaderError(f"{method} {path} not sent: this replica is not the leader")
                    limit = min(limit, left)
                return request(self.client, method, path, body, timeout=limit, content_type=content_type)
        raise AssertionError("unreachable")

    def _read(self, path: str, *, retry: RetryPolicy | None = None, timeout: float | None = None,
              limited: bool = True) -> Obj | None:
        """GET an object; None when it does not exist."""
        try:
            return self._request("GET", path, fenced=False, retry=retry, timeout=timeout, limited=limited)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise

    # -------------------------------------------------------------- Services

    def read_service(self, namespace: str, name: str) -> Obj | None:
        return self._read(_service_path(namespace, name))

    def set_service_ingress(self, obj: Mapping[str, Any], addresses: Sequence[IPAddress]) -> Obj:
        """Make ``status.loadBalancer.ingress`` exactly ``addresses`` (empty clears it), through ``/status``.

        Compare-and-swap on ``obj``'s resourceVersion: 409 if the Service changed since.
        """
        meta = obj["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]},
                "status": {"loadBalancer": {"ingress": [{"ip": str(ip)} for ip in addresses] or None}}}
        return self._request("PATCH", _service_path(meta["namespace"], meta["name"], "status"), body,
                             content_type=MERGE_PATCH)

    def set_service_finalizer(self, obj: Mapping[str, Any], present: bool, finalizer: str = FINALIZER) -> Obj:
        """Add or remove ``finalizer``; ``obj`` unchanged when already so.

        Compare-and-swap on ``obj``'s resourceVersion (the whole list is written): 409 if it changed since.
        """
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if (finalizer in finalizers) == present:
            return dict(obj)
        finalizers = finalizers + [finalizer] if present else [f for f in finalizers if f != finalizer]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"], "finalizers": finalizers or None}}
        return self._request("PATCH", _service_path(meta["namespace"], meta["name"]), body,
                             content_type=MERGE_PATCH)

    # -------------------------------------------------------------- VipGroups

    def read_vipgroup(self, name: str) -> Obj | None:
        return self._read(_vipgroup_path(name))

    def create_vipgroup(self, group: ModelVipGroup, *, labels: Mapping[str, str] | None = None) -> Obj:
        """Create the VipGroup of a resolved group (VRID set); 409 if it exists."""
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VipGroup",
                "metadata": {"name": group.name, **({"labels": dict(labels)} if labels else {})},
                "spec": _spec(group)}
        return self._request("POST", _vipgroup_path(), body)

    def update_vipgroup(self, group: ModelVipGroup, resource_version: str) -> Obj:
        """Replace the spec of an existing VipGroup, compare-and-swap on ``resource_version``; status untouched.

        Keys of the old spec that the new one lacks are removed (merge-patch null).
        """
        spec = _spec(group)
        body = {"metadata": {"resourceVersion": resource_version},
                "spec": {**{k: None for k in ("interface", "nodes", "vrid", "vips", "services", "shard")}, **spec}}
        return self._request("PATCH", _vipgroup_path(group.name), body, content_type=MERGE_PATCH)

    def delete_vipgroup(self, name: str, resource_version: str | None = None) -> bool:
        """Delete a VipGroup (only at ``resource_version`` when given: 409 if it changed); False if gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions",
                **({"preconditions": {"resourceVersion": resource_version}} if resource_version else {})}
        try:
            self._request("DELETE", _vipgroup_path(name), body)
        except Exception as exc:
            if status_of(exc) == 404:
                return False
            raise
        return True

    def set_vipgroup_holder(self, name: str, family: Family, node: str | None, *, since: float | None = None,
                            backend: str | None = None, resource_version: str | None = None,
                            failover_seconds: float | None = None,
                            phases: FailoverPhases | None = None) -> Obj | None:
        """Record (or, with ``node=None``, clear) the holder of one family in ``status.holders``.

        ``failover_seconds`` and ``phases``: how long the failover that made ``node`` the holder took and
        where the time went (``lastFailoverSeconds``, ``lastFailover``: ``detectSeconds``, …,
        ``totalSeconds``), when the backend measured them; a holder recorded without them has none.
        With ``resource_version``: only if the VipGroup is unchanged since (409 otherwise).
        None when the VipGroup does not exist.
        """
        holder: Obj | None = None
        if node is not None:
            holder = {"node": node, "since": rfc3339(since if since is not None else time.time())}
            if backend:
                holder["backend"] = backend
            # A merge patch: absent keys would keep the previous holder's figures, so null clears them.
            holder["lastFailoverSeconds"] = round(failover_seconds, 6) if failover_seconds is not None else None
            measured = [*phases.items(), ("total", phases.total)] if phases is not None else []
            recorded = {f"{phase}Seconds": round(value, 6) for phase, value in measured if value is not None}
            holder["lastFailover"] = recorded or None
        body: Obj = {"status": {"holders": {family_key(family): holder}}}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            return self._request("PATCH", _vipgroup_path(name, "status"), body, content_type=MERGE_PATCH)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise

    # -------------------------------------------------------------- Events

    def create_event(self, involved: Mapping[str, Any], reason: str, message: str, *,
                     type: str = "Normal") -> Obj:
        """A core/v1 Event about ``involved`` (an object dict, or a reference with kind/namespace/name)."""
        meta = involved.get("metadata") or involved
        namespace = meta.get("namespace") or "default"
        now = rfc3339(time.time())
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'vipcore')}.", "namespace": namespace},
            "involvedObject": {k: v for k, v in {
                "kind": involved.get("kind"), "apiVersion": involved.get("apiVersion"), "namespace": namespace,
                "name": meta.get("name"), "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion")}.items() if v},
            "reason": reason, "message": message[:1024], "type": type,
            "source": {"component": self.component},
            "reportingComponent": self.component, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        return self._request("POST", object_path("v1", "events", namespace=namespace), body)

    def count_event(self, event: Mapping[str, Any], count: int, message: str | None = None) -> Obj:
        """Record that ``event`` (an Event this writer created) happened again: its ``count`` and ``lastTimestamp``."""
        meta = event["metadata"]
        body: Obj = {"count": count, "lastTimestamp": rfc3339(time.time())}
        if message is not None:
            body["message"] = message[:1024]
        return self._request("PATCH", object_path("v1", "events", meta["name"], namespace=meta["namespace"]),
                             body, content_type=MERGE_PATCH)

    # -------------------------------------------------------------- Leases

    def read_lease(self, namespace: str, name: str, *, timeout: float | None = None) -> Obj | None:
        """The Lease, or None when it does not exist (one try: see :data:`LEASE_RETRY`)."""
        return self._read(_lease_path(namespace, name), retry=LEASE_RETRY, timeout=timeout, limited=False)

    def create_lease(self, namespace: str, name: str, spec: Mapping[str, Any], *,
                     timeout: float | None = None) -> Obj:
        """Create a Lease; 409 if it exists. MicroTimes in ``spec`` are sent exactly as given."""
        body = {"apiVersion": LEASES, "kind": "Lease", "metadata": {"name": name, "namespace": namespace},
                "spec": dict(spec)}
        return self._request("POST", _lease_path(namespace), body, fenced=False, retry=LEASE_RETRY,
                             timeout=timeout, limited=False)

    def replace_lease(self, lease: Mapping[str, Any], spec: Mapping[str, Any], *,
                      timeout: float | None = None) -> Obj:
        """Write ``spec`` with the resourceVersion ``lease`` was read at (409 if it changed since)."""
        meta = lease["metadata"]
        body = {"apiVersion": LEASES, "kind": "Lease",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"],
                             "resourceVersion": meta["resourceVersion"]},
                "spec": dict(spec)}
        return self._request("PUT", _lease_path(meta["namespace"], meta["name"]), body, fenced=False,
                             retry=LEASE_RETRY, timeout=timeout, limited=False)


    # -------------------------------------------------------------- VipPools

    def patch_vippool_status(self, name: str, status: Mapping[str, Any]) -> Obj | None:
        """Replace a VipPool's status through ``/status`` (merge-patch); None when the pool is gone."""
        body = {"status": {"ipv4": None, "ipv6": None, **status}}
        try:
            return self._request("PATCH", _vippool_path(name, "status"), body, content_type=MERGE_PATCH)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise

    def set_vippool_finalizers(self, name: str, resource_version: str, finalizers: Sequence[str]) -> Obj | None:
        """Set a VipPool's finalizers, compare-and-swap on ``resource_version``; None when gone or changed.

        A 409 returns None: the caller plans again from the fresh object.
        """
        patch = {"metadata": {"resourceVersion": resource_version, "finalizers": list(finalizers) or None}}
        try:
            return self._request("PATCH", _vippool_path(name), patch, content_type=MERGE_PATCH)
        except Exception as exc:
            if status_of(exc) in (404, 409):
                return None
            raise

    def patch_vipgroup_status(self, name: str, status: Mapping[str, Any]) -> Obj | None:
        """Merge ``status`` into a VipGroup's status through ``/status``; None when the group is gone."""
        try:
            return self._request("PATCH", _vipgroup_path(name, "status"), {"status": dict(status)},
                                 content_type=MERGE_PATCH)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise


#: Events an :class:`EventRecorder` remembers for aggregation (client-go's LRU holds as many).
EVENT_CACHE = 4096


class EventRecorder:
    """Events aggregated as the Kubernetes event recorder does: one Event object per
    (involved object, type, reason, message), its ``count`` raised when it happens again.

    Remembers the last :data:`EVENT_CACHE` Events it wrote (least recently used
    forgotten first; a new leader starts empty, so its first repeat is a new
    Event). An Event that is gone (expired by the API server's TTL) is created
    again. Thread-safe; errors propagate (the caller decides whether they matter).
    """

    def __init__(self, size: int = EVENT_CACHE) -> None:
        self.size = size
        self._seen: dict[tuple[str, ...], tuple[Obj, int]] = {}
        self._lock = threading.Lock()

    def record(self, writer: KubernetesWriter, involved: Mapping[str, Any], reason: str, message: str, *,
               type: str = "Normal") -> Obj:
        meta = involved.get("metadata") or involved
        key = (str(involved.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name")),
               str(meta.get("uid") or ""), type, reason, message)
        with self._lock:
            known = self._seen.pop(key, None)
        event: Obj | None = None
        if known is not None:
            try:
                event = writer.count_event(known[0], known[1] + 1)
            except Exception as exc:
                if status_of(exc) != 404:
                    raise
        if event is None:
            event = writer.create_event(involved, reason, message, type=type)
        with self._lock:
            self._seen[key] = (event, int(event.get("count") or 1))
            while len(self._seen) > self.size:
                del self._seen[next(iter(self._seen))]
        return event

__all__ = ["EVENT_CACHE", "EventRecorder", "Fence", "KubernetesWriter", "LEASE_RETRY", "RateLimit"]
