"""Spaced priorities: after a hard failure exactly one backup takes over.

Sans-IO: routers of the protocol exchange adverts in memory with a float
clock. Delivery takes 0-3 ms and timers fire up to 1 ms late (a loaded node),
so a backup whose Skew_Time differs from the next one's by less than that
times out before the new master's first advert reaches it: two masters.
Spacing alone is not enough on a loaded node (timers 40-80 ms late were seen
in bench/membership.py): backups that know the members' priorities wait a
rank delay on top, and one master survives timers up to 80 ms late.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping
from ipaddress import IPv4Address

import pytest

from vipcore.core import placement
from vipcore.core.model import Family
from vipcore_native_vrrp.protocol import Phase, Router, RouterConfig, Send, master_down_interval, skew_time
from vipcore_native_vrrp.protocol.router_config import MAX_RANK_STEPS, Member, rank_step

GROUP = IPv4Address("224.0.0.18")
VIPS = (IPv4Address("198.51.100.100"),)
#: Worst delivery delay and timer lateness modelled, in seconds.
DELIVERY = 0.003
LATENESS = 0.001
INTERVAL_CS = 10  # the native_vrrp default: 100 ms


def addr(i: int) -> IPv4Address:
    return IPv4Address(f"198.51.100.{10 + i}")


def most_masters_after_failure(
    priorities: Mapping[str, int], seed: int, lateness: float = LATENESS, ranked: bool = False,
    interval_cs: int = INTERVAL_CS,
) -> tuple[int, list[str]]:
    """Kill the master of a settled group; the most simultaneous masters seen, and the final ones.

    ``lateness``: how late any timer may fire; ``ranked``: the routers know the members' priorities.
    """
    rng = random.Random(seed)
    names = sorted(priorities)
    routers = {
        name: Router(RouterConfig(
            vrid=7, family=Family.IPV4, primary=addr(i), vips=VIPS, priority=priorities[name],
            interval_cs=interval_cs, destinations=(GROUP,),
            members=frozenset(p for n, p in priorities.items() if n != name) if ranked else frozenset(),
        ))
        for i, name in enumerate(names)
    }
    down: set[str] = set()
    queue: list[tuple[float, int, str, Send]] = []
    counter = 0

    def apply(name: str, actions: list[object], now: float) -> None:
        nonlocal counter
        for action in actions:
            if isinstance(action, Send) and name not in down:
                for other in names:
                    if other != name:
                        counter += 1
                        heapq.heappush(queue, (now + rng.uniform(0, DELIVERY), counter, other, action))

    now = 0.0
    for name in names:
        apply(name, routers[name].start(now), now)

    def run(until: float, count: bool) -> int:
        nonlocal now
        most = 0
        late: dict[str, float] = {}
        while True:
            timers = []
            for name in names:
                due = routers[name].next_timer()
                if name in down or due is None:
                    continue
                fire = max(due, late.get(name, 0.0))
                if name not in late or late[name] < due:
                    late[name] = due + rng.uniform(0, lateness)
                    fire = late[name]
                timers.append((fire, name))
            next_timer = min(timers, default=(float("inf"), ""))
            next_delivery = queue[0][0] if queue else float("inf")
            at = min(next_timer[0], next_delivery)
            if at > until:
                now = until
                return most
            now = at
            if next_delivery <= next_timer[0]:
                _, _, target, send = heapq.heappop(queue)
                if target not in down:
                    apply(target, routers[target].receive(send.data, send.src, send.dst, 255, now), now)
            else:
                apply(next_timer[1], routers[next_timer[1]].handle_timer(now), now)
            if count:
                most = max(most, sum(1 for n in names if n not in down and routers[n].phase is Phase.MASTER))

    settle = 2.0 * interval_cs / INTERVAL_CS
    run(settle, count=False)
    (master,) = [n for n in names if routers[n].phase is Phase.MASTER]
    down.add(master)  # a hard failure: silent at once
    most = run(now + settle, count=True)
    return most, [n for n in names if n not in down and routers[n].phase is Phase.MASTER]


@pytest.mark.parametrize("members", [3, 5])
def test_exactly_one_backup_takes_over_after_a_hard_failure(members: int) -> None:
    nodes = [f"node-{i}" for i in range(members)]
    for seed in range(40):
        priorities = placement.priorities(f"eth0/default/web{seed}", nodes)
        most, final = most_masters_after_failure(priorities, seed)
        assert most == 1, f"seed {seed}: {most} masters at once with priorities {sorted(priorities.values())}"
        assert len(final) == 1


def test_priorities_one_apart_make_two_masters() -> None:
    """The control: today's 254/253/252 differ in Skew_Time by 0.4 ms, less than the jitter."""
    nodes = [f"node-{i}" for i in range(3)]
    doubles = sum(
        most_masters_after_failure({n: 254 - i for i, n in enumerate(nodes)}, seed)[0] > 1 for seed in range(40)
    )
    assert doubles > 0


#: Timer lateness seen on a loaded node (bench/membership.py): 40-80 ms.
LOADED = 0.080


@pytest.mark.parametrize("interval_cs", [10, 100])
@pytest.mark.parametrize("members", [3, 5])
def test_rank_delay_keeps_one_master_when_timers_run_late(members: int, interval_cs: int) -> None:
    nodes = [f"node-{i}" for i in range(members)]
    for seed in range(25):
        priorities = placement.priorities(f"eth0/default/web{seed}", nodes)
        most, final = most_masters_after_failure(priorities, seed, lateness=LOADED, ranked=True,
                                                 interval_cs=interval_cs)
        assert most == 1, f"seed {seed}: {most} masters at once with timers up to {LOADED * 1000:.0f} ms late"
        assert len(final) == 1


def test_late_timers_make_two_masters_without_the_rank_delay() -> None:
    """The control: 16 points of priority are 6.25 ms of Skew_Time at 0.1 s, less than 80 ms of lateness."""
    nodes = [f"node-{i}" for i in range(3)]
    doubles = sum(
        most_masters_after_failure(placement.priorities(f"eth0/default/web{seed}", nodes), seed, lateness=LOADED)[0] > 1
        for seed in range(25)
    )
    assert doubles > 0


def test_the_best_ranked_backup_keeps_its_failover_time() -> None:
    members = frozenset({254, 238, 222})

    def router(priority: int) -> Router:
        return Router(RouterConfig(vrid=7, family=Family.IPV4, primary=addr(priority % 7), vips=VIPS,
                                   priority=priority, destinations=(GROUP,),
                                   members=members - {priority}))

    second, third = router(238), router(222)
    second.start(0.0)
    third.start(0.0)
    master = router(254)
    master.start(0.0)
    (advert,) = [a for a in master.takeover(0.0, "test") if isinstance(a, Send)]
    for backup in (second, third):
        backup.receive(advert.data, advert.src, advert.dst, 255, 1.0)
    # RFC 5798 for the best-ranked survivor; one rank step (0.1 s) more for the next.
    assert expiry(second) == pytest.approx(1.0 + master_down_interval(238, 0.1))
    assert expiry(third) == pytest.approx(1.0 + master_down_interval(222, 0.1) + 0.1)
    # Bounded: never more than MAX_RANK_STEPS steps, however many members rank better.
    many = Router(RouterConfig(vrid=7, family=Family.IPV4, primary=addr(1), vips=VIPS, priority=10,
                               destinations=(GROUP,), members=frozenset(range(20, 255, 16))))
    many.start(0.0)
    assert expiry(many) == pytest.approx(master_down_interval(10, 0.1) + MAX_RANK_STEPS * 0.1)


def expiry(router: Router) -> float:
    """When a silent master makes ``router`` master: fire its timer until it is master."""
    while router.phase is not Phase.MASTER:
        due = router.next_timer()
        assert due is not None
        router.handle_timer(due)
    return due


def test_a_drain_that_swaps_priorities_still_delays_the_second_backup() -> None:
    """A drained master re-ranked to last advertises its new low priority, then resigns; the member that now
    has the master's old priority is a live, better-ranked survivor, so the third backup still waits behind
    it (before, it left out priority 254 as the silent master's: two masters 62.5 ms apart at 1 s)."""
    a, b, c = addr(1), addr(2), addr(3)

    def config(primary: IPv4Address, priority: int, members: frozenset[int]) -> RouterConfig:
        return RouterConfig(vrid=7, family=Family.IPV4, primary=primary, vips=VIPS, priority=priority,
                            destinations=(GROUP,), members=members)

    master = Router(config(a, 254, frozenset({238, 222})))
    master.start(0.0)
    (advert,) = [x for x in master.takeover(0.0, "test") if isinstance(x, Send)]
    third = Router(config(c, 222, frozenset({254, 238})))
    third.start(0.0)
    third.receive(advert.data, a, GROUP, 255, 0.5)
    # The drain: a goes last (222), b first (254), c second (238); a still advertises, now at 222.
    (low,) = [x for x in master.update(0.6, priority=222, members=frozenset({254, 238}))
              if isinstance(x, Send)]  # a master tells its backups its new priority at once
    third.update(0.6, priority=238, members=frozenset({254, 222}))
    assert third.receive(low.data, a, GROUP, 255, 0.6)[0].reason == "lower_priority"
    # Then the drained master hands over: priority 0. b (254, alive) outranks c: c waits a step behind it.
    (resign,) = [x for x in master.release(0.7, "drain") if isinstance(x, Send)]
    assert third.receive(resign.data, a, GROUP, 255, 0.7) == []
    assert expiry(third) == pytest.approx(0.7 + skew_time(238, 0.1) + 0.1)


def test_members_applying_a_drain_a_moment_apart_still_rank_apart() -> None:
    """b has not read the drain yet (238, a still 254), c has (238, b now 254, a 1): both hear a at 1, then its
    priority 0. By priority they would both leave out 254 or both count it and time out together; by the silent
    master's address b is first (nothing but a above it) and c waits a step behind b."""
    a, b, c = addr(1), addr(2), addr(3)

    def router(primary: IPv4Address, priority: int, members: list[Member]) -> Router:
        r = Router(RouterConfig(vrid=7, family=Family.IPV4, primary=primary, vips=VIPS, priority=priority,
                                destinations=(GROUP,), members=members))
        r.start(0.0)
        return r

    stale = router(b, 238, [Member(254, frozenset({a})), Member(222, frozenset({c}))])
    fresh = router(c, 238, [Member(254, frozenset({b})), Member(1, frozenset({a}))])
    master = Router(RouterConfig(vrid=7, family=Family.IPV4, primary=a, vips=VIPS, priority=1, destinations=(GROUP,)))
    master.start(0.0)
    (low,) = [x for x in master.takeover(0.5, "test") if isinstance(x, Send)]
    (resign,) = [x for x in master.release(0.6, "drain") if isinstance(x, Send)]
    for backup in (stale, fresh):
        backup.receive(low.data, a, GROUP, 255, 0.5)
        assert backup.receive(resign.data, a, GROUP, 255, 0.6) == []
    assert expiry(stale) == pytest.approx(0.6 + skew_time(238, 0.1))
    assert expiry(fresh) == pytest.approx(0.6 + skew_time(238, 0.1) + 0.1)


def test_the_rank_step_follows_the_interval_within_bounds() -> None:
    assert [rank_step(i) for i in (0.01, 0.1, 0.4, 1.0, 40.0)] == pytest.approx([0.1, 0.1, 0.1, 0.25, 0.25])
    third = Router(RouterConfig(vrid=7, family=Family.IPV4, primary=addr(3), vips=VIPS, priority=222,
                                interval_cs=100, destinations=(GROUP,), members=[254, 238]))
    third.start(0.0)
    assert expiry(third) == pytest.approx(master_down_interval(222, 1.0) + 2 * 0.25)
