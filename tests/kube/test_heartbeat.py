"""Heartbeat verdicts on the observer's clock: expiry, no Lease, stale views, recovery."""

from __future__ import annotations

from typing import Any

from vipcore.kube.heartbeat import HeartbeatTracker, lease_name, with_heartbeats
from vipcore.core.model import DesiredState, Node


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
