"""The vipcore CLI: resolve output, and a one-line error for every bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.cli import EXAMPLES, VIPCORE, loopback_manifests, run_cli, write_yaml


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


def test_resolve_imports_only_what_it_runs(tmp_path: Path) -> None:
    """``vipcore resolve`` loads no plugin manager, event loop, API client or metrics (start-up time)."""
    import sys

    script = ("import json, sys; from vipcore.cli.main import main; code = main(['resolve', '-f', sys.argv[1]]); "
              "print(json.dumps(sorted(sys.modules)), file=sys.stderr); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, str(EXAMPLES)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stderr.strip().splitlines()[-1])
    heavy = ("asyncio", "pluggy", "kubernetes", "prometheus_client", "pyroute2", "urllib3", "ctypes", "subprocess",
             "vipcore.backend", "vipcore.agent", "vipcore.controller", "vipcore.kube", "vipcore.sources.filewatch")
    assert [m for m in loaded if m.startswith(heavy)] == []


def test_resolve_in_process_prints_what_the_command_prints_and_leaves_the_collector_on(
        capsys: pytest.CaptureFixture[str]) -> None:
    """``cmd_resolve`` pauses the cyclic garbage collector while it runs (a one-shot command), and only then."""
    import gc

    from vipcore.cli.main import main

    assert gc.isenabled()
    assert main(["resolve", "-f", str(EXAMPLES), "-o", "json"]) == 0
    assert gc.isenabled()
    assert json.loads(capsys.readouterr().out) == json.loads(run_cli("resolve", "-f", str(EXAMPLES), "-o", "json").stdout)


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


HOSTILE_MANIFESTS = {
    "junk.yaml": (bytes(range(256)) * 12, ("not UTF-8",)),
    "utf16.yaml": ("kind: Node\nmetadata: {name: n}\n".encode("utf-16-le"), ("invalid YAML",)),
    "list1.yaml": (b"kind: List\nitems: [1]\n", ("document 1", "items[0]")),
    "list5.yaml": (b"kind: List\nitems: 5\n", ("items", "must be a list")),
    "meta.yaml": (b"kind: Service\nmetadata: {name: 5, namespace: [a]}\nspec: {type: LoadBalancer}\n",
                  ("metadata.name", "must be a string")),
    "spec.yaml": (b"kind: Service\nmetadata: {name: s}\nspec: x\n", ("Service s", "spec", "mapping")),
    "deep.yaml": (b"kind: Node\nmetadata: " + b"[" * 5000 + b"]" * 5000 + b"\n", ("invalid YAML",)),
    "bomb.yaml": (b'a: &a ["l","l","l","l","l","l","l","l","l"]\n'
                  + b"".join(f"{chr(98 + i)}: &{chr(98 + i)} [".encode() + b",".join([f"*{chr(97 + i)}".encode()] * 9)
                             + b"]\n" for i in range(8)), ("aliases expand",)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_one_line_exit_2(tmp_path: Path, name: str) -> None:
    data, needles = HOSTILE_MANIFESTS[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert_one_line_error(run_cli("resolve", "-f", str(path), timeout=30), str(path), *needles)


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        (b"log_level: LOUD\nmanifests: [x]\n", ("log_level", "DEBUG, INFO")),
        (b"backend: native_vrrp\nnode_name: \xff\xfe\nmanifests: [x]\n", ("not UTF-8",)),
        (b"state_dir: [a, b]\nmanifests: [x]\n", ("state_dir", "folder")),
        (b"vrid: {exclude: [0, 300, -5]}\nmanifests: [x]\n", ("vrid.exclude[0]",)),
    ],
)
def test_hostile_config_is_one_line_exit_2(tmp_path: Path, data: bytes, needles: tuple[str, ...]) -> None:
    config = tmp_path / "config.yaml"
    config.write_bytes(data)
    assert_one_line_error(run_cli("agent", "--config", str(config)), str(config), *needles)


def test_state_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmanifests: [x]\n")
    assert_one_line_error(run_cli("agent", "--config", str(config)), "state_dir", "not a folder")


def test_second_agent_on_one_state_dir_is_one_line(tmp_path: Path) -> None:
    from vipcore.ops.statedir import StateDirLock

    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "config.yaml", {"backend": "native_vrrp", "node_name": "node-a",
                                                   "manifests": [str(manifests)], "metrics": "",
                                                   "state_dir": str(tmp_path / "state")})
    with StateDirLock(tmp_path / "state"):  # the first agent
        assert_one_line_error(run_cli("agent", "--config", str(config)), "state_dir", "in use by another vipcore agent")


def test_agent_starting_on_junk_manifests_waits_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    """Junk at start: no crash loop and no traceback. The agent names the file and what is wrong, keeps
    retrying the first state (not ready meanwhile), and stops promptly on SIGTERM."""
    manifests = loopback_manifests(tmp_path / "m")
    (manifests / "junk.yaml").write_bytes(bytes(range(256)) * 12)
    config = write_yaml(tmp_path / "config.yaml", {"backend": "native_vrrp", "node_name": "node-a",
                                                   "manifests": [str(manifests)], "metrics": "",
                                                   "state_dir": str(tmp_path / "state")})
    proc = subprocess.Popen([VIPCORE, "agent", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(3.0)
        assert proc.poll() is None, "the agent exited instead of waiting for valid manifests"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if str(manifests / "junk.yaml") in line]
    assert errors and all("not UTF-8" in line for line in errors), output
