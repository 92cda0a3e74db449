"""The keepalived backend with real keepalived, one per node namespace (root only).

Each node is a ``vcK…`` namespace on one bridge; each backend runs in this
process with ``netns:`` set, so it starts ``ip netns exec NS keepalived …``
and handles addresses in that namespace. Adverts every 0.1 s.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from vipcore.backend import BackendContext
from vipcore.core.model import Family, IPAddress, Membership, State, StateChange, VipGroup
from vipcore.core.resolve import group_name, membership
from vipcore_keepalived.backend import KeepalivedBackend

from tests.helpers.keepalived_lab import LAN, Lab, running_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

POOL = ipaddress.ip_network("198.51.100.96/27")
POOL6 = ipaddress.ip_network("2001:db8:100::100/120")
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
GOLDEN = Path(__file__).parent / "golden"


def managed(address: IPAddress) -> bool:
    return address in POOL or address in POOL6


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with running_lab(run_root=tmp_path / "lab") as built:
        yield built


def make_group(nodes: tuple[str, ...], vrid: int, v4: tuple[str, ...], v6: tuple[str, ...] = ()) -> VipGroup:
    return VipGroup(name=group_name(nodes, LAN), interface=LAN, nodes=nodes, vrid=vrid,
                    vips_v4=tuple(V4(a) for a in v4), vips_v6=tuple(V6(a) for a in v6))


ALL = ("node-a", "node-b", "node-c")
WEB = make_group(ALL, 10, ("198.51.100.101",), ("2001:db8:100::101",))
PAIR = make_group(("node-a", "node-b"), 11, ("198.51.100.102",))


def vips(group: VipGroup) -> tuple[IPAddress, ...]:
    return (*group.vips_v4, *group.vips_v6)


@attrs.define
class Driven:
    node: str
    backend: KeepalivedBackend
    reports: list[StateChange] = attrs.field(factory=list)

    def state(self, group: VipGroup, family: Family = Family.IPV4) -> State | None:
        latest = None
        for change in self.reports:
            if change.group == group.name and change.family is family:
                latest = change.new
        return latest

    @property
    def reloads(self) -> int:
        assert self.backend.process is not None
        return self.backend.process.counters.reloads


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class Cluster:
    """Backends for the lab's nodes, started and stopped together."""

    def __init__(self, lab: Lab, state_root: Path, config: dict[str, Any] | None = None) -> None:
        self.lab = lab
        self.state_root = state_root
        self.config = {"advert_interval": 0.1, **(config or {})}
        self.driven: dict[str, Driven] = {}

    async def start(self, node: str) -> Driven:
        d = Driven(node, KeepalivedBackend())
        context = BackendContext(
            node=node, config={**self.config, "netns": self.lab.nodes[node]}, report=d.reports.append,
            is_managed=managed, state_dir=self.state_root / node, backend_name="keepalived",
        )
        await d.backend.vipcore_backend_start(context=context)
        self.driven[node] = d
        return d

    def member(self, group: VipGroup, node: str) -> Membership:
        return membership(group, node, self.lab.node_objects())

    async def join(self, group: VipGroup, nodes: tuple[str, ...] | None = None) -> None:
        for node in nodes or group.nodes:
            await self.driven[node].backend.vipcore_group_join(membership=self.member(group, node))

    async def stop_all(self) -> None:
        for d in self.driven.values():
            await d.backend.vipcore_backend_stop(graceful=True)

    def holders(self, group: VipGroup, nodes: tuple[str, ...] | None = None) -> set[str]:
        return self.lab.holders(vips(group), nodes or group.nodes)

    async def settled(self, group: VipGroup, nodes: tuple[str, ...] | None = None, timeout: float = 10.0,
                      expect: str | None = None) -> str:
        """Wait until exactly one node holds all of the group's VIPs and reported MASTER; return it.

        With preempt (the default) that must be ``expect``: by default the best-ranked of ``nodes``
        (a lower-ranked node may hold briefly while the others' keepalived are still starting).
        """
        nodes = nodes or group.nodes
        if expect is None:
            ranking = [p.name for p in self.member(group, group.nodes[0]).members]
            expect = next(n for n in ranking if n in nodes)

        def one() -> bool:
            full = [n for n in nodes if set(vips(group)) <= self.lab.holding(n)]
            return (full == [expect] and self.holders(group, nodes) == {expect}
                    and all(self.driven[expect].state(group, f) is State.MASTER for f in group.families))

        await wait_for(one, timeout, f"one holder of {group.name[:12]}")
        (holder,) = self.holders(group, nodes)
        return holder


def run(lab: Lab, tmp_path: Path, body: Callable[[Cluster], Awaitable[None]],
        config: dict[str, Any] | None = None) -> None:
    async def go() -> None:
        cluster = Cluster(lab, tmp_path, config)
        try:
            for node in ALL:
                await cluster.start(node)
            await body(cluster)
        finally:
            await cluster.stop_all()

    asyncio.run(go())


def keepalived_pids(d: Driven) -> list[int]:
    paths = d.backend.process.paths if d.backend.process else None
    assert paths is not None
    return [int(p.read_text()) for p in (paths.pid, paths.vrrp_pid) if p.exists()]


# -- tests -------------------------------------------------------------------


def test_golden_configs_are_valid_keepalived(lab: Lab, tmp_path: Path) -> None:
    ns = lab.nodes["node-a"]
    for conf in sorted(GOLDEN.glob("*.conf")):
        done = subprocess.run(["ip", "netns", "exec", ns, "keepalived", "-t", "-f", str(conf)],
                              capture_output=True, text=True)
        assert done.returncode == 0, f"{conf.name}: {done.stdout}{done.stderr}"


def test_one_holder_per_group_the_preferred_one(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        await c.join(PAIR)
        for group in (WEB, PAIR):
            holder = await c.settled(group)
            assert holder == c.member(group, holder).preferred_holder
            for node in group.nodes:
                if node != holder:
                    await wait_for(lambda: c.driven[node].state(group) is State.BACKUP, what="backup report")
        # Both families of a group move together (sync group) and report with the VRID.
        change = next(r for d in c.driven.values() for r in d.reports if r.group == WEB.name and r.new is State.MASTER)
        assert change.vrid == 10 and change.backend == "keepalived" and change.failover_seconds is None

    run(lab, tmp_path, body)


def test_unchanged_desired_state_never_reloads(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        await c.settled(WEB)
        a = c.driven["node-a"]
        pids = keepalived_pids(a)
        reloads = a.reloads
        m = c.member(WEB, "node-a")
        await a.backend.vipcore_group_update(old=m, new=m)
        await a.backend.vipcore_group_join(membership=m)
        assert a.reloads == reloads
        assert keepalived_pids(a) == pids
        bigger = attrs.evolve(WEB, vips_v4=(*WEB.vips_v4, V4("198.51.100.103")))
        await a.backend.vipcore_group_update(old=m, new=c.member(bigger, "node-a"))
        assert a.reloads == reloads + 1
        assert keepalived_pids(a) == pids

    run(lab, tmp_path, body)


def test_new_vip_joins_the_group_without_moving_the_holder(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        before = {n: len(d.reports) for n, d in c.driven.items()}
        bigger = attrs.evolve(WEB, vips_v4=(*WEB.vips_v4, V4("198.51.100.104")),
                              vips_v6=(*WEB.vips_v6, V6("2001:db8:100::104")))
        for node in ALL:
            await c.driven[node].backend.vipcore_group_update(old=c.member(WEB, node), new=c.member(bigger, node))
        await wait_for(lambda: set(vips(bigger)) <= lab.holding(holder), what="new VIPs on the holder")
        await asyncio.sleep(0.5)  # several advert intervals: nobody else may take over
        assert c.holders(bigger) == {holder}
        for node, d in c.driven.items():
            changes = d.reports[before[node]:]
            if node == holder:
                assert changes == [], f"the holder {node} changed state on a VIP addition"
                continue
            # keepalived 2.2.7 reloading (SIGHUP) a backup now and then (about 1 run in 10, main at
            # 3cc9f90 alike) lets it miss the master's adverts and enter MASTER for a moment before it
            # hears the master again (docs/keepalived.md, "Reloads"): allowed as a blip that ends in
            # BACKUP, never a lasting second master and never the holder moving (asserted above).
            assert [c.new for c in changes] in ([], [State.MASTER, State.BACKUP]), \
                f"{node} changed state on a VIP addition: {changes}"

    run(lab, tmp_path, body)


def test_failover_when_the_holder_dies(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        order = [p.name for p in c.member(WEB, holder).members]
        lab.unplug(holder)
        for pid in keepalived_pids(c.driven[holder]):
            os.kill(pid, signal.SIGKILL)
        survivors = tuple(n for n in ALL if n != holder)
        assert await c.settled(WEB, survivors, timeout=5, expect=order[1]) == order[1]

    run(lab, tmp_path, body)


def test_supervisor_restarts_a_killed_keepalived(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        d = c.driven[holder]
        assert d.backend.process is not None
        old_pid = d.backend.process.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        await wait_for(lambda: any(r.new is State.FAULT for r in d.reports), what="FAULT while keepalived is down")
        await wait_for(lambda: d.backend.process is not None and d.backend.process.counters.restarts == 1,
                       what="a restart")
        assert d.backend.process.pid not in (None, old_pid)
        # The preferred holder (preempt) ends up holding again, alone.
        assert await c.settled(WEB, expect=holder) == holder
        samples = {s.name: s.value for s in d.backend.vipcore_collect_metrics()}
        assert samples["vipcore_keepalived_restarts_total"] == 1
        assert samples["vipcore_keepalived_up"] == 1

    run(lab, tmp_path, body)


def test_graceful_stop_hands_over(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        d = c.driven[holder]
        pids = keepalived_pids(d)
        order = [p.name for p in c.member(WEB, holder).members]
        await d.backend.vipcore_backend_stop(graceful=True)
        assert lab.holding(holder) == set()
        assert d.state(WEB) is State.STOPPED
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        survivors = tuple(n for n in ALL if n != holder)
        assert await c.settled(WEB, survivors, timeout=3, expect=order[1]) == order[1]

    run(lab, tmp_path, body)


def test_removed_group_vips_are_gone(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        await c.join(PAIR)
        web_holder = await c.settled(WEB)
        pair_holder = await c.settled(PAIR)
        for node in PAIR.nodes:
            await c.driven[node].backend.vipcore_group_leave(membership=c.member(PAIR, node), graceful=True)
        assert c.holders(PAIR, ALL) == set()
        # The other group did not move, and keepalived was reloaded, not restarted.
        assert c.holders(WEB) == {web_holder}
        assert c.driven[pair_holder].backend.process is not None
        assert c.driven[pair_holder].backend.process.counters.starts == 1
        await asyncio.sleep(0.5)
        assert c.holders(PAIR, ALL) == set() and c.holders(WEB) == {web_holder}

    run(lab, tmp_path, body)


def test_release_and_takeover(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        order = [p.name for p in c.member(WEB, holder).members]
        await c.driven[holder].backend.vipcore_group_release(group=WEB.name, reason="drain")
        assert await c.settled(WEB, timeout=3, expect=order[1]) == order[1]
        assert lab.holding(holder) == set()
        await c.driven[holder].backend.vipcore_group_takeover(group=WEB.name, reason="undrain")
        assert await c.settled(WEB, timeout=3, expect=holder) == holder
        # Takeover on a node that never released: priority 254 there.
        third = order[2]
        await c.driven[third].backend.vipcore_group_takeover(group=WEB.name, reason="operator")
        assert "priority 254" in Path(c.state_root / third / "keepalived.conf").read_text()

    run(lab, tmp_path, body)


def test_stale_vips_are_removed_at_start(lab: Lab, tmp_path: Path) -> None:
    ns = lab.nodes["node-a"]
    subprocess.run(["ip", "-n", ns, "addr", "add", "198.51.100.99/32", "dev", LAN], check=True)  # managed, stale
    subprocess.run(["ip", "-n", ns, "addr", "add", "198.51.100.50/32", "dev", LAN], check=True)  # not vipcore's

    async def body(c: Cluster) -> None:
        held = lab.holding("node-a")
        assert V4("198.51.100.99") not in held and V4("198.51.100.50") in held

    run(lab, tmp_path, body)


def test_back_to_back_changes_do_not_kill_a_starting_keepalived(lab: Lab, tmp_path: Path) -> None:
    """The agent joins groups one after the other at start; SIGHUP's default action kills a keepalived
    that has not installed its handler yet, so the reload must wait until it can take one."""
    # Ten groups of node-a alone (one member each: VRIDs need not be unique across names here).
    groups = [attrs.evolve(make_group(("node-a",), 20 + i, (f"198.51.100.{110 + i}",)), name=f"{i:02x}{0:062x}-eth0")
              for i in range(10)]

    async def body(c: Cluster) -> None:
        a = c.driven["node-a"]
        for g in groups:
            await a.backend.vipcore_group_join(membership=c.member(g, "node-a"))
        await wait_for(lambda: all(a.state(g) is State.MASTER for g in groups), what="every group held")
        assert a.backend.process is not None
        assert a.backend.process.counters.exits == 0 and a.backend.process.counters.restarts == 0
        assert a.reloads == len(groups) - 1
        assert lab.holding("node-a") == {v for g in groups for v in g.vips_v4}

    run(lab, tmp_path, body)


def test_a_group_on_a_missing_interface_disturbs_no_other(lab: Lab, tmp_path: Path) -> None:
    ghost = VipGroup(name=group_name(ALL, "vcKgone0"), interface="vcKgone0", nodes=ALL, vrid=12,
                     vips_v4=(V4("198.51.100.125"),))

    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        await c.join(ghost)
        await wait_for(lambda: all(d.state(ghost) is State.FAULT for d in c.driven.values()), what="ghost FAULT")
        await asyncio.sleep(0.5)
        assert await c.settled(WEB, timeout=1) == holder
        for d in c.driven.values():
            assert d.backend.process is not None and d.backend.process.counters.exits == 0

    run(lab, tmp_path, body)


def test_unicast_adverts_elect_one_holder(lab: Lab, tmp_path: Path) -> None:
    async def body(c: Cluster) -> None:
        await c.join(WEB)
        holder = await c.settled(WEB)
        conf = (c.state_root / holder / "keepalived.conf").read_text()
        assert "unicast_peer" in conf and f"unicast_src_ip {lab.shared.address(holder)}" in conf
        # Graceful stop still hands over (priority 0 goes to the unicast peers).
        order = [p.name for p in c.member(WEB, holder).members]
        await c.driven[holder].backend.vipcore_backend_stop(graceful=True)
        survivors = tuple(n for n in ALL if n != holder)
        assert await c.settled(WEB, survivors, timeout=3, expect=order[1]) == order[1]

    run(lab, tmp_path, body, config={"unicast": True})
