"""Small shared helpers for CLI-level tests (run the real console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent
VIPCORE = str(VENV_BIN / "vipcore")
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "manifests"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([VIPCORE, *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def write_yaml(path: Path, *docs: object) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def loopback_manifests(folder: Path, nodes: tuple[str, ...] = ("node-a", "node-b")) -> Path:
    """A manifest set whose pool lives on ``lo``: usable in the root namespace
    by backends that touch no network (the example backend)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs: list[object] = [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n},
         "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": f"198.51.100.{11 + i}"}]}}
        for i, n in enumerate(nodes)
    ]
    docs.append({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lo"},
                 "spec": {"interface": "lo", "addresses": ["198.51.100.200-198.51.100.210"]}})
    docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
                 "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    write_yaml(folder / "all.yaml", *docs)
    return folder
