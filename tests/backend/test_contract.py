"""The contract's helpers for backend authors: one placement helper that takes the group; the report
callable checks what a backend reports before the agent records it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import attrs
import pytest

import vipcore
from vipcore import Backend, BackendContext, Family, Membership, Node, State, StateChange, hookimpl, rank_nodes
from vipcore.agent.runtime import Agent
from vipcore.agent.telemetry import agent_status
from vipcore.backend.host import load_hooks
from vipcore.core.resolve import membership
from vipcore.core.settings import Config
from vipcore.sources.static import StaticSource, desired_state

NODES = tuple(f"node-{c}" for c in "abcdefgh")


def test_rank_nodes_takes_the_group_and_agrees_with_the_agents_membership() -> None:
    state = desired_state(
        [{"kind": "Node", "metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
         for n in NODES]
        + [{"kind": "VipPool", "metadata": {"name": "lan"},
            "spec": {"interface": "eth0", "addresses": ["203.0.113.0/26"], "default": True}}]
        + [{"kind": "Service", "metadata": {"name": f"svc{i}", "namespace": "default"},
            "spec": {"type": "LoadBalancer"}} for i in range(6)])
    groups = vipcore.resolve(state).groups
    assert groups
    disagreements_by_name = 0
    for group in groups:
        agent_order = tuple(m.name for m in membership(group, "node-a", state.nodes).members)
        assert rank_nodes(group, group.nodes) == agent_order
        # What the old doc told authors to do (rank by the group name) is a different order in general.
        disagreements_by_name += vipcore.rank(group.name, group.nodes) != agent_order
        # Ranking a subset keeps the relative order of the survivors.
        survivors = agent_order[1:]
        assert rank_nodes(group, reversed(survivors)) == survivors
    assert disagreements_by_name > 0
    assert isinstance(state.nodes[0], Node)


# -- what a backend reports is checked where it is handed over -----------------------------------------------

GOOD = StateChange(group="g" * 64 + "-eth0", family=Family.IPV4, old=State.INIT, new=State.MASTER, reason="joined",
                   at=1.0, node="node-a", backend="mine", vrid=7)


@pytest.mark.parametrize(("change", "message"), [
    (attrs.evolve(GOOD, new="master"), "StateChange.new must be a vipcore.State, got 'master' (str)"),
    (attrs.evolve(GOOD, family="IPv4"), "StateChange.family must be a vipcore.Family, got 'IPv4' (str)"),
    (attrs.evolve(GOOD, group=42), "StateChange.group must be the group's name (membership.name), got 42 (int)"),
    (attrs.evolve(GOOD, at="now"), "StateChange.at must be a number of seconds (context.clock()), got 'now' (str)"),
    (attrs.evolve(GOOD, vrid="7"), "StateChange.vrid must be an int or None, got '7' (str)"),
    (attrs.evolve(GOOD, failover_seconds=True),
     "StateChange.failover_seconds must be a number or None, got True (bool)"),
    ({"group": "g"}, "takes a vipcore.StateChange, got a dict"),
])
def test_a_malformed_report_is_refused_with_the_field_before_the_agent_sees_it(change: Any, message: str) -> None:
    seen: list[StateChange] = []
    context = BackendContext(node="node-a", report=seen.append)
    with pytest.raises(TypeError) as raised:
        context.report(change)
    assert str(raised.value) == f"context.report: {message}"
    assert seen == []
    context.report(GOOD)
    assert seen == [GOOD]


def test_a_backend_reporting_a_str_state_fails_its_group_in_one_line_and_status_is_still_served(
        tmp_path: Path) -> None:
    """A report with ``new="master"`` used to reach the agent's router table and break every ``/status``
    document afterwards (AttributeError: 'str' object has no attribute 'value')."""

    class Sloppy(Backend):
        name = "sloppy"

        async def vipcore_backend_stop(self, graceful: bool) -> None: ...
        async def vipcore_group_join(self, membership: Membership) -> None:
            self.context.report(attrs.evolve(GOOD, group=membership.name, new="master"))
        async def vipcore_group_update(self, old: Membership, new: Membership) -> None: ...
        async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None: ...
        async def vipcore_group_release(self, group: str, reason: str) -> None: ...
        async def vipcore_group_takeover(self, group: str, reason: str) -> None: ...

    class Plugin:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(Sloppy)

    state = desired_state([
        {"kind": "Node", "metadata": {"name": "node-a"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
        {"kind": "VipPool", "metadata": {"name": "lan"},
         "spec": {"interface": "eth0", "addresses": ["203.0.113.0/26"], "default": True}},
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"}, "spec": {"type": "LoadBalancer"}}])

    async def scenario() -> None:
        agent = Agent(Config(backend="sloppy", node_name="node-a", metrics="", state_dir=tmp_path),
                      hooks=load_hooks(plugins=[("sloppy", Plugin())], load_entrypoints=False),
                      source=StaticSource(state), interface_check=lambda name: True)
        await agent.start()
        try:
            ((name, failure),) = agent.failed.items()
            assert failure.error.endswith("failed in vipcore_group_join (" + name[:12] + "-eth0): TypeError: "
                                          "context.report: StateChange.new must be a vipcore.State, got 'master' (str)")
            document = agent_status(agent)  # served: nothing malformed reached the router table
            assert document["routers"] == [] or all(r["failed"] for r in document["routers"])
        finally:
            await agent.stop()

    asyncio.run(scenario())
