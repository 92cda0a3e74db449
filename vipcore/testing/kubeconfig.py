"""Kubeconfig files for the test API server (plain HTTP, no credentials)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONTEXT = "vipcore-test"


def kubeconfig(server: str, *, name: str = CONTEXT, namespace: str = "default") -> dict[str, Any]:
    """A kubeconfig document with one cluster, user and context, all named ``name``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": {"server": server}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}],
        "current-context": name,
    }


def write_kubeconfig(path: str | Path, server: str, *, name: str = CONTEXT, namespace: str = "default") -> Path:
    """Write a kubeconfig for ``server`` (mode 0600, as kubectl expects) and return its path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(server, name=name, namespace=namespace), sort_keys=False))
    target.chmod(0o600)
    return target
