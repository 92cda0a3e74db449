"""The kinds the Kubernetes source lists and watches."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vipcore.core import objects
from vipcore.kube.client import GROUP, VERSION, VIPGROUPS, VIPPOOLS, list_path


@attrs.frozen
class Kind:
    """A kind the source lists and watches."""

    name: str  # the plural, used as the key everywhere
    api_version: str
    kind: str
    namespaced: bool
    #: ``ApiClient -> list function``, called as a typed API's list (``_preload_content=False``).
    lister: Callable[[Any], Callable[..., Any]] = attrs.field(eq=False)
    label_selector: str | None = None
    #: A missing kind (404: its CRD is not installed) is an empty list, re-checked later.
    optional: bool = False


def _path(path: str) -> Callable[[Any], Callable[..., Any]]:
    """The lister of the collection at ``path`` (:func:`vipcore.kube.client.list_path`: raw responses,
    no typed API and its models)."""
    def lister(client: Any) -> Callable[..., Any]:
        return functools.partial(list_path, client, path)
    return lister


NODES = Kind("nodes", "v1", "Node", False, _path("/api/v1/nodes"))
SERVICES = Kind("services", "v1", "Service", True, _path("/api/v1/services"))
ENDPOINT_SLICES = Kind("endpointslices", "discovery.k8s.io/v1", "EndpointSlice", True,
                       _path("/apis/discovery.k8s.io/v1/endpointslices"),
                       label_selector=objects.SERVICE_NAME_LABEL)
VIP_POOLS = Kind(VIPPOOLS, f"{GROUP}/{VERSION}", "VipPool", False, _path(f"/apis/{GROUP}/{VERSION}/{VIPPOOLS}"))
EIPS = Kind("eips", "network.kubesphere.io/v1alpha2", "Eip", False,
            _path("/apis/network.kubesphere.io/v1alpha2/eips"), optional=True)
VIP_GROUPS = Kind(VIPGROUPS, f"{GROUP}/{VERSION}", "VipGroup", False, _path(f"/apis/{GROUP}/{VERSION}/{VIPGROUPS}"))
ALL_KINDS = (NODES, SERVICES, ENDPOINT_SLICES, VIP_POOLS, EIPS, VIP_GROUPS)


def lease_kind(namespace: str) -> Kind:
    """The heartbeat Leases of ``namespace``, keyed ``leases``."""
    return Kind("leases", "coordination.k8s.io/v1", "Lease", True,
                _path(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"))


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta.get("name"))
