"""What a library user or a backend author gets from ``pip install vipcore``: a light core, the extras, the CRDs."""

from __future__ import annotations

import filecmp
import importlib.resources
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from vipcore.backend.host import load_hooks
from vipcore.core.errors import PluginError

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("kubernetes", "pyroute2", "prometheus_client", "urllib3")


def project() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def test_core_dependencies_are_light_and_the_rest_are_extras() -> None:
    meta = project()
    names = {dep.split(">")[0].split("<")[0].split("=")[0].strip().lower() for dep in meta["dependencies"]}  # type: ignore[attr-defined]
    assert names == {"attrs", "pluggy", "pyyaml", "tenacity"}
    extras = meta["optional-dependencies"]
    assert any(d.startswith("pyroute2") for d in extras["agent"])  # type: ignore[index]
    assert any(d.startswith("prometheus-client") for d in extras["agent"])  # type: ignore[index]
    assert any(d.startswith("kubernetes") for d in extras["kubernetes"])  # type: ignore[index]
    assert meta["license"] == "Apache-2.0"  # SPDX expression, not the deprecated table


def test_vipcore_names_are_imported_on_first_use() -> None:
    """``import vipcore`` loads no plugin manager; every public name is there when asked for."""
    script = textwrap.dedent("""
        import sys
        import vipcore
        assert not [m for m in sys.modules if m.startswith(("vipcore.backend", "pluggy"))]
        for name in vipcore.__all__:
            getattr(vipcore, name)
        assert set(vipcore.__all__) <= set(dir(vipcore))
        from vipcore import Backend, resolve  # the usual way still works
        assert "vipcore.backend" in sys.modules
        try:
            vipcore.nothing_here
        except AttributeError as exc:
            assert "nothing_here" in str(exc)
        else:
            raise SystemExit("no AttributeError")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_import_vipcore_and_resolve_without_the_extras() -> None:
    """In a fresh interpreter where the heavy libraries cannot be imported at all."""
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError("blocked: " + name)
                return None

        sys.meta_path.insert(0, Block())
        import vipcore
        from vipcore.sources.static import StaticSource, desired_state
        from vipcore.backend.host import load_hooks

        state = desired_state([
            {{"kind": "Node", "metadata": {{"name": "node-a"}},
              "status": {{"conditions": [{{"type": "Ready", "status": "True"}}]}}}},
            {{"kind": "VipPool", "metadata": {{"name": "lan"}},
              "spec": {{"interface": "eth0", "addresses": ["203.0.113.10-203.0.113.20"], "default": True}}}},
            {{"kind": "Service", "metadata": {{"name": "web", "namespace": "default"}},
              "spec": {{"type": "LoadBalancer"}}}},
        ])
        resolution = vipcore.resolve(state)
        (group,) = resolution.groups
        (vip,) = group.vips_v4
        assert group.interface == "eth0" and str(vip).startswith("203.0.113."), group
        load_hooks(load_entrypoints=False)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        assert not loaded, loaded
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_crds_ship_in_the_package_and_match_deploy() -> None:
    shipped = importlib.resources.files("vipcore") / "crds"
    names = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".yaml"))
    assert names == sorted(p.name for p in (ROOT / "deploy" / "crds").glob("*.yaml"))
    for name in names:
        assert filecmp.cmp(str(shipped / name), ROOT / "deploy" / "crds" / name, shallow=False), name


def test_with_no_backend_installed_the_error_says_what_to_install() -> None:
    hooks = load_hooks(load_entrypoints=False)
    with pytest.raises(PluginError) as raised:
        hooks.backend("native_vrrp")
    assert "no such backend is installed (installed backends: none)" in str(raised.value)
    assert "pip install vipcore-native-vrrp vipcore-keepalived vipcore-netlink-static" in str(raised.value)
