"""deploy/: schema-valid, consistent with what the code needs, and accepted by an API server."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vipcore.core.settings import load_config
from vipcore.controller.runtime import ControllerSettings
from vipcore.kube.heartbeat import HeartbeatConfig
from tests.helpers.deploy_kinds import APPLY_ORDER, EXTRA_KINDS
from vipcore.testing.apiserver import ApiServer

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S_VERSION = "1.31.0"


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in by_kind(kind) if d["metadata"]["name"] == name]
    return doc


def test_every_manifest_is_valid_against_kubernetes_schemas() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (test extra)")
    for doc in documents():
        kv.validate(doc, K8S_VERSION, strict=True)


def test_kustomization_lists_every_file() -> None:
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    files = {str(p.relative_to(DEPLOY)) for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == files


def test_no_foreign_crd_in_the_default_apply_path() -> None:
    """``kubectl apply -f deploy/crds`` (or ``-k deploy``) must never write over OpenELB's own Eip CRD."""
    for path in DEPLOY.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                assert doc["spec"]["group"] == "vipcore.io", f"{path} ships a CRD of group {doc['spec']['group']}"


def test_agent_daemonset_is_host_network_and_not_privileged() -> None:
    ds = one("DaemonSet", "vipcore-agent")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "vipcore-agent"
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}
    assert pod["tolerations"], "tolerations are documented in the manifest"
    env = {e["name"]: e for e in container["env"]}
    assert env["VIPCORE_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_controller_deployment_has_two_replicas_and_nothing_added() -> None:
    dep = one("Deployment", "vipcore-controller")
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "vipcore-controller" and not pod.get("hostNetwork")
    (container,) = pod["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["args"][0] == "controller"


def test_leases_are_separated_by_namespace_and_name() -> None:
    """Agents cannot write the leader Lease; heartbeats live in their own namespace (tests/deploy/test_rbac.py
    derives every verb from the code; this checks where each Lease right lives)."""
    leader = one("Role", "vipcore-leader")
    assert leader["metadata"]["namespace"] == "vipcore-system"
    named = [r for r in leader["rules"] if r.get("resourceNames")]
    assert named and all(r["resourceNames"] == ["vipcore-controller"] for r in named)
    assert {s["name"] for s in one("RoleBinding", "vipcore-leader")["subjects"]} == {"vipcore-controller"}
    for binding in by_kind("RoleBinding"):
        if binding["metadata"]["namespace"] == "vipcore-system":
            assert "vipcore-agent" not in {s["name"] for s in binding["subjects"]}, binding["metadata"]["name"]
    writer = one("Role", "vipcore-heartbeat-writer")
    assert writer["metadata"]["namespace"] == "vipcore-heartbeats"
    assert {s["name"] for s in one("RoleBinding", "vipcore-heartbeat-writer")["subjects"]} == {"vipcore-agent"}
    policy = one("ValidatingAdmissionPolicy", "vipcore-heartbeat-own-node")
    assert policy["spec"]["matchConstraints"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "vipcore-heartbeats"}
    assert one("ValidatingAdmissionPolicyBinding", "vipcore-heartbeat-own-node")["spec"]["validationActions"] == [
        "Deny"]
    for rules in (one("ClusterRole", "vipcore-controller")["rules"], one("ClusterRole", "vipcore-agent")["rules"]):
        for rule in rules:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "secrets" not in rule["resources"] and "leases" not in rule["resources"]


def test_agents_tolerate_every_taint_and_both_have_priority_and_dual_stack_probes() -> None:
    pod = one("DaemonSet", "vipcore-agent")["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "vipcore-node-critical"
    controller = one("Deployment", "vipcore-controller")["spec"]["template"]["spec"]
    assert controller["priorityClassName"] == "vipcore-controller"
    classes = {p["metadata"]["name"]: p["value"] for p in by_kind("PriorityClass")}
    assert classes["vipcore-node-critical"] > classes["vipcore-controller"]
    for spec in (pod, controller):
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["VIPCORE_METRICS"].startswith("[::]:")
    pdb = one("PodDisruptionBudget", "vipcore-controller")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == \
        one("Deployment", "vipcore-controller")["spec"]["selector"]["matchLabels"]


def test_configmap_config_is_valid_for_both_components(tmp_path: Path) -> None:
    text = one("ConfigMap", "vipcore-config")["data"]["config.yaml"]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    config = load_config(path, environ={"VIPCORE_NODE_NAME": "node-a", "POD_NAME": "vipcore-controller-x"})
    assert config.source == "kubernetes" and config.node_name == "node-a"
    settings = ControllerSettings.from_config(config)
    assert settings.namespace == "vipcore-system"
    assert settings.timing.duration == 15
    assert HeartbeatConfig.from_config(config.kubernetes).namespace == "vipcore-heartbeats"


def test_manifests_apply_to_the_test_api_server(tmp_path: Path) -> None:
    """Created through the real client over HTTP, as ``kubectl create`` would."""
    from kubernetes.utils import create_from_yaml

    with ApiServer(namespaces=("default",)) as server:
        for rtype in EXTRA_KINDS:  # kinds the test server does not serve by default
            server.store.register(rtype)
        client = server.client()
        try:
            for name in APPLY_ORDER:
                create_from_yaml(client, str(DEPLOY / name))
        finally:
            client.close()
        assert server.get("apps/v1", "DaemonSet", "vipcore-agent", "vipcore-system")
        assert server.get("apps/v1", "Deployment", "vipcore-controller", "vipcore-system")["spec"]["replicas"] == 2
        assert {c["metadata"]["name"] for c in server.objects("apiextensions.k8s.io/v1", "CustomResourceDefinition")} \
            == {"vippools.vipcore.io", "vipgroups.vipcore.io"}
        # The CRDs now serve their kinds: a VipPool can be created and listed.
        server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                       "spec": {"addresses": ["203.0.113.0/24"], "interface": "eth0"}})
        assert [p["metadata"]["name"] for p in server.objects("vipcore.io/v1alpha1", "VipPool")] == ["lan"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_creates_the_manifests(tmp_path: Path) -> None:
    with ApiServer(namespaces=("default",)) as server:
        for rtype in EXTRA_KINDS:
            server.store.register(rtype)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        for name in APPLY_ORDER:
            result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "create", "-f", str(DEPLOY / name)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
        result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "get", "daemonsets", "-n",
                                 "vipcore-system", "-o", "name"], capture_output=True, text=True, timeout=60)
        assert result.stdout.strip() == "daemonset.apps/vipcore-agent"


def test_dockerfile_copies_what_exists_and_builds_every_in_tree_backend() -> None:
    root = DEPLOY.parent
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    copies = [line.split()[1:-1] for line in lines if line.startswith("COPY") and "--from" not in line]
    for sources in copies:
        for source in sources:
            assert (root / source).exists(), source
    wheel = next(line for line in lines if "pip wheel" in line and "./backends/" in line)
    built = {part.rstrip("/").split("/")[-1] for part in wheel.split() if part.startswith("./backends/")}
    in_tree = {p.parent.name for p in (root / "backends").glob("*/pyproject.toml")}
    assert built == in_tree


def test_image_build_is_pinned() -> None:
    """Every runtime requirement (the closure, as installed here) is pinned in the lock the image installs
    with --no-deps, and the base image is a fixed Python release."""
    import importlib.metadata as md
    import re

    from packaging.requirements import Requirement

    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    base = next(line for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base)
    assert any("--no-deps --no-index" in line for line in lines)
    assert any("-r requirements.lock" in line and "--no-deps" in line for line in lines)
    lock = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            lock[name] = version
    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    # The image runs the agent and the controller: vipcore with its "agent" and "kubernetes" extras.
    image_extras = ("", "agent", "kubernetes")
    top = [Requirement(r) for r in md.requires("vipcore") or []]
    seen, todo = {"vipcore"}, [f"{r.name}{r.specifier}" for r in top if norm(r.name) != "vipcore" and (
        not r.marker or any(r.marker.evaluate({"extra": e}) for e in image_extras))]
    while todo:
        req = Requirement(todo.pop())
        if req.marker and not req.marker.evaluate({"extra": ""}) or norm(req.name) in seen:
            continue
        seen.add(norm(req.name))
        assert norm(req.name) in lock, f"{req.name} is not pinned in deploy/requirements.lock"
        assert req.specifier.contains(lock[norm(req.name)], prereleases=True), (req, lock[norm(req.name)])
        todo.extend(md.requires(req.name) or [])
    assert set(lock) == seen - {"vipcore"}, f"pinned but not needed: {sorted(set(lock) - seen)}"
