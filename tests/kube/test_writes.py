"""The Kubernetes write helpers against the test API server."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

import pytest

from tests.helpers import objects as o
from vipcore.core.model import Family, VipGroup
from vipcore.kube import FINALIZER, ConflictError, KubernetesWriter
from vipcore.testing.apiserver import ApiServer


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def writer(server: ApiServer) -> KubernetesWriter:
    return KubernetesWriter(server.client(), component="vipcore-controller", instance="test")


class MeddlingWriter(KubernetesWriter):
    """Changes the object between this writer's read and its write, ``times`` times: a racing writer."""

    def __init__(self, server: ApiServer, times: int) -> None:
        super().__init__(server.client())
        self.server = server
        self.times = times

    def _raw(self, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        result = super()._raw(fn, *args, **kwargs)
        if fn.__name__.startswith(("read_", "get_")) and self.times > 0:
            self.times -= 1
            meta = result["metadata"]
            if result.get("kind") == "VipGroup":
                self.server.patch("vipcore.io/v1alpha1", "VipGroup", meta["name"],
                                  {"metadata": {"labels": {"meddled": str(self.times)}}})
            else:
                self.server.patch("v1", "Service", meta["name"], {"metadata": {"labels": {"meddled": str(self.times)}}},
                                  namespace=meta["namespace"])
        return result


def test_service_status_is_written_through_the_status_subresource(server: ApiServer, writer: KubernetesWriter) -> None:
    server.create(o.service("web"))
    ips = [ipaddress.ip_address("198.51.100.100"), ipaddress.ip_address("2001:db8::100")]
    obj = run(writer.patch_service_status("default", "web", ips))
    # ipMode VIP is the server's default (1.30+).
    assert obj["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.100", "ipMode": "VIP"},
                                                        {"ip": "2001:db8::100", "ipMode": "VIP"}]
    assert [r.path for r in server.requests if r.method == "PATCH"] == [
        "/api/v1/namespaces/default/services/web/status"]
    cleared = run(writer.patch_service_status("default", "web", []))
    assert not cleared["status"]["loadBalancer"].get("ingress")


def test_finalizer_add_and_remove_are_idempotent(server: ApiServer, writer: KubernetesWriter) -> None:
    server.create(o.service("web"))
    assert run(writer.add_finalizer("default", "web"))["metadata"]["finalizers"] == [FINALIZER]
    assert run(writer.add_finalizer("default", "web"))["metadata"]["finalizers"] == [FINALIZER]
    server.delete("v1", "Service", "web", namespace="default")
    assert server.get("v1", "Service", "web", "default")["metadata"]["deletionTimestamp"]
    run(writer.remove_finalizer("default", "web"))
    with pytest.raises(Exception, match="not found"):
        server.get("v1", "Service", "web", "default")
    assert run(writer.remove_finalizer("default", "web")) is None


def test_finalizer_write_retries_conflicts(server: ApiServer) -> None:
    server.create(o.service("web"))
    meddler = MeddlingWriter(server, times=2)
    obj = run(meddler.add_finalizer("default", "web"))
    assert obj["metadata"]["finalizers"] == [FINALIZER]
    assert obj["metadata"]["labels"] == {"meddled": "0"}
    codes = [r.code for r in server.requests if r.method == "PATCH" and r.path.endswith("/services/web")]
    assert codes == [409, 409, 200]


def test_finalizer_gives_up_after_repeated_conflicts(server: ApiServer) -> None:
    server.create(o.service("web"))
    meddler = MeddlingWriter(server, times=100)
    meddler.attempts = 3
    with pytest.raises(ConflictError, match="kept changing"):
        run(meddler.add_finalizer("default", "web"))


def test_vipgroup_create_update_and_status(server: ApiServer, writer: KubernetesWriter) -> None:
    group = VipGroup(name="abc-eth0", interface="eth0", nodes=("node-b", "node-a"), vrid=12,
                     vips_v4=(ipaddress.IPv4Address("198.51.100.10"),), services=("default/web",))
    created = run(writer.apply_vipgroup(group))
    assert created["spec"] == {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": 12,
                               "vips": {"ipv4": ["198.51.100.10"], "ipv6": []}, "services": ["default/web"]}
    same = run(writer.apply_vipgroup(group))
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    holder = run(writer.patch_vipgroup_holder("abc-eth0", Family.IPV4, "node-a", since=0.0, backend="native_vrrp"))
    assert holder["status"]["holders"]["ipv4"] == {"node": "node-a", "since": "1970-01-01T00:00:00Z",
                                                   "backend": "native_vrrp"}
    moved = VipGroup(name="abc-eth0", interface="eth0", nodes=("node-a",), vrid=12,
                     vips_v4=(ipaddress.IPv4Address("198.51.100.10"),))
    updated = run(writer.apply_vipgroup(moved))
    assert updated["spec"]["nodes"] == ["node-a"] and updated["spec"]["services"] == []
    assert updated["status"]["holders"]["ipv4"]["node"] == "node-a"  # spec writes never touch status
    assert updated["metadata"]["generation"] == 2
    cleared = run(writer.patch_vipgroup_holder("abc-eth0", Family.IPV4, None))
    assert "ipv4" not in cleared["status"]["holders"]
    assert run(writer.delete_vipgroup("abc-eth0")) is True
    assert run(writer.delete_vipgroup("abc-eth0")) is False
    assert run(writer.patch_vipgroup_holder("abc-eth0", Family.IPV4, "node-a")) is None


def test_vipgroup_update_retries_conflicts(server: ApiServer) -> None:
    group = VipGroup(name="abc-eth0", interface="eth0", nodes=("node-a",), vrid=12)
    server.create(o.vip_group("abc-eth0", 12, nodes=("node-a", "node-b")))
    meddler = MeddlingWriter(server, times=1)
    obj = run(meddler.apply_vipgroup(group))
    assert obj["spec"]["nodes"] == ["node-a"] and obj["metadata"]["labels"] == {"meddled": "0"}


def test_writes_retry_5xx_within_bounds(server: ApiServer, writer: KubernetesWriter) -> None:
    server.create(o.service("web"))
    server.fail_next(2)
    run(writer.patch_service_status("default", "web", [ipaddress.ip_address("198.51.100.100")]))
    server.fail_next(50)
    started = time.monotonic()
    with pytest.raises(Exception) as err:
        run(writer.patch_service_status("default", "web", []))
    assert getattr(err.value, "status", None) == 503
    assert time.monotonic() - started < 10
    server.clear_failures()


def test_events_reference_the_object(server: ApiServer, writer: KubernetesWriter) -> None:
    svc = server.create(o.service("web"))
    event = run(writer.create_event(svc, "IPAllocated", "allocated 198.51.100.100 from pool lan"))
    assert event["involvedObject"]["uid"] == svc["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Service"
    assert event["source"] == {"component": "vipcore-controller"}
    assert event["metadata"]["name"].startswith("web.")
    warning = run(writer.create_event(svc, "IPRefused", "no pool", type="Warning"))
    assert warning["type"] == "Warning"


def test_leases_create_renew_and_take_over_with_compare_and_swap(server: ApiServer,
                                                                 writer: KubernetesWriter) -> None:
    assert run(writer.get_lease("kube-system", "vipcore-controller")) is None
    mine = run(writer.create_lease("kube-system", "vipcore-controller", "replica-a", 15))
    assert mine.holder == "replica-a" and mine.transitions == 0
    assert run(writer.create_lease("kube-system", "vipcore-controller", "replica-b", 15)) is None
    renewed = run(writer.update_lease(mine, "replica-a", 15))
    assert renewed.holder == "replica-a" and renewed.resource_version != mine.resource_version
    # replica-b read the lease before the renewal: its takeover must lose.
    assert run(writer.update_lease(mine, "replica-b", 15)) is None
    taken = run(writer.update_lease(renewed, "replica-b", 15))
    assert taken.holder == "replica-b" and taken.transitions == 1
    assert taken.renewed_at() is not None and abs(taken.renewed_at() - time.time()) < 5
