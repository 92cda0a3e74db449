"""``vipcore resolve -f`` on a manifest large enough to be read on two processes: the same bytes as the
plain serial path (``load_manifests`` on one process, ``resolve``, ``json.dumps(..., indent=2)``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.cli import run_cli
from vipcore.cli.resolve import resolution_to_json, resolution_to_table
from vipcore.core.resolve import resolve
from vipcore.sources.manifests import SPLIT_ABOVE, load_manifests


def _large_cluster(path: Path, services: int = 4000) -> Path:
    """Nodes, Services of both traffic policies (dual-stack, requested, unresolvable ones), EndpointSlices
    and two pools, written as one multi-document file above :data:`SPLIT_ABOVE`."""
    nodes = 40
    docs: list[Any] = [
        {"apiVersion": "v1", "kind": "Node",
         "metadata": {"name": f"node-{i}", "labels": {"kubernetes.io/hostname": f"node-{i}", "zone": f"z{i % 3}"}},
         "status": {"conditions": [{"type": "Ready", "status": "False" if i == 7 else "True"}],
                    "addresses": [{"type": "InternalIP", "address": f"203.0.113.{i + 1}"}]}}
        for i in range(nodes)]
    docs.append({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                 "spec": {"interface": "eth0", "default": True,
                          "addresses": ["198.51.100.0/24", "2001:db8:2::/112"]}})
    docs.append({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "zoned"},
                 "spec": {"interface": "eth1", "addresses": ["2001:db8:3::/116"], "nodeSelector": {"zone": "z1"}}})
    for i in range(services):
        annotations: dict[str, str] = {"team": "web", "note": "a'quoted \"value\"\u00e9"}
        spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": "Local" if i % 4 == 0 else "Cluster",
                                "ports": [{"port": 80 + i % 3, "protocol": "TCP"}]}
        if i % 5 == 1:
            annotations["vipcore.io/pool"] = "zoned"
        if i % 11 == 2:
            spec["ipFamilyPolicy"] = "RequireDualStack"
        if i % 97 == 3:
            annotations["vipcore.io/pool"] = "missing"
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"s{i}", "namespace": f"ns{i % 9}", "annotations": annotations},
                     "spec": spec})
        if i % 4 == 0 and i % 8 != 4:
            docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"s{i}-x", "namespace": f"ns{i % 9}",
                                      "labels": {"kubernetes.io/service-name": f"s{i}"}},
                         "endpoints": [{"nodeName": f"node-{(i // 4 * (k + 1) + k) % nodes}",
                                        "conditions": {"ready": k != 1}} for k in range(3)]})
    path.write_text(yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper)))
    assert path.stat().st_size > SPLIT_ABOVE
    return path


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _large_cluster(tmp_path_factory.mktemp("large") / "cluster.yaml")


@pytest.mark.parametrize("output", ["json", "table"])
def test_the_command_prints_what_the_serial_path_prints_byte_for_byte(large: Path, output: str) -> None:
    resolution = resolve(load_manifests([large]))
    assert len(resolution.groups) >= 20 and resolution.unresolved  # every kind of row is there
    expected = (json.dumps(resolution_to_json(resolution), indent=2) if output == "json"
                else resolution_to_table(resolution)) + "\n"
    result = run_cli("resolve", "-f", str(large), "-o", output)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == expected


def test_a_reader_that_stops_early_gets_no_traceback(large: Path) -> None:
    """``vipcore resolve -f big.yaml | head -1``: the command exits at once after its output (no teardown),
    quietly when the reader has gone."""
    import subprocess

    from tests.helpers.cli import VIPCORE

    process = subprocess.Popen([VIPCORE, "resolve", "-f", str(large), "-o", "json"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline() == b"{\n"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 0
    assert stderr == ""
