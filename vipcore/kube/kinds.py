"""The kinds the Kubernetes source lists and watches."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vipcore.core import objects
from vipcore.kube.client import GROUP, VERSION, VIPGROUPS, VIPPOOLS


@attrs.frozen
class Kind:
    """A kind the source lists and watches."""

    name: str  # the plural, used as the key everywhere
    api_version: str
    kind: str
    namespaced: bool
    #: ``ApiClient -> list function`` (typed API or CustomObjectsApi, bound to the plural).
    lister: Callable[[Any], Callable[..., Any]] = attrs.field(eq=False)
    label_selector: str | None = None
    #: A missing kind (404: its CRD is not installed) is an empty list, re-checked later.
    optional: bool = False


def _custom(group: str, version: str, plural: str) -> Callable[[Any], Callable[..., Any]]:
    def lister(client: Any) -> Callable[..., Any]:
        import kubernetes.client

        api = kubernetes.client.CustomObjectsApi(client)
        return functools.partial(api.list_cluster_custom_object, group, version, plural)
    return lister


def _core(client: Any) -> Any:
    import kubernetes.client

    return kubernetes.client.CoreV1Api(client)


def _discovery(client: Any) -> Any:
    import kubernetes.client

    return kubernetes.client.DiscoveryV1Api(client)


NODES = Kind("nodes", "v1", "Node", False, lambda c: _core(c).list_node)
SERVICES = Kind("services", "v1", "Service", True, lambda c: _core(c).list_service_for_all_namespaces)
ENDPOINT_SLICES = Kind("endpointslices", "discovery.k8s.io/v1", "EndpointSlice", True,
                       lambda c: _discovery(c).list_endpoint_slice_for_all_namespaces,
                       label_selector=objects.SERVICE_NAME_LABEL)
VIP_POOLS = Kind(VIPPOOLS, f"{GROUP}/{VERSION}", "VipPool", False, _custom(GROUP, VERSION, VIPPOOLS))
EIPS = Kind("eips", "network.kubesphere.io/v1alpha2", "Eip", False,
            _custom("network.kubesphere.io", "v1alpha2", "eips"), optional=True)
VIP_GROUPS = Kind(VIPGROUPS, f"{GROUP}/{VERSION}", "VipGroup", False, _custom(GROUP, VERSION, VIPGROUPS))
ALL_KINDS = (NODES, SERVICES, ENDPOINT_SLICES, VIP_POOLS, EIPS, VIP_GROUPS)


def lease_kind(namespace: str) -> Kind:
    """The heartbeat Leases of ``namespace``, keyed ``leases``."""

    def lister(client: Any) -> Callable[..., Any]:
        import kubernetes.client

        return functools.partial(kubernetes.client.CoordinationV1Api(client).list_namespaced_lease, namespace)

    return Kind("leases", "coordination.k8s.io/v1", "Lease", True, lister)


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta.get("name"))
