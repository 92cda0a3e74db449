"""Heartbeat verdicts on the observer's clock (expiry, no Lease, stale views, recovery), and renewals."""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from vipcore.core.model import DesiredState, Node
from vipcore.kube import KubernetesWriter
from vipcore.kube.heartbeat import HeartbeatTracker, NodeHeartbeat, lease_name, with_heartbeats
from vipcore.kube.leases import LeaseClient
from vipcore.testing.apiserver import ApiServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lease(node: str, renew: str, holder: str | None = None, duration: int = 4) -> dict[str, Any]:
    return {"metadata": {"name": lease_name(node)},
            "spec": {"holderIdentity": node if holder is None else holder, "renewTime": renew,
                     "leaseDurationSeconds": duration}}


def test_expiry_is_judged_on_the_observers_clock() -> None:
    clock = Clock()
    tracker = HeartbeatTracker(monotonic=clock)
    assert tracker.observe([lease("a", "t1"), lease("b", "t1")]) == {"a", "b"}
    clock.now += 3
    assert tracker.observe([lease("a", "t2"), lease("b", "t1")]) == {"a", "b"}
    assert tracker.next_expiry() == 1.0  # b, seen unchanged since 100, expires at 104
    clock.now += 1.5
    assert tracker.observe([lease("a", "t2"), lease("b", "t1")]) == {"a"}


def test_no_lease_or_released_lease_is_not_alive() -> None:
    tracker = HeartbeatTracker(monotonic=Clock())
    assert tracker.observe([lease("a", "t1", holder=""), {"metadata": {"name": "other"}, "spec": {}}]) == frozenset()


def test_stale_view_keeps_the_verdict_and_recovery_restarts_clocks() -> None:
    clock = Clock()
    tracker = HeartbeatTracker(monotonic=clock)
    tracker.observe([lease("a", "t1"), lease("b", "t1")])
    clock.now += 10  # the API server is unreachable: nobody can renew
    assert tracker.observe([lease("a", "t1"), lease("b", "t1")], fresh=False) == {"a", "b"}
    # Back: a full duration to renew before anyone is judged dead.
    assert tracker.observe([lease("a", "t1"), lease("b", "t1")]) == {"a", "b"}
    clock.now += 3.9
    assert tracker.observe([lease("a", "t2"), lease("b", "t1")]) == {"a", "b"}
    clock.now += 0.2
    assert tracker.observe([lease("a", "t2"), lease("b", "t1")]) == {"a"}


def test_with_heartbeats_marks_dead_nodes_not_ready() -> None:
    state = DesiredState(nodes=(Node("a"), Node("b"), Node("c", ready=False)))
    marked = with_heartbeats(state, frozenset({"a"}))
    assert [(n.name, n.ready) for n in marked.nodes] == [("a", True), ("b", False), ("c", False)]
    assert with_heartbeats(state, frozenset({"a", "b"})) is state


def test_node_heartbeat_renews_through_the_writer_and_releases(server: ApiServer) -> None:
    """Against the test API server (which validates Leases as upstream): MicroTimes, renewals, release."""
    client = server.client()
    client.user_agent = "heartbeat/node-a"
    beat = NodeHeartbeat(LeaseClient(KubernetesWriter(client), "default"), "node-a", duration=1.0)

    def spec() -> dict[str, Any]:
        return dict(server.get("coordination.k8s.io/v1", "Lease", lease_name("node-a"), "default")["spec"])

    async def scenario() -> None:
        task = asyncio.create_task(beat.run())
        while beat.renewals < 2:
            await asyncio.sleep(0.05)
        first = spec()
        assert first["holderIdentity"] == "node-a" and first["leaseDurationSeconds"] == 1
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["renewTime"])
        with server.black_hole("heartbeat/node-a"):
            failures = beat.failures
            started = asyncio.get_running_loop().time()
            while beat.failures == failures:
                await asyncio.sleep(0.05)
            # A hung renewal is given up after one interval (a third of the duration), not awaited.
            assert asyncio.get_running_loop().time() - started < 1.0
        renewals = beat.renewals
        while beat.renewals == renewals:
            await asyncio.sleep(0.05)
        assert spec()["renewTime"] > first["renewTime"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert spec()["holderIdentity"] == ""  # released on the way out: peers react at once
    client.close()
