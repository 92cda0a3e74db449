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

Service writes run on up to ``workers`` threads (each Service's own writes
stay in order on one of them): a write mostly waits on the API server, and
the one writer's :class:`~vipcore.kube.RateLimit` is what bounds the rate.
Keys in ``skip`` (objects waiting out their own backoff) are left alone.

The writer is fenced by leadership: once this replica is no longer the
leader, the next write raises :class:`~vipcore.kube.client.NotLeaderError`
and the whole pass stops (:class:`NotLeading`).

Synchronous (the Kubernetes client is): call these from a worker thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import attrs

from vipcore.core.errors import ManifestError
from vipcore.core.objects import service_from_k8s
from vipcore.core.plan import COMPONENT, GroupWrite, Note, Plan, Selection, ServiceWrite, deleting
from vipcore.kube import EventRecorder, KubernetesWriter, NotLeaderError, describe, status_of

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
    #: Service key / VipGroup name -> why its write failed (the API server's answer).
    why: dict[str, str] = attrs.field(factory=dict)
    #: Service keys / VipGroup names whose write succeeded (or was not needed any more).
    done: set[str] = attrs.field(factory=set)
    #: Service keys / VipGroup names left alone (``skip``: waiting out their backoff).
    skipped: set[str] = attrs.field(factory=set)

    @property
    def clean(self) -> bool:
        return not self.stale and not self.errors


class ClusterWriter:
    """The controller's orchestration of a plan's writes: order, conflicts, one failure never stops the rest."""

    def __init__(self, writer: KubernetesWriter, *, selection: Selection, workers: int = 1,
                 events: EventRecorder | None = None) -> None:
        self.writer = writer
        self.selection = selection
        self.workers = max(1, workers)
        self.events = events or EventRecorder()
        self._lock = threading.Lock()  # guards the WriteResult the workers share
        self._stopped: str | None = None  # why the pass stopped (leadership lost): no more writes start

    # -- whole plan ------------------------------------------------------------

    def apply(self, plan: Plan, services: Mapping[str, Mapping[str, Any]] | None = None, *,
              skip: Collection[str] = ()) -> WriteResult:
        """Carry out ``plan``; ``services``: the Service objects (by key) it was made from.

        ``skip``: Service keys and VipGroup names not to write in this pass.
        Raises :class:`NotLeading` once a write is refused for lack of leadership
        (writes already under way finish; none starts after).
        """
        result = WriteResult()
        originals = services or {}
        calls: list[tuple[str, str, Callable[[], bool | None]]] = []
        for write in plan.services:
            if write.key in skip:
                result.skipped.add(write.key)
                continue
            calls.append((f"Service {write.key}", write.key,
                          partial(self.service, write, result, originals.get(write.key))))
        if self.workers > 1 and len(calls) > 1:
            with ThreadPoolExecutor(min(self.workers, len(calls)), thread_name_prefix="vipcore-write") as pool:
                for _ in pool.map(lambda c: self._guard(result, *c), calls):
                    pass
        else:
            for call in calls:
                self._guard(result, *call)
        for group in plan.groups:
            if group.name in skip:
                result.skipped.add(group.name)
                continue
            self._guard(result, f"VipGroup {group.name}", group.name, partial(self.group, group, result))
        for name in plan.deletes:
            if name in skip:
                result.skipped.add(name)
                continue
            self._guard(result, f"VipGroup {name}", name,
                        partial(self.delete_group, name, plan.group_versions.get(name), result))
        if self._stopped is not None:
            raise NotLeading(self._stopped)
        return result

    def _guard(self, result: WriteResult, what: str, key: str, call: Callable[[], bool | None]) -> None:
        if self._stopped is not None:
            return
        try:
            outcome = call()
        except NotLeaderError as exc:
            with self._lock:
                self._stopped = self._stopped or str(exc)
            return
        except Exception as exc:  # noqa: BLE001 - one failed write must not stop the others
            message = f"{what}: {describe(exc)}"
            with self._lock:
                result.errors.append(message)
                result.failed.add(key)
                result.why[key] = describe(exc)
            log.warning("write failed: %s", message, extra={"event": "write_error", "object": key})
            return
        with self._lock:
            if outcome is not False:
                result.written += 1
            if key not in result.stale:
                result.done.add(key)

    # -- Services ----------------------------------------------------------------

    def _meaning(self, obj: Mapping[str, Any]) -> tuple[Any, ...]:
        """What a Service write depends on: if this is unchanged, the write still stands."""
        try:
            model: Any = service_from_k8s(obj)
        except ManifestError as exc:
            model = str(exc)
        return (self.selection.wants(obj), deleting(obj), model)

    def service(self, write: ServiceWrite, result: WriteResult, original: Mapping[str, Any] | None = None) -> bool:
        """The status, then (a Service an older release gave it) drop the legacy finalizer. False if gone or
        given up.

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
                with self._lock:
                    result.conflicts += 1
                meaning = meaning or self._meaning(current)
                fresh = self.writer.read_service(write.namespace, write.name)
                if fresh is None:
                    return False
                if self._meaning(fresh) != meaning:
                    with self._lock:
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
        if write.ingress is not None:
            obj = self.writer.set_service_ingress(obj, write.ingress)
        if write.drop_finalizer:
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
        """Record ``note`` as a ``v1`` Event on its Service, aggregated by the recorder
        (errors are logged, never raised)."""
        involved = {"apiVersion": "v1", "kind": "Service",
                    "metadata": {"namespace": note.namespace, "name": note.name,
                                 **({"uid": note.uid} if note.uid else {})}}
        try:
            self.events.record(self.writer, involved, note.reason, note.message, type=note.type)
        except NotLeaderError as exc:
            raise NotLeading(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an Event is best effort
            log.warning("event %s on %s failed: %s", note.reason, note.service, describe(exc),
                        extra={"event": "event_error", "service": note.service})
