"""OpenELB migration must not fight OpenELB: only ``vip`` Eips are vipcore's.

The controller runs against the test API server with the real client over HTTP;
"OpenELB" is played by the test, writing the status OpenELB would.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import events, lb_ips, node, service, vipgroups, wait_for

from vipcore.testing.apiserver import ApiServer

EIP = "network.kubesphere.io/v1alpha2"
OPT_IN = {"lb.kubesphere.io/v1alpha1": "openelb"}


def eip(name: str, address: str, protocol: str, *, default: bool = False, **spec: Any) -> dict[str, Any]:
    annotations = {"eip.openelb.kubesphere.io/is-default-eip": "true"} if default else {}
    return {"apiVersion": EIP, "kind": "Eip", "metadata": {"name": name, "annotations": annotations},
            "spec": {"address": address, "protocol": protocol, "interface": "eth0", **spec}}


def openelb_assigns(server: ApiServer, name: str, ip: str) -> None:
    """What OpenELB does: write the address to the Service's status."""
    server.patch("v1", "Service", name, {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
                 namespace="default", subresource="status")


def writes_to(server: ApiServer, name: str) -> list[Any]:
    return [r for r in server.requests if r.method in ("PATCH", "PUT", "POST", "DELETE")
            and f"/services/{name}" in r.path]


def test_services_of_bgp_and_layer2_eips_are_never_touched(server: ApiServer, start: Callable[..., Any]) -> None:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    server.create(eip("eip-bgp", "198.51.100.0/28", "bgp", default=True))
    server.create(eip("eip-l2", "198.51.100.32/28", "layer2"))
    server.create(eip("eip-vip", "203.0.113.64/28", "vip"))
    server.create(service("by-default", cls=None, annotations=OPT_IN))
    server.create(service("by-name", cls=None, annotations={**OPT_IN, "eip.openelb.kubesphere.io/v1alpha2": "eip-l2"}))
    server.create(service("by-ip", cls=None, annotations={**OPT_IN,
                                                          "eip.openelb.kubesphere.io/v1alpha1": "198.51.100.40"}))
    server.create(service("ours", cls=None, annotations={**OPT_IN, "eip.openelb.kubesphere.io/v1alpha2": "eip-vip"}))
    openelb_assigns(server, "by-default", "198.51.100.1")
    openelb_assigns(server, "by-name", "198.51.100.33")
    openelb_assigns(server, "by-ip", "198.51.100.40")
    start()
    ours = wait_for(lambda: lb_ips(server, "ours"), what="the vip Eip's Service to be served")
    assert ipaddress.ip_address(ours[0]) in ipaddress.ip_network("203.0.113.64/28")
    time.sleep(1.0)
    for name, ip in (("by-default", "198.51.100.1"), ("by-name", "198.51.100.33"), ("by-ip", "198.51.100.40")):
        assert lb_ips(server, name) == [ip], name
        assert not server.get("v1", "Service", name, "default")["metadata"].get("finalizers")
        assert events(server, name) == [], name
        assert writes_to(server, name) == [], name


def test_a_service_moved_to_a_bgp_eip_is_left_to_openelb(
        server: ApiServer, start: Callable[..., Any]) -> None:
    server.create(node("node-a"))
    server.create(eip("eip-vip", "203.0.113.64/28", "vip"))
    server.create(eip("eip-bgp", "198.51.100.0/28", "bgp"))
    server.create(service("moving", cls=None, annotations={**OPT_IN, "eip.openelb.kubesphere.io/v1alpha2": "eip-vip"}))
    start()
    # The store holds the status a moment before the server records the request: wait for both.
    wait_for(lambda: lb_ips(server, "moving") and writes_to(server, "moving"), what="allocation from the vip Eip")
    # The operator hands the Service to OpenELB's BGP Eip; OpenELB assigns its own address.
    server.patch("v1", "Service", "moving",
                 {"metadata": {"annotations": {"eip.openelb.kubesphere.io/v1alpha2": "eip-bgp"}}},
                 namespace="default")
    moved = len(writes_to(server, "moving"))
    openelb_assigns(server, "moving", "198.51.100.5")
    wait_for(lambda: not vipgroups(server), what="vipcore's group for it to go")
    time.sleep(0.5)
    assert lb_ips(server, "moving") == ["198.51.100.5"]
    assert writes_to(server, "moving")[moved:] == []  # its status is OpenELB's: vipcore writes nothing


def test_eip_namespaces_choose_the_eip_as_openelb_does(server: ApiServer, start: Callable[..., Any]) -> None:
    server.create(node("node-a"))
    server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})
    server.create(eip("eip-default", "203.0.113.64/28", "vip", default=True))
    server.create(eip("eip-team", "203.0.113.128/28", "vip", namespaces=["team"]))
    server.create(service("a", cls=None, namespace="team", annotations=OPT_IN))
    server.create(service("b", cls=None, annotations=OPT_IN))
    start()
    a = wait_for(lambda: lb_ips(server, "a", "team"), what="allocation in team")
    b = wait_for(lambda: lb_ips(server, "b"), what="allocation in default")
    assert ipaddress.ip_address(a[0]) in ipaddress.ip_network("203.0.113.128/28")
    assert ipaddress.ip_address(b[0]) in ipaddress.ip_network("203.0.113.64/28")
