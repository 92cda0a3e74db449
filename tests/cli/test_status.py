"""``vipcore status``: text and JSON against a live agent endpoint, and its errors."""

from __future__ import annotations

import asyncio
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.agents import EXAMPLES, BACKEND, backend_of, free_port, make_agent, running
from vipcore.cli.main import main
from vipcore.core.model import FailoverPhases, Family, StatusTable
from vipcore.ops.status import age, cluster_rows, cluster_table, duration, status_table

VIPCORE = str(Path(sys.executable).parent / "vipcore")


def run_status_against_agent(tmp_path: Path, *argv: str, phases: FailoverPhases | None = None,
                             sections: tuple[StatusTable, ...] = ()) -> tuple[int, str, str, dict[str, str]]:
    """Start an agent, fail one router over, run ``vipcore status ARGV`` as a user would."""
    async def scenario() -> tuple[int, str, str, dict[str, str]]:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            eth0 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth0")
            backend_of(agent).sections = list(sections)
            backend_of(agent).fail_over(eth0, Family.IPV4, 0.125, phases)
            address = url.removeprefix("http://")
            result = await asyncio.to_thread(
                subprocess.run, [VIPCORE, "status", "--address", address, *argv],
                capture_output=True, text=True, timeout=60)
            short = agent.memberships[eth0].group.short_name
            vrid = str(agent.memberships[eth0].group.vrid)
        return result.returncode, result.stdout, result.stderr, {"short": short, "vrid": vrid}

    return asyncio.run(scenario())


def test_status_table_against_a_live_agent(tmp_path: Path) -> None:
    code, out, err, facts = run_status_against_agent(tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["node", "node-a", "backend", BACKEND, "ready"]
    assert lines[1].split()[:8] == ["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "STATE", "SINCE", "LAST"]
    rows = [line.split() for line in lines[2:] if line.strip()]
    assert len(rows) == 3
    master = next(r for r in rows if r[1] == "IPv4" and r[0] == facts["short"])
    assert master[2:4] == ["eth0", facts["vrid"]]
    assert "198.51.100.120" in master[4]
    # SINCE: seconds since the failover, however long the CLI took to start on a loaded machine.
    assert master[5] == "master" and re.fullmatch(r"\d+s", master[6]) and int(master[6][:-1]) < 60
    assert master[7] == "125ms"
    assert " ".join(master[8:]).startswith("master down: no advert")
    ipv6 = next(r for r in rows if r[1] == "IPv6")
    assert ipv6[5] == "backup" and ipv6[4].startswith("2001:db8:100::")


def test_status_json_against_a_live_agent(tmp_path: Path) -> None:
    code, out, err, facts = run_status_against_agent(tmp_path, "-o", "json")
    assert code == 0, err
    document = json.loads(out)
    assert {"node", "backend", "ready", "routers", "skipped", "unresolved"} <= set(document)
    master = next(r for r in document["routers"] if r["short_name"] == facts["short"] and r["family"] == "IPv4")
    assert master["state"] == "master" and master["last_failover_seconds"] == 0.125
    assert str(master["vrid"]) == facts["vrid"] and master["interface"] == "eth0"


SESSIONS = StatusTable("liveness", ("INTERFACE", "PEER", "SESSION", "DETECT MS"),
                       (("eth0", "198.51.100.12", "up", 50.0),))
PHASES = FailoverPhases(detect=0.1, elect=0.02, address=0.004, announce=0.001)


def test_status_shows_the_failover_breakdown_and_the_backends_sections(tmp_path: Path) -> None:
    code, out, err, facts = run_status_against_agent(tmp_path, phases=PHASES, sections=(SESSIONS,))
    assert code == 0, err
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("LAST FAILOVER OF")))
    assert lines[header].split() == ["LAST", "FAILOVER", "OF", "FAMILY", "DETECT", "ELECT", "ADDRESS", "ADDED",
                                     "FIRST", "ANNOUNCEMENT", "TOTAL"]
    assert lines[header + 1].split() == [facts["short"], "IPv4", "100ms", "20ms", "4.0ms", "1.0ms", "125ms"]
    title = lines.index(f"{BACKEND}: liveness")
    assert lines[title + 1].split() == ["INTERFACE", "PEER", "SESSION", "DETECT", "MS"]
    assert lines[title + 2].split() == ["eth0", "198.51.100.12", "up", "50"]
    code, out, err, facts = run_status_against_agent(tmp_path, "-o", "json", phases=PHASES, sections=(SESSIONS,))
    assert code == 0, err
    document = json.loads(out)
    master = next(r for r in document["routers"] if r["short_name"] == facts["short"] and r["family"] == "IPv4")
    assert master["last_failover"]["detect_seconds"] == 0.1 and master["last_failover"]["announce_seconds"] == 0.001
    assert document["sections"] == {BACKEND: [SESSIONS.to_json()]} and document["sections_skipped"] == []


def test_unreachable_agent_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    assert main(["status", "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot reach the vipcore agent at 127.0.0.1:{port}" in err and "refused" in err.lower()


def test_unreachable_agent_from_the_console_script() -> None:
    result = subprocess.run([VIPCORE, "status", "--address", f"127.0.0.1:{free_port()}", "-o", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_something_else_on_the_port_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def scenario() -> int:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            # /status of a server that is not a vipcore agent: point at a path that 404s.
            return await asyncio.to_thread(main, ["status", "--address", url.removeprefix("http://") + "/x"])

    assert asyncio.run(scenario()) == 2
    assert "answered 404" in capsys.readouterr().err


def test_table_shows_preferred_holder_skipped_and_unresolved() -> None:
    document = {
        "node": "node-b", "backend": "native_vrrp", "ready": False, "now": 1000.0,
        "routers": [{"group": "b" * 64 + "-eth0", "short_name": "bbbbbbbbbbbb-eth0", "family": "IPv4",
                     "interface": "eth0", "vrid": 12, "vips": ["198.51.100.7", "198.51.100.8"], "state": "backup",
                     "since": 1000.0 - 3725, "reason": "started", "last_failover_seconds": None,
                     "preferred_holder": "node-a"}],
        "skipped": [{"group": "c" * 64 + "-eth9", "reason": "interface 'eth9' does not exist on node 'node-b'"}],
        "unresolved": [{"service": "default/lost", "reason": "pool 'missing' does not exist"}],
    }
    text = status_table(document)
    assert "NOT READY" in text.splitlines()[0]
    row = text.splitlines()[2]
    assert "backup (preferred: node-a)" in row and "1h02m" in row and "198.51.100.7,198.51.100.8" in row
    assert "cccccccccccc-eth9" in text and "eth9' does not exist" in text
    assert "default/lost" in text and "pool 'missing'" in text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0.4, "0s"), (59, "59s"), (61, "1m01s"), (3600, "1h00m"), (90000, "1d01h"), (-5, "0s"),
])
def test_age(seconds: float | None, text: str) -> None:
    assert age(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(None, "-"), (0.0123, "12ms"), (3.4, "3400ms"), (12.34, "12.3s")])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_cluster_rows_from_vipgroup_objects() -> None:
    items = [{
        "metadata": {"name": "d" * 64 + "-eth0"},
        "spec": {"interface": "eth0", "vrid": 42, "nodes": ["node-a", "node-b"],
                 "vips": {"ipv4": ["198.51.100.9"], "ipv6": ["2001:db8:100::9"]}},
        "status": {"holders": {"ipv4": {"node": "node-a", "since": "2026-11-26T17:00:00Z", "backend": "native_vrrp",
                                        "lastFailoverSeconds": 0.2},
                               "ipv6": {"node": "node-b"}}},
    }, {"metadata": {"name": "e" * 64 + "-eth1"}, "spec": {"vrid": 5, "vips": {"ipv4": ["203.0.113.9"]}}}]
    rows = cluster_rows(items)
    assert [(r["short_name"], r["family"], r["holder"]) for r in rows] == [
        ("dddddddddddd-eth0", "IPv4", "node-a"), ("dddddddddddd-eth0", "IPv6", "node-b"),
        ("eeeeeeeeeeee-eth1", "IPv4", None)]
    assert rows[0]["since"] == 1795712400.0 and rows[0]["last_failover_seconds"] == 0.2
    assert rows[0]["vips"] == ["198.51.100.9"] and rows[1]["vips"] == ["2001:db8:100::9"]
    assert rows[2]["interface"] == "eth1" and rows[2]["vips"] == ["203.0.113.9"]
    table = cluster_table({"now": 1795712400.0 + 65, "groups": rows})
    assert table.splitlines()[0].split()[:6] == ["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "HOLDER"]
    assert "node-a  1m05s  200ms" in table and "none" in table.splitlines()[3]


def test_kubeconfig_that_cannot_be_read_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.kubeconfig"
    assert main(["status", "--kubeconfig", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err


def test_kubeconfig_reads_vipgroups_from_the_cluster(tmp_path: Path) -> None:
    import kubernetes.client

    from vipcore.testing.apiserver import ApiServer

    crds = Path(__file__).resolve().parents[2] / "deploy" / "crds"
    with ApiServer(crds=[crds]) as server:
        client = server.client()
        api = kubernetes.client.CustomObjectsApi(client)
        name = "f" * 64 + "-eth0"
        api.create_cluster_custom_object("vipcore.io", "v1alpha1", "vipgroups", {
            "apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": name},
            "spec": {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": 77,
                     "vips": {"ipv4": ["198.51.100.77"], "ipv6": ["2001:db8:100::77"]}}})
        api.patch_cluster_custom_object_status("vipcore.io", "v1alpha1", "vipgroups", name, {
            "status": {"holders": {"ipv4": {"node": "node-b", "since": "2026-11-26T17:00:00Z",
                                            "backend": "native_vrrp"}}}})
        client.close()
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        table = subprocess.run([VIPCORE, "status", "--kubeconfig", str(kubeconfig)],
                               capture_output=True, text=True, timeout=60)
        js = subprocess.run([VIPCORE, "status", "--kubeconfig", str(kubeconfig), "-o", "json"],
                            capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:6] == ["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "HOLDER"]
    v4 = lines[1].split()
    assert v4[:6] == ["ffffffffffff-eth0", "IPv4", "eth0", "77", "198.51.100.77", "node-b"]
    assert lines[2].split()[:6] == ["ffffffffffff-eth0", "IPv6", "eth0", "77", "2001:db8:100::77", "none"]
    assert js.returncode == 0, js.stderr
    rows = json.loads(js.stdout)["groups"]
    assert [(r["family"], r["holder"], r["backend"]) for r in rows] == [
        ("IPv4", "node-b", "native_vrrp"), ("IPv6", None, None)]


def test_kubeconfig_with_the_api_server_down_is_one_line(tmp_path: Path) -> None:
    from vipcore.testing.apiserver import write_kubeconfig

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{free_port()}")
    result = subprocess.run([VIPCORE, "status", "--kubeconfig", str(kubeconfig), "--timeout", "2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach the API server" in result.stderr


def test_default_address_follows_the_agents_env_override() -> None:
    from vipcore.ops.status import DEFAULT_ADDRESS, default_address

    assert default_address({}) == DEFAULT_ADDRESS
    assert default_address({"VIPCORE_METRICS": "192.0.2.1:9641"}) == "192.0.2.1:9641"  # the DaemonSet's host IP
    assert default_address({"VIPCORE_METRICS": ""}) == DEFAULT_ADDRESS


def test_address_from_the_environment_and_from_the_config_file(tmp_path: Path) -> None:
    async def scenario() -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            address = url.removeprefix("http://")
            env = {**os.environ, "VIPCORE_METRICS": address}
            by_env = await asyncio.to_thread(subprocess.run, [VIPCORE, "status", "-o", "json"],
                                             capture_output=True, text=True, timeout=60, env=env)
            config = tmp_path / "agent.yaml"
            config.write_text(f"node_name: node-a\nmanifests: [{EXAMPLES}]\nmetrics: {{address: '{address}'}}\n")
            clean = {k: v for k, v in os.environ.items() if not k.startswith("VIPCORE_")}
            by_config = await asyncio.to_thread(subprocess.run, [VIPCORE, "status", "--config", str(config)],
                                                capture_output=True, text=True, timeout=60, env=clean)
        return by_env, by_config

    by_env, by_config = asyncio.run(scenario())
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout)["node"] == "node-a"
    assert by_config.returncode == 0, by_config.stderr
    assert by_config.stdout.startswith("node node-a")


def test_config_without_endpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(f"node_name: node-a\nmanifests: [{EXAMPLES}]\nmetrics: ''\n")
    assert main(["status", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disables the agent's endpoint" in err
