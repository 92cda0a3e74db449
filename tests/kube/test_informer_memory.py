"""What an agent caches of each object: only the fields it reads, with the same desired state and errors."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import objects as o
from vipcore.core import objects
from vipcore.core.errors import ManifestError
from vipcore.kube import KubernetesSource
from vipcore.kube.informer import AGENT_FIELDS
from vipcore.testing.apiserver import ApiServer

MANAGED = [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied": {}}},
                         "f:spec": {"f:ports": {".": {}, 'k:{"port":80,"protocol":"TCP"}': {"f:port": {}}}}}}] * 3
LAST_APPLIED = {"kubectl.kubernetes.io/last-applied-configuration": json.dumps({"spec": {"x": "y" * 400}})}


def rich(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` as a real cluster serves it: managedFields, last-applied, labels nobody reads."""
    obj = copy.deepcopy(obj)
    meta = obj.setdefault("metadata", {})
    meta["managedFields"] = MANAGED
    meta.setdefault("annotations", {}).update(LAST_APPLIED)
    meta.setdefault("labels", {}).update({"app.kubernetes.io/name": "shop", "helm.sh/chart": "shop-1.2.3"})
    return obj


def rich_node(name: str, address: str, **kw: Any) -> dict[str, Any]:
    node = rich(o.node(name, address, **kw))
    node["status"]["conditions"] += [{"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                                      "message": "kubelet has sufficient memory available"}]
    node["status"]["addresses"].append({"type": "Hostname", "address": name})
    node["status"]["images"] = [{"names": [f"registry.example/img{i}@sha256:{'0' * 64}"], "sizeBytes": 1000 + i}
                                for i in range(20)]
    node["status"]["nodeInfo"] = {"kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12"}
    return node


def rich_slice(service: str, nodes: list[str], **kw: Any) -> dict[str, Any]:
    eps = rich(o.endpoint_slice(service, nodes, **kw))
    for i, ep in enumerate(eps["endpoints"]):
        ep["targetRef"] = {"kind": "Pod", "namespace": "default", "name": f"{service}-pod-{i}", "uid": "0" * 36}
        ep["zone"] = "zone-a"
        ep["conditions"].update({"serving": True, "terminating": False})
    eps["ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}]
    return eps


@pytest.fixture
def populated(server: ApiServer) -> ApiServer:
    for i in range(6):
        server.create(rich_node(f"node-{i}", f"198.51.100.{i + 1}", ready=i != 5,
                                labels={"zone": "x"} if i % 2 else None))
    server.create(rich(o.vip_pool("lan", ["203.0.113.0/24"], default=True)))
    server.create(rich(o.vip_group("g1", 7)))
    for i in range(8):
        svc = rich(o.service(f"web{i}", policy="Local" if i % 2 else "Cluster",
                             annotations={"vipcore.io/ip": f"203.0.113.{10 + i}"} if i % 3 == 0 else None))
        server.create(svc)
        server.create(rich_slice(f"web{i}", [f"node-{(i + k) % 6}" for k in range(3)]))
    server.create(rich(o.service("plain", cls=None)))  # not ours
    server.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cluster-ip", "namespace": "default",
                                                                       "managedFields": MANAGED},
                   "spec": {"type": "ClusterIP", "ports": [{"port": 53, "protocol": "UDP"}]}})
    return server


def source(server: ApiServer, **kw: Any) -> KubernetesSource:
    src = KubernetesSource(server.client(), watch_timeout=30, backoff_initial=0.05, backoff_max=0.5,
                           healthy_after=0.2, request_timeout=5, **kw)
    src.start()
    assert src.wait_synced(30)
    return src


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def cached_bytes(src: KubernetesSource) -> int:
    return sum(len(json.dumps(obj)) for kind in ("nodes", "services", "endpointslices", "vippools", "vipgroups")
               for obj in src.objects(kind).values())


def test_the_agent_cache_keeps_only_what_it_reads(populated: ApiServer) -> None:
    full, slim = source(populated), source(populated, keep=AGENT_FIELDS)
    try:
        assert slim.state() == full.state()
        assert len(slim.state().services) == 8 and slim.state().endpoint_slices

        text = json.dumps({kind: slim.objects(kind) for kind in ("nodes", "services", "endpointslices",
                                                                  "vippools", "vipgroups")})
        for gone in ("managedFields", "last-applied-configuration", "images", "targetRef",
                     "198.51.100.200", "MemoryPressure", "serving"):
            assert gone not in text, gone
        # A Node's labels are all read (pool node selectors); other kinds' are not.
        assert "helm.sh/chart" not in json.dumps([slim.objects("services"), slim.objects("endpointslices")])
        assert slim.objects("services")["default/cluster-ip"]["spec"] == {"type": "ClusterIP"}
        # What full objects cost against what the agent keeps of them.
        assert cached_bytes(slim) * 4 < cached_bytes(full)

        # Changes arriving by watch are slimmed too, and give the same state.
        populated.patch("v1", "Service", "web1", {"metadata": {"annotations": {"vipcore.io/ip": "203.0.113.99"}}},
                        namespace="default")
        populated.delete("discovery.k8s.io/v1", "EndpointSlice", "web2-x1", namespace="default")
        populated.create(rich_slice("web2", ["node-4"], suffix="x2"))
        populated.patch("v1", "Node", "node-5", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                        subresource="status")

        def caught_up() -> bool:
            services = {s.key: s for s in slim.state().services}
            slices = {s.name for s in slim.state().endpoint_slices}
            ready = {n.name for n in slim.state().nodes if n.ready}
            return ([str(ip) for ip in services["default/web1"].requested_ips] == ["203.0.113.99"]
                    and "web2-x2" in slices and "web2-x1" not in slices and "node-5" in ready)

        wait_for(caught_up)
        wait_for(lambda: full.state() == slim.state())
        text = json.dumps(slim.objects("endpointslices"))
        assert "managedFields" not in text and "targetRef" not in text
        # Equal pieces are one object: every slice's endpoint on node-4 (ready) is the same dict.
        on_node_4 = [ep for eps in slim.objects("endpointslices").values() for ep in eps["endpoints"]
                     if ep["nodeName"] == "node-4"]
        assert len(on_node_4) > 1 and all(ep is on_node_4[0] for ep in on_node_4)
        specs = [s["spec"] for key, s in slim.objects("services").items() if key in ("default/web0", "default/web2")]
        assert specs[0] is specs[1]
    finally:
        full.stop(2.0)
        slim.stop(2.0)


MALFORMED = [
    ("nodes", objects.node_from_k8s, {"kind": "Node", "metadata": {"name": "n", "managedFields": MANAGED},
                                      "status": {"addresses": [{"type": "Hostname", "address": "n"},
                                                               {"type": "InternalIP", "address": "not-an-ip"}]}}),
    ("nodes", objects.node_from_k8s, {"kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": ["x"]}}),
    ("nodes", objects.node_from_k8s, {"kind": "Node", "metadata": {"name": "n", "labels": ["a"]}}),
    ("services", objects.service_from_k8s,
     {"kind": "Service", "metadata": {"name": "s", "namespace": "d"},
      "spec": {"type": "LoadBalancer", "ports": [{"port": 80}, {"port": "http"}]}}),
    ("services", objects.service_from_k8s,
     {"kind": "Service", "metadata": {"name": "s", "annotations": "oops"}, "spec": {"type": "LoadBalancer"}}),
    ("services", objects.service_from_k8s,
     {"kind": "Service", "metadata": {"name": "s"},
      "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Sometimes"}}),
    ("services", objects.service_from_k8s,
     {"kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"},
      "status": {"loadBalancer": {"ingress": [{"hostname": "h"}, {"ip": "bad"}]}}}),
    ("services", objects.service_from_k8s,
     {"kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv5"]}}),
    ("endpointslices", objects.endpoint_slice_from_k8s,
     {"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
      "endpoints": [{"nodeName": "a", "conditions": "ready"}]}),
    ("endpointslices", objects.endpoint_slice_from_k8s,
     {"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
      "endpoints": [{"nodeName": "a"}, "b"]}),
    ("endpointslices", objects.endpoint_slice_from_k8s, {"kind": "EndpointSlice", "metadata": {"name": "e"}}),
    ("vippools", objects.pool_from_k8s, {"kind": "VipPool", "metadata": {"name": "p"},
                                         "spec": {"addresses": ["203.0.113.0/33"], "interface": "eth0"}}),
    ("vipgroups", objects.pinned_vrid, {"kind": "VipGroup", "metadata": {"name": "g"}, "spec": {"vrid": 300}}),
    ("vipgroups", objects.pinned_vrid, {"kind": "VipGroup", "metadata": {"name": "g"}, "spec": "seven"}),
]


def outcome(convert: Callable[[Any], Any], obj: Any) -> Any:
    try:
        return convert(obj)
    except ManifestError as exc:
        return str(exc)


@pytest.mark.parametrize(("kind", "convert", "obj"), MALFORMED)
def test_a_malformed_object_fails_the_same_way_slimmed(kind: str, convert: Callable[[Any], Any], obj: Any) -> None:
    before = outcome(convert, copy.deepcopy(obj))
    assert isinstance(before, str)  # every case here is malformed
    assert outcome(convert, AGENT_FIELDS[kind](copy.deepcopy(obj))) == before


def test_a_transform_that_cannot_cope_caches_the_object_whole(server: ApiServer) -> None:
    def broken(obj: Any) -> Any:
        raise KeyError("metadata")

    server.create(o.node("node-a", "198.51.100.1"))
    src = source(server, keep={"nodes": broken})
    try:
        assert [n.name for n in src.state().nodes] == ["node-a"]
    finally:
        src.stop(2.0)


def test_the_agents_kubernetes_source_caches_slim_objects(populated: ApiServer, tmp_path: Any) -> None:
    from vipcore.core.settings import Config
    from vipcore.sources.kubernetes import KubernetesAgentSource

    config = Config(node_name="node-1", source="kubernetes", state_dir=tmp_path,
                    kubernetes={"heartbeat": {"enabled": False}, "agent_view": "full"})
    agent_source = KubernetesAgentSource(config, client=populated.client(), record_holders=False)

    async def first() -> Any:
        try:
            return await agent_source.initial(timeout=30)
        finally:
            await agent_source.close()

    state = asyncio.run(first())
    assert len(state.services) == 8
    text = json.dumps([agent_source.cache.objects(kind) for kind in ("nodes", "services", "endpointslices")])
    assert "managedFields" not in text and "targetRef" not in text and "images" not in text


def test_the_vipgroup_view_caches_no_service_and_no_endpointslice(populated: ApiServer, tmp_path: Any) -> None:
    from vipcore.core.model import GroupState
    from vipcore.core.settings import Config
    from vipcore.sources.kubernetes import KubernetesAgentSource

    config = Config(node_name="node-1", source="kubernetes", state_dir=tmp_path,
                    kubernetes={"heartbeat": {"enabled": False}})
    agent_source = KubernetesAgentSource(config, client=populated.client(), record_holders=False)

    async def first() -> Any:
        try:
            return await agent_source.initial(timeout=30)
        finally:
            await agent_source.close()

    state = asyncio.run(first())
    assert isinstance(state, GroupState)
    assert {k.name for k in agent_source.cache.kinds} == {"nodes", "vippools", "eips", "vipgroups"}
    # The view keeps its model of each Node and VipGroup; the cache only what a relist compares.
    assert [g.name for g in state.groups] == ["g1"]
    for kind in ("nodes", "vipgroups"):
        cached = agent_source.cache.objects(kind)
        assert cached and all(set(obj) == {"kind", "apiVersion", "metadata"} for obj in cached.values())
        assert all(set(obj["metadata"]) == {"name", "resourceVersion"} for obj in cached.values())
    assert agent_source.cache.objects("vippools")["lan"]["spec"]  # pools are read from the cache


def test_handed_on_kinds_are_cached_as_their_identity(populated: ApiServer) -> None:
    """A ``handed_on`` kind's objects reach the listeners whole (slimmed) through list, watch and a
    relist after 410, while the cache keeps name and resourceVersion: what a relist compares."""
    seen: list[tuple[str, str, Any]] = []
    src = KubernetesSource(populated.client(), watch_timeout=30, backoff_initial=0.05, backoff_max=0.5,
                           healthy_after=0.2, request_timeout=5, keep=AGENT_FIELDS, handed_on=("nodes",))
    src.on_object_change.append(lambda c: seen.append((c.type, c.key, c.obj)) if c.kind == "nodes" else None)
    src.start()
    try:
        assert src.wait_synced(30)
        assert sorted(k for t, k, _ in seen) == [f"node-{i}" for i in range(6)]
        assert all(obj["status"]["addresses"] for _, _, obj in seen)  # the listener gets the object
        assert all(set(obj) == {"kind", "apiVersion", "metadata"} for obj in src.objects("nodes").values())
        assert src.objects("services")["default/web1"]["spec"]  # other kinds cached as they are
        assert src.state().nodes == () and not src.invalid  # nothing converted twice

        seen.clear()
        populated.patch("v1", "Node", "node-5", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                        subresource="status")
        wait_for(lambda: any(k == "node-5" for _, k, _ in seen))
        assert seen[-1][0] == "MODIFIED" and seen[-1][2]["status"]["conditions"][0]["status"] == "True"
        version = populated.get("v1", "Node", "node-5")["metadata"]["resourceVersion"]
        assert src.objects("nodes")["node-5"]["metadata"]["resourceVersion"] == version

        # Missed while the watch was gone: a relist finds the change and the deletion by identity.
        seen.clear()
        populated.close_watches()
        populated.delete("v1", "Node", "node-4")
        populated.patch("v1", "Node", "node-3", {"metadata": {"labels": {"zone": "y"}}})
        populated.expire()
        wait_for(lambda: {(t, k) for t, k, _ in seen} >= {("DELETED", "node-4"), ("MODIFIED", "node-3")})
        modified = next(obj for t, k, obj in seen if (t, k) == ("MODIFIED", "node-3"))
        assert modified["metadata"]["labels"]["zone"] == "y"
        assert ("MODIFIED", "node-1") not in {(t, k) for t, k, _ in seen}  # unchanged: not handed on again
        assert sorted(src.objects("nodes")) == [f"node-{i}" for i in range(6) if i != 4]
    finally:
        src.stop()
