"""The source's pools and OpenELB selection: the last valid pool stays; Services of bgp/layer2 Eips are OpenELB's."""

from __future__ import annotations

import time
from typing import Any

from tests.helpers import objects as o
from vipcore.kube import KubernetesSource
from vipcore.testing.apiserver import ApiServer


def source(server: ApiServer) -> KubernetesSource:
    src = KubernetesSource(server.client(), watch_timeout=30, backoff_initial=0.05, backoff_max=0.5,
                           healthy_after=0.2, request_timeout=5)
    src.start()
    assert src.wait_synced(10)
    return src


def until(predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_invalid_pool_edit_keeps_the_last_valid_pool(server: ApiServer) -> None:
    server.create(o.vip_pool("lan", ["198.51.100.100-198.51.100.149"], default=True))
    src = source(server)
    try:
        (pool,) = src.state().pools
        server.patch("vipcore.io/v1alpha1", "VipPool", "lan", {"spec": {"addresses": ["198.51.100.9-198.51.100.1"]}})
        until(lambda: src.state() and src.invalid)  # conversion happens when the state is asked for
        assert src.state().pools == (pool,)
        assert "ends before it starts" in src.invalid["vippools/lan"]
        server.delete("vipcore.io/v1alpha1", "VipPool", "lan")
        until(lambda: not src.state().pools)
    finally:
        src.stop(2.0)


def test_service_of_a_bgp_eip_is_not_the_agents(server: ApiServer) -> None:
    server.create(o.eip("legacy", "203.0.113.0/28", protocol="bgp"))
    server.create(o.service("old", cls=None, annotations={"lb.kubesphere.io/v1alpha1": "openelb",
                                                          "eip.openelb.kubesphere.io/v1alpha2": "legacy"}))
    src = source(server)
    try:
        assert [s.key for s in src.state().services] == []
        server.patch("network.kubesphere.io/v1alpha2", "Eip", "legacy", {"spec": {"protocol": "vip"}})
        until(lambda: [s.key for s in src.state().services] == ["default/old"])
    finally:
        src.stop(2.0)
