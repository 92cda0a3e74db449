"""Carry out a :class:`~vipcore.core.plan.Plan` through the one writer, :class:`vipcore.kube.KubernetesWriter`.

Service writes are compare-and-swap: each carries the resourceVersion the
plan was made from. On 409 Conflict the Service is read again; when what the
plan depended on is unchanged (same served-or-not, same
:class:`~vipcore.core.model.Service` value, same deletion state) it is written
again with the fresh resourceVersion, up to :data:`CONFLICT_RETRIES` times;
otherwise the write is given up and reported as stale, so the controller
re-plans from fresh data. VipGroup updates and deletes carry the
resourceVersion the plan read, and a create assumes there was none: any 409
there also means "re-plan".

The writer is fenced by leadership: once this replica is no longer the
leader, the next write raises :class:`~vipcore.kube.client.NotLeaderError`
and the whole pass stops (:class:`NotLeading`).

Synchronous (the Kubernetes client is): call these from a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import attrs

from vipcore.core.errors import ManifestError
from vipcore.core.objects import service_from_k8s
from vipcore.core.plan import COMPONENT, GroupWrite, Note, Plan, Selection, ServiceWrite, deleting
from vipcore.kube import KubernetesWriter, NotLeaderError, describe, status_of

log = logging.getLogger("vipcore.controller")

CONFLICT_RETRIES = 5
MANAGED_BY = {"app.kubernetes.io/managed-by": COMPONENT}

Obj = dict[str, Any]


class NotLeading(Exception):
    """The pass stopped because this replica lost leadership (no write was sent after that)."""


@attrs.define
class WriteResult:
    """What happened when a plan was carried out."""

    written: int = 0
    conflicts: int = 0
    #: Service keys and VipGroup names whose write was given up because the object changed: re-plan.
    stale: list[str] = attrs.field(factory=list)
    #: Human-readable failures (non-409 API errors), one per write.
    errors: list[str] = attrs.field(factory=list)
    #: Service keys / VipGroup names whose write failed.
    failed: set[str] = attrs.field(factory=set)

    @property
    def clean(self) -> bool:
        return not self.stale and not self.errors


class ClusterWriter:
    """The controller's orchestration of a plan's writes: order, conflicts, one failure never stops the rest."""

    def __init__(self, writer: KubernetesWriter, *, selection: Selection) -> None:
        self.writer = writer
        self.selection = selection

    # -- whole plan ------------------------------------------------------------

    def apply(self, plan: Plan, services: Mapping[str, Mapping[str, Any]] | None = None) -> WriteResult:
        """Carry out ``plan``; ``services``: the Service objects (by key) it was made from.

        Raises :class:`NotLeading` as soon as a write is refused for lack of leadership.
        """
        result = WriteResult()
        originals = services or {}
        for write in plan.services:
            self._guard(result, f"Service {write.key}", write.key,
                        partial(self.service, write, result, originals.get(write.key)))
        for group in plan.groups:
            self._guard(result, f"VipGroup {group.name}", group.name, partial(self.group, group, result))
        for name in plan.deletes:
            self._guard(result, f"VipGroup {name}", name,
                        partial(self.delete_group, name, plan.group_versions.get(name), result))
        return result

    def _guard(self, result: WriteResult, what: str, key: str, call: Callable[[], bool | None]) -> None:
        try:
            if call() is not False:
                result.written += 1
        except NotLeaderError as exc:
            raise NotLeading(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - one failed write must not stop the others
            message = f"{what}: {describe(exc)}"
            result.errors.append(message)
            result.failed.add(key)
            log.warning("write failed: %s", message, extra={"event": "write_error"})

    # -- Services ----------------------------------------------------------------

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
        current = original if original is not None else self.writer.read_service(write.namespace, write.name)
        if current is None:
            return False
        meaning: tuple[Any, ...] | None = None  # computed only when a conflict needs it
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                self._service_once(write, current)
                return True
            except NotLeaderError:
                raise
            except Exception as exc:
                if status_of(exc) == 404:
                    return False  # gone: nothing to hold or release
                if status_of(exc) != 409 or attempt == CONFLICT_RETRIES:
                    raise
                result.conflicts += 1
                meaning = meaning or self._meaning(current)
                fresh = self.writer.read_service(write.namespace, write.name)
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
            obj = self.writer.set_service_finalizer(obj, True)
        if write.ingress is not None:
            obj = self.writer.set_service_ingress(obj, write.ingress)
        if write.finalizer is False:
            self.writer.set_service_finalizer(obj, False)

    # -- VipGroups -------------------------------------------------------------------

    def group(self, write: GroupWrite, result: WriteResult) -> bool:
        """Create or update, at the version the plan read; a 409 means the plan was stale."""
        try:
            if write.create:
                self.writer.create_vipgroup(write.group, labels=MANAGED_BY)
            else:
                assert write.resource_version is not None
                self.writer.update_vipgroup(write.group, write.resource_version)
        except Exception as exc:
            if status_of(exc) not in (404, 409):
                raise
            result.conflicts += 1
            result.stale.append(write.name)
            log.info("VipGroup %s changed since it was read; re-planning", write.name,
                     extra={"event": "conflict", "group": write.name})
            return False
        return True

    def delete_group(self, name: str, resource_version: str | None, result: WriteResult) -> bool:
        try:
            return self.writer.delete_vipgroup(name, resource_version)
        except Exception as exc:
            if status_of(exc) != 409:
                raise
            result.conflicts += 1
            result.stale.append(name)
            log.info("VipGroup %s changed since it was read; not deleted, re-planning", name,
                     extra={"event": "conflict", "group": name})
            return False

    # -- Events -----------------------------------------------------------------------

    def event(self, note: Note) -> None:
        """Record ``note`` as a ``v1`` Event on its Service (errors are logged, never raised)."""
        involved = {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": note.namespace, "name": note.name,
                                 **({"uid": note.uid} if note.uid else {})}}
        try:
            self.writer.create_event(involved, note.reason, note.message, type=note.type)
        except NotLeaderError as exc:
            raise NotLeading(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an Event is best effort
            log.warning("event %s on %s failed: %s", note.reason, note.service, describe(exc),
                        extra={"event": "event_error", "service": note.service})
