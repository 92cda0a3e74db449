"""What each install works with: a node with ``vipcore[agent]`` alone, a controller with
``vipcore[kubernetes]`` alone, and the core alone (``pyproject.toml``'s extras).

Each case runs the real CLI in a subprocess where the other extras' modules cannot be imported
(``sys.modules[name] = None``: ``import name`` raises ``ImportError`` as when the package is not
installed). A command that needs a missing extra answers with one line naming the extra and how to
install it, never a traceback; everything else works.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.cli import EXAMPLES, REPO

RUNNER = """
import sys
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None
from vipcore.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

#: What ``vipcore[kubernetes]`` brings (the client and its HTTP library) and what ``vipcore[agent]`` does.
KUBERNETES = "kubernetes,urllib3"
AGENT = "pyroute2"
CORE_ONLY = "kubernetes,urllib3,pyroute2,prometheus_client"


def run(missing: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", RUNNER, missing, *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=cwd)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def agent_config(folder: Path, source: str) -> Path:
    config = folder / "agent.yaml"
    config.write_text(f"backend: native_vrrp\nnode_name: node-a\nsource: {source}\nmanifests: [{EXAMPLES}]\n"
                      f"state_dir: {folder / 'state'}\nkubernetes: {{kubeconfig: {folder / 'none.yaml'}}}\n")
    return config


def test_a_node_with_the_agent_extra_alone_runs_the_agent_from_manifests(tmp_path: Path) -> None:
    listed = run(KUBERNETES, "--help")
    assert listed.returncode == 0, listed.stderr
    assert "agent" in listed.stdout and "controller" in listed.stdout
    dry = run(KUBERNETES, "agent", "--config", str(agent_config(tmp_path, "manifests")), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("dry run: node node-a, backend native_vrrp, source manifests")


def test_without_the_kubernetes_extra_the_kubernetes_source_and_the_controller_say_what_to_install(
        tmp_path: Path) -> None:
    source = run(KUBERNETES, "agent", "--config", str(agent_config(tmp_path, "kubernetes")), "--dry-run")
    assert source.returncode != 0
    line = one_line(source)
    assert "source: kubernetes" in line and "pip install 'vipcore[kubernetes]'" in line, line
    for args in (("controller",), ("status", "--kubeconfig", str(tmp_path / "none.yaml"))):
        result = run(KUBERNETES, *args)
        assert result.returncode != 0
        line = one_line(result)
        assert "pip install 'vipcore[kubernetes]'" in line, line


def test_a_controller_with_the_kubernetes_extra_alone_lists_and_starts_its_commands(tmp_path: Path) -> None:
    listed = run(AGENT, "--help")
    assert listed.returncode == 0, listed.stderr
    helped = run(AGENT, "controller", "--help")
    assert helped.returncode == 0 and "--config" in helped.stdout, helped.stderr
    agent = run(AGENT, "agent", "--config", str(agent_config(tmp_path, "manifests")))
    assert agent.returncode != 0
    line = agent.stderr.strip().splitlines()[-1]
    assert "Traceback" not in agent.stderr, agent.stderr
    assert "plugin 'native_vrrp'" in line and "pip install 'vipcore[agent]'" in line and "pyroute2" in line, line


def test_the_core_alone_resolves_manifests_and_lists_every_command() -> None:
    listed = run(CORE_ONLY, "--help")
    assert listed.returncode == 0, listed.stderr
    for command in ("resolve", "backends", "agent", "status", "controller"):
        assert command in listed.stdout
    resolved = run(CORE_ONLY, "resolve", "-f", str(EXAMPLES), "-o", "json")
    assert resolved.returncode == 0, resolved.stderr
    assert '"groups"' in resolved.stdout
    for command, extra in (("agent", "agent"), ("controller", "kubernetes"), ("status", "agent")):
        refused = run(CORE_ONLY, command, "--help")
        assert refused.returncode == 2
        line = one_line(refused)
        assert line.startswith(f"vipcore: error: vipcore {command} needs the {extra!r} extra"), line
        assert f"pip install 'vipcore[{extra}]'" in line, line
