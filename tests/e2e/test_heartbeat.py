"""End to end as root: netlink_static agents fail over through heartbeat Leases.

netlink_static sends no protocol traffic, so a dead holder is noticed only
through the control plane: its agent stops renewing ``vipcore-node-<node>``;
after the Lease duration the controller and the surviving agents treat the
node as not ready, the group loses it, and the next node in placement order
adds the VIP.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tests.helpers.e2e import NODES, Environment, wait_for

from vipcore.lab import Probe

pytestmark = pytest.mark.lab

DURATION = 2.0


@pytest.fixture(scope="module")
def env() -> Iterator[Environment]:
    environment = Environment(backend="netlink_static", heartbeat=DURATION, prefix="vcEh")
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


def service(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "loadBalancerIP": ip,
                     "ports": [{"port": 80, "protocol": "TCP"}]}}


def test_dead_holder_loses_the_vip_when_its_heartbeat_expires(env: Environment) -> None:
    assert env.server is not None
    vip = "198.51.100.130"
    env.server.create(service("web", vip))
    holder = wait_for(lambda: (h := env.lab.holders_of(ipaddress.ip_address(vip))) and len(h) == 1 and h[0],
                      30, "one holder")
    leases = {lease["metadata"]["name"] for lease in env.server.objects("coordination.k8s.io/v1", "Lease", "default")}
    assert {f"vipcore-node-{n}" for n in NODES} <= leases
    with Probe(env.lab.client, vip, interval=0.01) as probe:
        assert probe.wait_replies(5, timeout=10)
        killed = time.time()
        env.lab.kill(holder)
        new = wait_for(lambda: [n for n in env.lab.holders_of(ipaddress.ip_address(vip)) if n != holder],
                       DURATION + 8, "another node to add the VIP")
        took = time.time() - killed
        assert probe.wait_replies(5, after=killed, timeout=10), env.logs()
        result = probe.result(after=killed)
    print(f"\nnetlink_static: holder {holder} killed, {new[0]} holds after {took * 1000:.0f} ms "
          f"(heartbeat Lease {DURATION:.0f} s); client outage {result.longest_gap_ms:.0f} ms")
    assert took < DURATION + 4.0  # room for a loaded machine; the measured time is printed
    groups = env.server.objects("vipcore.io/v1alpha1", "VipGroup")
    assert [g["spec"]["nodes"] for g in groups] == [[n for n in NODES if n != holder]]
