"""docs/writing-a-backend.md stays a page a stranger can follow: its ``# file:`` blocks are the whole
third-party package (pyproject.toml and the module), a manifest and an agent config. Built here from the page
alone, installed with pip into a folder on ``sys.path`` (the entry point in the ``vipcore.backends`` group, as
any installed distribution), listed by ``vipcore backends`` and run under the agent through join, update,
rename, release, takeover, leave and stop: a page whose example stops working fails these tests."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from tests.helpers.cli import run_cli
from vipcore.agent.runtime import Agent
from vipcore.backend.host import load_hooks
from vipcore.core.errors import PluginError
from vipcore.core.model import State
from vipcore.core.settings import load_config
from vipcore.sources.static import StaticSource, desired_state

PAGE = Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md"
PACKAGE = "vipcore-file-announcer"


def page_files(text: str) -> dict[str, str]:
    """Each fenced block of the page whose first line is ``# file: PATH``: PATH -> the block's text."""
    files = {}
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.M | re.S):
        first, _, rest = block.partition("\n")
        if first.startswith("# file: "):
            path = first.removeprefix("# file: ").strip()
            assert path not in files, f"{path} is on the page twice"
            files[path] = rest if path.endswith(".toml") else block
    return files


@pytest.fixture(scope="module")
def files() -> dict[str, str]:
    found = page_files(PAGE.read_text())
    assert set(found) == {"pyproject.toml", "vipcore_file_announcer/__init__.py", "manifests/cluster.yaml",
                          "agent.yaml"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def installed(files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The page's package built and installed by pip into a folder put on ``sys.path`` (removed afterwards)."""
    tmp_path = tmp_path_factory.mktemp("page")
    source = tmp_path / PACKAGE
    for path in ("pyproject.toml", "vipcore_file_announcer/__init__.py"):
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(files[path])
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        for name in [m for m, mod in sys.modules.items() if str(site) in str(getattr(mod, "__file__", ""))]:
            del sys.modules[name]
        importlib.invalidate_caches()


def node(name: str, address: str, drain: bool = False) -> dict[str, Any]:
    labels = {"vipcore.io/drain": "true"} if drain else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": address}]}}


def test_the_page_builds_a_package_that_vipcore_backends_lists(installed: Path) -> None:
    hooks = load_hooks()
    assert not [f for f in hooks.failures if f.name == "file_announcer"], hooks.failures
    info = hooks.backend("file_announcer")
    assert (info.distribution, info.version, info.plugin) == (PACKAGE, "0.1.0", "file_announcer")
    listed = run_cli("backends", "-o", "json", env={"PYTHONPATH": str(installed)})  # the command, as on the page
    assert listed.returncode == 0, listed.stderr
    assert {"name": "file_announcer", "distribution": PACKAGE, "version": "0.1.0",
            "plugin": "file_announcer"} in json.loads(listed.stdout)


def test_the_page_backend_runs_join_update_rename_release_takeover_leave_stop(
        installed: Path, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the page starts the agent next to its config (state_dir is relative to the cwd)
    (tmp_path / "agent.yaml").write_text(files["agent.yaml"])
    config = attrs.evolve(load_config(tmp_path / "agent.yaml"), metrics="")  # no port on a shared machine
    objects = [o for o in yaml.safe_load_all(files["manifests/cluster.yaml"]) if o]
    nodes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Node"}
    others = [o for o in objects if o["kind"] != "Node"]
    assert set(nodes) == {"node-a", "node-b"}
    held = tmp_path / "state" / "held.json"
    hooks = load_hooks()  # the entry point, as `vipcore agent` loads it

    def holds() -> dict[str, bool]:
        return {name: group["holds"] for name, group in json.loads(held.read_text()).items()}

    def states(agent: Agent) -> set[tuple[str, State]]:
        return {(r.group, r.state) for r in agent.routers.values()}

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=StaticSource(desired_state(objects)),
                      interface_check=lambda name: True)
        await agent.start()
        assert not agent.failed
        (first,) = agent.memberships
        assert agent.memberships[first].preferred_holder == "node-a"  # as the page says
        assert holds() == {first: True} and states(agent) == {(first, State.MASTER)}
        (group,) = json.loads(held.read_text()).values()
        assert group["interface"] == "vcx0" and group["vips"][0].startswith("198.51.100.2")

        await agent.apply(desired_state([node("node-a", "198.51.100.11", drain=True), nodes["node-b"], *others]))
        assert not agent.failed and holds() == {first: False} and states(agent) == {(first, State.BACKUP)}

        await agent.apply(desired_state(objects))
        assert not agent.failed and holds() == {first: True} and states(agent) == {(first, State.MASTER)}

        await agent.apply(desired_state([nodes["node-a"], *others]))  # node-b gone: the group is renamed
        (renamed,) = agent.memberships
        assert renamed != first and not agent.failed
        assert holds() == {renamed: True} and states(agent) == {(renamed, State.MASTER)}

        await agent.apply(desired_state([nodes["node-a"], *(o for o in others if o["kind"] != "Service")]))
        assert not agent.failed and not agent.memberships and holds() == {}

        await agent.apply(desired_state(objects))
        assert len(agent.memberships) == 1 and len(holds()) == 1
        await agent.stop()
        assert holds() == {}

    asyncio.run(scenario())


def test_the_page_backend_names_a_bad_key_with_its_plugin(installed: Path, files: dict[str, str],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.yaml").write_text(files["agent.yaml"].replace("  file: held.json", "  fiel: held.json"))
    config = attrs.evolve(load_config(tmp_path / "agent.yaml"), metrics="")
    objects = [o for o in yaml.safe_load_all(files["manifests/cluster.yaml"]) if o]
    agent = Agent(config, hooks=load_hooks(), source=StaticSource(desired_state(objects)),
                  interface_check=lambda name: True)
    with pytest.raises(PluginError) as raised:
        asyncio.run(agent.start())
    assert str(raised.value) == (f"plugin 'file_announcer' (from {PACKAGE}): backend 'file_announcer' failed in "
                                 "vipcore_backend_start: ConfigError: file_announcer.fiel: unknown key (known: file)")


def test_the_address_holder_snippet_calls_what_address_holder_has() -> None:
    """The snippet needs root and an interface, so it is not run here (the lab tests run AddressHolder):
    every call it shows must exist with the keywords it passes, so a renamed method fails here first."""
    import inspect

    import vipcore
    from vipcore.net.addresses import AddressHolder

    (snippet,) = [b for b in re.findall(r"^ *```python\n(.*?)^ *```", PAGE.read_text(), flags=re.M | re.S)
                  if "AddressHolder()" in b]
    calls = re.findall(r"holder\.(\w+)\(([^)]*)\)", snippet)
    assert {name for name, _ in calls} == {"remove_stale", "add", "announce", "remove", "close"}
    for name, args in calls:
        parameters = inspect.signature(getattr(AddressHolder, name)).parameters
        for keyword in re.findall(r"(\w+)=", args):
            assert keyword in parameters, f"AddressHolder.{name} has no {keyword}="
    assert "netns" in inspect.signature(AddressHolder).parameters  # AddressHolder(netns="name") in tests
    assert issubclass(vipcore.InterfaceNotFoundError, vipcore.VipcoreError)


def python_blocks(marker: str) -> list[str]:
    """The page's python blocks (dedented, also those inside list items) that contain ``marker``."""
    import textwrap

    blocks = re.findall(r"^( *)```python\n(.*?)^ *```", PAGE.read_text(), flags=re.M | re.S)
    return [textwrap.dedent(body) for _, body in blocks if marker in body]


def test_the_in_process_snippet_runs_the_page_backend_with_its_status_section_and_metrics(
        installed: Path, files: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Section 6's snippet, run as printed (inside a coroutine, with ``tmp_dir`` and ``objects`` given), on the
    page's module with section 3's ``vipcore_status_sections`` and ``vipcore_collect_metrics`` added as methods
    of the backend class: the table on ``/status`` and the gauge on ``/metrics``, nothing skipped."""
    import textwrap
    import types

    (status_method,) = python_blocks("def vipcore_status_sections(self)")
    (metrics_method,) = python_blocks("def vipcore_collect_metrics(self)")
    methods = textwrap.indent(status_method + "\n" + metrics_method, "    ")
    module = files["vipcore_file_announcer/__init__.py"].replace("\n\n@hookimpl\n", "\n" + methods + "\n\n@hookimpl\n")
    module = module.replace("from vipcore import (", "from vipcore import (MetricSample, StatusTable, ")
    extended = types.ModuleType("vipcore_file_announcer")
    exec(compile(module, "vipcore_file_announcer/__init__.py", "exec"), extended.__dict__)
    monkeypatch.setitem(sys.modules, "vipcore_file_announcer", extended)  # what the snippet imports

    (snippet,) = python_blocks("hooks = load_hooks(plugins=")
    namespace: dict[str, Any] = {}
    exec("async def snippet(tmp_dir, objects):\n" + textwrap.indent(snippet, "    ").replace(
        "    await agent.stop()", "    from vipcore.agent.telemetry import agent_registry, agent_status\n"
        "    from prometheus_client import generate_latest\n"
        "    document = agent_status(agent)\n    metrics = generate_latest(agent_registry(agent)).decode()\n"
        "    await agent.stop()\n    return agent, document, metrics"), namespace)
    objects = [o for o in yaml.safe_load_all(files["manifests/cluster.yaml"]) if o]
    agent, document, metrics = asyncio.run(namespace["snippet"](str(tmp_path), objects))
    assert not agent.failed and len(agent.memberships) == 1
    assert json.loads((tmp_path / "held.json").read_text()) == {}  # stopped: nothing held
    assert document["sections_skipped"] == []
    (table,) = document["sections"]["file_announcer"]
    (name,) = agent.memberships
    assert table["title"] == "held" and table["columns"] == ["GROUP", "INTERFACE", "STATE"]
    assert table["rows"] == [[name[:12], "vcx0", "master"]]
    assert 'file_announcer_groups{state="master"} 1.0' in metrics.splitlines()
