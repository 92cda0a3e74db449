"""Carry out a :class:`~vipcore.core.plan.Plan` against the API server.

Service writes are compare-and-swap: each carries the resourceVersion the
plan was made from. On 409 Conflict the writer reads the Service again; when
what the plan depended on is unchanged (same served-or-not, same
:class:`~vipcore.core.model.Service` value, same deletion state) it writes again
with the fresh resourceVersion, up to :data:`CONFLICT_RETRIES` times;
otherwise it gives the write up and reports it, so the controller re-plans
from fresh data. VipGroup specs are written with merge-patch and no
precondition: the elected controller is their only writer, while agents
write their status through ``/status`` (which would otherwise conflict).

The kubernetes client is synchronous; call these from a worker thread.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vipcore.core.plan import (
    COMPONENT,
    FINALIZER,
    GroupWrite,
    Note,
    Plan,
    Selection,
    ServiceWrite,
    deleting,
    ingress_body,
)
from vipcore.core.objects import service_from_k8s
from vipcore.core.errors import ManifestError

log = logging.getLogger("vipcore.controller")

MERGE = "application/merge-patch+json"
CONFLICT_RETRIES = 5
GROUP, VERSION, PLURAL = "vipcore.io", "v1alpha1", "vipgroups"

Obj = dict[str, Any]


@attrs.define
class WriteResult:
    """What happened when a plan was carried out."""

    written: int = 0
    conflicts: int = 0
    #: Service keys whose write was given up because the object changed meaning: re-plan.
    stale: list[str] = attrs.field(factory=list)
    #: Human-readable failures (non-409 API errors), one per write.
    errors: list[str] = attrs.field(factory=list)
    #: Service keys / VipGroup names whose write failed.
    failed: set[str] = attrs.field(factory=set)

    @property
    def clean(self) -> bool:
        return not self.stale and not self.errors


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return int(status) if isinstance(status, int) else None


class ClusterWriter:
    """The controller's writes: Service finalizers and status, VipGroups, Events."""

    def __init__(self, api_client: Any, *, selection: Selection, instance: str = "") -> None:
        import kubernetes.client

        self.core: Any = kubernetes.client.CoreV1Api(api_client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(api_client)
        self.selection = selection
        self.instance = instance
        from vipcore.kube import KubernetesWriter

        self.events = KubernetesWriter(api_client, component=COMPONENT, instance=instance or COMPONENT, attempts=2)

    # -- whole plan ------------------------------------------------------------

    def apply(self, plan: Plan, services: Mapping[str, Mapping[str, Any]] | None = None) -> WriteResult:
        """Carry out ``plan``; ``services``: the Service objects (by key) it was made from."""
        result = WriteResult()
        originals = services or {}
        for write in plan.services:
            self._guard(result, f"Service {write.key}", write.key,
                        partial(self.service, write, result, originals.get(write.key)))
        for group in plan.groups:
            self._guard(result, f"VipGroup {group.name}", group.name, partial(self.group, group))
        for name in plan.deletes:
            self._guard(result, f"VipGroup {name}", name, partial(self.delete_group, name))
        return result

    def _guard(self, result: WriteResult, what: str, key: str, call: Callable[[], bool | None]) -> None:
        try:
            if call() is not False:
                result.written += 1
        except Exception as exc:  # noqa: BLE001 - one failed write must not stop the others
            message = f"{what}: {_describe(exc)}"
            result.errors.append(message)
            result.failed.add(key)
            log.warning("write failed: %s", message, extra={"event": "write_error"})

    # -- Services ----------------------------------------------------------------

    def _read_service(self, namespace: str, name: str) -> Obj | None:
        try:
            resp = self.core.read_namespaced_service(name, namespace, _preload_content=False)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise
        obj: Obj = json.loads(resp.data)
        return obj

    def _meaning(self, obj: Mapping[str, Any]) -> tuple[Any, ...]:
        """What a Service write depends on: if this is unchanged, the write still stands."""
        try:
            model: Any = service_from_k8s(obj)
        except ManifestError as exc:
            model = str(exc)
        return (self.selection.wants(obj), deleting(obj), model)

    def service(self, write: ServiceWrite, result: WriteResult, original: Mapping[str, Any] | None = None) -> bool:
        """Finalizer, then status (or status, then finalizer when releasing). False if gone or given up.

        ``original``: the object the plan was made from; its resourceVersion is
        the precondition of the first write (read now when not given).
        """
        current = original if original is not None else self._read_service(write.namespace, write.name)
        if current is None:
            return False
        meaning = self._meaning(current)
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._service_once(write, current)
                return True
            except Exception as exc:
                if _status(exc) == 404:
                    return False  # gone: nothing to hold or release
                if _status(exc) != 409 or attempt == CONFLICT_RETRIES:
                    raise
                result.conflicts += 1
                fresh = self._read_service(write.namespace, write.name)
                if fresh is None:
                    return False
                if self._meaning(fresh) != meaning:
                    result.stale.append(write.key)
                    log.info("Service %s changed since it was read; re-planning", write.key,
                             extra={"event": "conflict", "service": write.key})
                    return False
                current = fresh
                log.info("conflict writing Service %s; retrying at resourceVersion %s", write.key,
                         fresh["metadata"]["resourceVersion"], extra={"event": "conflict", "service": write.key})
        return False

    def _service_once(self, write: ServiceWrite, obj: Mapping[str, Any]) -> None:
        """One try, every write preconditioned on the resourceVersion of the object it builds on."""
        if write.finalizer is True:
            obj = self._finalizer(write, obj, add=True)
        if write.ingress is not None:
            body: Obj = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                         "status": {"loadBalancer": {"ingress": ingress_body(write.ingress) or None}}}
            resp = self.core.patch_namespaced_service_status(
                write.name, write.namespace, body, _content_type=MERGE, _preload_content=False)
            obj = json.loads(resp.data)
        if write.finalizer is False:
            self._finalizer(write, obj, add=False)

    def _finalizer(self, write: ServiceWrite, obj: Mapping[str, Any], *, add: bool) -> Mapping[str, Any]:
        finalizers = list(obj["metadata"].get("finalizers") or [])
        if add == (FINALIZER in finalizers):
            return obj
        finalizers = finalizers + [FINALIZER] if add else [f for f in finalizers if f != FINALIZER]
        body = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                             "finalizers": finalizers or None}}
        resp = self.core.patch_namespaced_service(write.name, write.namespace, body, _content_type=MERGE,
                                                  _preload_content=False)
        result: Mapping[str, Any] = json.loads(resp.data)
        return result

    # -- VipGroups -------------------------------------------------------------------

    def group(self, write: GroupWrite) -> bool:
        if write.create:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VipGroup",
                    "metadata": {"name": write.name, "labels": {"app.kubernetes.io/managed-by": COMPONENT}},
                    "spec": dict(write.spec)}
            try:
                self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
                return True
            except Exception as exc:
                if _status(exc) != 409:
                    raise
                # Already there (an earlier leader, or a stale cache): update its spec instead.
        self.custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, write.name, {"spec": dict(write.spec)},
                                                _content_type=MERGE)
        return True

    def delete_group(self, name: str) -> bool:
        try:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except Exception as exc:
            if _status(exc) != 404:
                raise
        return True

    # -- Events -----------------------------------------------------------------------

    def event(self, note: Note) -> None:
        """Record ``note`` as a ``v1`` Event on its Service (errors are logged, never raised).

        Written by the Kubernetes source's writer, which builds every Event vipcore records.
        """
        involved = {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": note.namespace, "name": note.name,
                                 **({"uid": note.uid} if note.uid else {})}}
        try:
            self.events.create_event_sync(involved, note.reason, note.message, type=note.type)
        except Exception as exc:  # noqa: BLE001 - an Event is best effort
            log.warning("event %s on %s failed: %s", note.reason, note.service, _describe(exc),
                        extra={"event": "event_error", "service": note.service})


def _describe(exc: BaseException) -> str:
    status = _status(exc)
    if status:
        body = getattr(exc, "body", None)
        message = ""
        if body:
            try:
                message = json.loads(body).get("message", "")
            except (ValueError, AttributeError):
                message = str(body)[:200]
        return f"HTTP {status} {message}".strip()
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
