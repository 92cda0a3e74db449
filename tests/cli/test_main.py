"""The vipcore CLI: resolve output, and a one-line error for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.cli import EXAMPLES, loopback_manifests, run_cli, write_yaml


def assert_one_line_error(result: object, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_resolve_json_has_exactly_the_documented_keys() -> None:
    result = run_cli("resolve", "-f", str(EXAMPLES), "-o", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"groups", "unresolved"}
    assert len(doc["groups"]) == 2
    for group in doc["groups"]:
        assert set(group) == {"name", "interface", "nodes", "vrid", "vips", "services"}
        assert set(group["vips"]) == {"ipv4", "ipv6"}
    by_iface = {g["interface"]: g for g in doc["groups"]}
    assert by_iface["eth0"]["nodes"] == ["node-a", "node-b", "node-c"]
    assert by_iface["eth0"]["services"] == ["default/api", "default/web"]
    assert "198.51.100.120" in by_iface["eth0"]["vips"]["ipv4"]  # requested by annotation
    assert len(by_iface["eth0"]["vips"]["ipv6"]) == 1  # web is dual-stack
    assert by_iface["eth1"]["nodes"] == ["node-a", "node-b"]  # Local: node-c's endpoint is not ready
    assert all(1 <= g["vrid"] <= 255 for g in doc["groups"])


def test_resolve_table_lists_groups_and_unresolved(tmp_path: Path) -> None:
    extra = write_yaml(tmp_path / "bad-service.yaml", {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "lost", "namespace": "default",
                                                           "annotations": {"vipcore.io/pool": "missing"}},
        "spec": {"type": "LoadBalancer"}})
    result = run_cli("resolve", "-f", str(EXAMPLES), "-f", str(extra))
    assert result.returncode == 0, result.stderr
    assert "GROUP" in result.stdout and "eth1" in result.stdout
    assert "default/lost" in result.stdout and "pool 'missing' does not exist" in result.stdout


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("kind: Node\nmetadata:\n  name: [unclosed\n")
    assert_one_line_error(run_cli("resolve", "-f", str(bad)), str(bad), "line", "invalid YAML")


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ({"apiVersion": "v1", "kind": "Node", "metadata": {}}, ("metadata.name", "is missing")),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
          "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Nearby"}},
         ("Service s", "spec.externalTrafficPolicy")),
        ({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "p"},
          "spec": {"interface": "eth0", "addresses": ["198.51.100.9-198.51.100.1"]}},
         ("VipPool p", "spec.addresses[0]", "ends before it starts")),
        ({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "p"},
          "spec": {"addresses": ["198.51.100.0/24"]}}, ("spec.interface", "is missing")),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "annotations": {"vipcore.io/ip": "1.2.3"}},
          "spec": {"type": "LoadBalancer"}}, ("vipcore.io/ip", "'1.2.3' is not an IP address")),
        ({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": "g"}, "spec": {"vrid": 300}},
         ("spec.vrid", "1..255")),
    ],
)
def test_invalid_manifest_names_file_object_and_field(tmp_path: Path, doc: dict, needles: tuple[str, ...]) -> None:
    path = write_yaml(tmp_path / "m.yaml", doc)
    assert_one_line_error(run_cli("resolve", "-f", str(path)), str(path), *needles)


def test_missing_manifest_path(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("resolve", "-f", str(tmp_path / "nope")), "no such file or folder")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("backend: [1, 2]\n", ("backend", "non-empty string")),
        ("source: etcd\nmanifests: [x]\n", ("source", "must be one of manifests, kubernetes")),
        ("source: manifests\n", ("manifests", "no manifest file or folder")),
        ("vrid: {range: 0-300}\nmanifests: [x]\n", ("vrid.range", "within 1-255")),
        ("metrics: {address: nowhere}\nmanifests: [x]\n", ("metrics.address", "host:port")),
        ("native_vrrp: 3\nmanifests: [x]\n", ("native_vrrp", "unknown setting")),
        ("backend: native_vrrp\n  bad: indent\n", ("invalid YAML",)),
        ("- a list\n", ("must be a YAML mapping",)),
    ],
)
def test_config_errors_are_one_line(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    assert_one_line_error(run_cli("agent", "--config", str(config)), str(config), *needles)


def test_missing_config_file(tmp_path: Path) -> None:
    assert_one_line_error(run_cli("agent", "--config", str(tmp_path / "none.yaml")), "cannot read")


def test_unknown_backend_lists_installed(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "c.yaml", {"backend": "carrier-pigeon", "node_name": "node-a",
                                              "manifests": [str(manifests)], "metrics": "",
                                              "state_dir": str(tmp_path / "state")})
    result = run_cli("agent", "--config", str(config))
    assert_one_line_error(result, "plugin 'carrier-pigeon'", "no such backend is installed", "installed backends:")


def test_environment_overrides_the_backend(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "c.yaml", {"backend": "native_vrrp", "node_name": "node-a",
                                              "manifests": [str(manifests)], "metrics": ""})
    result = run_cli("agent", "--config", str(config), env={"VIPCORE_BACKEND": "from-env"})
    assert_one_line_error(result, "plugin 'from-env'")
