"""The BFD session (sans-IO) driven against another in memory with a float clock."""

from __future__ import annotations

import random
import statistics

import attrs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore_native_vrrp.liveness import (
    ControlPacket,
    Diagnostic,
    Dropped,
    PacketError,
    Send,
    Session,
    SessionConfig,
    SessionState,
    StateChanged,
    decode,
    encode,
)

FAST = SessionConfig(desired_min_tx=0.01, required_min_rx=0.01, detect_mult=4, slow_interval=0.05)
STEP = 0.0005


class Wire:
    """Two sessions joined by a lossless zero-delay wire unless ``cut`` or ``loss`` say otherwise."""

    def __init__(self, config: SessionConfig = FAST, seed: int = 1) -> None:
        self.a = Session(config, 0x1111, rng=random.Random(seed).random)
        self.b = Session(config, 0x2222, rng=random.Random(seed + 1).random)
        self.now = 0.0
        self.cut: set[str] = set()  # "a" or "b": that side's packets are lost
        self.loss = 0.0
        self.lossy = random.Random(seed + 2)
        self.changes: dict[str, list[tuple[float, StateChanged]]] = {"a": [], "b": []}
        self.dropped: list[str] = []
        self._deliver("a", self.a.start(self.now))
        self._deliver("b", self.b.start(self.now))

    def _deliver(self, side: str, actions: list[object]) -> None:
        other = self.b if side == "a" else self.a
        for action in actions:
            if isinstance(action, StateChanged):
                self.changes[side].append((self.now, action))
            elif isinstance(action, Dropped):
                self.dropped.append(action.reason)
            elif isinstance(action, Send):
                if side in self.cut or (self.loss and self.lossy.random() < self.loss):
                    continue
                self._deliver("b" if side == "a" else "a", other.receive(action.data, 255, self.now))

    def run(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + STEP, 6)
            for side, session in (("a", self.a), ("b", self.b)):
                timer = session.next_timer()
                if timer is not None and timer <= self.now:
                    self._deliver(side, session.handle_timer(self.now))


def test_three_way_handshake_brings_both_sides_up_at_the_slow_rate_then_fast() -> None:
    wire = Wire()
    wire.run(0.2)
    assert wire.a.state is SessionState.UP and wire.b.state is SessionState.UP
    assert [c.new for _, c in wire.changes["a"]][-1] is SessionState.UP
    # Up: both advertise the fast rate; the interval is the larger of ours and the peer's Required Min RX.
    assert wire.a.desired_min_tx == pytest.approx(0.01) and wire.a.tx_interval == pytest.approx(0.01)
    assert wire.a.detection_time == pytest.approx(0.04)


def test_a_silent_peer_is_declared_down_within_the_detection_time() -> None:
    wire = Wire()
    wire.run(0.3)
    assert wire.a.state is SessionState.UP
    cut_at = wire.now
    wire.cut.add("b")
    wire.run(0.1)
    down = [(t, c) for t, c in wire.changes["a"] if c.new is SessionState.DOWN]
    assert len(down) == 1
    at, change = down[0]
    assert change.diagnostic is Diagnostic.CONTROL_DETECTION_EXPIRED
    # Detection time = peer's Detect Mult (4) x max(our Required Min RX, peer's Desired Min TX) = 40 ms
    # after the last packet, which left b at most one TX interval (10 ms) before the cut.
    assert 0.04 - 0.0105 <= at - cut_at <= 0.04 + 2 * STEP
    assert wire.a.flaps == 1 and wire.a.remote_discriminator == 0


def test_the_session_comes_back_up_when_the_peer_returns() -> None:
    wire = Wire()
    wire.run(0.3)
    wire.cut.add("b")
    wire.run(0.1)
    assert wire.a.state is SessionState.DOWN
    wire.cut.clear()
    wire.run(0.3)
    assert wire.a.state is SessionState.UP and wire.b.state is SessionState.UP


def test_admin_down_is_not_a_failure() -> None:
    wire = Wire()
    wire.run(0.3)
    wire._deliver("b", wire.b.admin_down(wire.now))
    down = [c for _, c in wire.changes["a"] if c.new is SessionState.DOWN]
    assert down and down[-1].diagnostic is Diagnostic.NEIGHBOR_DOWN
    assert wire.a.state is SessionState.DOWN


def test_two_percent_loss_for_ten_simulated_minutes_never_declares_the_peer_down() -> None:
    wire = Wire(seed=7)
    wire.run(0.3)
    wire.loss = 0.02
    flaps = wire.a.flaps + wire.b.flaps
    wire.run(60)  # one simulated minute keeps the test fast; bench/ runs the 10-minute soak
    assert wire.a.flaps + wire.b.flaps == flaps


def test_a_poll_is_answered_with_a_final() -> None:
    session = Session(FAST, 0x1234, rng=random.Random(0).random)
    session.start(0.0)
    poll = ControlPacket(state=SessionState.DOWN, my_discriminator=9, your_discriminator=0, desired_min_tx=10_000,
                         required_min_rx=10_000, detect_mult=3, poll=True)
    actions = session.receive(encode(poll), 255, 0.001)
    sent = [decode(a.data) for a in actions if isinstance(a, Send)]
    assert sent and sent[0].final and not sent[0].poll


def test_only_ttl_255_is_accepted() -> None:
    session = Session(FAST, 0x1234)
    packet = ControlPacket(state=SessionState.DOWN, my_discriminator=9, your_discriminator=0, desired_min_tx=10_000,
                           required_min_rx=10_000, detect_mult=3)
    assert session.receive(encode(packet), 254, 0.0) == [Dropped("ttl")]
    assert session.remote_discriminator == 0


def test_a_packet_for_another_session_is_dropped() -> None:
    session = Session(FAST, 0x1234)
    packet = ControlPacket(state=SessionState.UP, my_discriminator=9, your_discriminator=0x9999,
                           desired_min_tx=10_000, required_min_rx=10_000, detect_mult=3)
    assert session.receive(encode(packet), 255, 0.0) == [Dropped("your_discriminator")]


def test_codec_round_trip_and_the_rfc_5880_discard_rules() -> None:
    packet = ControlPacket(state=SessionState.UP, my_discriminator=1, your_discriminator=2, desired_min_tx=10_000,
                           required_min_rx=20_000, detect_mult=5, diagnostic=Diagnostic.PATH_DOWN, poll=True)
    data = encode(packet)
    assert len(data) == 24 and decode(data) == packet
    for mutate, reason in [
        (lambda d: d[:23], "short"),
        (lambda d: bytes([0x40 | d[0] & 0x1F]) + d[1:], "version"),
        (lambda d: d[:1] + bytes([d[1] | 0x04]) + d[2:], "auth"),
        (lambda d: d[:2] + b"\x00" + d[3:], "detect_mult"),
        (lambda d: d[:3] + b"\x30" + d[4:], "length"),
        (lambda d: d[:1] + bytes([d[1] | 0x01]) + d[2:], "multipoint"),
        (lambda d: d[:4] + b"\x00\x00\x00\x00" + d[8:], "my_discriminator"),
        (lambda d: d[:8] + b"\x00\x00\x00\x00" + d[12:], "your_discriminator"),
    ]:
        with pytest.raises(PacketError) as info:
            decode(mutate(data))
        assert info.value.reason == reason


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=64))
def test_fuzzed_bytes_raise_nothing_but_packet_error(data: bytes) -> None:
    try:
        decode(data)
    except PacketError:
        pass
    session = Session(FAST, 0x1234)
    for action in session.receive(data, 255, 0.0):
        assert isinstance(action, Dropped | StateChanged | Send)


def test_admin_down_is_repeated_so_one_lost_packet_does_not_look_like_a_failure() -> None:
    wire = Wire()
    wire.run(0.3)
    wire.cut.add("b")
    wire._deliver("b", wire.b.admin_down(wire.now))  # the first AdminDown is lost
    wire.cut.clear()
    wire.run(0.2)
    down = [c for _, c in wire.changes["a"] if c.new is SessionState.DOWN]
    assert [c.diagnostic for c in down] == [Diagnostic.NEIGHBOR_DOWN]
    assert wire.b.retired and wire.b.next_timer() is None


# -- what the worker relies on to wake up less (issue 14) ---------------------------------


def up_pair() -> Wire:
    wire = Wire()
    wire.run(0.3)
    assert wire.a.state is SessionState.UP and wire.b.state is SessionState.UP
    return wire


def periodic(session: Session) -> bytes:
    """The peer's next periodic packet, as it would send it (its timer forced due)."""
    sends = [a for a in session.handle_timer(session.next_timer() or 0.0) if isinstance(a, Send)]
    assert sends
    return sends[0].data


def test_a_packet_read_late_restarts_detection_from_when_it_arrived() -> None:
    wire = up_pair()
    data = periodic(wire.b)
    # Arrived at 10.000, read 30 ms later: the peer has 40 ms from its arrival, not from our reading.
    assert wire.a.receive(data, 255, 10.030, 10.000) == []
    assert wire.a.next_timer() is not None
    assert wire.a._detect_at == pytest.approx(10.000 + wire.a.detection_time)
    # Judged at 10.035 (before the deadline it set): still Up; at the deadline: down, exactly then.
    assert not [a for a in wire.a.handle_timer(10.035) if isinstance(a, StateChanged)]
    changes = [a for a in wire.a.handle_timer(10.000 + wire.a.detection_time) if isinstance(a, StateChanged)]
    assert [c.diagnostic for c in changes] == [Diagnostic.CONTROL_DETECTION_EXPIRED]


def test_an_arrival_time_from_the_future_counts_as_now() -> None:
    wire = up_pair()
    wire.a.receive(periodic(wire.b), 255, 10.0, 10.5)  # clocks disagree: never extend past now + detection
    assert wire.a._detect_at == pytest.approx(10.0 + wire.a.detection_time)


def test_early_transmission_stays_within_the_rfc_jitter_bounds() -> None:
    """``early`` sends a packet up to that long before its timer, never before 75 % of the interval."""
    wire = up_pair()
    session = wire.a
    rng = random.Random(5)
    heard = periodic(wire.b)
    last, now, gaps = None, wire.now, []
    for _ in range(2000):
        timer = session.next_timer()
        assert timer is not None
        now = max(now, timer - rng.uniform(0, 0.004))  # woken by another session up to 4 ms before ours
        if [a for a in session.handle_timer(now, 0.002) if isinstance(a, Send)]:
            if last is not None:
                gaps.append(now - last)
            last = now
        # Keep the session Up: the peer is heard at every step.
        session.receive(heard, 255, now)
        now += 0.0001
    assert session.state is SessionState.UP
    assert gaps and min(gaps) >= 0.0075 - 1e-9 and max(gaps) <= 0.0100 + 0.0002
    assert statistics.pstdev(gaps) > 0.0004  # still jittered, not locked to one value


def test_a_repeated_packet_is_not_decoded_again_and_changes_only_the_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = up_pair()
    data = periodic(wire.b)
    wire.a.receive(data, 255, 11.0)
    received = wire.a.received
    import vipcore_native_vrrp.liveness.session as session_module

    def no_decode(_: bytes) -> ControlPacket:
        raise AssertionError("a repeat was decoded")

    monkeypatch.setattr(session_module, "decode", no_decode)
    assert wire.a.receive(data, 255, 11.01) == []
    assert wire.a.received == received + 1 and wire.a._detect_at == pytest.approx(11.01 + wire.a.detection_time)
    assert wire.a.receive(data, 254, 11.02) == [Dropped("ttl")]  # the TTL check comes first, repeat or not
    # A packet that differs (here: the peer going Down) is decoded and acted upon.
    monkeypatch.undo()
    down = encode(attrs.evolve(decode(data), state=SessionState.DOWN))
    assert [a for a in wire.a.receive(down, 255, 11.03) if isinstance(a, StateChanged)]
    assert wire.a.receive(data, 255, 11.04) == [] and wire.a.state is SessionState.DOWN  # no stale fast path


def test_the_periodic_packet_is_encoded_once_per_change() -> None:
    wire = up_pair()
    first, second = periodic(wire.a), periodic(wire.a)
    assert first is second  # the same bytes object: nothing changed, nothing encoded
    replies = [a.data for a in wire.a.receive(encode(attrs.evolve(decode(periodic(wire.b)), poll=True)), 255, 30.0)
               if isinstance(a, Send)]
    assert [decode(r).final for r in replies] == [True]  # a field changed: encoded again
    assert periodic(wire.a) == first and not decode(periodic(wire.a)).final
    sent = [a.data for a in wire.a.admin_down(31.0) if isinstance(a, Send)]
    assert [decode(s).state for s in sent] == [SessionState.ADMIN_DOWN]


# -- asymmetric rates: ask a peer we need not watch closely to send slowly (issue 14) --------------

SLOW_RX = 1.0


def sent_in(wire: Wire, seconds: float) -> tuple[int, int]:
    """Packets a and b send during the next ``seconds``."""
    a, b = wire.a.sent, wire.b.sent
    wire.run(seconds)
    return wire.a.sent - a, wire.b.sent - b


def test_a_peer_asked_for_the_slow_rate_sends_slowly_and_both_sides_stay_up() -> None:
    wire = up_pair()
    flaps = wire.a.flaps + wire.b.flaps
    wire._deliver("a", wire.a.set_required_min_rx(SLOW_RX, wire.now))  # a need not watch b closely
    wire.run(1.0)  # one more of b's fast packets, then the slow schedule
    from_a, from_b = sent_in(wire, 10.0)
    assert 1000 <= from_a <= 1340  # a still sends every 7.5-10 ms: b watches a closely
    assert 10 <= from_b <= 14  # b sends every 0.75-1 s
    assert wire.a.state is SessionState.UP and wire.b.state is SessionState.UP
    assert wire.a.flaps + wire.b.flaps == flaps
    assert wire.a.detection_time == pytest.approx(4 * SLOW_RX) and wire.b.detection_time == pytest.approx(0.04)
    assert not wire.a.polling  # b answered the Poll with a Final


def test_asking_for_the_fast_rate_again_polls_at_once_and_detects_fast_after_the_final() -> None:
    wire = up_pair()
    wire._deliver("a", wire.a.set_required_min_rx(SLOW_RX, wire.now))
    wire.run(3.0)
    actions = wire.a.set_required_min_rx(FAST.required_min_rx, wire.now)
    sent = [decode(a.data) for a in actions if isinstance(a, Send)]
    # Out of the periodic schedule (a's next packet was up to 10 ms away anyway, b's up to 1 s).
    assert [(p.poll, p.required_min_rx) for p in sent] == [(True, 10_000)]
    assert wire.a.detection_time == pytest.approx(4 * SLOW_RX)  # b still sends slowly until it has heard
    wire._deliver("a", actions)  # b answers the Poll with a Final at once, and sends fast from then on
    assert not wire.a.polling and wire.a.detection_time == pytest.approx(0.04)
    from_a, from_b = sent_in(wire, 1.0)
    assert from_b >= 100
    wire.cut.add("b")
    cut_at = wire.now
    wire.run(0.1)
    down = [(t, c) for t, c in wire.changes["a"] if c.new is SessionState.DOWN]
    assert [c.diagnostic for _, c in down] == [Diagnostic.CONTROL_DETECTION_EXPIRED]
    assert down[0][0] - cut_at <= 0.04 + 0.0105


def test_a_lower_rx_counts_for_detection_only_once_the_peer_has_it() -> None:
    """RFC 5880 6.8.3: until the Final, the peer may still send at the old, slow rate."""
    wire = up_pair()
    wire._deliver("a", wire.a.set_required_min_rx(SLOW_RX, wire.now))
    wire.run(2.0)
    heard = wire.now
    poll = wire.a.set_required_min_rx(FAST.required_min_rx, wire.now)  # lost for now: b keeps its slow rate
    assert wire.a.polling and wire.a.detection_time == pytest.approx(4 * SLOW_RX)
    # Half a second later b has still sent nothing (its next packet is up to 1 s away): no expiry.
    assert not [a for a in wire.a.handle_timer(heard + 0.5) if isinstance(a, StateChanged)]
    assert wire.a.state is SessionState.UP
    wire._deliver("a", poll)  # b gets the Poll after all and answers it with a Final
    assert not wire.a.polling and wire.a.detection_time == pytest.approx(0.04)


def test_raising_rx_lengthens_the_running_detection_from_the_last_packet_heard() -> None:
    """b's next packet may already come at the slow rate; if the one fast packet before it is lost, a
    must not judge b by the fast detection time."""
    wire = up_pair()
    wire._deliver("a", wire.a.set_required_min_rx(SLOW_RX, wire.now))
    wire.cut.add("b")  # everything b sends from now on is lost
    cut_at = wire.now
    wire.run(3.5)
    assert wire.a.state is SessionState.UP
    wire.run(1.0)
    down = [(t, c) for t, c in wire.changes["a"] if c.new is SessionState.DOWN]
    assert len(down) == 1 and down[0][0] - cut_at <= 4 * SLOW_RX + 0.01


def test_a_peer_that_lowers_its_rx_without_a_poll_is_sent_to_within_the_new_interval() -> None:
    wire = up_pair()
    wire._deliver("a", wire.a.set_required_min_rx(SLOW_RX, wire.now))
    wire.run(2.0)
    assert wire.b.tx_interval == pytest.approx(SLOW_RX)
    fast = attrs.evolve(decode(periodic(wire.a)), required_min_rx=10_000, poll=False, final=False)
    wire.b.receive(encode(fast), 255, wire.now)
    timer = wire.b.next_timer()
    assert timer is not None and timer <= wire.now + 0.01 + 1e-9


def test_a_batch_of_repeated_polls_read_at_once_gets_one_final() -> None:
    """A worker that reads several of a peer's repeated Polls in one wake-up answers them with one Final
    (it answers the Poll Sequence); a Poll that arrives after that Final gets its own."""
    wire = up_pair()
    poll = encode(attrs.evolve(decode(periodic(wire.b)), poll=True))
    finals = []
    for arrived in (20.000, 20.010, 20.020):  # queued while the reader slept; read at 20.025
        finals += [decode(a.data).final for a in wire.a.receive(poll, 255, 20.025, arrived) if isinstance(a, Send)]
    assert finals == [True]
    later = [decode(a.data).final for a in wire.a.receive(poll, 255, 20.040, 20.030) if isinstance(a, Send)]
    assert later == [True]


def test_a_final_for_an_older_poll_does_not_confirm_a_lower_rx_asked_for_since() -> None:
    """RFC 5880 6.5: a Final answers the Poll Sequence the peer saw. ``a`` asks ``b`` for the slow rate (Poll
    P1); ``b`` answers with a Final and slows down; before that Final reaches ``a``, ``a`` asks for the fast
    rate again (Poll P2, which ``b`` has not read yet). The Final answers P1: ``b`` still sends once a
    second, so ``a`` must keep the slow detection time (and poll again), not expire ``b`` 40 ms later."""
    wire = up_pair()
    p1 = wire.a.set_required_min_rx(SLOW_RX, wire.now)
    replies: list[object] = []
    for action in p1:
        if isinstance(action, Send):
            replies += wire.b.receive(action.data, 255, wire.now)
    finals = [a.data for a in replies if isinstance(a, Send) and decode(a.data).final]
    assert finals and wire.b.tx_interval == pytest.approx(SLOW_RX)
    wire.a.set_required_min_rx(FAST.required_min_rx, wire.now + 0.001)  # P2: not read by b yet
    wire.a.receive(finals[0], 255, wire.now + 0.002)
    expired = [a for a in wire.a.handle_timer(wire.now + 0.1) if isinstance(a, StateChanged)]
    assert expired == [] and wire.a.state is SessionState.UP
    assert wire.a.polling  # the fast rate still to be confirmed


def test_a_final_that_arrived_before_the_poll_for_the_current_rx_does_not_confirm_it() -> None:
    """The peer answers every Poll, so Finals for an older Poll Sequence can still come after it ended: one that
    arrived before the first Poll carrying the current value went out cannot be its answer."""
    wire = up_pair()
    p1 = wire.a.set_required_min_rx(SLOW_RX, wire.now)
    finals = [a.data for r in p1 if isinstance(r, Send) for a in wire.b.receive(r.data, 255, wire.now)
              if isinstance(a, Send) and decode(a.data).final]
    wire.a.receive(finals[0], 255, wire.now)  # the slow sequence ends
    assert not wire.a.polling
    stale = finals[0]  # another Final for it, still queued (read late)
    wire.a.set_required_min_rx(FAST.required_min_rx, wire.now + 0.010)
    wire.a.receive(stale, 255, wire.now + 0.020, arrived=wire.now + 0.005)
    assert wire.a.polling and wire.a.detection_time == pytest.approx(4 * SLOW_RX)
    assert not [a for a in wire.a.handle_timer(wire.now + 0.2) if isinstance(a, StateChanged)]
