"""Helpers for the operations tests: a fake in-process backend and a running agent.

The fake backend is a real plugin: registered through ``load_hooks(plugins=...)``
like a third-party one, dispatched by the agent, reporting through
``context.report`` and offering counters through ``vipcore_collect_metrics``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from vipcore.agent.runtime import Agent
from vipcore.backend import BackendContext, BackendRegistry, hookimpl
from vipcore.core.settings import Config
from vipcore.core.model import FailoverPhases, Family, Membership, MetricSample, State, StateChange, StatusTable
from vipcore.backend.host import load_hooks

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "manifests"
BACKEND = "ops_fake"


class FakeBackend:
    """Holds nothing; reports what a VRRP backend would, on demand."""

    name = BACKEND

    def __init__(self) -> None:
        self.context: BackendContext | None = None
        self.memberships: dict[str, Membership] = {}
        self.states: dict[tuple[str, Family], State] = {}
        self.dropped: Counter[str] = Counter()
        self.sent = 0
        #: What ``vipcore_status_sections`` returns (a test sets it).
        self.sections: list[StatusTable] = []

    def _report(self, group: str, family: Family, new: State, reason: str, failover: float | None = None,
                phases: FailoverPhases | None = None) -> None:
        assert self.context is not None
        old = self.states.get((group, family), State.INIT)
        self.states[(group, family)] = new
        vrid = self.memberships[group].group.vrid if group in self.memberships else None
        self.context.report(StateChange(group=group, family=family, old=old, new=new, reason=reason,
                                        at=self.context.clock(), node=self.context.node, backend=self.name,
                                        vrid=vrid, failover_seconds=failover, failover_phases=phases))

    # -- what a test triggers ------------------------------------------------

    def fail_over(self, group: str, family: Family, seconds: float, phases: FailoverPhases | None = None) -> None:
        """This node's router becomes MASTER after the old master's adverts stopped."""
        self._report(group, family, State.MASTER, f"master down: no advert for {seconds * 0.9:.3f}s", seconds,
                     phases)

    def take_over(self, group: str, family: Family, seconds: float) -> None:
        """This node's router becomes MASTER by a control-plane decision (no breakdown)."""
        self._report(group, family, State.MASTER, "takeover: control plane", seconds)

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    # -- dispatch hooks --------------------------------------------------------

    @hookimpl
    async def vipcore_backend_start(self, context: BackendContext) -> None:
        self.context = context

    @hookimpl
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        for group, family in list(self.states):
            self._report(group, family, State.STOPPED, "graceful stop" if graceful else "stopped")

    @hookimpl
    async def vipcore_group_join(self, membership: Membership) -> None:
        self.memberships[membership.name] = membership
        for family in membership.group.families:
            self._report(membership.name, family, State.BACKUP, "started")

    @hookimpl
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        self.memberships[new.name] = new

    @hookimpl
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        for family in membership.group.families:
            self._report(membership.name, family, State.STOPPED, "left the group")
        self.memberships.pop(membership.name, None)

    @hookimpl
    def vipcore_collect_metrics(self) -> list[MetricSample]:
        samples = [MetricSample(f"vipcore_{BACKEND}_packets_dropped_total", float(n), (("reason", r),),
                                help="Adverts dropped, by reason") for r, n in sorted(self.dropped.items())]
        samples.append(MetricSample(f"vipcore_{BACKEND}_packets_sent_total", float(self.sent), help="Adverts sent"))
        return samples

    @hookimpl
    def vipcore_status_sections(self) -> list[StatusTable]:
        return self.sections


class FakePlugin:
    """The plugin object: registers the backend class."""

    @staticmethod
    @hookimpl
    def vipcore_register_backends(registry: BackendRegistry) -> None:
        registry.add(FakeBackend)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_agent(tmp_path: Path, *, metrics: str = "127.0.0.1:0", manifests: tuple[Path, ...] = (EXAMPLES,),
               node: str = "node-a") -> Agent:
    config = Config(backend=BACKEND, node_name=node, manifests=manifests, state_dir=tmp_path / "state",
                    metrics=metrics)
    hooks = load_hooks(plugins=[("ops-fake", FakePlugin)], load_entrypoints=False)
    return Agent(config, hooks=hooks, interface_check=lambda name: True)


def backend_of(agent: Agent) -> FakeBackend:
    backend = agent.hooks.pm.get_plugin(f"backend:{BACKEND}")
    assert isinstance(backend, FakeBackend)
    return backend


def get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, without raising on 4xx/5xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


async def aget(url: str) -> tuple[int, str, str]:
    """``get`` from a thread: the endpoint runs on this very loop."""
    return await asyncio.to_thread(get, url)


async def astatus(url: str) -> dict[str, Any]:
    code, _, body = await aget(url + "/status")
    assert code == 200, body
    document: dict[str, Any] = json.loads(body)
    return document


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[str]:
    """Serve the agent's endpoint on an ephemeral port, start it; yield the base URL."""
    from vipcore.agent.telemetry import serve_agent

    endpoint = await serve_agent(agent, "127.0.0.1:0")
    try:
        await agent.start()
        yield endpoint.url
    finally:
        try:
            await agent.stop(graceful=True)
        finally:
            await endpoint.close()
