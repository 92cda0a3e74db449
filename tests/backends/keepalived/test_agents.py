"""The real agent driving keepalived, and a rolling migration to native_vrrp (root only).

Three node namespaces run ``vipcore agent`` (keepalived backend, adverts
every 0.1 s); a client namespace pings the ``web`` VIP every 10 ms.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


from tests.helpers.keepalived_agents import VIPCORE, WEB_V4, WEB_V6, Agents, Pinger
from tests.helpers.keepalived_lab import Lab, running_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]

NODES = ("node-a", "node-b", "node-c")
WEB = {"web": f"{WEB_V4},{WEB_V6}"}


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    if not VIPCORE.exists():
        pytest.skip(f"{VIPCORE} is not installed")
    with running_lab(NODES, run_root=tmp_path / "lab") as lab:
        running = Agents(lab, tmp_path)
        try:
            yield running
        finally:
            running.stop_all()


def sole_holder(lab: Lab, *vips: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    holders = lab.holders(list(vips))
    if len(holders) != 1:
        return None
    (node,) = holders
    return node if set(vips) <= lab.holding(node) else None


def test_agents_with_keepalived_hold_move_and_add(agents: Agents) -> None:
    lab = agents.lab
    agents.write_manifests(WEB)
    for node in NODES:
        agents.start(node, "keepalived")
    best, second, third = agents.ranking()
    assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6) == best, 15), (
        lab.holders([WEB_V4, WEB_V6]), agents.log(best)[-2000:])
    # A new Service joins the same group: its VIP appears on the holder, nothing moves. (Placement and
    # the derived VRID follow the group's first Service: one that sorts after it changes neither;
    # see docs/membership.md.)
    extra = ipaddress.ip_address("198.51.100.101")
    agents.write_manifests({**WEB, "web-api": str(extra)})
    assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6, extra) == best, 10), (
        best, lab.holders([WEB_V4, WEB_V6, extra]))
    # Removing it takes its VIP away everywhere, the group stays.
    agents.write_manifests(WEB)
    assert wait_until(lambda: not lab.holders([extra]), 10)
    assert sole_holder(lab, WEB_V4, WEB_V6) == best
    # Graceful stop of the holder's agent: keepalived resigns, the next node holds.
    # The client's neighbour entry is younger than its 1 s locktime: only a spaced GARP burst reaches it.
    pinger = Pinger(lab, WEB_V4)
    time.sleep(0.3)
    assert agents.stop(best) == 0
    assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6) == second, 5)
    time.sleep(1.0)
    sent, received, gap = pinger.finish()
    print(f"graceful stop with keepalived: {sent - received} of {sent} pings lost, longest gap {gap * 1000:.0f} ms")
    # Worst case: the first burst falls inside the client's 1 s ARP locktime, the second (1 s later) lands.
    assert gap < 1.5, pinger.output[-1000:]
    assert lab.holding(best) == set()
    # A killed agent takes its keepalived with it (SIGTERM on parent death): no orphan holds the VIP.
    agents.procs[second].kill()
    agents.procs.pop(second).wait()
    assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6) == third, 5), lab.holders([WEB_V4])
    assert wait_until(lambda: "keepalived" not in " ".join(
        Path(f"/proc/{pid}/comm").read_text() for pid in lab.pids(lab.nodes[second])
        if Path(f"/proc/{pid}/comm").exists()), 5)


@pytest.mark.parametrize("old, new", [("keepalived", "native_vrrp"), ("native_vrrp", "keepalived")])
def test_rolling_migration(agents: Agents, old: str, new: str) -> None:
    """Node by node: stop the agent (SIGTERM), start it with the other backend, wait for the
    group to settle on the best-ranked node again; the client pings throughout."""
    lab = agents.lab
    agents.write_manifests(WEB)
    for node in NODES:
        agents.start(node, old)
    best = agents.ranking()[0]
    assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6) == best, 15)
    pingers = [Pinger(lab, WEB_V4), Pinger(lab, WEB_V6)]
    try:
        time.sleep(0.5)
        # Backups first, the holder last: the VIP moves twice (away from it and back).
        order = sorted(NODES, key=lambda n: n == best)
        for node in order:
            assert agents.stop(node) == 0
            agents.start(node, new)
            # Settled: the best-ranked node holds, alone, and the restarted node takes part again
            # (it logs a transition of the group).
            assert wait_until(lambda: sole_holder(lab, WEB_V4, WEB_V6) == best, 10), lab.holders([WEB_V4])
            assert wait_until(lambda n=node: "transition" in agents.log(n, new), 10)
            time.sleep(0.5)
            assert sole_holder(lab, WEB_V4, WEB_V6) == best
    finally:
        results = [p.finish() for p in pingers]
    for family, (sent, received, gap) in zip(("IPv4", "IPv6"), results):
        print(f"migration {old} -> {new} {family}: {sent - received} of {sent} pings lost, "
              f"longest gap {gap * 1000:.0f} ms")
        assert gap < 1.5, f"{family}: longest gap {gap:.3f} s"
    assert set(agents.backend.values()) == {new}
