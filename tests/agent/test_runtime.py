"""The agent survives any plugin or source fault: checked results, failed groups visible and retried, deadlines,
concurrency, a blocking hook named, and a failing source keeping the last good state."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import generate_latest

from vipcore import Backend, DesiredState, Membership, MetricSample, hookimpl
from vipcore.agent.runtime import Agent
from vipcore.agent.telemetry import agent_registry, agent_status
from vipcore.backend.host import load_hooks
from vipcore.core.errors import ConfigError
from vipcore.core.settings import Config
from vipcore.ops.metrics import samples_of
from vipcore.ops.status import status_table
from vipcore.sources.static import StaticSource, desired_state

FAST = {"retry_initial": 0.02, "retry_max": 0.05, "hook_timeout": 2.0, "stop_timeout": 2.0}


def state(*interfaces: str, nodes: tuple[str, ...] = ("node-a", "node-b")) -> DesiredState:
    """One pool and one Service per interface: one group per interface."""
    objs: list[dict[str, Any]] = [
        {"kind": "Node", "metadata": {"name": n},
         "status": {"conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": f"198.51.100.{11 + i}"}]}}
        for i, n in enumerate(nodes)
    ]
    for i, interface in enumerate(interfaces):
        objs.append({"kind": "VipPool", "metadata": {"name": interface},
                     "spec": {"interface": interface,
                              "addresses": [f"203.0.113.{10 * i + 1}-203.0.113.{10 * i + 9}"]}})
        objs.append({"kind": "Service", "metadata": {"name": f"svc-{interface}", "namespace": "default",
                                                     "annotations": {"vipcore.io/pool": interface}},
                     "spec": {"type": "LoadBalancer"}})
    return desired_state(objs)


class Scripted(Backend):
    """A backend whose group hooks do what the test says, per interface."""

    name = "scripted"
    #: interface -> hook name -> behaviour (a callable returning what the hook returns, or raising)
    script: dict[str, dict[str, Callable[[], Awaitable[Any]]]] = {}
    calls: list[tuple[str, str]] = []

    async def _do(self, hook: str, interface: str) -> Any:
        Scripted.calls.append((hook, interface))
        behaviour = Scripted.script.get(interface, {}).get(hook)
        return await behaviour() if behaviour is not None else None

    async def vipcore_backend_stop(self, graceful: bool) -> None:
        Scripted.calls.append(("stop", ""))

    async def vipcore_group_join(self, membership: Membership) -> Any:
        return await self._do("join", membership.group.interface)

    async def vipcore_group_update(self, old: Membership, new: Membership) -> Any:
        return await self._do("update", new.group.interface)

    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> Any:
        return await self._do("leave", membership.group.interface)

    async def vipcore_group_release(self, group: str, reason: str) -> Any:
        return await self._do("release", group.rsplit("-", 1)[-1])

    async def vipcore_group_takeover(self, group: str, reason: str) -> Any:
        return await self._do("takeover", group.rsplit("-", 1)[-1])


class Plugin:
    @hookimpl
    def vipcore_register_backends(self, registry: Any) -> None:
        registry.add(Scripted)


def make(source: Any, *, plugins: tuple[tuple[str, object], ...] = (), **agent: float) -> Agent:
    Scripted.calls.clear()
    config = Config(backend="scripted", node_name="node-a", metrics="", sections={"agent": {**FAST, **agent}})
    hooks = load_hooks(plugins=[("scripted-plugin", Plugin()), *plugins], load_entrypoints=False)
    # No manifests path: the agent runs on a static source.
    return Agent(config, hooks=hooks, source=source, interface_check=lambda name: True)


def returns(value: Any) -> Callable[[], Awaitable[Any]]:
    async def behaviour() -> Any:
        return value
    return behaviour


def raises(exc: Exception) -> Callable[[], Awaitable[Any]]:
    async def behaviour() -> Any:
        raise exc
    return behaviour


def group_of(agent: Agent, interface: str) -> str:
    assert agent.resolution is not None
    return next(g.name for g in agent.resolution.groups if g.interface == interface)


@pytest.mark.parametrize("value", ["ok", 42, False])
def test_a_join_returning_garbage_fails_the_group_naming_plugin_and_hook(value: Any) -> None:
    Scripted.script = {"vcP0": {"join": returns(value)}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0", "vcP1")))
        await agent.start()
        failed = agent.failed[group_of(agent, "vcP0")]
        assert failed.hook == "vipcore_group_join"
        assert failed.error.startswith(f"plugin 'scripted-plugin': backend 'scripted' returned {value!r} from "
                                       "vipcore_group_join")
        assert set(agent.memberships) == {group_of(agent, "vcP1")}  # the other group is fine
        await agent.stop()

    asyncio.run(scenario())


def test_a_sync_hook_returning_none_is_not_reported_as_missing() -> None:
    class SyncRelease(Scripted):
        name = "syncrelease"

        def vipcore_group_release(self, group: str, reason: str) -> None:  # type: ignore[override]
            return None

    class SyncPlugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(SyncRelease)

    hooks = load_hooks(plugins=[("sync-plugin", SyncPlugin())], load_entrypoints=False)
    hooks.activate(hooks.backend("syncrelease"))
    with pytest.raises(Exception) as raised:
        asyncio.run(hooks.release(group="g-vcP0", reason="test"))
    assert "does not implement" not in str(raised.value)
    assert str(raised.value).startswith("plugin 'sync-plugin': backend 'syncrelease' returned None from "
                                        "vipcore_group_release")


def test_a_failed_join_is_visible_unready_and_retried_with_backoff() -> None:
    attempts: list[float] = []

    async def flaky() -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise OSError("interface busy")

    Scripted.script = {"vcP0": {"join": flaky}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0", "vcP1")))
        registry = agent_registry(agent)
        await agent.start()
        name = group_of(agent, "vcP0")
        short = agent.desired[name].group.short_name
        assert not agent.ready and agent.not_ready_reason() == f"1 group(s) failed in the backend: {short}"
        document = agent_status(agent)
        assert not document["ready"] and document["failed"][0]["group"] == name
        rows = [r for r in document["routers"] if r["group"] == name]
        assert rows and all(r["state"] == "fault" and r["failed"] for r in rows)
        assert rows[0]["reason"].startswith("failed: plugin 'scripted-plugin': backend 'scripted' failed in "
                                            "vipcore_group_join")
        assert rows[0]["reason"].endswith("OSError: interface busy")
        assert samples_of(generate_latest(registry).decode(), "vipcore_failed_groups") == {(): 1.0}
        table = status_table(json.loads(json.dumps(document)))  # what `vipcore status` prints
        assert "NOT READY" in table.splitlines()[0]
        (row,) = [line for line in table.splitlines() if line.startswith(short)]
        assert " fault " in row and "failed: plugin 'scripted-plugin'" in row
        for _ in range(200):  # retried on its own, with growing waits, until it succeeds
            if agent.ready:
                break
            await asyncio.sleep(0.01)
        assert agent.ready and name in agent.memberships and len(attempts) == 3
        # Backoff doubles (with +-20% jitter): 0.02 s, then 0.04 s.
        assert attempts[1] - attempts[0] >= 0.015 and attempts[2] - attempts[1] >= 0.03
        assert samples_of(generate_latest(registry).decode(), "vipcore_failed_groups") == {(): 0.0}
        await agent.stop()

    asyncio.run(scenario())


def test_a_failed_leave_keeps_the_group_in_status_and_is_retried() -> None:
    leaves: list[int] = []

    async def stuck_then_fine() -> None:
        leaves.append(1)
        if len(leaves) == 1:
            raise OSError("cannot remove address")

    Scripted.script = {"vcP0": {"leave": stuck_then_fine}}
    source = StaticSource(state("vcP0", "vcP1"))

    async def scenario() -> None:
        agent = make(source, retry_initial=0.2, retry_max=0.2)
        await agent.start()
        name = group_of(agent, "vcP0")
        await agent.apply(state("vcP1"))
        assert name in agent.memberships and agent.failed[name].hook == "vipcore_group_leave"
        assert [r["failed"] for r in agent_status(agent)["routers"] if r["group"] == name] == [True]
        for _ in range(100):
            if name not in agent.memberships:
                break
            await asyncio.sleep(0.01)
        assert name not in agent.memberships and not agent.failed and len(leaves) == 2
        await agent.stop()

    asyncio.run(scenario())


def test_one_slow_group_does_not_delay_the_others_and_a_hung_hook_meets_its_deadline() -> None:
    async def hang() -> None:
        await asyncio.Event().wait()

    async def slow() -> None:
        await asyncio.sleep(0.5)

    Scripted.script = {"vcP0": {"join": hang}, "vcP1": {"join": slow}, "vcP2": {"join": slow}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0", "vcP1", "vcP2")), hook_timeout=0.8, retry_initial=30, retry_max=30)
        began = time.monotonic()
        await agent.start()
        took = time.monotonic() - began
        # Concurrent: about one deadline, not 0.8 + 0.5 + 0.5.
        assert took < 1.5, took
        assert set(agent.memberships) == {group_of(agent, "vcP1"), group_of(agent, "vcP2")}
        assert "did not finish vipcore_group_join" in agent.failed[group_of(agent, "vcP0")].error
        assert "within 0.8 s" in agent.failed[group_of(agent, "vcP0")].error
        await agent.stop()

    asyncio.run(scenario())


def test_a_hook_blocking_the_event_loop_is_named(caplog: pytest.LogCaptureFixture) -> None:
    async def blocking() -> None:
        time.sleep(0.3)  # the mistake: a blocking call in an async hook

    Scripted.script = {"vcP0": {"join": blocking}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0")))
        await agent.start()
        await agent.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    (warning,) = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.getMessage()]
    assert warning.startswith("plugin 'scripted-plugin': backend 'scripted' blocked the event loop for 0.3")
    assert "in vipcore_group_join (" in warning


def test_sigterm_does_not_wait_forever_on_a_hung_stop() -> None:
    class Hung(Scripted):
        name = "hung"

        async def vipcore_backend_stop(self, graceful: bool) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.Event().wait()  # ignores cancellation too

    class HungPlugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(Hung)

    async def scenario() -> None:
        config = Config(backend="hung", node_name="node-a", metrics="",
                        sections={"agent": {**FAST, "stop_timeout": 0.3}})
        hooks = load_hooks(plugins=[("hung-plugin", HungPlugin())], load_entrypoints=False)
        agent = Agent(config, hooks=hooks, source=StaticSource(state("vcP0")), interface_check=lambda n: True)
        runner = asyncio.create_task(agent.run())
        for _ in range(100):
            if agent.ready:
                break
            await asyncio.sleep(0.01)
        agent.request_stop()
        with pytest.raises(Exception, match="did not finish vipcore_backend_stop within 0.3 s"):
            await asyncio.wait_for(runner, 3)

    asyncio.run(scenario())


def test_garbage_metrics_are_skipped_with_the_plugin_named(caplog: pytest.LogCaptureFixture) -> None:
    class Garbage:
        @hookimpl
        def vipcore_collect_metrics(self) -> Any:
            return [MetricSample("vipcore_fine_total", 1.0), "junk"]

    class Good:
        @hookimpl
        def vipcore_collect_metrics(self) -> list[MetricSample]:
            return [MetricSample("vipcore_good_total", 3.0)]

    async def scenario() -> str:
        agent = make(StaticSource(state("vcP0")), plugins=(("garbage-plugin", Garbage()), ("good", Good())))
        registry = agent_registry(agent)
        await agent.start()
        text = generate_latest(registry).decode()  # today: an exception (HTTP 500)
        await agent.stop()
        return text

    with caplog.at_level(logging.WARNING):
        text = asyncio.run(scenario())
    assert samples_of(text, "vipcore_good_total") == {(): 3.0}
    assert samples_of(text, "vipcore_fine_total") == {}
    assert any(r.getMessage() == "plugin 'garbage-plugin': vipcore_collect_metrics returned 'junk', not a "
               "vipcore.MetricSample; its samples are skipped" for r in caplog.records)


class FlakySource(StaticSource):
    """Fails ``initial`` ``fail_initial`` times, then serves; its watch raises on demand."""

    def __init__(self, state: DesiredState, fail_initial: int = 0) -> None:
        super().__init__(state)
        self.fail_initial = fail_initial
        self.watches = 0
        self.break_watch = asyncio.Event()

    async def initial(self) -> DesiredState:
        if self.fail_initial:
            self.fail_initial -= 1
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return self.state

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        self.watches += 1
        self.break_watch.clear()
        await self.break_watch.wait()
        raise RuntimeError("API down")


def test_a_failing_source_keeps_the_last_good_state_and_restarts_its_watch(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        source = FlakySource(state("vcP0"), fail_initial=2)
        agent = make(source)
        runner = asyncio.create_task(agent.run())
        for _ in range(300):
            if agent.ready and source.watches:
                break
            await asyncio.sleep(0.01)
        assert agent.ready and len(agent.memberships) == 1  # the first state came after two failures
        source.break_watch.set()
        for _ in range(300):
            if source.watches >= 2:
                break
            await asyncio.sleep(0.01)
        assert source.watches >= 2 and not runner.done()
        assert len(agent.memberships) == 1 and agent.ready  # groups kept, nothing left
        assert ("leave", "vcP0") not in Scripted.calls and ("stop", "") not in Scripted.calls
        assert agent.source_error == "RuntimeError: API down"
        agent.request_stop()
        await asyncio.wait_for(runner, 5)
        assert Scripted.calls[-1] == ("stop", "")

    with caplog.at_level(logging.ERROR, logger="vipcore.agent"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("waiting for the first desired state: UnicodeDecodeError") for m in messages) == 2
    assert any(m.startswith("source failed: RuntimeError: API down; keeping the last good state, restarting")
               for m in messages)
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)  # one line, no traceback


def test_readyz_says_why_while_the_first_state_fails() -> None:
    async def scenario() -> None:
        source = FlakySource(state("vcP0"), fail_initial=1000)
        agent = make(source)
        runner = asyncio.create_task(agent.run())
        await asyncio.sleep(0.1)
        assert not agent.ready
        assert (agent.not_ready_reason() or "").startswith("waiting for the first desired state: UnicodeDecodeError")
        assert agent_status(agent)["not_ready_reason"] == agent.not_ready_reason()
        agent.request_stop()
        await asyncio.wait_for(runner, 5)  # stops promptly, nothing was started

    asyncio.run(scenario())


def test_agent_settings_are_validated() -> None:
    config = Config(backend="scripted", node_name="node-a", sections={"agent": {"hook_timeout": float("inf")}})
    with pytest.raises(ConfigError, match=r"agent.hook_timeout: must be a positive number of seconds, got inf"):
        Agent(config, hooks=load_hooks(load_entrypoints=False), source=StaticSource(state()))
    config = Config(backend="scripted", node_name="node-a", sections={"agent": {"hook_timout": 3}})
    with pytest.raises(ConfigError, match=r"agent.hook_timout: unknown setting"):
        Agent(config, hooks=load_hooks(load_entrypoints=False), source=StaticSource(state()))


def test_a_hook_exception_is_logged_with_its_traceback_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    Scripted.script = {"vcP0": {"join": raises(KeyError("vips"))}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0")), retry_initial=30, retry_max=30)
        await agent.start()
        await agent.stop()

    with caplog.at_level(logging.DEBUG, logger="vipcore"):
        asyncio.run(scenario())
    (debug,) = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert debug.getMessage().startswith("backend 'scripted' raised in vipcore_group_join")
    assert debug.exc_info is not None and isinstance(debug.exc_info[1], KeyError)
    (error,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "KeyError: 'vips'" in error.getMessage() and not error.exc_info  # one line for operators


def test_readyz_fails_while_a_group_is_failed_and_recovers_after_the_retry() -> None:
    from tests.helpers.agents import aget
    from vipcore.agent.telemetry import serve_agent

    joins: list[int] = []

    async def second_time_lucky() -> None:
        joins.append(1)
        if len(joins) == 1:
            raise OSError("no carrier")

    Scripted.script = {"vcP0": {"join": second_time_lucky}}

    async def scenario() -> None:
        agent = make(StaticSource(state("vcP0")), retry_initial=0.3, retry_max=0.3)
        endpoint = await serve_agent(agent, "127.0.0.1:0")
        try:
            await agent.start()
            code, _, body = await aget(endpoint.url + "/readyz")
            short = next(iter(agent.desired.values())).group.short_name
            assert (code, body) == (503, f"not ready: 1 group(s) failed in the backend: {short}\n")
            _, _, body = await aget(endpoint.url + "/status")
            assert json.loads(body)["failed"][0]["hook"] == "vipcore_group_join"
            for _ in range(200):
                if agent.ready:
                    break
                await asyncio.sleep(0.01)
            code, _, _ = await aget(endpoint.url + "/readyz")
            assert code == 200 and len(joins) == 2
            await agent.stop()
        finally:
            await endpoint.close()

    asyncio.run(scenario())


def test_what_start_up_built_is_frozen_once_the_first_state_is_applied_and_thawed_on_stop() -> None:
    """``gc.freeze()`` once the agent has started and applied its first (synced) state: what start-up built
    lives for the whole run, and the collections during a failover no longer walk it. Not before the groups
    are joined (their routers are start-up objects too), and undone on stop."""
    import gc

    during: list[int] = []

    async def join() -> None:
        during.append(gc.get_freeze_count())

    Scripted.script = {"vcP0": {"join": join}}

    async def scenario() -> None:
        gc.unfreeze()
        agent = make(StaticSource(state("vcP0")))
        await agent.start()
        assert during == [0]  # not frozen while the groups were being joined
        assert gc.get_freeze_count() > 0
        await agent.stop()
        assert gc.get_freeze_count() == 0

    try:
        asyncio.run(scenario())
    finally:
        Scripted.script = {}
        gc.unfreeze()


def test_a_pass_that_changes_nothing_schedules_nothing() -> None:
    """A desired state equal to the last one (a watch event of someone else's group) calls no hook and
    starts no task: no gather over every group to find that nothing is to be done."""

    async def scenario() -> tuple[int, list[tuple[str, str]]]:
        desired = state("vcP0", "vcP1", "vcP2")
        agent = make(StaticSource(desired))
        await agent.start()
        assert len(agent.memberships) == 3
        Scripted.calls.clear()
        created = 0
        loop = asyncio.get_running_loop()

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            nonlocal created
            created += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        try:
            await agent.apply(desired)
            quiet = created
            # A change still reaches its groups.
            await agent.apply(state("vcP0", "vcP1"))
        finally:
            loop.set_task_factory(None)
        calls = list(Scripted.calls)
        await agent.stop()
        return quiet, calls

    quiet, calls = asyncio.run(scenario())
    assert quiet == 0
    assert calls == [("leave", "vcP2")]


def test_a_config_section_no_installed_backend_reads_is_named_once_with_the_likely_meant_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """A misspelled backend section is not an error (another node may have that backend installed),
    but it is ignored: the agent says so at start, with the closest name it knows."""
    async def scenario() -> None:
        Scripted.calls.clear()
        config = Config(backend="scripted", node_name="node-a", metrics="",
                        sections={"agent": dict(FAST), "scriptd": {"x": 1}, "scripted": {}, "zzz_other": {}})
        hooks = load_hooks(plugins=[("scripted-plugin", Plugin())], load_entrypoints=False)
        agent = Agent(config, hooks=hooks, source=StaticSource(state("vcP0")), interface_check=lambda name: True)
        await agent.start()
        assert agent.memberships  # it runs on
        await agent.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    unused = sorted(r.getMessage() for r in caplog.records if "config section" in r.getMessage())
    assert unused == [
        "config section 'scriptd' is neither a setting nor an installed backend's: ignored (did you mean "
        "'scripted'?)",
        "config section 'zzz_other' is neither a setting nor an installed backend's: ignored",
    ]
