"""End to end as root: API server, controller and native_vrrp agents with the Kubernetes source in a lab.

A Service created in the API server becomes a VIP the client can ping; a
``Local`` Service's VIP follows its endpoints; deleting the Service removes
the VIP everywhere and frees the address; with the API server gone, killing
the holder still fails over (VRRP needs no control plane).
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.helpers.e2e import NODES, Environment, wait_for

from vipcore.lab import Probe

pytestmark = pytest.mark.lab

CLASS = "vipcore.io/vip"


def service(name: str, ip: str, *, policy: str = "Cluster") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": CLASS, "externalTrafficPolicy": policy,
                     "loadBalancerIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}}


def endpoint_slice(service_name: str, node: str) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": node, "conditions": {"ready": True}}]}


@pytest.fixture(scope="module")
def env() -> Iterator[Environment]:
    environment = Environment()
    try:
        environment.up()
        environment.start_controller()
        for node in NODES:
            environment.start_agent(node)
        for node in NODES:
            environment.wait_started(node)
        yield environment
    except BaseException:
        print(environment.logs())
        raise
    finally:
        environment.close()


def holders(env: Environment, ip: str) -> list[str]:
    return env.lab.holders_of(ipaddress.ip_address(ip))


def status_ips(env: Environment, name: str) -> list[str]:
    assert env.server is not None
    obj = env.server.get("v1", "Service", name, "default")
    return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]


def test_created_service_is_pingable(env: Environment, record_property: Any) -> None:
    assert env.server is not None
    vip = "198.51.100.120"
    with Probe(env.lab.client, vip, interval=0.01) as probe:
        created = time.time()
        env.server.create(service("web", vip))
        assert probe.wait_replies(1, after=created, timeout=30), env.logs()
        # Read at once: within one probe interval (10 ms) of the first reply.
        first = probe.last_reply()
    assert first is not None and first >= created
    elapsed = first - created
    record_property("create_to_first_reply_s", round(elapsed, 3))
    print(f"\nService created -> first ping reply from {vip}: {elapsed * 1000:.0f} ms")
    assert status_ips(env, "web") == [vip]
    # Routers that start together may both time out before hearing each other: one steps down at once.
    wait_for(lambda: len(holders(env, vip)) == 1, 5, "exactly one holder")
    assert wait_for(lambda: env.server.objects("vipcore.io/v1alpha1", "VipGroup"), 5, "VipGroup")
    # The holding agent recorded itself in the VipGroup's status.
    holder = holders(env, vip)[0]
    try:
        wait_for(lambda: any(((g.get("status") or {}).get("holders") or {}).get("ipv4", {}).get("node") == holder
                             for g in env.server.objects("vipcore.io/v1alpha1", "VipGroup")), 10, "holder record")
    except AssertionError:
        print(holder, holders(env, vip), [g.get("status") for g in env.server.objects("vipcore.io/v1alpha1", "VipGroup")])
        print(env.logs())
        raise
    if shutil.which("kubectl"):
        # "Which node holds my VIP?" from the client's namespace, through the printer columns.
        out = env.lab.exec(None, ["kubectl", "--kubeconfig", str(env.kubeconfig), "get", "vipgroups"]).stdout
        header, row = out.splitlines()[:2]
        assert header.split()[:6] == ["NAME", "VRID", "INTERFACE", "NODES", "HOLDER", "VIPS"]
        assert holder in row.split() and vip in row


def test_local_service_vip_follows_endpoints(env: Environment) -> None:
    assert env.server is not None
    vip = "198.51.100.121"
    env.server.create(endpoint_slice("local", "node-b"))
    env.server.create(service("local", vip, policy="Local"))
    wait_for(lambda: holders(env, vip) == ["node-b"], 30, "node-b to hold the Local VIP")
    assert env.lab.exec(None, ["ping", "-c", "1", "-W", "2", vip], check=False).returncode == 0
    eps = env.server.get("discovery.k8s.io/v1", "EndpointSlice", "local-1", "default")
    eps["endpoints"] = [{"addresses": ["10.0.0.2"], "nodeName": "node-c", "conditions": {"ready": True}}]
    moved = time.monotonic()
    env.server.update(eps)
    wait_for(lambda: holders(env, vip) == ["node-c"], 30, "the VIP to follow the endpoint to node-c")
    print(f"\nLocal VIP moved to the new endpoint's node in {(time.monotonic() - moved) * 1000:.0f} ms")
    assert wait_for(lambda: env.lab.exec(None, ["ping", "-c", "1", "-W", "1", vip], check=False).returncode == 0,
                    10, "ping after the move")
    assert status_ips(env, "local") == [vip]


def test_deleted_service_vip_gone_and_address_released(env: Environment) -> None:
    assert env.server is not None
    vip = "198.51.100.120"
    assert holders(env, vip)
    env.server.delete("v1", "Service", "web", "default")
    wait_for(lambda: not holders(env, vip), 30, "the VIP to disappear from every node")
    # No finalizer holds it: the Service is gone at once, and its address is freed from the group.
    assert "web" not in {s["metadata"]["name"] for s in env.server.objects("v1", "Service", "default")}
    wait_for(lambda: all("default/web" not in (g["spec"].get("services") or [])
                         for g in env.server.objects("vipcore.io/v1alpha1", "VipGroup")), 10, "the group to go")
    env.server.create(service("web2", vip))
    wait_for(lambda: status_ips(env, "web2") == [vip], 30, "the released address to be given again")
    wait_for(lambda: len(holders(env, vip)) == 1, 30, "the VIP to be held again")


def test_failover_without_the_api_server(env: Environment) -> None:
    assert env.server is not None
    vip = "198.51.100.122"
    env.server.create(service("ha", vip))
    holder = wait_for(lambda: holders(env, vip)[0] if len(holders(env, vip)) == 1 else None, 30, "a holder")
    with Probe(env.lab.client, vip, interval=0.01) as probe:
        assert probe.wait_replies(5, timeout=10)
        env.server.stop()  # the control plane is gone
        time.sleep(0.5)
        killed = time.time()
        env.lab.kill(holder)
        new = wait_for(lambda: [n for n in holders(env, vip) if n != holder], 10, "another node to take over")
        assert probe.wait_replies(5, after=killed, timeout=10), env.logs()
        result = probe.result(after=killed)
    print(f"\nAPI server down, holder {holder} killed: {new[0]} took over; "
          f"client outage {result.longest_gap_ms:.0f} ms")
    assert result.recovered and result.longest_gap < 3.0
