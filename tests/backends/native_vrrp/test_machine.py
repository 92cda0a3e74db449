"""The RFC 5798 state machine, driven in memory with a float clock."""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

import attrs
import pytest

from vipcore.core.model import Family, IPAddress, State, TransitionCause
from vipcore_native_vrrp.protocol import (
    Action,
    AddVips,
    Advertisement,
    Announce,
    Dropped,
    Phase,
    RemoveVips,
    Router,
    RouterConfig,
    Send,
    StateChanged,
    TransitionError,
    decode,
    encode,
    followers,
    master_down_interval,
    skew_time,
)
from vipcore_native_vrrp.protocol.auth import Authenticator
from vipcore_native_vrrp.protocol.machine import TRANSITIONS, Event

GROUP = IPv4Address("224.0.0.18")
VIPS = (IPv4Address("198.51.100.100"), IPv4Address("198.51.100.101"))


def addr(i: int) -> IPv4Address:
    return IPv4Address(f"198.51.100.{10 + i}")


def config(i: int, priority: int, **kw: object) -> RouterConfig:
    values: dict[str, object] = dict(
        vrid=7, family=Family.IPV4, primary=addr(i), vips=VIPS, priority=priority,
        interval_cs=10, destinations=(GROUP,), sources=frozenset(addr(j) for j in range(1, 6)),
    )
    values.update(kw)
    return RouterConfig(**values)  # type: ignore[arg-type]


@attrs.define
class Net:
    """An in-memory LAN: every Send reaches every other running router."""

    routers: dict[str, Router] = attrs.field(factory=dict)
    now: float = 0.0
    holding: dict[str, frozenset[IPAddress]] = attrs.field(factory=dict)
    changes: list[tuple[str, StateChanged]] = attrs.field(factory=list)
    drops: list[tuple[str, str]] = attrs.field(factory=list)
    sent: list[tuple[str, Send]] = attrs.field(factory=list)
    down: set[str] = attrs.field(factory=set)  # dead routers: silent, deaf, no timers
    partitioned: bool = False  # nothing is delivered, timers run

    def add(self, name: str, cfg: RouterConfig) -> Router:
        self.routers[name] = Router(cfg)
        self.holding[name] = frozenset()
        return self.routers[name]

    def apply(self, name: str, actions: Iterable[object]) -> None:
        for action in actions:
            if isinstance(action, AddVips):
                self.holding[name] |= frozenset(action.vips)
            elif isinstance(action, RemoveVips):
                self.holding[name] -= frozenset(action.vips)
            elif isinstance(action, StateChanged):
                self.changes.append((name, action))
            elif isinstance(action, Dropped):
                self.drops.append((name, action.reason))
            elif isinstance(action, Send):
                self.sent.append((name, action))
                if name not in self.down and not self.partitioned:
                    for other, router in self.routers.items():
                        if other != name and other not in self.down:
                            self.apply(other, router.receive(action.data, action.src, action.dst, 255, self.now))

    def start(self, *names: str) -> None:
        for name in names or tuple(self.routers):
            self.apply(name, self.routers[name].start(self.now))

    def run(self, seconds: float, step: float = 0.001) -> None:
        end = self.now + seconds
        while self.now < end - 1e-12:
            self.now = round(self.now + step, 6)
            for name, router in self.routers.items():
                if name in self.down:
                    continue
                due = router.next_timer()
                if due is not None and due <= self.now:
                    self.apply(name, router.handle_timer(self.now))

    def holders(self) -> list[str]:
        return sorted(n for n, held in self.holding.items() if held and n not in self.down)

    def masters(self) -> list[str]:
        return sorted(n for n, r in self.routers.items() if r.phase is Phase.MASTER and n not in self.down)


def test_rfc_timer_values() -> None:
    assert skew_time(100, 1.0) == pytest.approx(156 / 256)
    assert master_down_interval(100, 1.0) == pytest.approx(3 + 156 / 256)
    assert master_down_interval(254, 0.1) == pytest.approx(0.3 + 0.2 / 256)
    r = Router(config(1, 200))
    actions = r.start(10.0)
    assert r.phase is Phase.BACKUP
    assert actions == [StateChanged(State.INIT, State.BACKUP, "started", None, TransitionCause.STARTED)]
    assert r.next_timer() == pytest.approx(10.0 + 0.3 + 56 * 0.1 / 256)


def test_backup_learns_master_adver_interval() -> None:
    r = Router(config(1, 100))
    r.start(0.0)
    adv = Advertisement(7, 200, 100, VIPS)  # master advertises every 1 s
    r.receive(encode(adv, addr(2), GROUP), addr(2), GROUP, 255, 0.05)
    assert r.master_adver_interval == 1.0
    assert r.next_timer() == pytest.approx(0.05 + 3 + 156 / 256)
    assert r.master == addr(2)


def test_owner_becomes_master_at_once() -> None:
    r = Router(config(1, 255))
    actions = r.start(0.0)
    assert r.phase is Phase.MASTER
    kinds = [type(a) for a in actions]
    assert kinds == [AddVips, Announce, Send, StateChanged]
    send = actions[2]
    assert isinstance(send, Send) and send.data[2] == 255


def test_two_routers_elect_the_higher_priority() -> None:
    net = Net()
    net.add("a", config(1, 100))
    net.add("b", config(2, 200))
    net.start()
    net.run(1.0)
    assert net.masters() == ["b"] and net.holders() == ["b"]
    became = [c for n, c in net.changes if c.new is State.MASTER]
    assert len(became) == 1 and became[0].failover_seconds is None  # no master was ever heard


def test_equal_priority_tie_breaks_on_the_higher_primary_address() -> None:
    net = Net(partitioned=True)
    net.add("a", config(1, 100))
    net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    assert net.masters() == ["a", "b"]  # split brain while partitioned
    net.partitioned = False
    net.run(0.5)
    assert net.masters() == ["b"] and net.holders() == ["b"]
    assert "preempted by 198.51.100.12 (priority 100)" in [c.reason for n, c in net.changes if n == "a"][-1]


def test_three_routers_fail_over_in_priority_order() -> None:
    net = Net()
    for i, prio in ((1, 150), (2, 100), (3, 50)):
        net.add(f"r{i}", config(i, prio))
    net.start()
    net.run(1.0)
    assert net.holders() == ["r1"]
    net.down.add("r1")  # killed: silence
    killed_at = net.now
    net.run(1.0)
    assert net.holders() == ["r2"]
    took = [c for n, c in net.changes if n == "r2" and c.new is State.MASTER][0]
    # Within Master_Down_Interval of r2 (plus one advert: the last one heard).
    assert took.failover_seconds is not None
    assert took.failover_seconds <= master_down_interval(100, 0.1) + 0.001
    assert "master down" in took.reason
    assert killed_at < net.now
    net.down.add("r2")
    net.run(1.0)
    assert net.holders() == ["r3"]


def test_preempt_returns_the_vips_to_the_higher_priority() -> None:
    net = Net()
    net.add("hi", config(1, 200))
    net.add("lo", config(2, 100))
    net.start("lo")
    net.run(1.0)
    assert net.holders() == ["lo"]
    net.start("hi")
    net.run(1.0)
    assert net.holders() == ["hi"]
    preempted = [c for n, c in net.changes if n == "lo" and c.new is State.BACKUP][-1]
    assert "preempted by 198.51.100.11" in preempted.reason
    assert ("hi", "lower_priority") in net.drops  # hi discards lo's adverts while waiting


def test_no_preempt_keeps_the_current_master() -> None:
    net = Net()
    net.add("hi", config(1, 200, preempt=False))
    net.add("lo", config(2, 100, preempt=False))
    net.start("lo")
    net.run(1.0)
    net.start("hi")
    net.run(2.0)
    assert net.holders() == ["lo"]


def test_priority_zero_gives_a_fast_takeover() -> None:
    net = Net()
    net.add("a", config(1, 200, handover_linger=0.0))
    net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    stop_at = net.now
    net.apply("a", net.routers["a"].shutdown(net.now))
    assert net.holding["a"] == frozenset()  # shutdown: immediate
    net.run(0.2)
    took = [(n, c) for n, c in net.changes if c.new is State.MASTER][-1]
    assert took[0] == "b" and "resigned" in took[1].reason
    # Skew_Time of priority 100 at 0.1 s, not Master_Down_Interval.
    assert took[1].failover_seconds == pytest.approx(skew_time(100, 0.1), abs=0.0015)
    assert net.now - stop_at < 0.2


def test_make_before_break_resignation() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    # Record who holds at every millisecond during the hand-over.
    net.apply("a", a.resign(net.now))
    assert a.phase is Phase.RESIGNING and net.holding["a"] == frozenset(VIPS)
    assert a.state is State.MASTER
    gaps = 0
    both = 0
    for _ in range(400):
        net.run(0.001)
        holders = net.holders()
        gaps += not holders
        both += len(holders) == 2
    assert gaps == 0  # never a moment without a holder
    assert both > 0  # the overlap that makes it make-before-break
    assert a.phase is Phase.STOPPED and net.holders() == ["b"]
    stopped = [c for n, c in net.changes if n == "a"][-1]
    assert stopped.new is State.STOPPED and "handed over to 198.51.100.12" in stopped.reason


def test_resign_without_a_successor_is_bounded() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    net.start()
    net.run(1.0)
    net.apply("a", a.resign(net.now))
    net.run(master_down_interval(1, 0.1) + 0.01)
    assert a.phase is Phase.STOPPED and net.holding["a"] == frozenset()
    assert "no new master" in [c for n, c in net.changes][-1].reason
    assert a.next_timer() is None


def test_resigning_master_repeats_priority_zero() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    net.start()
    net.run(1.0)
    net.sent.clear()
    net.apply("a", a.resign(net.now))
    net.run(0.25)
    priorities = [s.data[2] for n, s in net.sent if n == "a"]
    assert priorities == [0, 0, 0]


def test_release_and_takeover() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    net.apply("a", a.release(net.now, "drain"))
    net.run(1.0)
    assert net.holders() == ["b"] and a.phase is Phase.BACKUP and a.released
    net.run(2.0)  # a still hears b and, released, never preempts
    assert net.holders() == ["b"]
    net.apply("a", a.takeover(net.now, "undrain"))
    net.run(1.0)
    assert net.holders() == ["a"]


def test_released_backup_never_takes_over() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    b = net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    net.apply("b", b.release(net.now, "unhealthy"))
    net.down.add("a")
    net.run(2.0)
    assert net.holders() == [] and b.phase is Phase.BACKUP


def test_validation_drops_with_reasons() -> None:
    r = Router(config(1, 100))
    r.start(0.0)
    good = encode(Advertisement(7, 200, 10, VIPS), addr(2), GROUP)

    def reason(data: bytes, src: IPAddress = addr(2), ttl: int = 255) -> list[object]:
        return r.receive(data, src, GROUP, ttl, 0.1)

    assert reason(good, ttl=64) == [Dropped("ttl")]
    assert reason(good[:5]) == [Dropped("short")]
    assert reason(encode(Advertisement(8, 200, 10, VIPS), addr(2), GROUP)) == [Dropped("vrid")]
    assert reason(encode(Advertisement(7, 200, 10, VIPS), addr(1), GROUP), src=addr(1)) == [
        Dropped("duplicate_identity")]
    outsider = IPv4Address("198.51.100.99")
    assert reason(encode(Advertisement(7, 200, 10, VIPS), outsider, GROUP), src=outsider) == [Dropped("source")]
    other = encode(Advertisement(7, 200, 10, VIPS[:1]), addr(2), GROUP)
    assert reason(other) == [Dropped("addr_mismatch")]
    assert reason(good) == []
    assert r.master == addr(2)


def test_source_check_can_be_disabled() -> None:
    r = Router(config(1, 100, sources=None))
    r.start(0.0)
    outsider = IPv4Address("198.51.100.99")
    assert r.receive(encode(Advertisement(7, 200, 10, VIPS), outsider, GROUP), outsider, GROUP, 255, 0.1) == []


def test_spoofed_adverts_do_not_move_the_master() -> None:
    net = Net()
    a = net.add("a", config(1, 100))
    net.start()
    net.run(1.0)
    assert net.masters() == ["a"]
    spoof = encode(Advertisement(7, 254, 10, VIPS), IPv4Address("198.51.100.99"), GROUP)
    net.apply("a", a.receive(spoof, IPv4Address("198.51.100.99"), GROUP, 255, net.now))
    ttl64 = encode(Advertisement(7, 254, 10, VIPS), addr(2), GROUP)
    net.apply("a", a.receive(ttl64, addr(2), GROUP, 64, net.now))
    assert net.masters() == ["a"]
    assert ("a", "source") in net.drops and ("a", "ttl") in net.drops


def test_vip_update_keeps_the_holder_and_tolerates_the_old_set() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    b = net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    extra = IPv4Address("198.51.100.102")
    net.apply("a", a.update(net.now, vips=(*VIPS, extra)))
    assert net.holding["a"] == frozenset((*VIPS, extra))
    net.run(0.5)  # b has not applied the change yet: a's adverts still accepted
    assert net.masters() == ["a"] and ("b", "addr_mismatch") not in net.drops
    net.apply("b", b.update(net.now, vips=(*VIPS, extra)))
    net.run(5.0)  # past the grace: the new set on the wire
    assert net.masters() == ["a"] and net.holders() == ["a"]
    assert sum(1 for n, c in net.changes if c.new is State.MASTER) == 1
    last = [s for n, s in net.sent if n == "a"][-1]
    assert last.data[3] == 3  # three addresses advertised now


def test_ipv6_election() -> None:
    group = IPv6Address("ff02::12")
    vips = (IPv6Address("2001:db8:100::100"),)

    def cfg(i: int, prio: int) -> RouterConfig:
        return RouterConfig(
            vrid=9, family=Family.IPV6, primary=IPv6Address(f"fe80::{i}"), vips=vips, priority=prio,
            interval_cs=5, destinations=(group,), sources=frozenset(), link_local_sources=True,
        )

    net = Net()
    net.add("a", cfg(1, 100))
    net.add("b", cfg(2, 150))
    net.start()
    net.run(0.5)
    assert net.holders() == ["b"]
    net.down.add("b")
    net.run(0.5)
    assert net.holders() == ["a"]


def test_unicast_sends_one_advert_per_peer() -> None:
    peers = (addr(2), addr(3))
    r = Router(config(1, 255, destinations=peers))
    actions = r.start(0.0)
    sends = [a for a in actions if isinstance(a, Send)]
    assert [s.dst for s in sends] == list(peers)
    assert sends[0].data != sends[1].data  # checksums differ by destination


def test_transition_table_is_closed() -> None:
    r = Router(config(1, 100))
    with pytest.raises(TransitionError):
        r._transition(Event.MASTER_DOWN, 0.0, "x", TransitionCause.MASTER_DOWN)  # INIT has no MASTER_DOWN
    assert all(isinstance(k[0], Phase) and isinstance(v, Phase) for k, v in TRANSITIONS.items())


def test_early_timer_calls_do_nothing() -> None:
    r = Router(config(1, 100))
    r.start(0.0)
    assert r.handle_timer(0.1) == []
    assert r.phase is Phase.BACKUP


@pytest.mark.parametrize("seed", range(20))
def test_random_start_orders_elect_exactly_one_master(seed: int) -> None:
    import random

    rng = random.Random(seed)
    net = Net()
    prios = rng.sample(range(1, 255), 4)
    for i, prio in enumerate(prios, 1):
        net.add(f"r{i}", config(i, prio, preempt=rng.random() < 0.5))
    order = list(net.routers)
    rng.shuffle(order)
    for name in order:
        net.start(name)
        net.run(rng.random() * 0.5)
    net.run(1.5)
    assert len(net.masters()) == 1 and len(net.holders()) == 1


def test_receiver_updated_first_still_accepts_the_old_set() -> None:
    net = Net()
    a = net.add("a", config(1, 200))
    b = net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    net.apply("b", b.update(net.now, vips=VIPS[:1]))
    net.run(1.0)
    assert net.masters() == ["a"] and ("b", "addr_mismatch") not in net.drops
    net.apply("a", a.update(net.now, vips=VIPS[:1]))
    assert net.holding["a"] == frozenset(VIPS[:1])
    net.run(6.0)
    assert net.masters() == ["a"] and not net.drops


@pytest.mark.parametrize("seed", range(30))
def test_random_operations_never_break_the_table(seed: int) -> None:
    """Any interleaving of the public inputs stays inside TRANSITIONS."""
    import random

    rng = random.Random(seed)
    net = Net()
    for i in range(1, 4):
        net.add(f"r{i}", config(i, rng.randint(1, 254), preempt=rng.random() < 0.5))
    net.start()
    for _ in range(60):
        name = rng.choice(list(net.routers))
        router = net.routers[name]
        op = rng.randrange(7)
        if op == 0:
            net.apply(name, router.resign(net.now))
        elif op == 1:
            net.apply(name, router.release(net.now, "x"))
        elif op == 2:
            net.apply(name, router.takeover(net.now, "x"))
        elif op == 3:
            net.apply(name, router.update(net.now, priority=rng.randint(1, 254)))
        elif op == 4:
            net.apply(name, router.shutdown(net.now))
        elif op == 5:
            net.apply(name, router.update(net.now, vips=rng.choice([VIPS, VIPS[:1]])))
        net.run(rng.random() * 0.3)
        for n, r in net.routers.items():
            # A router that holds nothing is never MASTER, and vice versa.
            assert bool(net.holding[n]) == r.holding, (n, r.phase)


def test_preempted_master_keeps_vips_for_a_linger_and_master_reclaims_neighbours() -> None:
    net = Net(partitioned=True)
    lo = net.add("lo", config(1, 100))
    net.add("hi", config(2, 200))
    net.start()
    net.run(1.0)  # both master while partitioned
    net.partitioned = False
    before = len(net.changes)
    # hi answers a lower advert by announcing again before advertising.
    kinds = [type(a) for a in net.routers["hi"]._master_receive(
        Advertisement(7, 100, 10, VIPS), addr(1), net.now)]
    assert kinds == [Dropped, Announce, Send]
    again = [type(a) for a in net.routers["hi"]._master_receive(
        Advertisement(7, 100, 10, VIPS), addr(1), net.now + 0.01)]
    assert again == [Dropped, Send]  # re-announcing is rate-limited to once per interval
    net.run(0.101)  # one advert interval: lo hears hi
    assert lo.phase is Phase.BACKUP and len(net.changes) > before
    assert net.holding["lo"] == frozenset(VIPS) and lo.holding  # still answering
    net.run(0.11)
    assert net.holding["lo"] == frozenset() and not lo.holding
    assert net.holders() == ["hi"]


def test_outranks_master_compares_priority_then_address() -> None:
    r = Router(config(2, 150))
    r.start(0.0)
    assert r.outranks_master()  # no master heard
    r.receive(encode(Advertisement(7, 200, 10, VIPS), addr(3), GROUP), addr(3), GROUP, 255, 0.01)
    assert r.master_priority == 200 and not r.outranks_master()
    lower = Router(config(2, 150, preempt=False))
    lower.start(0.0)
    lower.receive(encode(Advertisement(7, 100, 10, VIPS), addr(3), GROUP), addr(3), GROUP, 255, 0.01)
    assert lower.outranks_master()
    tie = Router(config(2, 150, preempt=False))
    tie.start(0.0)
    tie.receive(encode(Advertisement(7, 150, 10, VIPS), addr(1), GROUP), addr(1), GROUP, 255, 0.01)
    assert tie.outranks_master()  # equal priority, our address is higher


# -- typed causes and decisions that live in the machine -------------------------------


def causes(net: Net, name: str) -> list[TransitionCause | None]:
    return [c.cause for n, c in net.changes if n == name]


def test_every_transition_carries_a_typed_cause() -> None:
    net = Net()
    a = net.add("a", config(1, 200, handover_linger=0.0))
    net.add("b", config(2, 100))
    net.add("c", config(3, 50))
    net.start()
    net.run(1.0)
    assert causes(net, "a") == [TransitionCause.STARTED, TransitionCause.MASTER_DOWN]
    net.apply("a", a.resign(net.now))
    net.run(1.0)
    assert causes(net, "a")[-1] is TransitionCause.HANDED_OVER
    assert causes(net, "b")[-1] is TransitionCause.PEER_RESIGNED
    net.down.add("b")
    net.run(1.0)
    assert causes(net, "c")[-1] is TransitionCause.MASTER_DOWN
    net.down.discard("b")
    net.apply("b", net.routers["b"].link_down(net.now, "x"))
    net.apply("b", net.routers["b"].link_up(net.now, "x"))
    net.run(1.0)
    assert causes(net, "c")[-1] is TransitionCause.PREEMPTED
    assert all(c is not None for _, c in [(n, ch.cause) for n, ch in net.changes])


def test_family_sync_is_decided_on_the_typed_cause() -> None:
    v4 = Router(config(1, 200))
    v6 = Router(config(1, 200))
    v6.start(0.0)
    v4.start(0.0)
    became = [a for a in v4.handle_timer(1.0) if isinstance(a, StateChanged)][0]
    assert followers(became, [v6]) == [v6]
    synced = [a for a in v6.follow(1.0, "IPv4") if isinstance(a, StateChanged)][0]
    assert synced.cause is TransitionCause.SYNC and "sync with IPv4" in synced.reason
    # A sync never pulls back (no ping-pong), whatever its text says.
    assert followers(synced, [v4]) == []
    text_only = StateChanged(State.BACKUP, State.MASTER, "takeover: sync with IPv6", None, TransitionCause.TAKEOVER)
    released = Router(config(1, 200))
    released.start(0.0)
    released.release(0.5, "drain")
    assert followers(text_only, [released]) == []


def test_sending_again_after_failures_puts_the_vips_back() -> None:
    r = Router(config(1, 200))
    r.start(0.0)
    r.handle_timer(1.0)
    assert r.phase is Phase.MASTER
    assert r.sent(True, 1.0) == []
    assert r.sent(False, 1.1) == [] and r.sent(False, 1.2) == []
    assert r.sent(True, 1.3) == [AddVips(VIPS), Announce(VIPS)]
    assert r.sent(True, 1.4) == []
    b = Router(config(2, 100))
    b.start(0.0)
    b.sent(False, 0.1)
    assert b.sent(True, 0.2) == []  # a backup holds nothing to restore


def test_queued_actions_are_judged_by_the_machine() -> None:
    r = Router(config(1, 200))
    r.start(0.0)
    assert not r.wants(AddVips(VIPS)) and not r.wants(Announce(VIPS)) and r.wants(RemoveVips(VIPS))
    r.handle_timer(1.0)
    assert r.wants(AddVips(VIPS)) and r.wants(Announce(VIPS)) and not r.wants(RemoveVips(VIPS))
    resign = [a for a in r.link_down(1.1, "gone") if isinstance(a, Send)]
    assert not r.wants(AddVips(VIPS)) and r.wants(resign[0])  # the priority 0 still goes out
    b = Router(config(2, 100))
    b.start(0.0)
    assert not b.wants(Send(b"", addr(2), GROUP))


# -- link state --------------------------------------------------------------------------


def test_holder_losing_its_link_resigns_at_once_and_rejoins_as_backup() -> None:
    net = Net()
    a = net.add("a", config(1, 200, handover_linger=0.0))
    net.add("b", config(2, 100))
    net.start()
    net.run(1.0)
    assert net.holders() == ["a"]
    lost = net.now
    actions = a.link_down(net.now, "eth0 lost carrier")
    sent = [x for x in actions if isinstance(x, Send)]
    assert sent and decode_priority(sent[0]) == 0  # priority 0 where it still can send
    net.apply("a", actions)
    assert a.phase is Phase.FAULT and a.state is State.FAULT and net.holding["a"] == frozenset()
    assert a.next_timer() is None and a.handle_timer(net.now + 10) == []
    change = net.changes[-1][1]
    assert change.new is State.FAULT and change.cause is TransitionCause.LINK_DOWN and "carrier" in change.reason
    net.down.add("a")  # its link is down: nothing in or out
    net.run(skew_time(100, 0.1) + 0.002)
    net.down.discard("a")
    # b took over after Skew_Time, not Master_Down_Interval.
    took = [c for n, c in net.changes if n == "b" and c.new is State.MASTER][-1]
    assert took.cause is TransitionCause.PEER_RESIGNED and net.now - lost < master_down_interval(100, 0.1) / 2
    assert a.receive(b"x", addr(2), GROUP, 255, net.now) == [Dropped("fault")]
    net.apply("a", a.link_up(net.now, "eth0 is up"))
    assert a.phase is Phase.BACKUP and net.changes[-1][1].cause is TransitionCause.LINK_UP
    net.run(1.0)
    assert net.holders() == ["a"]  # preempts back after a Master_Down_Interval


def test_link_down_before_start_waits_for_the_link() -> None:
    r = Router(config(1, 200))
    r.link_down(0.0, "no carrier")
    assert r.start(0.0) == [] and r.phase is Phase.FAULT
    r.link_up(1.0, "up")
    assert r.phase is Phase.BACKUP and r.next_timer() is not None
    # A resigning holder that loses its link stops at once: no hand-over possible.
    m = Router(config(1, 200))
    m.start(0.0)
    m.handle_timer(1.0)
    m.resign(1.0)
    actions = m.link_down(1.1, "gone")
    assert m.phase is Phase.STOPPED and RemoveVips(VIPS) in actions


def decode_priority(send: Send) -> int:
    return send.data[2]


# -- inconsistent adverts (issue 12, High) ----------------------------------------------------

PRIORITIES = {addr(1): 254, addr(2): 253, addr(3): 252}


def member(i: int, **kw: object) -> RouterConfig:
    values: dict[str, object] = {"peer_priorities": PRIORITIES, "identity": frozenset({addr(i)}), **kw}
    return config(i, PRIORITIES[addr(i)], **values)


def test_a_member_advertising_a_priority_placement_never_gives_it_is_dropped() -> None:
    net = Net()
    a = net.add("a", member(1))
    b = net.add("b", member(2))
    net.start()
    net.run(1.0)
    assert net.masters() == ["a"]
    # Priority 255 rotating through the members' addresses (30/s in the report).
    for i in range(60):
        src = addr(2 + i % 2)
        forged = encode(Advertisement(7, 255, 10, VIPS), src, GROUP)
        for name, router in (("a", a), ("b", b)):
            if src != router.config.primary:
                net.apply(name, router.receive(forged, src, GROUP, 255, net.now))
        net.run(0.033)
    assert net.masters() == ["a"] and net.holders() == ["a"]
    assert [c for n, c in net.changes if c.cause is TransitionCause.PREEMPTED] == []
    assert net.drops.count(("a", "priority_mismatch")) >= 30


def test_relaxed_and_link_local_sources() -> None:
    keepalived = addr(3)
    r = Router(member(1, relaxed_sources=frozenset({keepalived})))
    r.start(0.0)
    hand_set = encode(Advertisement(7, 100, 10, VIPS), keepalived, GROUP)
    # Named peer: any priority; judged by the election alone (lower than ours).
    assert r.receive(hand_set, keepalived, GROUP, 255, 0.1) == [Dropped("lower_priority")]
    strict = Router(member(1))
    strict.start(0.0)
    assert strict.receive(hand_set, keepalived, GROUP, 255, 0.1) == [Dropped("priority_mismatch")]
    # IPv6 multicast: a link-local source may carry a member's priority, not 255.
    v6vips = (IPv6Address("2001:db8::100"),)
    ll, ff = IPv6Address("fe80::2"), IPv6Address("ff02::12")
    six = Router(RouterConfig(vrid=7, family=Family.IPV6, primary=IPv6Address("fe80::1"), vips=v6vips, priority=252,
                              destinations=(ff,), sources=frozenset(), link_local_sources=True,
                              peer_priorities={IPv6Address("2001:db8::2"): 253}))
    six.start(0.0)
    assert six.receive(encode(Advertisement(7, 253, 10, v6vips), ll, ff), ll, ff, 255, 0.1) == []
    forged = six.receive(encode(Advertisement(7, 255, 10, v6vips), ll, ff), ll, ff, 255, 0.2)
    assert forged == [Dropped("priority_mismatch")]
    relaxed = Router(attrs.evolve(six.config, relax_link_local=True))
    relaxed.start(0.0)
    assert relaxed.receive(encode(Advertisement(7, 255, 10, v6vips), ll, ff), ll, ff, 255, 0.2) == []


def test_priorities_before_a_placement_change_are_accepted_for_the_grace() -> None:
    r = Router(member(3, update_grace=2.0))
    r.start(0.0)
    r.update(0.0, peer_priorities={addr(1): 254, addr(2): 250, addr(3): 252})
    old = encode(Advertisement(7, 253, 10, VIPS), addr(2), GROUP)
    assert r.receive(old, addr(2), GROUP, 255, 1.0) == []
    assert r.receive(old + b"", addr(2), GROUP, 255, 2.5) == [Dropped("priority_mismatch")]


def test_forged_resignations_from_a_master_that_keeps_advertising_are_dropped() -> None:
    net = Net()
    net.add("a", member(1))
    b = net.add("b", member(2))
    c = net.add("c", member(3))
    net.start()
    net.run(1.0)
    assert net.masters() == ["a"]
    resign = encode(Advertisement(7, 0, 10, VIPS), addr(1), GROUP)
    holders_seen: set[tuple[str, ...]] = set()
    for _ in range(2000):  # 1000/s for 2 s, while a keeps advertising
        for name, router in (("b", b), ("c", c)):
            net.apply(name, router.receive(resign, addr(1), GROUP, 255, net.now))
        net.run(0.001)
        holders_seen.add(tuple(net.holders()))
    # The first forgery can pass (nothing told it apart yet); once a
    # contradicted itself, none does: at most one brief takeover.
    took = [c for n, c in net.changes if n in ("b", "c") and c.new is State.MASTER]
    assert len(took) <= 1, took
    assert net.holders() == ["a"]
    assert net.drops.count(("b", "inconsistent_resign")) > 1900
    # A genuine resignation later still hands over (after a quiet Master_Down_Interval).
    net.apply("a", net.routers["a"].resign(net.now))
    net.run(1.0)
    assert net.holders() == ["b"]


def test_an_advert_from_our_own_identity_is_refused() -> None:
    r = Router(member(2, identity=frozenset({addr(2), IPv4Address("198.51.100.200")})))
    r.start(0.0)
    twin = IPv4Address("198.51.100.200")
    data = encode(Advertisement(7, 253, 10, VIPS), twin, GROUP)
    dropped = r.receive(data, twin, GROUP, 255, 0.1)
    assert dropped == [Dropped("duplicate_identity")] and dropped[0].source == twin
    assert r.master is None
    # A backup refuses to take over while a speaker with its identity advertises.
    for step in range(1, 40):
        r.receive(data, twin, GROUP, 255, 0.1 + step * 0.1)
        assert r.handle_timer(0.1 + step * 0.1) == []
    assert r.phase is Phase.BACKUP


# -- authenticated mode --------------------------------------------------------------------


def test_authenticated_routers_elect_and_ignore_unsealed_forged_and_replayed_adverts() -> None:
    key = Authenticator(b"k" * 32)
    net = Net()
    a = net.add("a", member(1, auth=key, wall_offset=1_800_000_000.0))
    b = net.add("b", member(2, auth=key, wall_offset=1_800_000_000.0))
    net.start()
    net.run(1.0)
    assert net.masters() == ["a"] and not [d for d in net.drops if d[1] == "auth"]
    plain = encode(Advertisement(7, 253, 10, VIPS), addr(2), GROUP)  # a correct member priority, unsealed
    assert a.receive(plain, addr(2), GROUP, 255, net.now) == [Dropped("auth")]
    wrong = Authenticator(b"x" * 32).seal(plain, addr(2), GROUP, net.now + 1_800_000_000.0)
    assert a.receive(wrong, addr(2), GROUP, 255, net.now) == [Dropped("auth")]
    sealed = [s for n, s in net.sent if n == "a"][-1]
    assert b.receive(sealed.data, sealed.src, sealed.dst, 255, net.now) == [Dropped("auth")]  # a replay
    stale = key.seal(plain, addr(2), GROUP, net.now + 1_800_000_000.0 - 60)
    assert a.receive(stale, addr(2), GROUP, 255, net.now) == [Dropped("auth")]
    # The resignation of an authenticated master still hands over.
    net.apply("a", a.resign(net.now))
    net.run(1.0)
    assert net.holders() == ["b"]


def _ranked(i: int, priority: int, members: Iterable[int]) -> RouterConfig:
    return config(i, priority, members=frozenset(members) - {priority})


def test_rejoin_after_a_drain_preempts_only_where_it_ranks_first() -> None:
    """Undrain: the returning node takes back the group it ranks first for, make-before-break."""
    net = Net()
    a = net.add("a", config(1, 254))
    net.add("b", config(2, 238))
    net.start()
    net.run(1.0)
    net.apply("a", a.release(net.now, "drain"))
    net.run(1.0)
    assert net.holders() == ["b"]
    net.changes.clear()
    net.apply("a", a.rejoin(net.now, "undrain"))
    # a holds before b lets go: both hold for the linger, never nobody.
    assert net.holding["a"] and net.holding["b"]
    net.run(1.0)
    assert net.holders() == ["a"] and net.masters() == ["a"]
    assert sorted((n, c.new.value) for n, c in net.changes) == [("a", "master"), ("b", "backup")]


def test_rejoin_where_it_does_not_rank_first_stays_backup() -> None:
    """The bug: takeover() made the undrained node master of every group, then preemption took it back."""
    net = Net()
    net.add("a", config(1, 254))
    net.add("b", config(2, 238))
    c = net.add("c", config(3, 222))
    net.start()
    net.run(1.0)
    net.apply("c", c.release(net.now, "drain"))
    net.run(1.0)
    net.changes.clear()
    net.apply("c", c.rejoin(net.now, "undrain"))
    net.run(1.0)
    assert net.changes == [] and net.holders() == ["a"] and not c.released
    # Back in the election: it takes over when the others are gone.
    net.down |= {"a", "b"}
    net.run(1.0)
    assert net.masters() == ["c"]


def test_rejoin_while_still_handing_over_resumes_as_master() -> None:
    net = Net()
    a = net.add("a", config(1, 254))
    net.add("b", config(2, 238))
    net.start()
    net.run(1.0)
    net.partitioned = True  # nobody hears the priority 0: a is still RELEASING
    net.apply("a", a.release(net.now, "drain"))
    assert a.phase is Phase.RELEASING
    net.apply("a", a.rejoin(net.now, "undrain"))
    net.partitioned = False
    assert a.phase is Phase.MASTER and net.holding["a"]


def test_rank_delay_follows_the_master_heard() -> None:
    """The silent master is not counted as a better-ranked survivor; every other better member is."""
    members = (254, 238, 222)
    net = Net()
    for i, p in enumerate(members, start=1):
        net.add(f"r{i}", _ranked(i, p, members))
    net.start()
    net.run(1.0)
    assert net.masters() == ["r1"]
    assert net.routers["r2"].rank_delay == 0.0
    assert net.routers["r3"].rank_delay == pytest.approx(0.1)
    net.down.add("r1")
    net.run(1.0)
    assert net.masters() == ["r2"]
    # r1 (better than r3) may be back any time: r3 still waits a step behind r2.
    assert net.routers["r3"].rank_delay == pytest.approx(0.1)


def _adverts(actions: Iterable[object]) -> list[bytes]:
    return [a.data for a in actions if isinstance(a, Send)]


def test_advert_bytes_are_encoded_once_per_change() -> None:
    """A master's periodic advert is the same bytes object until priority, VIPs or interval change."""
    r = Router(config(1, 200))
    r.start(0.0)
    first = _adverts(r.takeover(0.0, "test"))
    again = _adverts(r.handle_timer(0.1))
    assert again == first and again[0] is first[0]  # the cached object, not a re-encoding
    changes: list[dict[str, object]] = [
        {"priority": 150}, {"vips": VIPS[:1]}, {"interval_cs": 20},
    ]
    seen = {first[0]}
    now = 0.1
    for change in changes:
        now += 10.0  # past the address-set grace
        r.update(now, **change)  # type: ignore[arg-type]
        # Past the first half of the address-set grace (the previous set is advertised during it).
        periodic = _adverts(r.handle_timer(now + r.config.update_grace))
        data = periodic[0]
        assert data not in seen, change
        seen.add(data)
    decoded = Advertisement(7, 150, 20, VIPS[:1])
    assert data == encode(decoded, addr(1), GROUP)


def test_an_identical_advert_still_resets_master_down_and_counts() -> None:
    master = Router(config(1, 200))
    master.start(0.0)
    (data,) = _adverts(master.takeover(0.0, "test"))
    backup = Router(config(2, 100))
    backup.start(0.0)
    for i in range(1, 6):
        now = i * 0.25
        assert backup.receive(data, addr(1), GROUP, 255, now) == []
        assert backup.next_timer() == pytest.approx(now + backup.master_down_interval)
        assert backup.master == addr(1)


def test_a_changed_advert_is_fully_decoded_and_checked() -> None:
    """The shortcut is by bytes, source and destination: anything else takes the whole path."""
    master = Router(config(1, 200))
    master.start(0.0)
    (data,) = _adverts(master.takeover(0.0, "test"))
    backup = Router(config(2, 100, peer_priorities={addr(1): 200, addr(3): 150}))
    backup.start(0.0)
    assert backup.receive(data, addr(1), GROUP, 255, 0.1) == []
    # Same bytes, another TTL, another source, a source outside the members: each checked again.
    assert backup.receive(data, addr(1), GROUP, 64, 0.2) == [Dropped("ttl")]
    outsider = IPv4Address("203.0.113.9")
    assert backup.receive(data, outsider, GROUP, 255, 0.3) == [Dropped("checksum")]  # pseudo-header differs
    forged = encode(Advertisement(7, 200, 10, VIPS), outsider, GROUP)
    assert backup.receive(forged, outsider, GROUP, 255, 0.3) == [Dropped("source")]
    assert backup.receive(data, addr(3), GROUP, 255, 0.4) == [Dropped("checksum")]  # pseudo-header differs
    spoofed = encode(Advertisement(7, 200, 10, VIPS), addr(3), GROUP)  # member 3 never sends 200
    assert backup.receive(spoofed, addr(3), GROUP, 255, 0.5) == [Dropped("priority_mismatch", addr(3))]
    corrupt = bytearray(data)
    corrupt[2] = 201  # priority changed, checksum not
    assert backup.receive(bytes(corrupt), addr(1), GROUP, 255, 0.6) == [Dropped("checksum")]
    # The genuine advert still works after all that, through the shortcut or not.
    assert backup.receive(data, addr(1), GROUP, 255, 0.7) == []
    assert backup.next_timer() == pytest.approx(0.7 + backup.master_down_interval)


def _kinds(actions: Iterable[object]) -> list[str]:
    return [type(a).__name__ for a in actions if not isinstance(a, StateChanged)]


def test_a_dead_master_is_replaced_advert_first_a_live_one_make_before_break() -> None:
    master_adv = encode(Advertisement(7, 200, 10, VIPS), addr(2), GROUP)
    resign_adv = encode(Advertisement(7, 0, 10, VIPS), addr(2), GROUP)
    # Master_Down (the master went silent) and a lost liveness peer: nobody lets go on our advert, so it
    # goes first (RFC 5798 6.4.2) and silences the other backups before the address work.
    for lose in ("timer", "peer"):
        router = Router(config(1, 100))
        router.start(0.0)
        router.receive(master_adv, addr(2), GROUP, 255, 0.1)
        if lose == "peer":
            router.peer_lost(0.2, 0.0, "liveness session expired")
        due = router.next_timer()
        assert due is not None
        assert _kinds(router.handle_timer(due)) == ["Send", "AddVips", "Announce"], lose
    # A resignation (priority 0): the old master holds the VIPs until our advert, so ours come first.
    router = Router(config(1, 100))
    router.start(0.0)
    router.receive(master_adv, addr(2), GROUP, 255, 0.1)
    router.receive(resign_adv, addr(2), GROUP, 255, 0.2)
    due = router.next_timer()
    assert due is not None
    assert _kinds(router.handle_timer(due)) == ["AddVips", "Announce", "Send"]


# -- the failover breakdown: detect and elect, where the machine decides -------------------


def _advert_from(i: int, priority: int, interval_cs: int = 10) -> tuple[bytes, IPv4Address, IPv4Address]:
    return encode(Advertisement(7, priority, interval_cs, VIPS), addr(i), GROUP), addr(i), GROUP


def _until_master(r: Router) -> tuple[float, StateChanged]:
    """Fire the router's timers in order until it becomes master; the time and the transition."""
    for _ in range(10):
        due = r.next_timer()
        assert due is not None
        for action in r.handle_timer(due):
            if isinstance(action, StateChanged) and action.new is State.MASTER:
                return due, action
    raise AssertionError("never became master")


@pytest.mark.parametrize(("i", "priority", "elect"), [(2, 238, 0.0), (3, 222, 0.1)])
def test_master_down_splits_detect_from_the_rank_delay(i: int, priority: int, elect: float) -> None:
    """detect: the master last heard -> Master_Down_Interval over; elect: the rank delay after it."""
    members = (254, 238, 222)
    r = Router(_ranked(i, priority, members))
    r.start(0.0)
    r.receive(*_advert_from(1, 254), 255, 0.5)
    at, change = _until_master(r)
    mdi = master_down_interval(priority, 0.1)
    assert at == pytest.approx(0.5 + mdi + elect)
    assert change.cause is TransitionCause.MASTER_DOWN and change.phases is not None
    assert change.phases.detect == pytest.approx(mdi)
    assert change.phases.elect == pytest.approx(elect)
    assert change.phases.address is None and change.phases.announce is None  # the driver's part
    assert change.failover_seconds == pytest.approx(mdi + elect)


def test_a_lost_peer_detects_when_liveness_says_so_and_elects_after_its_delay() -> None:
    r = Router(_ranked(3, 222, (254, 238, 222)))
    r.start(0.0)
    r.receive(*_advert_from(1, 254), 255, 1.0)
    # Liveness last heard the master's node at 1.01 and declared it lost at 1.06; this backup ranks second.
    assert r.peer_lost(1.06, 0.1, "session down", since=1.01) == []
    at, change = _until_master(r)
    assert at == pytest.approx(1.16)
    assert change.cause is TransitionCause.PEER_LOST and change.phases is not None
    assert (change.phases.detect, change.phases.elect) == (pytest.approx(0.05), pytest.approx(0.1))
    assert change.failover_seconds == pytest.approx(0.15)


def test_a_resignation_is_its_own_detection() -> None:
    r = Router(config(2, 200))
    r.start(0.0)
    r.receive(*_advert_from(1, 254), 255, 0.5)
    r.receive(*_advert_from(1, 0), 255, 0.7)
    _, change = _until_master(r)
    assert change.cause is TransitionCause.PEER_RESIGNED and change.phases is not None
    assert change.phases.detect == 0.0
    assert change.phases.elect == pytest.approx(skew_time(200, 0.1))


def test_a_master_heard_again_during_the_rank_delay_resets_the_detection() -> None:
    """A detection that a new master's advert answered is not the one a later failover is counted from."""
    r = Router(_ranked(3, 222, (254, 238, 222)))
    r.start(0.0)
    r.receive(*_advert_from(1, 254), 255, 0.5)
    mdi = master_down_interval(222, 0.1)
    assert r.handle_timer(0.5 + mdi) == []  # detected; waiting its rank delay
    r.receive(*_advert_from(2, 238), 255, 0.5 + mdi + 0.05)  # r2 took over in time
    heard = 0.5 + mdi + 0.05
    at, change = _until_master(r)  # r2 dies too
    assert change.phases is not None
    assert change.phases.detect == pytest.approx(mdi)
    # r1, better than r3, may be back any time: r3 still waits one step behind it.
    assert at - heard == pytest.approx(mdi + 0.1)
    assert change.phases.elect == pytest.approx(0.1)


def test_no_breakdown_without_a_failed_master() -> None:
    """Start-up (no master ever heard) and a control-plane takeover are no failover of a failed master."""
    r = Router(config(1, 200))
    r.start(0.0)
    _, change = _until_master(r)
    assert change.phases is None and change.failover_seconds is None
    r2 = Router(config(2, 100))
    r2.start(0.0)
    r2.receive(*_advert_from(1, 254), 255, 0.5)
    took = [a for a in r2.takeover(0.6, "control plane") if isinstance(a, StateChanged)]
    assert took and took[0].phases is None


def test_a_master_may_advertise_early_when_asked_but_never_fires_other_timers_early() -> None:
    r = Router(config(1, 100))
    r.start(0.0)
    r.takeover(0.0, "test")
    assert r.advert_at == pytest.approx(0.1)
    assert r.handle_timer(0.04, advance=0.05) == [], "not within the advance yet"
    sent = r.handle_timer(0.06, advance=0.05)
    assert [type(a) for a in sent] == [Send]
    assert r.advert_at == pytest.approx(0.16), "the next advert an interval after the early one"
    backup = Router(config(2, 50))
    backup.start(0.0)
    due = backup.next_timer()
    assert due is not None and backup.handle_timer(due - 0.01, advance=1.0) == []
    assert backup.phase is Phase.BACKUP, "Master_Down is never advanced"


def test_an_advert_follows_an_update_that_keeps_the_vips_object() -> None:
    # The encoded adverts are reused by identity of the address set: an update must drop them.
    r = Router(config(1, 100, interval_cs=10))
    r.start(0.0)
    r.takeover(0.0, "test")
    assert decode_interval(r.handle_timer(0.1)) == 10
    r.update(0.15, interval_cs=20)  # the same VIPS tuple object stays in the config
    assert decode_interval(r.handle_timer(0.3)) == 20


def decode_interval(actions: list[Action]) -> int:
    (send,) = [a for a in actions if isinstance(a, Send)]
    adv = decode(send.data, send.src, send.dst)
    return adv.interval_cs


# -- the steady master's advert, without action objects (Router.periodic) ---------------------------------


def test_periodic_gives_the_steady_masters_advert_as_handle_timer_would() -> None:
    twin = Router(config(1, 100))
    r = Router(config(1, 100))
    for router in (r, twin):
        router.start(0.0)
        router.takeover(0.0, "test")
    assert r.periodic(0.04, advance=0.05) is None and r.advert_at == pytest.approx(0.1), "not due: nothing changes"
    sends = r.periodic(0.06, advance=0.05)
    assert sends is not None and list(sends) == twin.handle_timer(0.06, advance=0.05)
    assert r.advert_at == twin.advert_at == r.next_timer() == pytest.approx(0.16)
    again = r.periodic(0.16)
    assert again is sends, "the same cached tuple every interval, not a new one per advert"
    assert r.advert_at == pytest.approx(0.26)
    assert decode(sends[0].data, sends[0].src, sends[0].dst) == Advertisement(7, 100, 10, VIPS)


def test_periodic_sends_one_advert_per_unicast_peer() -> None:
    peers = (addr(2), addr(3))
    r = Router(config(1, 100, destinations=peers))
    r.start(0.0)
    r.takeover(0.0, "test")
    sends = r.periodic(0.1)
    assert sends is not None and [s.dst for s in sends] == list(peers)


def test_periodic_leaves_everything_but_the_steady_advert_to_handle_timer() -> None:
    # A backup: its Master_Down timer is handle_timer's, even when due.
    b = Router(config(2, 50))
    b.start(0.0)
    due = b.next_timer()
    assert due is not None and b.periodic(due + 1.0) is None and b.phase is Phase.BACKUP
    # A resigning master sends priority 0: handle_timer's.
    r = Router(config(1, 100))
    r.start(0.0)
    r.takeover(0.0, "test")
    r.resign(0.05)
    assert r.periodic(0.2) is None and r.phase is Phase.RESIGNING
    # Sends failing: the recovery (VIPs put back) is decided by sent(), the slow path.
    m = Router(config(1, 100))
    m.start(0.0)
    m.takeover(0.0, "test")
    m.sent(False, 0.05)
    assert m.periodic(0.1) is None
    assert _kinds(m.handle_timer(0.1)) == ["Send"]
    assert m.sent(True, 0.1) == [AddVips(VIPS), Announce(VIPS)]
    assert m.periodic(0.2) is not None, "steady again once a send worked"
    # Authenticated: every advert is sealed anew (its timestamp), never the cached bytes.
    key = Authenticator(b"k" * 32)
    a = Router(config(1, 100, auth=key, wall_offset=1_800_000_000.0))
    a.start(0.0)
    a.takeover(0.0, "test")
    assert a.periodic(0.1) is None and len(_adverts(a.handle_timer(0.1))) == 1


def test_periodic_keeps_the_previous_set_for_the_first_half_of_the_grace_then_the_new_one() -> None:
    r = Router(config(1, 100, update_grace=2.0))
    r.start(0.0)
    r.takeover(0.0, "test")
    before = r.periodic(0.1)
    assert before is not None
    r.update(0.15, vips=VIPS[:1])
    assert r.periodic(0.3) is None, "the first half of the grace: handle_timer advertises the previous set"
    (old,) = _adverts(r.handle_timer(0.3))
    assert decode(old, addr(1), GROUP).addresses == VIPS
    after = r.periodic(1.2)  # past 0.15 + 2.0 / 2
    assert after is not None and after is not before
    assert decode(after[0].data, addr(1), GROUP).addresses == VIPS[:1]
    r.update(1.25, priority=90)
    r.handle_timer(1.25)
    steady = r.periodic(1.4)
    assert steady is not None and decode(steady[0].data, addr(1), GROUP).priority == 90, "rebuilt per update"


# -- a backup hearing its master's periodic advert again (the steady receive path) ------------------------


def _state(r: Router) -> tuple[object, ...]:
    return (r.phase, r.master, r.master_priority, r.master_adver_interval, r.released, r.next_timer(),
            r.outranks_master(), r.rank_delay, r.state)


@pytest.mark.parametrize("seed", range(30))
def test_hearing_the_same_advert_again_is_judged_as_the_first_time(seed: int) -> None:
    """Two twins get the same inputs; one gets fresh address objects every time (the shortcut keys on
    identity, so it never takes it): every answer and the state after it must be the same."""
    import random

    rng = random.Random(seed)
    table = {addr(1): 100, addr(2): 200, addr(3): 150}
    fast = Router(config(1, 100, peer_priorities=table, update_grace=0.5))
    slow = Router(config(1, 100, peer_priorities=table, update_grace=0.5))
    now = 0.0
    for r in (fast, slow):
        r.start(now)
    messages = [
        (encode(Advertisement(7, prio, interval, vips), addr(i), GROUP), addr(i))
        for i, prio, interval, vips in [
            (2, 200, 10, VIPS), (2, 200, 10, VIPS), (2, 0, 10, VIPS), (3, 150, 10, VIPS), (2, 200, 20, VIPS),
            (2, 200, 10, VIPS[:1]), (3, 90, 10, VIPS), (1, 100, 10, VIPS), (2, 180, 10, VIPS), (4, 200, 10, VIPS),
        ]
    ]
    steady = messages[0]
    for step in range(400):
        now += rng.choice([0.0, 0.01, 0.05, 0.1, 0.3])
        kind = rng.random()
        if kind < 0.55:
            data, src = steady if rng.random() < 0.8 else rng.choice(messages)
            ttl = 255 if rng.random() < 0.95 else 64
            got = fast.receive(data, src, GROUP, ttl, now)
            want = slow.receive(data, type(src)(str(src)), type(GROUP)(str(GROUP)), ttl, now)
        elif kind < 0.75:
            got, want = fast.handle_timer(now), slow.handle_timer(now)
        else:
            op = rng.choice(["priority", "vips", "table", "release", "rejoin", "down", "up", "lost", "resign"])
            calls = {
                "priority": lambda r: r.update(now, priority=rng_value),
                "vips": lambda r: r.update(now, vips=vips_value),
                "table": lambda r: r.update(now, peer_priorities=table_value),
                "release": lambda r: r.release(now, "test"),
                "rejoin": lambda r: r.rejoin(now, "test"),
                "down": lambda r: r.link_down(now, "test"),
                "up": lambda r: r.link_up(now, "test"),
                "lost": lambda r: r.peer_lost(now, 0.05, "test"),
                "resign": lambda r: r.handle_timer(now),
            }
            rng_value = rng.choice([90, 100, 210])
            vips_value = rng.choice([VIPS, VIPS[:1]])
            table_value = rng.choice([table, {**table, addr(2): 180}])
            got, want = calls[op](fast), calls[op](slow)
        assert got == want, f"step {step}"
        assert _state(fast) == _state(slow), f"step {step}"


def test_a_backup_has_its_takeover_advert_encoded_before_it_takes_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node dying hands every group it held to their backups in one pass of the loop: each backup's
    first advert as master is encoded when it becomes (or stays, after an update) a backup, so the
    takeover only looks it up."""
    import vipcore_native_vrrp.protocol.machine as machine

    encoded: list[object] = []
    real = machine.encode
    monkeypatch.setattr(machine, "encode", lambda *args: encoded.append(args) or real(*args))
    b = Router(config(2, 50))
    b.start(0.0)
    assert b.phase is Phase.BACKUP and len(encoded) == 1
    del encoded[:]
    b.update(0.1, vips=(IPv4Address("198.51.100.102"),))
    assert len(encoded) == 1, "an update re-encodes it at once"
    del encoded[:]
    later = 0.1 + b.config.update_grace  # past the update's grace, when a master advertises the new set
    actions = b.peer_lost(later, 0.0, "test: node-b's session expired") + b.handle_timer(later)
    assert b.phase is Phase.MASTER and encoded == []
    sends = [a for a in actions if isinstance(a, Send)]
    assert [decode(s.data, s.src, s.dst) for s in sends] == [
        Advertisement(7, 50, 10, (IPv4Address("198.51.100.102"),))]
