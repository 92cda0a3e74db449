"""The plugin contract: entry points, broken plugins, dispatch, observers, an out-of-tree backend."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import VIPCORE, loopback_manifests, run_cli, write_yaml
from vipcore import Family, State, StateChange, hookimpl
from vipcore.agent.runtime import Agent
from vipcore.core.settings import load_config
from vipcore.core.errors import PluginError
from vipcore.backend.host import load_hooks
from vipcore.sources.manifests import ManifestSource


def broken_distribution(root: Path, target: str = "vipcore_does_not_exist.plugin") -> dict[str, str]:
    """A distribution on PYTHONPATH whose entry point cannot be imported."""
    info = root / "vipcore_broken_plugin-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vipcore-broken-plugin\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(f"[vipcore.backends]\nbroken = {target}\n")
    return {"PYTHONPATH": str(root)}


def test_broken_plugin_is_named_with_its_distribution(tmp_path: Path) -> None:
    env = broken_distribution(tmp_path / "site")
    listing = run_cli("backends", "-o", "json", env=env)
    assert listing.returncode == 0, listing.stderr
    entries = {e["name"]: e for e in json.loads(listing.stdout)}
    assert entries["broken"]["distribution"] == "vipcore-broken-plugin"
    assert "ModuleNotFoundError" in entries["broken"]["error"]

    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "c.yaml", {"backend": "broken", "node_name": "node-a", "metrics": "",
                                              "manifests": [str(manifests)]})
    result = run_cli("agent", "--config", str(config), env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "vipcore: error: plugin 'broken' (from vipcore-broken-plugin): failed to load "
        "vipcore_does_not_exist.plugin: ModuleNotFoundError: No module named 'vipcore_does_not_exist'"
    )


def test_misspelled_hook_fails_loudly() -> None:
    class Typo:
        @hookimpl
        def vipcore_group_joinn(self, membership: Any) -> None:  # pragma: no cover - never called
            pass

    with pytest.raises(PluginError, match="unknown hook"):
        load_hooks(plugins=[("typo", Typo())], load_entrypoints=False)


class Recorder:
    """An in-process backend that records calls; used to test dispatch."""

    name = "recorder"
    calls: list[tuple[str, Any]] = []

    @hookimpl
    async def vipcore_backend_start(self, context: Any) -> None:
        self.context = context
        Recorder.calls.append(("start", context.node))

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        Recorder.calls.append(("stop", graceful))

    @hookimpl
    async def vipcore_group_join(self, membership: Any) -> None:
        Recorder.calls.append(("join", membership))
        self.context.report(StateChange(group=membership.name, family=Family.IPV4, old=State.INIT,
                                        new=State.MASTER, reason="test", at=time.time(),
                                        node=membership.node, backend=self.name))

    @hookimpl
    async def vipcore_group_update(self, old: Any, new: Any) -> None:
        Recorder.calls.append(("update", new))

    @hookimpl
    async def vipcore_group_leave(self, membership: Any, graceful: bool) -> None:
        Recorder.calls.append(("leave", membership))

    @hookimpl
    async def vipcore_group_release(self, group: str, reason: str) -> None:
        Recorder.calls.append(("release", reason))

    @hookimpl
    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        Recorder.calls.append(("takeover", reason))


class RecorderPlugin:
    @hookimpl
    def vipcore_register_backends(self, registry: Any) -> None:
        registry.add(Recorder)


class BrokenObserver:
    seen: list[StateChange] = []

    @hookimpl
    def vipcore_state_changed(self, change: StateChange) -> None:
        raise RuntimeError("observer bug")


class GoodObserver:
    seen: list[StateChange] = []

    @hookimpl
    def vipcore_state_changed(self, change: StateChange) -> None:
        GoodObserver.seen.append(change)


def test_agent_dispatches_only_differences_and_observers_cannot_break_it(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a", "node-b"))
    config = load_config(overrides={"backend": "recorder", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = load_hooks(plugins=[("rec", RecorderPlugin()), ("bad", BrokenObserver()), ("good", GoodObserver())],
                       load_entrypoints=False)
    Recorder.calls.clear()
    GoodObserver.seen.clear()
    source = ManifestSource(config.manifests)

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=source)
        await agent.start()
        assert [c[0] for c in Recorder.calls] == ["start", "join"]
        assert len(GoodObserver.seen) == 1  # the broken observer did not stop the good one
        joined = Recorder.calls[1][1]
        assert joined.group.nodes == ("node-a", "node-b")

        await agent.apply(source.load())  # same state: nothing dispatched
        assert [c[0] for c in Recorder.calls] == ["start", "join"]

        # node-b goes away: the group changes name (new node list) but keeps its
        # VRID: the same router, so an update of the old membership, not leave + join.
        text = (manifests / "all.yaml").read_text()
        docs = text.split("\n---\n")
        (manifests / "all.yaml").write_text("\n---\n".join(d for d in docs if "name: node-b" not in d))
        await agent.apply(source.load())
        assert [c[0] for c in Recorder.calls][2:] == ["update"]
        renamed = Recorder.calls[-1][1]
        assert renamed.group.nodes == ("node-a",) and renamed.name != joined.name
        assert renamed.group.vrid == joined.group.vrid
        assert set(agent.memberships) == {renamed.name}
        await agent.stop(graceful=True)
        assert Recorder.calls[-1] == ("stop", True)

    asyncio.run(scenario())
    hooks.deactivate()


def test_drain_label_releases_and_demotes_then_takes_back(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a", "node-b"))
    config = load_config(overrides={"backend": "recorder", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = load_hooks(plugins=[("rec", RecorderPlugin())], load_entrypoints=False)
    source = ManifestSource(config.manifests)
    original = (manifests / "all.yaml").read_text()

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=source)
        await agent.start()
        Recorder.calls.clear()
        drained = original.replace("name: node-a\n", "name: node-a\n  labels: {vipcore.io/drain: 'true'}\n", 1)
        assert drained != original
        (manifests / "all.yaml").write_text(drained)
        await agent.apply(source.load())
        kinds = [c[0] for c in Recorder.calls]
        assert kinds == ["update", "release"]
        assert Recorder.calls[0][1].priority == 1 and Recorder.calls[0][1].preferred_holder == "node-b"
        assert Recorder.calls[1][1] == "node drained"
        Recorder.calls.clear()
        await agent.apply(source.load())  # still drained: nothing new
        assert Recorder.calls == []
        (manifests / "all.yaml").write_text(original)
        await agent.apply(source.load())
        assert [c[0] for c in Recorder.calls] == ["update", "takeover"]
        await agent.stop()

    asyncio.run(scenario())


def test_backend_failing_in_a_group_hook_is_named_and_spares_others(tmp_path: Path) -> None:
    class Picky(Recorder):
        name = "picky"

        @hookimpl
        async def vipcore_group_join(self, membership: Any) -> None:
            if membership.group.interface == "lo":
                raise OSError("cannot hold on lo")
            Recorder.calls.append(("join", membership))

    class PickyPlugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(Picky)

    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a",))
    config = load_config(overrides={"backend": "picky", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = load_hooks(plugins=[("picky-plugin", PickyPlugin())], load_entrypoints=False)

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=ManifestSource(config.manifests))
        await agent.start()  # the failing group is logged and recorded, the agent keeps running
        assert agent.memberships == {}
        assert not agent.ready and "1 group(s) failed in the backend" in (agent.not_ready_reason() or "")
        (failure,) = agent.failed.values()
        assert failure.hook == "vipcore_group_join" and "OSError: cannot hold on lo" in failure.error
        with pytest.raises(PluginError, match=r"plugin 'picky-plugin'.*backend 'picky' failed in vipcore_group_join"):
            await hooks.join(membership=_any_membership(agent))
        await agent.stop()

    asyncio.run(scenario())


def _any_membership(agent: Agent) -> Any:
    from vipcore.core.resolve import membership

    assert agent.resolution is not None
    group = agent.resolution.groups[0]
    return membership(group, agent.node, [])


def test_out_of_tree_backend_installed_in_the_venv_runs_under_the_agent(example_backend: str, tmp_path: Path) -> None:
    listing = run_cli("backends", "-o", "json")
    entries = {e["name"]: e for e in json.loads(listing.stdout)}
    assert entries[example_backend]["distribution"] == "vipcore-example-backend"
    assert entries[example_backend]["version"] == "0.3.0"

    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a", "node-b"))
    state = tmp_path / "state"
    config = write_yaml(tmp_path / "c.yaml", {"backend": example_backend, "node_name": "node-a", "metrics": "",
                                              "manifests": [str(manifests)], "state_dir": str(state)})
    out = state / "example-backend.json"
    proc = subprocess.Popen([VIPCORE, "agent", "--config", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        groups = _wait_for(lambda: json.loads(out.read_text()) if out.exists() else None, lambda g: len(g) == 1)
        (name, group), = groups.items()
        assert group["interface"] == "lo" and group["vips"] == [group["vips"][0]]
        # Edit the manifests: a second Service joins the same group, the agent notices the file change.
        with open(manifests / "all.yaml", "a") as fh:
            fh.write("---\napiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
                     "spec: {type: LoadBalancer}\n")
        _wait_for(lambda: json.loads(out.read_text()), lambda g: len(g.get(name, {}).get("vips", [])) == 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert json.loads(out.read_text()) == {}  # graceful stop released everything
    assert "transition" in stderr


def test_backend_raising_on_start_names_the_plugin(example_backend: str, tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "c.yaml", {"backend": example_backend, "node_name": "node-a", "metrics": "",
                                              "manifests": [str(manifests)], "state_dir": str(tmp_path / "s"),
                                              example_backend: {"fail_on_start": True}})
    result = run_cli("agent", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert ("plugin 'vipcore-example-backend' " in result.stderr or "plugin 'example_file'" in result.stderr)
    assert "failed in vipcore_backend_start: RuntimeError: asked to fail by config" in result.stderr


def test_missing_interface_on_this_node_skips_the_group_at_start_as_later(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a",))
    text = (manifests / "all.yaml").read_text().replace("interface: lo", "interface: vcPnoexist0")
    (manifests / "all.yaml").write_text(text)
    config = load_config(overrides={"backend": "recorder", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = load_hooks(plugins=[("rec", RecorderPlugin())], load_entrypoints=False)
    Recorder.calls.clear()

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=ManifestSource(config.manifests))
        await agent.start()  # today: InterfaceNotFoundError, exit 2
        assert agent.ready
        assert list(agent.skipped.values()) == ["interface 'vcPnoexist0' does not exist on node 'node-a'"]
        assert [c[0] for c in Recorder.calls] == ["start"]
        (manifests / "all.yaml").write_text(text.replace("interface: vcPnoexist0", "interface: lo"))
        await agent.apply(ManifestSource(config.manifests).load())
        assert agent.skipped == {} and [c[0] for c in Recorder.calls] == ["start", "join"]
        await agent.stop()

    asyncio.run(scenario())


def _wait_for(read: Any, ok: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        try:
            value = read()
        except (OSError, ValueError):
            value = None
        if value is not None and ok(value):
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")



def test_metric_labels_given_as_a_dict_skip_that_plugin_instead_of_failing_the_scrape(
        caplog: pytest.LogCaptureFixture) -> None:
    """``labels={"state": "master"}`` (a dict, as most metric libraries take them) used to raise ValueError out
    of the check itself, failing every plugin's samples and the agent's own on that scrape."""
    from vipcore import MetricSample

    class DictLabels:
        @hookimpl
        def vipcore_collect_metrics(self) -> list[MetricSample]:
            return [MetricSample("dict_groups", 1.0, labels={"state": "master"}, kind="gauge")]  # type: ignore[arg-type]

    class PairLabels:
        @hookimpl
        def vipcore_collect_metrics(self) -> list[MetricSample]:
            return [MetricSample("pair_groups", 1.0, labels=(("state", "master"),), kind="gauge"),
                    MetricSample("loose_groups", 1.0, labels=(("state",),), kind="gauge")]  # type: ignore[arg-type]

    class Fine:
        @hookimpl
        def vipcore_collect_metrics(self) -> list[MetricSample]:
            return [MetricSample("fine_total", 2.0)]

    hooks = load_hooks(plugins=[("dict-labels", DictLabels()), ("pair-labels", PairLabels()), ("fine", Fine())],
                       load_entrypoints=False)
    with caplog.at_level("WARNING"):
        samples = hooks.collect_metrics()
    assert [s.name for s in samples] == ["fine_total"]
    warnings = sorted(r.getMessage() for r in caplog.records)
    assert warnings == [
        "plugin 'dict-labels': vipcore_collect_metrics returned sample 'dict_groups' with labels {'state': 'master'}, "
        "not a tuple of (name, value) string pairs; its samples are skipped",
        "plugin 'pair-labels': vipcore_collect_metrics returned sample 'loose_groups' with labels (('state',),), "
        "not a tuple of (name, value) string pairs; its samples are skipped",
    ]


@pytest.mark.parametrize(("columns", "rows", "problem"), [
    (3, (), "returned table 'held' whose columns are 3, not a tuple of column names"),
    ("GROUP", (), "returned table 'held' whose columns are 'GROUP', not a tuple of column names"),
    (("GROUP",), None, "returned table 'held' whose rows are None, not a tuple of rows"),
])
def test_a_status_table_with_columns_or_rows_of_the_wrong_shape_skips_that_plugin_only(
        columns: Any, rows: Any, problem: str) -> None:
    """``columns=3`` or ``rows=None`` used to raise TypeError out of the check itself: every ``/status``
    document failed instead of that plugin's section being skipped, as for a bad cell."""
    from vipcore import StatusTable

    class Broken:
        @hookimpl
        def vipcore_status_sections(self) -> list[StatusTable]:
            return [StatusTable("held", columns, rows)]

    class Fine:
        @hookimpl
        def vipcore_status_sections(self) -> list[StatusTable]:
            return [StatusTable("peers", ("PEER",), (("node-b",),))]

    hooks = load_hooks(plugins=[("broken", Broken()), ("fine", Fine())], load_entrypoints=False)
    sections, skipped = hooks.status_sections()
    assert list(sections) == ["fine"]
    assert [str(e) for e in skipped] == [f"plugin 'broken': vipcore_status_sections {problem}; its section is skipped"]
