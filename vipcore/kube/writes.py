"""Writes the controller and the agent make: Service status, finalizers, VipGroups, Events, Leases."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from vipcore.core.model import Family, IPAddress
from vipcore.core.model import VipGroup as ModelVipGroup
from vipcore.core.model import FINALIZER
from vipcore.kube.client import GROUP, VERSION, ConflictError, write_retrying

log = logging.getLogger("vipcore.kube")

T = TypeVar("T")
Obj = dict[str, Any]


def now_rfc3339(micro: bool = False) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def vipgroup_manifest(group: ModelVipGroup) -> Obj:
    """A ``VipGroup`` object (spec only) for a model group; the VRID must be set."""
    if group.vrid is None:
        raise ValueError(f"group {group.name} has no VRID; the controller must assign one before writing it")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VipGroup",
        "metadata": {"name": group.name},
        "spec": {
            "interface": group.interface,
            "nodes": list(group.nodes),
            "vrid": group.vrid,
            "vips": {"ipv4": [str(v) for v in group.vips_v4], "ipv6": [str(v) for v in group.vips_v6]},
            "services": list(group.services),
        },
    }


@attrs.frozen
class LeaseRecord:
    """A ``coordination.k8s.io/v1`` Lease as leader election and heartbeats see it."""

    name: str
    namespace: str
    holder: str | None
    duration_seconds: int | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_k8s(cls, obj: Mapping[str, Any]) -> "LeaseRecord":
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        return cls(name=meta["name"], namespace=meta.get("namespace", ""), holder=spec.get("holderIdentity"),
                   duration_seconds=spec.get("leaseDurationSeconds"), acquire_time=spec.get("acquireTime"),
                   renew_time=spec.get("renewTime"), transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=str(meta.get("resourceVersion", "")))

    def renewed_at(self) -> float | None:
        """``renewTime`` as a ``time.time()`` value."""
        if not self.renew_time:
            return None
        text = self.renew_time.rstrip("Z")
        fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
        return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.timezone.utc).timestamp()


class KubernetesWriter:
    """Writes the controller and the agent make. Async methods run the blocking client in a thread."""

    def __init__(self, client: Any, *, component: str = "vipcore", instance: str | None = None,
                 attempts: int = 5) -> None:
        import kubernetes.client

        self.client = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)
        self.component = component
        self.instance = instance or os.uname().nodename
        self.attempts = attempts

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in write_retrying(self.attempts):
            with attempt:
                return fn(*args, **kwargs)
        raise AssertionError("unreachable")

    def _raw(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        """Call a typed API and return the response as a plain dict (as the server sent it)."""
        resp = self._call(fn, *args, _preload_content=False, **kwargs)
        result: Obj = json.loads(resp.data)
        return result

    # -------------------------------------------------------------- Services

    def patch_service_status_sync(self, namespace: str, name: str, vips: Sequence[IPAddress]) -> Obj:
        """Set ``status.loadBalancer.ingress`` through ``/status`` (merge-patch); empty clears it."""
        body = {"status": {"loadBalancer": {"ingress": [{"ip": str(ip)} for ip in vips] or None}}}
        return self._raw(self.core.patch_namespaced_service_status, name, namespace, body,
                         _content_type="application/merge-patch+json")

    async def patch_service_status(self, namespace: str, name: str, vips: Sequence[IPAddress]) -> Obj:
        return await asyncio.to_thread(self.patch_service_status_sync, namespace, name, vips)

    def _finalizers_sync(self, namespace: str, name: str, finalizer: str, add: bool) -> Obj | None:
        """Compare-and-swap the finalizer list (merge-patch with resourceVersion); re-read on 409."""
        import kubernetes.client

        for _ in range(self.attempts):
            try:
                obj = self._raw(self.core.read_namespaced_service, name, namespace)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            finalizers = list(obj["metadata"].get("finalizers") or [])
            if (finalizer in finalizers) == add:
                return obj
            if add and obj["metadata"].get("deletionTimestamp"):
                return obj  # no new finalizers on an object being deleted
            finalizers = finalizers + [finalizer] if add else [f for f in finalizers if f != finalizer]
            patch = {"metadata": {"resourceVersion": obj["metadata"]["resourceVersion"],
                                  "finalizers": finalizers or None}}
            try:
                return self._raw(self.core.patch_namespaced_service, name, namespace, patch,
                                 _content_type="application/merge-patch+json")
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    return None
                if exc.status != 409:
                    raise
                log.info("finalizer update of %s/%s conflicted; re-reading", namespace, name)
        raise ConflictError(f"could not update the finalizers of Service {namespace}/{name}: it kept changing "
                            f"({self.attempts} conflicts)", status=409)

    async def add_finalizer(self, namespace: str, name: str, finalizer: str = FINALIZER) -> Obj | None:
        """Add ``finalizer`` to a Service; None when the Service is gone."""
        return await asyncio.to_thread(self._finalizers_sync, namespace, name, finalizer, True)

    async def remove_finalizer(self, namespace: str, name: str, finalizer: str = FINALIZER) -> Obj | None:
        """Remove ``finalizer`` from a Service; None when the Service is gone."""
        return await asyncio.to_thread(self._finalizers_sync, namespace, name, finalizer, False)

    # -------------------------------------------------------------- VipGroups

    def apply_vipgroup_sync(self, group: ModelVipGroup) -> Obj:
        """Create the VipGroup, or update its spec (compare-and-swap, re-read on 409). Status is untouched."""
        import kubernetes.client

        manifest = vipgroup_manifest(group)
        for _ in range(self.attempts):
            try:
                current = self._raw(self.custom.get_cluster_custom_object, GROUP, VERSION, "vipgroups", group.name)
            except kubernetes.client.ApiException as exc:
                if exc.status != 404:
                    raise
                try:
                    return self._raw(self.custom.create_cluster_custom_object, GROUP, VERSION, "vipgroups",
                                     manifest)
                except kubernetes.client.ApiException as exc2:
                    if exc2.status != 409:
                        raise
                    continue
            if current.get("spec") == manifest["spec"]:
                return current
            patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
                     "spec": {**{k: None for k in current.get("spec") or {}}, **manifest["spec"]}}
            try:
                return self._raw(self.custom.patch_cluster_custom_object, GROUP, VERSION, "vipgroups", group.name,
                                 patch, _content_type="application/merge-patch+json")
            except kubernetes.client.ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        raise ConflictError(f"could not write VipGroup {group.name}: it kept changing", status=409)

    async def apply_vipgroup(self, group: ModelVipGroup) -> Obj:
        return await asyncio.to_thread(self.apply_vipgroup_sync, group)

    def delete_vipgroup_sync(self, name: str) -> bool:
        """Delete a VipGroup; False when it was already gone."""
        import kubernetes.client

        try:
            self._call(self.custom.delete_cluster_custom_object, GROUP, VERSION, "vipgroups", name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def delete_vipgroup(self, name: str) -> bool:
        return await asyncio.to_thread(self.delete_vipgroup_sync, name)

    def patch_vipgroup_holder_sync(self, name: str, family: Family, node: str | None, *,
                                   since: float | None = None, backend: str | None = None) -> Obj | None:
        """Record (or, with ``node=None``, clear) the holder of one family in the VipGroup's status."""
        import kubernetes.client

        fam = "ipv4" if family is Family.IPV4 else "ipv6"
        holder: Obj | None = None
        if node is not None:
            stamp = datetime.datetime.fromtimestamp(since if since is not None else time.time(),
                                                    datetime.timezone.utc)
            holder = {"node": node, "since": stamp.strftime("%Y-%m-%dT%H:%M:%SZ")}
            if backend:
                holder["backend"] = backend
        try:
            return self._raw(self.custom.patch_cluster_custom_object_status, GROUP, VERSION, "vipgroups", name,
                             {"status": {"holders": {fam: holder}}})
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def patch_vipgroup_holder(self, name: str, family: Family, node: str | None, *,
                                    since: float | None = None, backend: str | None = None) -> Obj | None:
        return await asyncio.to_thread(self.patch_vipgroup_holder_sync, name, family, node, since=since,
                                       backend=backend)

    # -------------------------------------------------------------- Events

    def create_event_sync(self, involved: Mapping[str, Any], reason: str, message: str, *,
                          type: str = "Normal") -> Obj:
        """A core/v1 Event about ``involved`` (an object dict, or a reference with kind/namespace/name)."""
        meta = involved.get("metadata") or involved
        namespace = meta.get("namespace") or "default"
        now = now_rfc3339()
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
        return self._raw(self.core.create_namespaced_event, namespace, body)

    async def create_event(self, involved: Mapping[str, Any], reason: str, message: str, *,
                           type: str = "Normal") -> Obj:
        return await asyncio.to_thread(self.create_event_sync, involved, reason, message, type=type)

    # -------------------------------------------------------------- Leases

    def get_lease_sync(self, namespace: str, name: str) -> LeaseRecord | None:
        import kubernetes.client

        try:
            return LeaseRecord.from_k8s(self._raw(self.coordination.read_namespaced_lease, name, namespace))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease_sync(self, namespace: str, name: str, holder: str, duration_seconds: int) -> LeaseRecord | None:
        """Create a Lease held by ``holder``; None if somebody created it first (409)."""
        import kubernetes.client

        now = now_rfc3339(micro=True)
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration_seconds,
                         "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
        try:
            return LeaseRecord.from_k8s(self._raw(self.coordination.create_namespaced_lease, namespace, body))
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def update_lease_sync(self, lease: LeaseRecord, holder: str, duration_seconds: int) -> LeaseRecord | None:
        """Renew (same holder) or take over (new holder) a Lease, compare-and-swap on the resourceVersion
        read in ``lease``; None if another writer changed it first (409)."""
        import kubernetes.client

        now = now_rfc3339(micro=True)
        taking = lease.holder != holder
        spec: Obj = {"holderIdentity": holder, "leaseDurationSeconds": duration_seconds, "renewTime": now,
                     "acquireTime": now if taking else lease.acquire_time,
                     "leaseTransitions": lease.transitions + (1 if taking and lease.holder else 0)}
        patch = {"metadata": {"resourceVersion": lease.resource_version}, "spec": spec}
        try:
            obj = self._raw(self.coordination.patch_namespaced_lease, lease.name, lease.namespace, patch,
                            _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        return LeaseRecord.from_k8s(obj)

    async def get_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        return await asyncio.to_thread(self.get_lease_sync, namespace, name)

    async def create_lease(self, namespace: str, name: str, holder: str, duration_seconds: int) -> LeaseRecord | None:
        return await asyncio.to_thread(self.create_lease_sync, namespace, name, holder, duration_seconds)

    async def update_lease(self, lease: LeaseRecord, holder: str, duration_seconds: int) -> LeaseRecord | None:
        return await asyncio.to_thread(self.update_lease_sync, lease, holder, duration_seconds)

    # -------------------------------------------------------------- VipPools

    def patch_vippool_status_sync(self, name: str, status: Mapping[str, Any]) -> Obj | None:
        """Replace a VipPool's status through ``/status`` (merge-patch); None when the pool is gone."""
        import kubernetes.client

        body = {"status": {"ipv4": None, "ipv6": None, **status}}
        try:
            return self._raw(self.custom.patch_cluster_custom_object_status, GROUP, VERSION, "vippools", name,
                             body, _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def vippool_finalizer_sync(self, name: str, resource_version: str, finalizers: Sequence[str]) -> Obj | None:
        """Set a VipPool's finalizers, compare-and-swap on ``resource_version``; None when gone or changed.

        A 409 returns None: the caller plans again from the fresh object.
        """
        import kubernetes.client

        patch = {"metadata": {"resourceVersion": resource_version, "finalizers": list(finalizers) or None}}
        try:
            return self._raw(self.custom.patch_cluster_custom_object, GROUP, VERSION, "vippools", name, patch,
                             _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise

    def patch_vipgroup_status_sync(self, name: str, status: Mapping[str, Any]) -> Obj | None:
        """Merge ``status`` into a VipGroup's status through ``/status``; None when the group is gone."""
        import kubernetes.client

        try:
            return self._raw(self.custom.patch_cluster_custom_object_status, GROUP, VERSION, "vipgroups", name,
                             {"status": dict(status)}, _content_type="application/merge-patch+json")
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
