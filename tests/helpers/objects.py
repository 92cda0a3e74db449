"""Kubernetes objects for tests, as plain dicts."""

from __future__ import annotations

from typing import Any


def node(name: str, address: str, *, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def service(name: str, *, namespace: str = "default", cls: str | None = "vipcore.io/vip",
            policy: str = "Cluster", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                            "ports": [{"port": 80, "protocol": "TCP"}]}
    if cls:
        spec["loadBalancerClass"] = cls
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}}, "spec": spec}


def endpoint_slice(service_name: str, nodes: list[str], *, namespace: str = "default",
                   suffix: str = "x1") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-{suffix}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.51.100.200"], "nodeName": n, "conditions": {"ready": True}}
                          for n in nodes]}


def vip_pool(name: str, addresses: list[str], *, interface: str = "eth0", default: bool = False) -> dict[str, Any]:
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": name},
            "spec": {"addresses": addresses, "interface": interface, "default": default}}


def eip(name: str, address: str, *, protocol: str = "vip", interface: str = "eth0") -> dict[str, Any]:
    return {"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip", "metadata": {"name": name},
            "spec": {"address": address, "protocol": protocol, "interface": interface}}


def vip_group(name: str, vrid: int, *, nodes: tuple[str, ...] = ("node-a", "node-b"),
              services: tuple[str, ...] = ("default/web",)) -> dict[str, Any]:
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": name},
            "spec": {"interface": "eth0", "nodes": list(nodes), "vrid": vrid, "vips": {"ipv4": ["198.51.100.10"]},
                     "services": list(services)}}
