"""One plugin's mistake never breaks the others, and each mistake surfaces at load with one line naming the
plugin and its distribution."""

from __future__ import annotations

import asyncio
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.cli import loopback_manifests, run_cli, write_yaml
from vipcore import Backend, Membership, hookimpl
from vipcore.agent.runtime import Agent
from vipcore.backend.host import Hooks, load_hooks
from vipcore.core.errors import PluginError
from vipcore.core.settings import load_config
from vipcore.sources.manifests import ManifestSource


def distribution(site: Path, dist: str, entry_point: str, module: str, code: str) -> None:
    """A distribution in ``site`` whose ``vipcore.backends`` entry point loads ``module`` (source ``code``)."""
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[vipcore.backends]\n{entry_point} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for fake distributions, removed afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        for name in [m for m, mod in sys.modules.items() if str(root) in str(getattr(mod, "__file__", ""))]:
            del sys.modules[name]
        importlib.invalidate_caches()


GOOD_BACKEND = """
    from vipcore import Backend

    class Good(Backend):
        name = "{name}"
        async def vipcore_backend_stop(self, graceful): pass
        async def vipcore_group_join(self, membership): pass
        async def vipcore_group_update(self, old, new): pass
        async def vipcore_group_leave(self, membership, graceful): pass
        async def vipcore_group_release(self, group, reason): pass
        async def vipcore_group_takeover(self, group, reason): pass
"""


def test_misspelled_module_hook_skips_only_that_plugin(site: Path) -> None:
    distribution(site, "vipcore-typo", "typo", "vc_typo_plugin", GOOD_BACKEND.format(name="typo") + """
    from vipcore import hookimpl

    @hookimpl
    def vipcore_register_backend(registry):
        registry.add(Good)
    """)
    hooks = load_hooks()
    assert {"native_vrrp", "keepalived", "netlink_static"} <= set(hooks.backends())
    assert hooks.backend("native_vrrp").plugin == "native_vrrp"
    (failure,) = [f for f in hooks.failures if f.name == "typo"]
    assert str(failure.error) == ("plugin 'typo' (from vipcore-typo): unknown hook vipcore_register_backend "
                                  "(did you mean vipcore_register_backends?)")
    with pytest.raises(PluginError) as raised:
        hooks.backend("typo")
    assert raised.value is failure.error


def test_misspelled_argument_skips_only_that_plugin(site: Path) -> None:
    distribution(site, "vipcore-argtypo", "argtypo", "vc_argtypo_plugin", GOOD_BACKEND.format(name="argtypo") + """
    from vipcore import hookimpl

    @hookimpl
    def vipcore_register_backends(registy):
        registy.add(Good)
    """)
    hooks = load_hooks()
    assert "native_vrrp" in hooks.backends()
    (failure,) = [f for f in hooks.failures if f.name == "argtypo"]
    message = str(failure.error)
    assert message.startswith("plugin 'argtypo' (from vipcore-argtypo): vipcore_register_backends() takes "
                              "argument 'registy', which the hook does not pass")
    assert "(did you mean 'registry'?)" in message


def test_a_plugin_registering_another_plugins_name_is_the_one_skipped(site: Path) -> None:
    distribution(site, "vipcore-impostor", "impostor", "vc_impostor_plugin", GOOD_BACKEND.format(name="native_vrrp")
                 + """
    from vipcore import hookimpl

    @hookimpl
    def vipcore_register_backends(registry):
        registry.add(Good)
    """)
    hooks = load_hooks()
    info = hooks.backend("native_vrrp")
    assert (info.plugin, info.distribution) == ("native_vrrp", "vipcore-native-vrrp")  # the legitimate one
    (failure,) = [f for f in hooks.failures if f.plugin == "impostor"]
    assert str(failure.error) == (
        "plugin 'impostor' (from vipcore-impostor): registers backend 'native_vrrp', which plugin 'native_vrrp' "
        "(from vipcore-native-vrrp) also registers; skipped (the plugin named after the backend keeps it)")
    assert "keepalived" in hooks.backends()


def test_cli_keeps_working_and_fails_only_for_the_faulty_backend(site: Path, tmp_path: Path) -> None:
    distribution(site, "vipcore-typo", "typo", "vc_typo_plugin", """
    from vipcore import hookimpl

    @hookimpl
    def vipcore_register_backend(registry):
        pass
    """)
    env = {"PYTHONPATH": str(site)}
    listing = run_cli("backends", env=env)
    assert listing.returncode == 0, listing.stderr
    assert "native_vrrp" in listing.stdout
    assert "broken: plugin 'typo' (from vipcore-typo): unknown hook vipcore_register_backend" in listing.stderr

    manifests = loopback_manifests(tmp_path / "m")
    config = write_yaml(tmp_path / "c.yaml", {"backend": "typo", "node_name": "node-a", "metrics": "",
                                              "manifests": [str(manifests)], "state_dir": str(tmp_path / "s")})
    result = run_cli("agent", "--config", str(config), env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == ("vipcore: error: plugin 'typo' (from vipcore-typo): unknown hook "
                                     "vipcore_register_backend (did you mean vipcore_register_backends?)")


# -- backend classes checked when added ----------------------------------------------------------------------


def registered(*classes: type) -> Hooks:
    class Plugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            for cls in classes:
                registry.add(cls)

    return load_hooks(plugins=[("mine", Plugin())], load_entrypoints=False)


class Complete:
    name = "complete"

    @hookimpl
    async def vipcore_backend_start(self, context: Any) -> None: ...
    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None: ...
    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> None: ...
    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None: ...
    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None: ...


def test_backend_class_mistakes_are_found_when_it_is_added() -> None:
    class NearMiss(Complete):
        name = "near"

        @hookimpl
        async def vipcore_group_jion(self, membership: Membership) -> None: ...

    class Unmarked(Complete):
        name = "unmarked"

        async def vipcore_group_join(self, membership: Membership) -> None: ...  # no @hookimpl

    class Missing:
        name = "missing"

        @hookimpl
        async def vipcore_group_join(self, membership: Membership) -> None: ...

    class WrongArgument(Complete):
        name = "wrongarg"

        @hookimpl
        async def vipcore_group_leave(self, membership: Membership, gracefull: bool) -> None: ...

    hooks = registered(Complete, NearMiss, Unmarked, Missing, WrongArgument)
    assert set(hooks.backends()) == {"complete"}
    errors = {f.name: str(f.error) for f in hooks.failures}
    assert "unknown hook vipcore_group_jion (did you mean vipcore_group_join?)" in errors["near"]
    assert "method vipcore_group_join is not marked @hookimpl" in errors["unmarked"]
    assert errors["missing"].endswith("does not implement the dispatch hook(s) vipcore_backend_start, "
                                      "vipcore_backend_stop, vipcore_group_update, vipcore_group_leave")
    assert "takes argument 'gracefull'" in errors["wrongarg"] and "did you mean 'graceful'" in errors[
        "wrongarg"]
    for name, message in errors.items():
        assert message.startswith("plugin 'mine': backend "), message
        with pytest.raises(PluginError, match="plugin 'mine'"):
            hooks.backend(name)


def test_adding_an_instance_instead_of_the_class_is_one_line_and_the_plugins_other_backends_stay() -> None:
    """``registry.add(MyBackend())`` (as llm's ``register(Model())`` reads) is a mistake of that backend alone:
    one line saying what to write, not an AttributeError that drops every backend the plugin adds."""

    class Other(Complete):
        name = "other"

    hooks = registered(Complete, Other(), Other, 42)  # type: ignore[arg-type]
    assert set(hooks.backends()) == {"complete", "other"}
    errors = [str(f.error) for f in hooks.failures]
    assert errors == [
        "plugin 'mine': registry.add takes a backend class, got an instance of "
        f"{Other.__qualname__!r}: write registry.add({Other.__name__}), not registry.add({Other.__name__}())",
        "plugin 'mine': registry.add takes a backend class, got an instance of 'int': "
        "write registry.add(int), not registry.add(int())",
    ]


def test_a_backend_subclass_leaving_out_a_hook_is_refused() -> None:
    class Half(Backend):
        name = "half"

        async def vipcore_backend_stop(self, graceful: bool) -> None: ...
        async def vipcore_group_join(self, membership: Membership) -> None: ...

    hooks = registered(Half)
    with pytest.raises(PluginError, match=r"backend 'half' \(.*Half\): does not implement the dispatch hook\(s\) "
                                          r"vipcore_group_update, vipcore_group_leave, vipcore_group_release, "
                                          r"vipcore_group_takeover"):
        hooks.backend("half")


calls: list[tuple[str, Any]] = []


class Unmarked(Backend):
    """A backend written against the base class: no @hookimpl anywhere."""

    name = "unmarked"

    async def vipcore_backend_stop(self, graceful: bool) -> None:
        calls.append(("stop", graceful))

    async def vipcore_group_join(self, membership: Membership) -> None:
        calls.append(("join", membership.name))

    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        calls.append(("update", new.name))

    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        calls.append(("leave", membership.name))

    async def vipcore_group_release(self, group: str, reason: str) -> None:
        calls.append(("release", group))

    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        calls.append(("takeover", group))


def test_a_backend_subclass_needs_no_markers_and_runs_under_the_agent(tmp_path: Path) -> None:
    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a",))
    config = load_config(overrides={"backend": "unmarked", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = registered(Unmarked)
    calls.clear()

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=ManifestSource(config.manifests))
        await agent.start()
        backend = hooks.pm.get_plugin("backend:unmarked")
        assert isinstance(backend, Unmarked) and backend.context.node == "node-a"  # the base class kept it
        assert [c[0] for c in calls] == ["join"]
        await agent.stop()
        assert calls[-1] == ("stop", True)

    asyncio.run(scenario())


def test_a_start_override_that_forgets_super_is_named_at_start_not_at_every_join(tmp_path: Path) -> None:
    """The base class keeps the context in its start; an override that does not call it would fail every
    group later with "no attribute 'context'" (retried for ever). The agent stops at start with one line."""

    class Forgetful(Unmarked):
        name = "forgetful"

        async def vipcore_backend_start(self, context: Any) -> None:
            self.opened = True  # no super().vipcore_backend_start(context)

    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a",))
    config = load_config(overrides={"backend": "forgetful", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    calls.clear()
    agent = Agent(config, hooks=registered(Forgetful), source=ManifestSource(config.manifests))
    with pytest.raises(PluginError) as raised:
        asyncio.run(agent.start())
    assert str(raised.value) == (
        "plugin 'mine': backend 'forgetful' overrides vipcore_backend_start without calling "
        "super().vipcore_backend_start(context): self.context is unset")
    assert calls == []  # no group was dispatched


def test_an_agent_on_another_backend_runs_and_names_the_skipped_plugin_once(
        site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    distribution(site, "vipcore-typo", "typo", "vc_typo_plugin", """
    from vipcore import hookimpl

    @hookimpl
    def vipcore_register_backend(registry):
        pass
    """)

    class UnmarkedPlugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(Unmarked)

    manifests = loopback_manifests(tmp_path / "m", nodes=("node-a",))
    config = load_config(overrides={"backend": "unmarked", "node_name": "node-a", "manifests": [str(manifests)],
                                    "state_dir": str(tmp_path / "state"), "metrics": ""}, environ={})
    hooks = load_hooks(plugins=[("mine", UnmarkedPlugin())])  # entry points too: the broken one is among them

    async def scenario() -> None:
        agent = Agent(config, hooks=hooks, source=ManifestSource(config.manifests))
        await agent.start()
        assert agent.ready and len(agent.memberships) == 1
        await agent.stop()

    with caplog.at_level("WARNING"):
        asyncio.run(scenario())
    skipped = [r.getMessage() for r in caplog.records if "vipcore-typo" in r.getMessage()]
    assert skipped == ["skipped: plugin 'typo' (from vipcore-typo): unknown hook vipcore_register_backend "
                       "(did you mean vipcore_register_backends?)"]
