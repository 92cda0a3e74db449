"""``vipcore agent --dry-run``: what this node would join, hold and announce, touching nothing.

The dry run runs as the unprivileged user ``nobody`` in a subprocess under a
Python audit hook that records every socket, subprocess, directory and
file-for-writing the process creates once the CLI is imported: there must be
none. (Imports are left out: urllib3, through the kubernetes client, probes
for IPv6 support with a loopback socket when it is imported.)
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import EXAMPLES, REPO, write_yaml
from vipcore.testing.apiserver import ApiServer

AUDITED = r"""
import json, sys
seen = []
WATCH = ("socket.__new__", "socket.bind", "socket.connect", "subprocess.Popen", "os.system", "os.mkdir",
         "os.rename", "os.remove", "shutil.rmtree")
def hook(event, args):
    if event in WATCH:
        seen.append([event, repr(args)[:200]])
    elif event == "open" and len(args) > 2 and (
            (isinstance(args[1], str) and any(c in args[1] for c in "wax+"))
            or (args[1] is None and isinstance(args[2], int) and args[2] & 0o3)):
        seen.append([event, repr(args)[:200]])
from vipcore.cli.main import build_parser, main
build_parser()  # imports every subcommand's modules (main imports only the one it runs): left out
sys.addaudithook(hook)
code = main(sys.argv[1:])
print("AUDIT " + json.dumps(seen), file=sys.stderr)
sys.exit(code)
"""


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A folder ``nobody`` may read and write (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="vcU-dryrun-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def node(name: str, ip: str, labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": ip}]}}


def scenario(folder: Path, *, interface: str) -> Path:
    """Three nodes, one pool on ``interface`` and one on a missing interface, a Service in each."""
    manifests = folder / "manifests"
    manifests.mkdir()
    write_yaml(
        manifests / "all.yaml",
        node("node-a", "198.51.100.11"), node("node-b", "198.51.100.12"), node("node-c", "198.51.100.13"),
        {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "main"},
         "spec": {"interface": interface, "default": True, "addresses": ["198.51.100.120-198.51.100.125"]}},
        {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "gone"},
         "spec": {"interface": "vcU-none9", "addresses": ["203.0.113.10-203.0.113.12"]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "lost", "namespace": "default", "annotations": {"vipcore.io/pool": "gone"}},
         "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "nowhere", "namespace": "default", "annotations": {"vipcore.io/pool": "missing"}},
         "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}},
    )
    config = folder / "agent.yaml"
    config.write_text(f"backend: native_vrrp\nsource: manifests\nmanifests: [{manifests}]\n"
                      f"state_dir: {folder / 'state'}\nmetrics: {{address: '127.0.0.1:9641'}}\n")
    for path in (manifests, manifests / "all.yaml", config):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return config


def dry_run(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """Run the dry run as ``nobody`` (when we are root) under the audit hook."""
    command = [sys.executable, "-c", AUDITED, "agent", "--config", str(config), "--dry-run", *args]
    if os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(REPO), HOME=str(config.parent))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, cwd=config.parent)
    audit = [line for line in result.stderr.splitlines() if line.startswith("AUDIT ")]
    assert audit, result.stderr
    return result, json.loads(audit[-1][len("AUDIT "):])


def test_dry_run_prints_joins_holds_and_announcements_and_touches_nothing(workdir: Path) -> None:
    config = scenario(workdir, interface="lo")
    for name in ("node-a", "node-b", "node-c"):
        result, touched = dry_run(config, "--node-name", name)
        assert result.returncode == 0, result.stderr
        assert touched == [], touched
        assert not (workdir / "state").exists()
        out = result.stdout
        assert out.splitlines()[0] == (f"dry run: node {name}, backend native_vrrp, source manifests; "
                                       "nothing was changed")
        row = next(line.split() for line in out.splitlines() if line.endswith("default/web"))
        assert row[1:4] == ["lo", row[2], "IPv4"] and row[2].isdigit()
        assert row[-2] in {f"198.51.100.{i}" for i in range(120, 126)}  # allocated from the pool
        assert "vcU-none9" in out and "interface 'vcU-none9' does not exist on this host" in out
        assert "default/nowhere" in out and "pool 'missing' does not exist" in out
    # Exactly one node holds the group, and only it announces the VIP.
    holders = []
    for name in ("node-a", "node-b", "node-c"):
        result, _ = dry_run(config, "--node-name", name, "-o", "json")
        document = json.loads(result.stdout)
        (group,) = document["join"]
        assert group["members"][group["rank"] - 1] == name
        if group["hold"]:
            holders.append(name)
            assert document["announce"] == [{"interface": "lo", "vips": group["vips"]}]
            assert group["priority"] == 254
        else:
            assert document["announce"] == []
    assert len(holders) == 1


def test_dry_run_with_a_missing_interface_and_no_privileges_creates_no_state(workdir: Path) -> None:
    config = scenario(workdir, interface="vcU-none0")
    result, touched = dry_run(config, "--node-name", "node-a")
    assert result.returncode == 0, result.stderr
    assert touched == []
    assert not (workdir / "state").exists()
    assert "no VIP groups for node node-a" in result.stdout
    assert "interface 'vcU-none0' does not exist on this host" in result.stdout


def test_dry_run_names_a_bad_manifest_in_one_line(workdir: Path) -> None:
    config = scenario(workdir, interface="lo")
    (workdir / "manifests" / "all.yaml").write_text("kind: Node\nmetadata: [\n")
    result, touched = dry_run(config, "--node-name", "node-a")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("AUDIT ")]
    assert len(errors) == 1 and "all.yaml" in errors[0] and "Traceback" not in result.stderr
    assert touched == []


def test_readme_agent_example_is_a_dry_run() -> None:
    readme = (REPO / "README.md").read_text()
    assert "vipcore agent --config examples/agent.yaml --node-name node-a --dry-run" in readme
    assert EXAMPLES.is_dir()


@pytest.mark.parametrize("view", ["groups", "full"])
def test_dry_run_reads_a_cluster_once_and_writes_nothing(server: ApiServer, tmp_path: Path, view: str) -> None:
    """``source: kubernetes``: the addresses the controller wrote, the VRIDs of the VipGroups; no write at all.

    In the VipGroup view (the default) the groups are the VipGroups the controller wrote; in the full
    view the dry run resolves the Services itself.
    """
    import time

    from tests.helpers.cluster import node as k8s_node, service, vippool
    from vipcore.core.model import VipGroup
    from vipcore.core.objects import vipgroup_spec

    for name in ("node-a", "node-b"):
        server.create(k8s_node(name, ip=f"198.51.100.{11 if name == 'node-a' else 12}"))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19", interface="lo"))
    server.create(service("web"))
    server.patch("v1", "Service", "web", {"status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.12"}]}}},
                 namespace="default", subresource="status")
    group = VipGroup("f00d-lo", "lo", ("node-a", "node-b"), vrid=9,
                     vips_v4=(ipaddress.IPv4Address("203.0.113.12"),), services=("default/web",))
    server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": group.name},
                   "spec": vipgroup_spec(group)})
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    config = tmp_path / "agent.yaml"
    config.write_text(f"backend: native_vrrp\nsource: kubernetes\nnode_name: node-a\nstate_dir: {tmp_path / 'state'}\n"
                      # With heartbeats on, a running agent would create its Lease at once: the dry run must not.
                      f"kubernetes: {{kubeconfig: {kubeconfig}, agent_view: {view}, "
                      "heartbeat: {enabled: true, namespace: default}}\n")
    since = time.monotonic()  # RequestRecord.at is monotonic
    result = subprocess.run([str(Path(sys.executable).parent / "vipcore"), "agent", "--config", str(config),
                             "--dry-run", "-o", "json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["source"] == "kubernetes"
    (group,) = document["join"]
    assert group["vips"] == ["203.0.113.12"] and group["members"] in (["node-a", "node-b"], ["node-b", "node-a"])
    assert group["services"] == ["default/web"]
    if view == "groups":
        assert group["name"] == "f00d-lo" and group["vrid"] == 9
    requests = server.requests_since(since)
    read = "vipgroups" if view == "groups" else "services"
    assert any(r.method == "GET" and read in r.path for r in requests)  # it did read the cluster
    assert [r for r in requests if r.method not in ("GET", "WATCH")] == []
    assert not (tmp_path / "state").exists()
