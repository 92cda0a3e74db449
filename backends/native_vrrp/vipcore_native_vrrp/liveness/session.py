"""One BFD session in asynchronous mode (RFC 5880 section 6, single hop per RFC 5881), sans-IO.

Like the VRRP :class:`~vipcore_native_vrrp.protocol.machine.Router`, a :class:`Session`
never reads a clock or touches a socket: the caller feeds it received bytes and the
time, calls :meth:`Session.handle_timer` at :meth:`Session.next_timer`, and carries
out what comes back (:class:`Send`, :class:`StateChanged`, :class:`Dropped`).

What is implemented: the three-way handshake (Down -> Init -> Up), negotiated
transmit intervals (the larger of our Desired Min TX and the peer's Required Min
RX), the detection time (the *peer's* Detect Mult times the larger of our
Required Min RX and the peer's Desired Min TX), transmit jitter (RFC 5880 6.8.7),
the Poll/Final exchange, the slow rate while the session is not Up (6.8.3),
a Required Min RX of our own per session that can change while Up
(:meth:`Session.set_required_min_rx`, with a Poll Sequence and the previous value
kept for the detection time until it ends, 6.8.3), and AdminDown. Not implemented: demand mode, the echo function, authentication.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from vipcore_native_vrrp.liveness.packet import (
    POLL_OR_FINAL,
    TTL,
    ControlPacket,
    Diagnostic,
    PacketError,
    SessionState,
    decode,
    encode,
)

#: RFC 5880 6.8.3: while a session is not Up, Desired Min TX is at least one second.
SLOW_INTERVAL = 1.0
#: Required Min RX towards a peer we need not watch closely (not the master of a group we back up):
#: it sends to us once a second instead of every 10 ms, and we see it fail within
#: ``detect_mult`` seconds (VRRP's own timers are no faster at 1 s adverts). docs/native-vrrp.md.
RELAXED_MIN_RX = 1.0


@attrs.frozen
class SessionConfig:
    """Our side's parameters, in seconds."""

    desired_min_tx: float = 0.01
    required_min_rx: float = 0.01
    detect_mult: int = 4
    #: Desired Min TX while the session is not Up (RFC 5880 asks for >= 1 s).
    slow_interval: float = SLOW_INTERVAL
    #: Required Min RX of the sessions with peers we need not watch closely (asymmetric rates).
    relaxed_min_rx: float = RELAXED_MIN_RX

    def __attrs_post_init__(self) -> None:
        for name in ("desired_min_tx", "required_min_rx", "slow_interval", "relaxed_min_rx"):
            value = getattr(self, name)
            if not 0.001 <= value <= 60.0:
                raise ValueError(f"{name} must be within 1 ms .. 60 s, got {value!r}")
        if not 1 <= self.detect_mult <= 255:
            raise ValueError(f"detect_mult must be 1..255, got {self.detect_mult!r}")


@attrs.frozen
class Send:
    data: bytes


@attrs.frozen
class StateChanged:
    old: SessionState
    new: SessionState
    diagnostic: Diagnostic


@attrs.frozen
class Dropped:
    reason: str


Action = Send | StateChanged | Dropped

#: Every reason a :class:`Dropped` can carry (drop counters start at zero for each).
RECEIVE_REASONS = ("ttl", "your_discriminator", "admin_down")


def _micro(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


@attrs.define
class Session:
    """bfd.* state variables of RFC 5880 section 6.8.1, for one peer."""

    config: SessionConfig
    my_discriminator: int
    #: A uniform [0, 1) source for transmit jitter; tests pass a seeded one.
    rng: Callable[[], float] = attrs.field(factory=lambda: random.Random().random)
    state: SessionState = SessionState.DOWN
    remote_state: SessionState = SessionState.DOWN
    remote_discriminator: int = 0
    remote_min_rx: int = 1  # microseconds; RFC 5880 6.8.1 initial value
    remote_desired_min_tx: int = 0
    remote_detect_mult: int = 0
    diagnostic: Diagnostic = Diagnostic.NONE
    #: Counters for operators.
    flaps: int = 0
    received: int = 0
    sent: int = 0
    _tx_at: float | None = None
    #: The earliest a periodic packet may go out: 75 % of the interval after the last one (RFC 5880 6.8.7).
    _tx_floor: float = 0.0
    #: The last packet accepted while Up that left us Up, without Poll or Final: an identical one that
    #: follows changes nothing but the detection timer, so it is not decoded again.
    _repeat: bytes | None = None
    #: The fields of the last periodic packet sent and its bytes: resent while nothing in it changed.
    _tx_key: tuple[float, ...] | None = None
    _tx_bytes: bytes = b""
    _tx_send: Send = Send(b"")  # the Send of _tx_bytes, made once per encoding (frozen: shared safely)
    _detect_at: float | None = None
    _polling: bool = False
    #: The Required Min RX the Polls of the running Poll Sequence carried (-1: none sent yet), whether some
    #: carried another value (it changed during the sequence), and when the first one went out: a Final
    #: confirms a value only if every Poll it can answer carried it (RFC 5880 6.5: one sequence at a time).
    _poll_rx: float = -1.0
    _poll_mixed: bool = False
    _poll_since: float = float("inf")
    _final_due: bool = False
    #: When our last Final went out: a Poll that arrived before it is answered already (a worker that reads
    #: a batch of a peer's repeated Polls sends one Final, not one per packet).
    _final_at: float = float("-inf")
    _admin_repeats: int = 0
    _admin_interval: float = 0.0
    #: bfd.RequiredMinRxInterval of this session (seconds): the config's unless :meth:`set_required_min_rx`
    #: changed it, and the value the detection time uses (the previous one while a Poll for a lower one runs).
    _required_min_rx: float = -1.0
    _detect_rx: float = -1.0

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.my_discriminator <= 0xFFFFFFFF:
            raise ValueError("my_discriminator must be a non-zero 32-bit value")
        if self._required_min_rx < 0:
            self._required_min_rx = self.config.required_min_rx
        self._detect_rx = self._required_min_rx

    # -- derived values ---------------------------------------------------

    @property
    def desired_min_tx(self) -> float:
        """What we advertise: the configured rate while Up, the slow rate otherwise."""
        if self.state is SessionState.UP:
            return self.config.desired_min_tx
        return max(self.config.desired_min_tx, self.config.slow_interval)

    @property
    def required_min_rx(self) -> float:
        """What we ask the peer for: the slowest rate at which it may send to us, seconds."""
        return self._required_min_rx

    @property
    def polling(self) -> bool:
        """A Poll Sequence is running (our parameters changed; the peer has not answered with a Final yet)."""
        return self._polling

    @property
    def tx_interval(self) -> float:
        return max(self.desired_min_tx, self.remote_min_rx / 1_000_000)

    @property
    def detection_time(self) -> float:
        """How long without a packet from the peer before the session is declared down."""
        return self.remote_detect_mult * max(self._detect_rx, self.remote_desired_min_tx / 1_000_000)

    @property
    def tx_floor(self) -> float:
        """The earliest the next periodic packet may go out: 75 % of the interval after the last one."""
        return self._tx_floor

    def next_timer(self) -> float | None:
        tx, detect = self._tx_at, self._detect_at
        if tx is None:
            return detect
        return tx if detect is None or tx < detect else detect

    # -- inputs -----------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Begin sending (state Down); the first packet goes out now."""
        self._tx_at = now
        return self.handle_timer(now)

    def receive(self, data: bytes, ttl: int, now: float, arrived: float | None = None) -> list[Action]:
        """A control packet from this session's peer (the caller demultiplexes by address/discriminator).

        ``arrived`` is when the packet reached this node (the kernel's receive time) if it
        is processed later than that: the detection timer restarts from it, so a packet
        read late counts exactly as early as it came. Anything sent in reply is sent ``now``.
        """
        if ttl != TTL:
            return [Dropped("ttl")]
        heard = now if arrived is None else min(arrived, now)
        if data == self._repeat and self.state is SessionState.UP:
            # Same bytes as the last accepted packet, which changed nothing: only the timer moves.
            self.received += 1
            self._detect_at = heard + self.detection_time
            return []
        self._repeat = None
        try:
            packet = decode(data)
        except PacketError as error:
            return [Dropped(error.reason)]
        if packet.your_discriminator not in (0, self.my_discriminator):
            return [Dropped("your_discriminator")]
        if self.state is SessionState.ADMIN_DOWN:
            return [Dropped("admin_down")]
        self.received += 1
        self.remote_discriminator = packet.my_discriminator
        self.remote_state = packet.state
        faster = packet.required_min_rx < self.remote_min_rx
        self.remote_min_rx = packet.required_min_rx
        self.remote_desired_min_tx = packet.desired_min_tx
        self.remote_detect_mult = packet.detect_mult
        if packet.final and self._polling:
            if not self._poll_mixed and self._poll_rx == self._required_min_rx and heard >= self._poll_since:
                # The Poll Sequence ends: the peer has our parameters, a lower Required Min RX now counts.
                self._polling = False
                self._detect_rx = self._required_min_rx
                self._poll_rx, self._poll_mixed, self._poll_since = -1.0, False, float("inf")
            else:
                # The Final answers a Poll that carried an older value (it changed since, or this Final
                # arrived before we asked for the current one): the peer may still send at the old rate.
                # Keep the detection time and ask again, one sequence at a time.
                self._poll_rx, self._poll_mixed, self._poll_since = -1.0, False, float("inf")
        if faster and self._tx_at is not None and self._tx_at > now + self.tx_interval:
            # The peer wants packets more often (it needs to watch us closely now): the next one
            # goes out within the new interval, not at the end of the slow one already scheduled.
            self._tx_at = now + self.tx_interval
        actions: list[Action] = []
        if packet.state is SessionState.ADMIN_DOWN:
            if self.state is not SessionState.DOWN:
                actions += self._change(SessionState.DOWN, Diagnostic.NEIGHBOR_DOWN, now)
        elif self.state is SessionState.DOWN:
            if packet.state is SessionState.DOWN:
                actions += self._change(SessionState.INIT, Diagnostic.NONE, now)
            elif packet.state is SessionState.INIT:
                actions += self._change(SessionState.UP, Diagnostic.NONE, now)
        elif self.state is SessionState.INIT:
            if packet.state in (SessionState.INIT, SessionState.UP):
                actions += self._change(SessionState.UP, Diagnostic.NONE, now)
        elif packet.state is SessionState.DOWN:  # we are Up
            actions += self._change(SessionState.DOWN, Diagnostic.NEIGHBOR_DOWN, now)
        if self.state in (SessionState.INIT, SessionState.UP):
            self._detect_at = heard + self.detection_time
        if packet.poll:
            if heard > self._final_at:
                # RFC 5880 6.8.6: answer a Poll with a Final as soon as practicable.
                self._final_due = True
                actions += self._transmit(now)
        elif not actions and self.state is SessionState.UP and not data[1] & POLL_OR_FINAL:
            self._repeat = bytes(data)
        return actions

    def handle_timer(self, now: float, early: float = 0.0) -> list[Action]:
        """Carry out the timers due at ``now``.

        ``early`` lets a periodic packet due within that many seconds go out now, so a
        caller with many sessions sends several per wake-up; never before 75 % of the
        interval since the previous one, the lower bound of RFC 5880 6.8.7's jitter.
        """
        actions: list[Action] = []
        if self._detect_at is not None and now >= self._detect_at:
            self._detect_at = None
            if self.state in (SessionState.INIT, SessionState.UP):
                self.remote_discriminator = 0
                actions += self._change(SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED, now)
        tx = self._tx_at
        if tx is not None and (now >= tx or (now >= tx - early and now >= self._tx_floor)):
            actions += self._transmit(now)
        return actions

    def admin_down(self, now: float) -> list[Action]:
        """Take the session down on purpose (a graceful stop): the peer sees AdminDown, not a failure.

        The AdminDown packet is repeated ``detect_mult`` times at half the
        negotiated interval, so the peer hears it even if one is lost, before
        its detection time could expire (then it would take us for dead).
        """
        interval = self.tx_interval  # while still Up: the fast rate the peer's detection time follows
        actions = self._change(SessionState.ADMIN_DOWN, Diagnostic.ADMIN_DOWN, now)
        self._detect_at = None
        self._admin_repeats = self.config.detect_mult
        self._admin_interval = interval / 2
        return actions + self._transmit(now)

    def set_required_min_rx(self, seconds: float, now: float) -> list[Action]:
        """Ask the peer to send to us at most every ``seconds`` (RFC 5880 6.8.3): slow when we need not
        watch it closely, fast again when we do.

        While Up the change starts a Poll Sequence and the Poll goes out now, out of the periodic
        schedule (as when the session comes Up), so a peer that sends slowly hears at once that it
        must speed up; the periodic packets repeat the Poll until the Final. A lower value
        counts for the detection time only once the peer's Final says it has it (until then it
        still sends at the old rate); a higher one counts at once (the peer may slow down as soon
        as it reads the packet).
        """
        if not 0.001 <= seconds <= 60.0:
            raise ValueError(f"required_min_rx must be within 1 ms .. 60 s, got {seconds!r}")
        if seconds == self._required_min_rx:
            return []
        before = self.detection_time
        self._required_min_rx = seconds
        if self.state is SessionState.UP:
            # Lower: the old value until the Final. Higher (or a Poll for a lower one still running): at once.
            self._detect_rx = max(self._detect_rx, seconds)
            self._polling = True
            if self._detect_at is not None and self.detection_time > before:
                # From the last packet heard: the peer's next one may already come at the slow rate.
                self._detect_at += self.detection_time - before
            return self._transmit(now)
        self._detect_rx = seconds
        return []  # not Up: the next periodic packet (slow rate anyway) carries it

    @property
    def retired(self) -> bool:
        """AdminDown and every repeat of it sent: the session can be dropped."""
        return self.state is SessionState.ADMIN_DOWN and self._admin_repeats <= 0

    # -- internals ------------------------------------------------------------------

    def _change(self, new: SessionState, diagnostic: Diagnostic, now: float) -> list[Action]:
        old = self.state
        if new is old:
            return []
        self.state = new
        self.diagnostic = diagnostic
        self._repeat = None
        if old is SessionState.UP:
            self.flaps += 1
        if new is SessionState.DOWN:
            self._detect_at = None
            self._detect_rx = self._required_min_rx  # a new session: the peer learns it in the handshake
            self._poll_rx, self._poll_mixed, self._poll_since = -1.0, False, float("inf")
        if SessionState.UP in (old, new) and self.config.desired_min_tx != self.config.slow_interval:
            # Our Desired Min TX changes with Up: tell the peer with a Poll (RFC 5880 6.8.3).
            self._polling = True
            # Going faster may take effect at once; send now so the peer learns it.
            if new is SessionState.UP:
                self._tx_at = now
        return [StateChanged(old, new, diagnostic)]

    def _transmit(self, now: float) -> list[Action]:
        if self.remote_min_rx == 0 and self.state is not SessionState.ADMIN_DOWN:
            # The peer asked for no packets (RFC 5880 6.8.7); look again at the slow rate.
            self._tx_at = now + self.config.slow_interval
            return []
        final, self._final_due = self._final_due, False
        if final:
            self._final_at = now
        self.sent += 1
        send = self._encoded(final, now)
        if self.state is SessionState.ADMIN_DOWN:
            self._admin_repeats -= 1
            self._tx_at = now + self._admin_interval if self._admin_repeats > 0 else None
            return [send]
        # RFC 5880 6.8.7: each interval is 75..100% of the negotiated one (75..90% with Detect Mult 1).
        top = 0.9 if self.config.detect_mult == 1 else 1.0
        interval = self.tx_interval
        self._tx_at = now + interval * (0.75 + (top - 0.75) * self.rng())
        self._tx_floor = now + interval * 0.75
        return [send]

    def _encoded(self, final: bool, now: float) -> Send:
        """This packet, encoded again only when a field in it changed (usually once per state change)."""
        poll = self._polling and not final
        if poll:
            if self._poll_rx < 0:
                self._poll_rx, self._poll_since = self._required_min_rx, now
            elif self._poll_rx != self._required_min_rx:
                self._poll_mixed = True
        rx = self._required_min_rx
        key = (self.state, self.remote_discriminator, self.diagnostic, poll, final, rx)  # the rest is fixed by state
        if key != self._tx_key:
            self._tx_key = key
            self._tx_bytes = encode(ControlPacket(
                state=self.state, my_discriminator=self.my_discriminator,
                your_discriminator=self.remote_discriminator,
                desired_min_tx=_micro(self.desired_min_tx), required_min_rx=_micro(rx),
                detect_mult=self.config.detect_mult, diagnostic=self.diagnostic, poll=poll, final=final,
            ))
            self._tx_send = Send(self._tx_bytes)
        return self._tx_send
