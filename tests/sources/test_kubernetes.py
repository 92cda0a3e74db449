"""Agents with the Kubernetes source, next to a controller, against the test API server.

The backend is an in-test plugin that does what ``netlink_static`` decides
(the preferred holder is MASTER, the others BACKUP), so the tests can see
holder records, heartbeat failover and an API outage without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers.cluster import FAST, endpoint_slice, events, lb_ips, node, service, settings, vipgroups, vippool

from vipcore.agent.runtime import Agent
from vipcore.backend import BackendContext, BackendRegistry, hookimpl
from vipcore.core.errors import ConfigError
from vipcore.core.settings import Config
from vipcore.controller.runtime import Controller
from vipcore.kube.heartbeat import HeartbeatConfig
from vipcore.core.model import DesiredState, GroupState, Membership, State, StateChange
from vipcore.core.resolve import membership, resolve
from vipcore.backend.host import load_hooks
from vipcore.sources.kubernetes import KubernetesAgentSource
from vipcore.testing.apiserver import ApiServer

NODES = ("node-a", "node-b", "node-c")


class PreferredHolder:
    """A backend that holds exactly when placement prefers this node."""

    name = "preferred_holder"

    def __init__(self) -> None:
        self.context: BackendContext | None = None
        self.states: dict[tuple[str, Any], State] = {}
        self.joined: list[str] = []
        self.left: list[str] = []

    def _set(self, membership: Membership, new: State, reason: str) -> None:
        assert self.context is not None
        for family in membership.group.families:
            old = self.states.get((membership.name, family), State.INIT)
            if old is new:
                continue
            self.states[(membership.name, family)] = new
            self.context.report(StateChange(group=membership.name, family=family, old=old, new=new, reason=reason,
                                            at=time.time(), node=self.context.node, backend=self.name,
                                            vrid=membership.group.vrid))

    def _decide(self, membership: Membership) -> None:
        mine = membership.preferred_holder == membership.node
        self._set(membership, State.MASTER if mine else State.BACKUP, "chosen holder" if mine else "backup")

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> None:
        self.context = context

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        return None

    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> None:
        self.joined.append(membership.name)
        self._decide(membership)

    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        if old.name != new.name:  # renamed: the backend holds the new name only (its state reported anew)
            for family in old.group.families:
                self.states.pop((old.name, family), None)
        self._decide(new)

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        self.left.append(membership.name)
        self._set(membership, State.STOPPED, "left the group")


def agent_config(name: str, kubeconfig: str, heartbeat: bool, **options: Any) -> Config:
    kube: dict[str, Any] = {"kubeconfig": kubeconfig, **options}
    if heartbeat:
        kube["heartbeat"] = {"enabled": True, "namespace": "default", "duration": 2}
    return Config(backend="preferred_holder", node_name=name, source="kubernetes", metrics="", kubernetes=kube)


class RunningAgent:
    def __init__(self, config: Config) -> None:
        self.source = KubernetesAgentSource(config)
        self.backend = PreferredHolder()
        backend = self.backend

        class Plugin:
            @hookimpl
            def vipcore_register_backends(self, registry: BackendRegistry) -> None:
                registry.add(type("Factory", (), {"name": backend.name, "__new__": lambda cls: backend}))

        hooks = load_hooks(plugins=[("preferred-holder", Plugin()), *self.source.plugins()], load_entrypoints=False)
        self.agent = Agent(config, hooks=hooks, source=self.source, interface_check=lambda _name: True)
        self.dispatched: list[frozenset[str]] = []
        #: IPv4 VIPs of each membership, per dispatch.
        self.vips: list[dict[str, int]] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.agent.start()

        async def apply(state: Any) -> None:
            await self.agent.apply(state)
            self.dispatched.append(frozenset(self.agent.memberships))
            self.vips.append({n: len(m.group.vips_v4) for n, m in self.agent.memberships.items()})

        self.task = asyncio.create_task(self.source.watch(apply))

    async def kill(self) -> None:
        """Die without a word: the watch and the heartbeat stop, nothing is released."""
        hb = self.source._heartbeat_task
        self.source._heartbeat_task = None
        for task in (self.task, hb):
            if task is not None:
                task.cancel()
        self.source.heartbeat = None  # so close() releases nothing: a dead node says nothing
        with contextlib.suppress(asyncio.CancelledError):
            if self.task is not None:
                await self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.source.holder_status is not None:
            self.source.holder_status.close()


async def wait(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(server: ApiServer, tmp_path: Any, *, heartbeat: bool,
                  **options: Any) -> AsyncIterator[dict[str, RunningAgent]]:
    kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
    client = server.client()
    hb = HeartbeatConfig(enabled=heartbeat, namespace="default", duration=2.0)
    controller = Controller(settings("c1", heartbeat=hb, timing=FAST, **options), client)
    ctask = asyncio.create_task(controller.run(timeout=10))
    agents = {name: RunningAgent(agent_config(name, kubeconfig, heartbeat)) for name in NODES}
    try:
        await asyncio.gather(*(a.start() for a in agents.values()))
        yield agents
    finally:
        for a in agents.values():
            await a.stop()
        ctask.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctask
        client.close()


def holder(server: ApiServer) -> str | None:
    groups = vipgroups(server)
    if len(groups) != 1:
        return None
    return ((groups[0].get("status") or {}).get("holders") or {}).get("ipv4", {}).get("node")


def test_agents_record_the_holder(server: ApiServer, tmp_path: Any) -> None:
    for name in NODES:
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))

    async def scenario() -> None:
        async with running(server, tmp_path, heartbeat=False) as agents:
            server.create(service("web"))
            name = await wait(lambda: holder(server), what="a holder record")
            (group,) = vipgroups(server)
            gname = group["metadata"]["name"]
            assert agents[name].backend.states[(gname, next(iter(agents[name].backend.states))[1])] is State.MASTER
            assert sum(1 for a in agents.values() for (g, _), s in a.backend.states.items()
                       if g == gname and s is State.MASTER) == 1
            since = group["status"]["holders"]["ipv4"]
            assert since["backend"] == "preferred_holder" and since["since"].endswith("Z")

    asyncio.run(scenario())


def test_heartbeat_expiry_moves_the_group(server: ApiServer, tmp_path: Any) -> None:
    for name in NODES:
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))

    async def scenario() -> None:
        async with running(server, tmp_path, heartbeat=True) as agents:
            server.create(service("web"))
            # Every node in the group first: a node whose first heartbeat the controller has not seen yet
            # is left out of the first plan (and joins a moment later).
            first = await wait(lambda: holder(server) if [g["spec"]["nodes"] for g in vipgroups(server)]
                               == [list(NODES)] else None, what="a holder record of the three nodes' group")
            await agents[first].kill()
            killed = time.monotonic()
            await wait(lambda: [g["spec"]["nodes"] for g in vipgroups(server)]
                       == [[n for n in NODES if n != first]], timeout=8, what="the dead node to leave the group")
            second = await wait(lambda: holder(server) if holder(server) not in (None, first) else None,
                                timeout=8, what="a new holder")
            took = time.monotonic() - killed
            assert second != first
            assert took < 2.0 + 4.0, f"heartbeat failover took {took:.2f}s"  # Lease 2 s, loaded-machine room
            # The address stays the same, and the controller told the Service who holds it now.
            assert lb_ips(server, "web")
            # (A new group: the node list changed, so its name did.)
            await wait(lambda: any(r == "HolderChanged" and f"node {second} holds" in m
                                   for _, r, m in events(server, "web")), what="a HolderChanged event")

    asyncio.run(scenario())


def test_api_outage_changes_nothing_and_reconnect_does_not_flap(server: ApiServer, tmp_path: Any) -> None:
    for name in NODES:
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))

    async def scenario() -> None:
        async with running(server, tmp_path, heartbeat=True) as agents:
            server.create(service("web"))
            await wait(lambda: holder(server), what="a holder record")
            # Settled: every agent in the same group (a node whose first heartbeat the controller has not
            # seen yet joins a moment later, and the group is renamed then).
            await wait(lambda: len({frozenset(a.backend.states) for a in agents.values()}) == 1
                       and all(a.backend.states for a in agents.values()), what="one group on every node")
            await asyncio.sleep(0.5)
            before = {n: (list(a.backend.joined), list(a.backend.left), dict(a.backend.states))
                      for n, a in agents.items()}
            server.refuse_connections(3.0)  # longer than the heartbeat duration
            await asyncio.sleep(3.0)
            await wait(lambda: all(a.source.cache.connection().connected for a in agents.values()),
                       timeout=15, what="reconnect")
            await asyncio.sleep(2.5)  # more than a heartbeat duration after reconnecting
            after = {n: (list(a.backend.joined), list(a.backend.left), dict(a.backend.states))
                     for n, a in agents.items()}
            assert after == before

    asyncio.run(scenario())


# ---------------------------------------------------------------- the VipGroup view (the default)

def test_the_vipgroup_view_dispatches_what_the_full_view_resolves(server: ApiServer, tmp_path: Any) -> None:
    for i, name in enumerate(NODES):
        server.create(node(name, ip=f"198.51.100.{i + 1}"))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19", default=True))

    async def full_view(name: str) -> dict[str, Membership]:
        """This node's memberships as an agent with ``agent_view: full`` resolves them."""
        config = agent_config(name, str(server.write_kubeconfig(tmp_path / "kubeconfig")), False, agent_view="full")
        source = KubernetesAgentSource(config, record_holders=False)
        try:
            state = await source.initial(timeout=10)
        finally:
            await source.close()
        assert isinstance(state, DesiredState)
        return {g.name: membership(g, name, state.nodes) for g in resolve(state, allocate=False).groups_of(name)}

    async def scenario() -> None:
        async with running(server, tmp_path, heartbeat=False) as agents:
            assert all(a.source.view == "groups" for a in agents.values())
            server.create(service("web"))
            server.create(service("api", policy="Local"))
            server.create(endpoint_slice("api", ["node-b", "node-c"]))
            server.create(service("db", policy="Local"))
            server.create(endpoint_slice("db", ["node-a"]))
            await wait(lambda: len(vipgroups(server)) == 3 and all(lb_ips(server, s) for s in ("web", "api", "db")),
                       what="three groups")
            # The agents never read a Service or an EndpointSlice: their memory and watch traffic
            # follow the VipGroups.
            read = {r.path.split("?")[0].rsplit("/", 1)[-1] for r in server.requests
                    if r.client.startswith("vipcore-agent/") and r.method in ("GET", "WATCH")}
            assert "services" not in read and "endpointslices" not in read, read
            assert {"vipgroups", "nodes"} <= read
            for name, agent in agents.items():
                expected = await full_view(name)
                await wait(lambda: agent.agent.memberships == expected, timeout=10,
                           what=f"{name}'s memberships to match the full view")

            # A Service edit that changes no group reaches no agent; a node's drain label reaches
            # only its own groups, through the priorities it gives.
            counts = {n: len(a.dispatched) for n, a in agents.items()}
            server.patch("v1", "Service", "web", {"metadata": {"labels": {"team": "x"}}}, namespace="default")
            server.patch("v1", "Node", "node-a", {"metadata": {"labels": {"vipcore.io/drain": "true"}}})
            await wait(lambda: all(m.priority == 1 for m in agents["node-a"].agent.memberships.values()),
                       what="node-a drained")
            await wait(lambda: len(agents["node-b"].dispatched) > counts["node-b"], what="node-b to see it")
            b = agents["node-b"].agent.memberships
            assert all(m.members[-1].name == "node-a" for m in b.values() if "node-a" in m.group.nodes)
            assert isinstance(agents["node-b"].source.state(), GroupState)

    asyncio.run(scenario())


def test_sharded_groups_reach_the_agents_as_one_group(server: ApiServer, tmp_path: Any) -> None:
    """A big group is written as VipGroup shards; agents merge them back into the group a full view
    resolves; a new Service rewrites one shard; a node leaving renames every shard without a gap."""
    for i, name in enumerate(NODES):
        server.create(node(name, ip=f"198.51.100.{i + 1}"))
    server.create(vippool("lan", "203.0.113.10-203.0.113.60", default=True))

    def shard_objects() -> list[dict[str, Any]]:
        return [g for g in vipgroups(server) if "shard" in g["spec"]]

    async def full_view(name: str) -> dict[str, Membership]:
        config = agent_config(name, str(server.write_kubeconfig(tmp_path / "kubeconfig")), False, agent_view="full")
        source = KubernetesAgentSource(config, record_holders=False)
        try:
            state = await source.initial(timeout=10)
        finally:
            await source.close()
        assert isinstance(state, DesiredState)
        return {g.name: membership(g, name, state.nodes) for g in resolve(state, allocate=False).groups_of(name)}

    async def scenario() -> None:
        async with running(server, tmp_path, heartbeat=False, shard_vips=6) as agents:
            names = [f"s{i}" for i in range(12)]
            for name in names:
                server.create(service(name))
            await wait(lambda: all(lb_ips(server, s) for s in names) and len(shard_objects()) == 4,
                       what="12 VIPs in 4 shards")
            (group,) = {g["metadata"]["name"] for g in shard_objects() if g["spec"]["shard"]["index"] == 0}
            assert all(g["spec"]["nodes"] == [] for g in shard_objects() if g["metadata"]["name"] != group)
            for name, agent in agents.items():
                expected = await full_view(name)
                assert set(expected) == {group} and len(expected[group].group.vips_v4) == 12
                await wait(lambda: agent.agent.memberships == expected, timeout=10,
                           what=f"{name}'s memberships to match the full view")
            # One Service more: one shard written, none created or deleted.
            start = len(server.requests)
            server.create(service("s12"))
            await wait(lambda: lb_ips(server, "s12") and any(
                "203.0.113" in str(g["spec"]["vips"]) and lb_ips(server, "s12")[0] in g["spec"]["vips"]["ipv4"]
                for g in shard_objects()), what="s12's VIP in a shard")
            writes = [r for r in server.requests[start:] if "/vipgroups" in r.path and not r.path.endswith("/status")
                      and r.method in ("POST", "PUT", "PATCH", "DELETE")]
            assert len(writes) == 1 and writes[0].method in ("PUT", "PATCH"), [(r.method, r.path) for r in writes]
            await wait(lambda: len(agents["node-a"].agent.memberships[group].group.vips_v4) == 13,
                       what="node-a to merge the new VIP")
            # node-c leaves the Cluster group (drained of readiness): every shard renamed; the agents
            # end with the renamed group and every VIP, never a membership without them.
            agents["node-a"].vips.clear()
            server.patch("v1", "Node", "node-c", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
                         subresource="status")
            others = {g["metadata"]["name"]: g["metadata"]["generation"] for g in shard_objects()
                      if g["metadata"]["name"] != group}
            await wait(lambda: group not in {g["metadata"]["name"] for g in shard_objects()},
                       what="the group renamed")
            # Only shard 0 was rewritten (renamed): the spec of the other shards is untouched.
            assert {g["metadata"]["name"]: g["metadata"]["generation"] for g in shard_objects()
                    if g["spec"]["shard"]["index"] > 0} == others
            await wait(lambda: all(len(m.group.nodes) == 2 for m in agents["node-a"].agent.memberships.values()),
                       what="node-a to follow the rename")
            assert [len(m.group.vips_v4) for m in agents["node-a"].agent.memberships.values()] == [13]
            # Every state node-a dispatched on the way held all 13 VIPs in one router: the old group
            # until the renamed one had all its shards, then the renamed one.
            assert agents["node-a"].vips and all(list(v.values()) == [13] for v in agents["node-a"].vips), \
                agents["node-a"].vips

    asyncio.run(scenario())


def test_the_full_view_needs_saying(server: ApiServer, tmp_path: Any) -> None:
    kubeconfig = str(server.write_kubeconfig(tmp_path / "kubeconfig"))
    assert KubernetesAgentSource(agent_config("node-a", kubeconfig, False), record_holders=False).view == "groups"
    with pytest.raises(ConfigError, match="kubernetes.agent_view"):
        KubernetesAgentSource(agent_config("node-a", kubeconfig, False, agent_view="all"), record_holders=False)
    with pytest.raises(ConfigError, match="kubernetes.page_size"):
        KubernetesAgentSource(agent_config("node-a", kubeconfig, False, page_size="many"), record_holders=False)


def test_a_change_between_the_first_state_and_the_watch_is_delivered(server: ApiServer, tmp_path: Any) -> None:
    from tests.helpers import objects as o

    server.create(node("node-a"))
    server.create(o.vip_group("g1-eth0", 1, nodes=("node-a",)))
    config = agent_config("node-a", str(server.write_kubeconfig(tmp_path / "kubeconfig")), False, page_size=1)

    async def scenario() -> None:
        source = KubernetesAgentSource(config, record_holders=False)
        first = await source.initial(timeout=10)
        assert isinstance(first, GroupState) and set(first.memberships) == {"g1-eth0"}
        server.create(o.vip_group("g2-eth0", 2, nodes=("node-a",)))
        await wait(lambda: "g2-eth0" in source.cache.objects("vipgroups"), what="the new group in the cache")
        seen: list[GroupState] = []

        async def on_change(state: Any) -> None:
            seen.append(state)

        task = asyncio.create_task(source.watch(on_change))
        try:
            await wait(lambda: seen and set(seen[-1].memberships) == {"g1-eth0", "g2-eth0"}, timeout=5,
                       what="the change made before watch() to be delivered")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
    # kubernetes.page_size reached the informer: lists asked for one object at a time.
    assert any("limit=1" in r.path for r in server.requests if "/vipgroups" in r.path)


def test_the_agent_exports_the_informers_health(server: ApiServer, tmp_path: Any) -> None:
    """The agent's /metrics carries what the informer counts: invalid objects skipped, failed requests."""
    from tests.helpers import objects as o

    server.create(node("node-a"))
    server.create(o.vip_group("g1-eth0", 1, nodes=("node-a",)))
    bad = o.vip_group("g2-eth0", 2, nodes=("node-a",))
    bad["spec"]["vips"]["ipv4"] = ["not-an-address"]  # the view skips it and counts it
    server.create(bad)
    config = agent_config("node-a", str(server.write_kubeconfig(tmp_path / "kubeconfig")), False)

    async def scenario() -> dict[str, float]:
        source = KubernetesAgentSource(config, record_holders=False)
        try:
            state = await source.initial(timeout=10)
            assert isinstance(state, GroupState) and set(state.memberships) == {"g1-eth0"}
            return {s.name: s.value for s in source.vipcore_collect_metrics() if not s.labels}
        finally:
            await source.close()

    samples = asyncio.run(scenario())
    assert samples["vipcore_kubernetes_connected"] == 1.0
    assert samples["vipcore_kubernetes_invalid_objects"] == 1.0
    assert "vipcore_kubernetes_errors_total" in samples
    assert "vipcore_kubernetes_relists_total" in samples
