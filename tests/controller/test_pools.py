"""Pools on a (test) cluster: addresses never move or vanish behind a Service's back.

The controller runs against the test API server with the real client over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import events, lb_ips, node, service, vippool, wait_for

from vipcore.core.plan import POOL_FINALIZER
from vipcore.testing.apiserver import ApiServer

POOLS = "vipcore.io/v1alpha1"


def cluster(server: ApiServer, *pools: dict[str, Any]) -> None:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    for pool in pools:
        server.create(pool)


def reasons(server: ApiServer, name: str, namespace: str = "default") -> list[str]:
    return [r for _, r, _ in events(server, name, namespace)]


def pool_obj(server: ApiServer, name: str) -> dict[str, Any]:
    return server.get(POOLS, "VipPool", name)


def valid(server: ApiServer, name: str) -> dict[str, Any] | None:
    conditions = (pool_obj(server, name).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Valid"), None)


def quiet(server: ApiServer, name: str, seconds: float = 0.6) -> None:
    """The Service's status stays as it is for a while (the controller had passes to change it)."""
    before = lb_ips(server, name)
    time.sleep(seconds)
    assert lb_ips(server, name) == before


def test_disabled_pool_keeps_allocated_addresses_and_allocates_nothing_new(
        server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    server.create(service("web"))
    start()
    ips = wait_for(lambda: lb_ips(server, "web"), what="allocation")
    server.patch(POOLS, "VipPool", "lan", {"spec": {"disabled": True}})
    server.create(service("late"))
    wait_for(lambda: "IPRefused" in reasons(server, "late"), what="refusal of a new Service")
    assert "disabled" in [m for _, r, m in events(server, "late") if r == "IPRefused"][0]
    quiet(server, "web")
    assert lb_ips(server, "web") == ips
    server.patch(POOLS, "VipPool", "lan", {"spec": {"disabled": False}})
    wait_for(lambda: lb_ips(server, "late"), what="allocation once re-enabled")
    assert lb_ips(server, "web") == ips


def test_invalid_pool_edit_keeps_the_last_valid_pool_and_says_so(
        server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    server.create(service("web"))
    running = start()
    ips = wait_for(lambda: lb_ips(server, "web"), what="allocation")
    wait_for(lambda: (valid(server, "lan") or {}).get("status") == "True", what="Valid=True")
    # Passes the schema, fails conversion: a reversed range.
    server.patch(POOLS, "VipPool", "lan", {"spec": {"addresses": ["203.0.113.103-203.0.113.100"]}})
    cond = wait_for(lambda: (valid(server, "lan") or {}).get("status") == "False" and valid(server, "lan"),
                    what="Valid=False")
    assert cond["reason"] == "InvalidSpec" and "ends before it starts" in cond["message"]
    assert "InvalidPool" in reasons(server, "lan", "default")
    registry = running.controller.registry
    assert registry.get_sample_value("vipcore_controller_stale_pools") == 1.0
    quiet(server, "web")
    assert lb_ips(server, "web") == ips
    # The last valid pool still allocates.
    server.create(service("next"))
    new = wait_for(lambda: lb_ips(server, "next"), what="allocation from the last valid pool")
    assert new[0].startswith("203.0.113.1") and len(new[0]) == len("203.0.113.10")
    server.patch(POOLS, "VipPool", "lan", {"spec": {"addresses": ["203.0.113.10-203.0.113.19"]}})
    wait_for(lambda: (valid(server, "lan") or {}).get("status") == "True", what="Valid=True again")
    wait_for(lambda: registry.get_sample_value("vipcore_controller_stale_pools") == 0.0, what="gauge back to 0")


def test_deleting_a_pool_in_use_waits_for_its_services(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    server.create(service("web"))
    start()
    ips = wait_for(lambda: lb_ips(server, "web"), what="allocation")
    wait_for(lambda: POOL_FINALIZER in (pool_obj(server, "lan")["metadata"].get("finalizers") or []),
             what="the pool finalizer")
    server.delete(POOLS, "VipPool", "lan")
    assert pool_obj(server, "lan")["metadata"].get("deletionTimestamp")
    quiet(server, "web")
    assert lb_ips(server, "web") == ips
    server.create(service("late"))
    wait_for(lambda: "IPRefused" in reasons(server, "late"), what="no allocation from a deleting pool")
    assert lb_ips(server, "late") == []
    server.delete("v1", "Service", "web", "default")
    wait_for(lambda: not server.objects(POOLS, "VipPool"), what="the pool to go once unused")


def test_new_default_pool_does_not_renumber_and_requested_ip_picks_its_pool(
        server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("zz-old", "203.0.113.10-203.0.113.19", default=True),
            vippool("side", "198.51.100.200-198.51.100.209"))
    server.create(service("web"))
    server.create(service("pinned", lb_ip="198.51.100.205"))
    start()
    ips = wait_for(lambda: lb_ips(server, "web"), what="allocation")
    wait_for(lambda: lb_ips(server, "pinned") == ["198.51.100.205"], what="requested IP from the pool containing it")
    server.create(vippool("aa-new", "203.0.113.100-203.0.113.109", default=True))
    server.create(service("fresh"))
    fresh = wait_for(lambda: lb_ips(server, "fresh"), what="allocation from the new default")
    assert fresh[0].startswith("203.0.113.10") and len(fresh[0]) == len("203.0.113.100")
    assert lb_ips(server, "web") == ips


def test_require_dual_stack_with_ipv4_only_pool_is_refused(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("v4", "203.0.113.10-203.0.113.19", default=True))
    svc = service("dual")
    svc["spec"].update(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"])
    server.create(svc)
    start()
    wait_for(lambda: "IPRefused" in reasons(server, "dual"), what="refusal")
    (message,) = [m for _, r, m in events(server, "dual") if r == "IPRefused"]
    assert "RequireDualStack" in message and "IPv6" in message
    assert lb_ips(server, "dual") == []


def test_services_with_the_same_sharing_key_share_an_address(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    shared = {"metallb.universe.tf/allow-shared-ip": "dns"}
    udp, tcp = service("dns-udp", annotations=shared), service("dns-tcp", annotations=shared)
    udp["spec"]["ports"] = [{"name": "dns", "port": 53, "protocol": "UDP"}]
    tcp["spec"]["ports"] = [{"name": "dns", "port": 53, "protocol": "TCP"}]
    server.create(udp)
    server.create(tcp)
    clash = service("web", annotations=shared, lb_ip=None)
    clash["spec"]["ports"] = [{"name": "dns", "port": 53, "protocol": "TCP"}]
    start()
    ip = wait_for(lambda: lb_ips(server, "dns-udp"), what="allocation")
    wait_for(lambda: lb_ips(server, "dns-tcp") == ip, what="the second Service sharing the address")
    # A third with a clashing port gets its own address.
    server.create(clash)
    other = wait_for(lambda: lb_ips(server, "web"), what="allocation of the clashing Service")
    assert other != ip


def test_a_freed_address_rests_in_quarantine_before_reuse(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("one", "203.0.113.10", default=True))
    server.create(service("first"))
    start(quarantine=1.5)
    wait_for(lambda: lb_ips(server, "first") == ["203.0.113.10"], what="allocation")
    server.delete("v1", "Service", "first", "default")
    freed = time.monotonic()
    server.create(service("second"))
    wait_for(lambda: "IPRefused" in reasons(server, "second"), what="refusal during quarantine")
    assert "quarantine" in [m for _, r, m in events(server, "second") if r == "IPRefused"][0]
    wait_for(lambda: lb_ips(server, "second") == ["203.0.113.10"], what="reuse after quarantine")
    assert time.monotonic() - freed >= 1.4


def test_vippool_status_counts_allocated_and_free_per_family(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", "2001:db8::10-2001:db8::11", default=True))
    server.create(service("a"))
    server.create(service("b"))
    start()
    wait_for(lambda: lb_ips(server, "a") and lb_ips(server, "b"), what="allocations")
    wait_for(lambda: (pool_obj(server, "lan").get("status") or {}).get("ipv4") == {"allocated": 2, "free": 8},
             what="pool status")
    status = pool_obj(server, "lan")["status"]
    assert status["ipv6"] == {"allocated": 0, "free": 2}
    assert status["observedGeneration"] == pool_obj(server, "lan")["metadata"]["generation"]


def test_controller_reports_api_connectivity_and_invalid_objects(
        server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    running = start()
    registry = running.controller.registry
    wait_for(lambda: registry.get_sample_value("vipcore_kubernetes_connected") == 1.0, what="connected gauge")
    server.patch(POOLS, "VipPool", "lan", {"spec": {"addresses": ["203.0.113.19-203.0.113.10"]}})
    wait_for(lambda: registry.get_sample_value("vipcore_kubernetes_invalid_objects") == 1.0,
             what="invalid objects gauge")
    server.stop()
    wait_for(lambda: registry.get_sample_value("vipcore_kubernetes_connected") == 0.0, what="disconnected")
