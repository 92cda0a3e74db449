"""The RFC 5798 state machine of one virtual router (one group, one family).

Sans-IO in the style of h11 and aioquic: the :class:`Router` never reads a
clock or touches a socket. The caller feeds it events with the current time
(``start``, ``receive``, ``handle_timer``, ``update``, ``resign``,
``shutdown``, ``release``, ``rejoin``, ``takeover``, ``link_down``, ``link_up``,
``sent``) and each call returns the
:data:`Action` objects the caller must carry out, in order. ``next_timer()``
says when ``handle_timer`` must be called next.

Every phase change goes through :data:`TRANSITIONS`; a change that is not in
the table raises :class:`TransitionError` (a bug, never a network input).

Beyond RFC 5798 (documented in ``docs/native-vrrp.md``):

* **Make-before-break resignation.** ``resign()`` sends priority 0 (as the
  RFC says) but keeps the VIPs in phase RESIGNING, re-sending priority 0
  every advertisement interval, until another router has advertised as
  master and a short linger has passed (or a bounded deadline expires); only
  then does it remove the VIPs.
* **Release.** ``release()`` is the same hand-over, ending in BACKUP with the
  router barred from becoming master until ``takeover()``.
* **Address-set grace.** For ``update_grace`` seconds after
  ``update(vips=...)`` a router accepts adverts carrying either the new or
  the previous address set, and for the first half of it a master keeps
  advertising the previous set (while holding the new one), so members applying the same change a moment
  apart do not drop each other's adverts and elect two masters.
* A master answers a lower-priority advert with a fresh announcement and an
  immediate advert of its own (keepalived sends the advert too), so a
  wrongly promoted router backs off at once and neighbours that followed
  its announcement come back.
* A preempted master keeps its VIPs for one linger (without announcing)
  before removing them, so neighbours still pointing at it lose nothing.
* **Link state is an input.** ``link_down()`` puts the router in FAULT at
  once (a master sends priority 0 where it still can and drops its VIPs);
  ``link_up()`` rejoins as backup. After sends failed and work again, a
  holder re-adds and re-announces its VIPs (Linux flushed IPv6 with the link).
* **Inconsistent adverts are dropped** (see ``docs/native-vrrp.md``, threat
  model): a member advertising a priority placement never gives it, an
  advert from our own identity, and a priority-0 resignation from a source
  that keeps advertising at full priority.
* Every transition carries a typed :class:`TransitionCause`.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from vipcore.core.model import FailoverPhases, IPAddress, State, TransitionCause
from vipcore_native_vrrp.protocol.actions import (
    Action,
    AddVips,
    Announce,
    Dropped,
    RemoveVips,
    Send,
    StateChanged,
)
from vipcore_native_vrrp.protocol.packet import TTL, Advertisement, PacketError, decode, encode
from vipcore_native_vrrp.protocol.router_config import (
    Member,
    RouterConfig,
    master_down_interval,
    rank_delay,
    rank_step,
    skew_time,
)

__all__ = [
    "Action", "AddVips", "Announce", "Dropped", "RemoveVips", "Send", "StateChanged",
    "RouterConfig", "master_down_interval", "skew_time",
    "Phase", "Event", "TRANSITIONS", "TransitionError", "Router", "RECEIVE_REASONS", "followers",
]

#: Priority of an address owner (RFC 5798): master at once.
OWNER_PRIORITY = 255
#: Priority a resigning master sends.
RESIGN_PRIORITY = 0


class Phase(enum.Enum):
    """The router's phase: RFC 5798's states plus the two hand-over phases."""

    INIT = "init"
    BACKUP = "backup"
    MASTER = "master"
    #: Sent priority 0, still holds the VIPs, ends in STOPPED.
    RESIGNING = "resigning"
    #: Sent priority 0, still holds the VIPs, ends in BACKUP (released).
    RELEASING = "releasing"
    #: The interface is gone, down or without carrier: no adverts, no VIPs.
    FAULT = "fault"
    STOPPED = "stopped"

    @property
    def state(self) -> State:
        """The state reported to vipcore: a hand-over phase still holds, so MASTER."""
        return _PUBLIC[self]

    @property
    def holds(self) -> bool:
        return self in (Phase.MASTER, Phase.RESIGNING, Phase.RELEASING)


_PUBLIC = {
    Phase.INIT: State.INIT,
    Phase.BACKUP: State.BACKUP,
    Phase.MASTER: State.MASTER,
    Phase.RESIGNING: State.MASTER,
    Phase.RELEASING: State.MASTER,
    Phase.FAULT: State.FAULT,
    Phase.STOPPED: State.STOPPED,
}


class Event(enum.Enum):
    START = "start"
    START_OWNER = "start_owner"
    MASTER_DOWN = "master_down"
    PREEMPTED = "preempted"
    TAKEOVER = "takeover"
    RESIGN = "resign"
    RELEASE = "release"
    HANDED_OVER = "handed_over"
    SHUTDOWN = "shutdown"
    LINK_DOWN = "link_down"
    LINK_UP = "link_up"


P, E = Phase, Event
#: Every allowed phase change. Anything else is a bug.
TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = {
    (P.INIT, E.START): P.BACKUP,
    (P.INIT, E.START_OWNER): P.MASTER,
    (P.INIT, E.RESIGN): P.STOPPED,
    (P.INIT, E.SHUTDOWN): P.STOPPED,
    (P.BACKUP, E.MASTER_DOWN): P.MASTER,
    (P.BACKUP, E.TAKEOVER): P.MASTER,
    (P.BACKUP, E.RESIGN): P.STOPPED,
    (P.BACKUP, E.SHUTDOWN): P.STOPPED,
    (P.MASTER, E.PREEMPTED): P.BACKUP,
    (P.MASTER, E.RESIGN): P.RESIGNING,
    (P.MASTER, E.RELEASE): P.RELEASING,
    (P.MASTER, E.SHUTDOWN): P.STOPPED,
    (P.RESIGNING, E.HANDED_OVER): P.STOPPED,
    (P.RESIGNING, E.SHUTDOWN): P.STOPPED,
    (P.RELEASING, E.HANDED_OVER): P.BACKUP,
    (P.RELEASING, E.TAKEOVER): P.MASTER,
    (P.RELEASING, E.RESIGN): P.RESIGNING,
    (P.RELEASING, E.SHUTDOWN): P.STOPPED,
    (P.INIT, E.LINK_DOWN): P.FAULT,
    (P.BACKUP, E.LINK_DOWN): P.FAULT,
    (P.MASTER, E.LINK_DOWN): P.FAULT,
    (P.RELEASING, E.LINK_DOWN): P.FAULT,
    (P.RESIGNING, E.LINK_DOWN): P.STOPPED,
    (P.FAULT, E.LINK_UP): P.BACKUP,
    (P.FAULT, E.RESIGN): P.STOPPED,
    (P.FAULT, E.SHUTDOWN): P.STOPPED,
}
del P, E


class TransitionError(RuntimeError):
    """A phase change not in :data:`TRANSITIONS` was attempted (a bug)."""


#: Reasons :meth:`Router.receive` can drop for, besides the decoder's.
RECEIVE_REASONS = ("ttl", "vrid", "duplicate_identity", "source", "addr_mismatch", "lower_priority", "not_running",
                   "priority_mismatch", "inconsistent_resign", "auth", "fault")
#: Sources remembered for the resignation check (bounded: peers are a handful).
MAX_TRACKED_SOURCES = 1024


# -- the router -----------------------------------------------------------------


@attrs.define
class Router:
    """One VRRPv3 virtual router. Drive it; carry out what it returns."""

    config: RouterConfig
    phase: Phase = Phase.INIT
    #: Master_Adver_Interval (seconds): learned from the master's adverts.
    master_adver_interval: float = attrs.field(init=False)
    #: The address of the router we last accepted as master (None: unknown / us).
    master: IPAddress | None = None
    #: The priority that master advertised last.
    master_priority: int | None = None
    released: bool = False
    _down_at: float | None = None
    #: Whether the armed Master_Down timer already waited its rank delay (or needs none: liveness ranks itself).
    _down_ranked: bool = False
    #: The last positive priority the master we follow advertised (for the rank delay).
    _master_rank: int | None = None
    _advert_at: float | None = None
    _handover_deadline: float | None = None
    _handover_at: float | None = None
    _handover_to: IPAddress | None = None
    _yield_at: float | None = None
    _reannounced_at: float = float("-inf")
    _trigger_at: float | None = None
    _trigger: str = ""
    #: When the master's failure was detected (Master_Down_Interval ran out, a lost peer, a priority 0):
    #: the end of the failover's detect phase; None while the master is heard.
    _detected_at: float | None = None
    _lost: str = ""
    _last_received: tuple[bytes, IPAddress, IPAddress, Advertisement] | None = attrs.field(default=None, repr=False)
    #: The advert this backup last accepted from the master it follows (bytes, source and destination
    #: objects, the configuration it was judged against, decoded), while nothing else was received and no
    #: phase changed since: the same message again is judged the same, so :meth:`receive` only applies it.
    _steady_heard: tuple[bytes, IPAddress, IPAddress, RouterConfig, Advertisement] | None = \
        attrs.field(default=None, repr=False)
    _sends: dict[tuple[int, tuple[IPAddress, ...]], list[Action]] = attrs.field(factory=dict, repr=False)
    #: The last entry of ``_sends`` used, matched by identity (hashing addresses is Python code, per advert).
    _last_sends: tuple[int, tuple[IPAddress, ...], list[Action]] | None = attrs.field(default=None, repr=False)
    #: The steady master's periodic advert (configured priority and address set, no authentication), built
    #: once per configuration for :meth:`periodic`; None until then and after every :meth:`update`.
    _steady: tuple[Send, ...] | None = attrs.field(default=None, repr=False)
    #: The advertisement interval (seconds) for :meth:`periodic`, read once per configuration.
    _steady_interval: float = attrs.field(default=0.0, repr=False)
    #: Until then a master may still advertise the previous address set (the update grace's first half).
    _steady_from: float = float("-inf")
    _previous_vips: tuple[IPAddress, ...] = ()
    _previous_until: float = float("-inf")
    _previous_priorities: Mapping[IPAddress, int] | None = None
    _priorities_until: float = float("-inf")
    _link_up: bool = True
    _fault_reason: str = ""
    _send_failing: bool = False
    #: Per source: when it last advertised priority 0, and a positive priority.
    _resigned_at: dict[IPAddress, float] = attrs.field(factory=dict, repr=False)
    _advertised_at: dict[IPAddress, float] = attrs.field(factory=dict, repr=False)
    #: Sources that advertised at full priority right after a priority 0.
    _contradicted: set[IPAddress] = attrs.field(factory=set, repr=False)
    #: Newest authenticated timestamp (µs) accepted per source.
    _auth_stamps: dict[IPAddress, int] = attrs.field(factory=dict, repr=False)

    def __attrs_post_init__(self) -> None:
        self.master_adver_interval = self.config.interval

    # -- derived values --------------------------------------------------

    @property
    def state(self) -> State:
        return self.phase.state

    @property
    def holding(self) -> bool:
        """Whether the VIPs are (to be) on the interface: a holding phase, or
        the short linger after being preempted."""
        return self.phase.holds or self._yield_at is not None

    @property
    def skew_time(self) -> float:
        return skew_time(self.config.priority, self.master_adver_interval)

    @property
    def master_down_interval(self) -> float:
        return master_down_interval(self.config.priority, self.master_adver_interval)

    @property
    def rank_delay(self) -> float:
        """The extra Master_Down wait for a backup that is not the best-ranked survivor (0 for it).

        Judged when the timer runs out, with what is known then: the current
        member priorities (a drain re-ranks them) and the last positive
        priority the silent master advertised (a resignation's priority 0
        does not make it a survivor).
        """
        step = self.config.rank_delay
        if step is None:
            step = rank_step(self.master_adver_interval)
        return rank_delay(self.config.priority, self.config.members, self.master, self._master_rank, step)

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        due: float | None = None
        for t in (self._down_at, self._advert_at, self._handover_at, self._handover_deadline, self._yield_at):
            if t is not None and (due is None or t < due):
                due = t
        return due

    # -- inputs ------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Leave INIT (RFC 5798 6.4.1)."""
        if self.phase is not Phase.INIT:
            return []  # already started, or FAULT since before the start (link_up rejoins)
        if self.config.priority == OWNER_PRIORITY:
            return self._transition(Event.START_OWNER, now, "address owner (priority 255)",
                                    TransitionCause.ADDRESS_OWNER)
        self.master_adver_interval = self.config.interval
        actions = self._transition(Event.START, now, "started", TransitionCause.STARTED)
        self._arm_down(now + self.master_down_interval)
        return actions

    def receive(self, data: bytes, src: IPAddress, dst: IPAddress, ttl: int, now: float) -> list[Action]:
        """A VRRP message arrived from ``src`` to ``dst`` with IP TTL / hop limit ``ttl``."""
        if self.phase in (Phase.INIT, Phase.STOPPED):
            return [Dropped("not_running")]
        if self.phase is Phase.FAULT:
            return [Dropped("fault")]
        if ttl != TTL:
            return [Dropped("ttl")]
        auth = self.config.auth
        if auth is not None:
            try:
                data, stamp = auth.open(data, src, dst, now + self.config.wall_offset)
            except PacketError as error:
                return [Dropped(error.reason, src)]
            if stamp <= self._auth_stamps.get(src, -1):
                return [Dropped("auth", src)]  # a replay
            self._auth_stamps[src] = stamp
        heard = self._steady_heard
        if heard is not None:
            if (heard[0] == data and heard[1] is src and heard[2] is dst and heard[3] is self.config
                    and self.phase is Phase.BACKUP and not self.released
                    and len(self._advertised_at) <= MAX_TRACKED_SOURCES):
                # The master's periodic advert, every interval of every group a backup follows: every
                # check below gave "accept" for these bytes from this source under this configuration,
                # and none depends on the time for them (exact address set, a priority the current
                # table allows); only their effects are applied again.
                adv = heard[4]
                self._advertised_at[src] = now
                self.master, self.master_priority = src, adv.priority
                self._master_rank = adv.priority
                self.master_adver_interval = adv.interval
                self._trigger_at, self._trigger = now, "heard"
                self._detected_at = None
                self._arm_down(now + self.master_down_interval)
                return []
            self._steady_heard = None
        last = self._last_received
        if last is not None and last[0] == data and last[1] == src and last[2] == dst:
            adv = last[3]  # a master repeats itself: skip the checksum
        else:
            try:
                adv = decode(data, src, dst)
            except PacketError as error:
                return [Dropped(error.reason)]
            self._last_received = (data, src, dst, adv)
        if adv.vrid != self.config.vrid:
            return [Dropped("vrid")]
        if src == self.config.primary or src in self.config.identity:
            # Multicast loopback is off and unicast never targets us: this is
            # another speaker using our identity. Refuse it (never obeyed) and,
            # as a backup, refuse to take over while it advertises: two
            # masters with one identity would be a silent split brain. A
            # master keeps the VIPs (a forger must not be able to demote it).
            if self.phase is Phase.BACKUP and adv.priority != RESIGN_PRIORITY and not self.released:
                self._arm_down(now + self.master_down_interval)
            return [Dropped("duplicate_identity", src)]
        if not self._source_allowed(src):
            return [Dropped("source")]
        if not self._addresses_match(adv.addresses, now):
            return [Dropped("addr_mismatch")]
        verdict = self._consistency(adv.priority, src, now)
        if verdict is not None:
            return [Dropped(verdict, src)]
        if self.phase is Phase.BACKUP:
            actions = self._backup_receive(adv, src, now)
            if (not actions and self._trigger == "heard" and self._trigger_at == now and self.master is src
                    and not self.released and adv.priority != RESIGN_PRIORITY and adv.addresses == self.config.vips
                    and self._current_table_allows(src, adv.priority)):
                self._steady_heard = (data, src, dst, self.config, adv)
            return actions
        if self.phase is Phase.MASTER:
            return self._master_receive(adv, src, now)
        return self._handover_receive(adv, src, now)

    @property
    def advert_at(self) -> float | None:
        """When the next periodic advert is due (a master's, or a resigning one's), or None."""
        return self._advert_at

    def handle_timer(self, now: float, advance: float = 0.0) -> list[Action]:
        """Fire whatever timers are due at ``now`` (early calls do nothing).

        ``advance``: a periodic advert due by ``now + advance`` goes out now,
        and the next one an interval after ``now`` (the caller batches
        adverts; sending one early is safe, a backup only restarts its
        Master_Down timer sooner). Every other timer fires only when due.
        """
        actions: list[Action] = []
        if self._yield_at is not None and now >= self._yield_at:
            self._yield_at = None
            actions.append(RemoveVips(self.config.vips))
        if self.phase is Phase.BACKUP and self._down_at is not None and now >= self._down_at \
                and not self._down_ranked:
            # RFC 5798's wait is over; a backup that is not the best-ranked survivor waits its rank delay more.
            self._down_ranked = True
            if self._detected_at is None:
                self._detected_at = now
            extra = self.rank_delay
            if extra > 0:
                self._down_at += extra
                return actions
        if self.phase is Phase.BACKUP and self._down_at is not None and now >= self._down_at:
            self._down_at = None
            if self._trigger == "resigned":
                reason, cause = f"master {self.master} resigned (priority 0)", TransitionCause.PEER_RESIGNED
            elif self._trigger == "peer_lost":
                reason, cause = f"master {self.master} unreachable: {self._lost}", TransitionCause.PEER_LOST
            else:
                reason = f"master down: no advert for {self.master_down_interval:.3f}s"
                cause = TransitionCause.MASTER_DOWN
            actions += self._transition(Event.MASTER_DOWN, now, reason, cause)
        elif self.phase in (Phase.RESIGNING, Phase.RELEASING):
            if self._handover_at is not None and now >= self._handover_at:
                actions += self._transition(Event.HANDED_OVER, now, f"handed over to {self._handover_to}",
                                            TransitionCause.HANDED_OVER)
            elif self._handover_deadline is not None and now >= self._handover_deadline:
                actions += self._transition(
                    Event.HANDED_OVER, now, f"no new master advertised within {self.resign_timeout_bound:.3f}s",
                    TransitionCause.HANDED_OVER,
                )
            elif self._advert_at is not None and now + advance >= self._advert_at:
                actions += self._advertise(now, RESIGN_PRIORITY)
                self._advert_at = now + self.config.interval
        elif self.phase is Phase.MASTER and self._advert_at is not None and now + advance >= self._advert_at:
            actions += self._advertise(now)
            self._advert_at = now + self.config.interval
        return actions

    def periodic(self, now: float, advance: float = 0.0) -> tuple[Send, ...] | None:
        """A master's advert timer in the steady state, without action objects: the sends, or None.

        The same decision as :meth:`handle_timer` (same ``now`` and ``advance``)
        where that would return only the periodic advert: the router is MASTER,
        its advert is due by ``now + advance``, no other timer is armed, its last
        send did not fail, no authentication (each advert is sealed anew) and
        not in the first half of an address-set grace. Then it returns the
        advert's cached :class:`Send` objects (the same tuple every time until
        the configuration changes: the caller must not keep or change it) and
        the next advert is one interval after ``now`` (:attr:`advert_at`, which
        is then :meth:`next_timer`). The caller sends them in order and reports
        each failure to :meth:`sent`. Otherwise it returns None and changes
        nothing: call :meth:`handle_timer`.
        """
        at = self._advert_at
        if (at is None or now + advance < at or self.phase is not Phase.MASTER or self._send_failing
                or self._down_at is not None or self._yield_at is not None or now < self._steady_from):
            return None
        sends = self._steady
        if sends is None:
            if self.config.auth is not None:
                return None
            sends = self._steady = tuple(s for s in self._advertise(now) if type(s) is Send)
            self._steady_interval = self.config.interval
        self._advert_at = now + self._steady_interval
        return sends

    def update(
        self,
        now: float,
        *,
        priority: int | None = None,
        vips: Iterable[IPAddress] | None = None,
        preempt: bool | None = None,
        sources: frozenset[IPAddress] | None = None,
        destinations: Iterable[IPAddress] | None = None,
        interval_cs: int | None = None,
        peer_priorities: Mapping[IPAddress, int] | None = None,
        identity: frozenset[IPAddress] | None = None,
        primary: IPAddress | None = None,
        members: Iterable[Member | int] | None = None,
    ) -> list[Action]:
        """Apply a configuration change without an election when possible."""
        old = self.config
        changes: dict[str, Any] = {}
        if priority is not None:
            changes["priority"] = priority
        if vips is not None:
            changes["vips"] = tuple(vips)
        if preempt is not None:
            changes["preempt"] = preempt
        if sources is not None:
            changes["sources"] = sources
        if destinations is not None:
            changes["destinations"] = tuple(destinations)
        if interval_cs is not None:
            changes["interval_cs"] = interval_cs
        if peer_priorities is not None:
            changes["peer_priorities"] = dict(peer_priorities)
        if identity is not None:
            changes["identity"] = identity
        if primary is not None:
            changes["primary"] = primary  # a re-created interface has a new link-local address
        if members is not None:
            changes["members"] = members
        self.config = attrs.evolve(old, **changes)
        if old.peer_priorities is not None and old.peer_priorities != self.config.peer_priorities:
            # Members apply a placement change a moment apart: accept what
            # they advertised before it for the same grace as the address set.
            self._previous_priorities = old.peer_priorities
            self._priorities_until = now + self.config.update_grace
        self._sends.clear()
        self._last_sends = None
        self._steady = None
        if self.phase is Phase.BACKUP:
            self._encoded(self.config.priority, self.config.vips)  # as on entering BACKUP
        actions: list[Action] = []
        old_set, new_set = frozenset(old.vips), frozenset(self.config.vips)
        if old_set != new_set:
            if now >= self._previous_until:
                self._previous_vips = old.vips
            self._previous_until = now + self.config.update_grace
            self._steady_from = self._previous_until - self.config.update_grace / 2
            if self.holding:
                removed = tuple(v for v in old.vips if v not in new_set)
                added = tuple(v for v in self.config.vips if v not in old_set)
                if removed:
                    actions.append(RemoveVips(removed))
                if added:
                    actions += [AddVips(added), Announce(added)]
        if self.phase is Phase.MASTER and (old_set != new_set or old.priority != self.config.priority):
            # Tell the backups at once: new address set, or a new priority to compare.
            actions += self._advertise(now)
            self._advert_at = now + self.config.interval
        return actions

    def resign(self, now: float) -> list[Action]:
        """Graceful stop: hand over make-before-break, then STOPPED."""
        if self.phase is Phase.STOPPED or self.phase is Phase.RESIGNING:
            return []
        return self._transition(Event.RESIGN, now, "graceful stop", TransitionCause.STOPPED)

    def shutdown(self, now: float) -> list[Action]:
        """Immediate stop: a master sends priority 0 and drops its VIPs at once."""
        if self.phase is Phase.STOPPED:
            return []
        return self._transition(Event.SHUTDOWN, now, "stopped", TransitionCause.STOPPED)

    def release(self, now: float, reason: str) -> list[Action]:
        """Stop holding but stay a member; never become master until :meth:`takeover`."""
        self.released = True
        if self.phase is Phase.MASTER:
            return self._transition(Event.RELEASE, now, f"released: {reason}", TransitionCause.RELEASED)
        if self.phase is Phase.BACKUP:
            self._down_at = None
        return []

    def outranks_master(self) -> bool:
        """Whether we would win against the master we last heard (or heard none)."""
        if self.master is None or self.master_priority is None or self.master_priority == RESIGN_PRIORITY:
            return True
        if self.master_priority != self.config.priority:
            return self.master_priority < self.config.priority
        return _address_key(self.master) < _address_key(self.config.primary)

    def takeover(self, now: float, reason: str, cause: TransitionCause = TransitionCause.TAKEOVER) -> list[Action]:
        """Undo a release and become master now (the election may take it back)."""
        self.released = False
        if self.phase in (Phase.BACKUP, Phase.RELEASING):
            self._trigger_at, self._trigger = now, "takeover"
            return self._transition(Event.TAKEOVER, now, f"takeover: {reason}", cause)
        return []

    def rejoin(self, now: float, reason: str) -> list[Action]:
        """Undo a release: back into the election, not master of everything at once.

        A released router that still holds (RELEASING, nobody took over yet)
        resumes as master. A released backup takes over only where it would
        win the election anyway: with preemption, when it outranks the master
        it hears (make-before-break: it adds and announces the VIPs before
        its advert makes that master yield). Otherwise it stays backup with
        its Master_Down timer armed, like any member.
        """
        if not self.released:
            return []
        self.released = False
        if self.phase is Phase.RELEASING:
            if self._handover_to is None:
                self._trigger_at, self._trigger = now, "takeover"
                return self._transition(Event.TAKEOVER, now, f"rejoined: {reason}", TransitionCause.TAKEOVER)
            return []  # a new master took over: finish handing over, then back up it as usual
        if self.phase is not Phase.BACKUP:
            return []
        heard = self.master is not None and self.master_priority not in (None, RESIGN_PRIORITY)
        if heard and self.config.preempt and self.outranks_master():
            self._trigger_at, self._trigger = now, "takeover"
            return self._transition(Event.TAKEOVER, now, f"rejoined: {reason}, outranks {self.master}",
                                    TransitionCause.PREEMPTED)
        self._arm_down(now + self.master_down_interval)
        return []

    def follow(self, now: float, sibling: str) -> list[Action]:
        """Become master with the other family of the group (see :func:`followers`)."""
        return self.takeover(now, f"sync with {sibling} (became master)", TransitionCause.SYNC)

    def link_down(self, now: float, reason: str, cause: TransitionCause = TransitionCause.LINK_DOWN) -> list[Action]:
        """The interface went away, went down or lost carrier (or is otherwise unusable): FAULT at once.

        A holder sends priority 0 (it may still get out) so the next router
        takes over after Skew_Time, and drops its VIPs. Already in FAULT, a
        new reason is reported as a FAULT -> FAULT change, so status says
        why the router still waits.
        """
        self._link_up = False
        if self.phase is Phase.STOPPED:
            return []
        if self.phase is Phase.FAULT:
            if reason == self._fault_reason:
                return []
            self._fault_reason = reason
            return [StateChanged(State.FAULT, State.FAULT, reason, None, cause)]
        self._fault_reason = reason
        return self._transition(Event.LINK_DOWN, now, reason, cause)

    def link_up(self, now: float, reason: str) -> list[Action]:
        """The interface is back: rejoin as backup (the election decides the rest)."""
        self._link_up = True
        if self.phase is not Phase.FAULT:
            return []
        self.master = self.master_priority = self._master_rank = None
        self.master_adver_interval = self.config.interval
        return self._transition(Event.LINK_UP, now, reason, TransitionCause.LINK_UP)

    def sent(self, ok: bool, now: float) -> list[Action]:
        """The outcome of carrying out a :class:`Send`.

        When sending works again after failures, the link was down meanwhile:
        Linux flushed our IPv6 VIPs with it and neighbours may have moved on,
        so a holder puts its VIPs back and announces them.
        """
        if not ok:
            self._send_failing = True
            return []
        if not self._send_failing:
            return []
        self._send_failing = False
        if not self.phase.holds:
            return []
        vips = self.config.vips
        return [AddVips(vips), Announce(vips)] if self.phase is Phase.MASTER else [AddVips(vips)]

    def wants(self, action: Action) -> bool:
        """Whether an action returned earlier still matches the router's state.

        A caller that queues address work behind netlink round trips asks
        before carrying each action out. Under churn a router can flip several
        times while work is queued; every flip queued its own opposite action,
        so work the router no longer wants (adding VIPs it has given up,
        announcing as a backup, an advert from a router that is backup now) is
        skipped instead of feeding the churn. Address changes are idempotent,
        so the last wanted action decides the result.
        """
        if isinstance(action, AddVips):
            return self.holding
        if isinstance(action, Announce):
            return self.phase is Phase.MASTER
        if isinstance(action, RemoveVips):
            return not self.holding or not set(action.vips) <= set(self.config.vips)
        if isinstance(action, Send):
            # FAULT and STOPPED queue only the priority 0 they decided on entering.
            return self.phase is not Phase.BACKUP
        return True

    def peer_lost(self, now: float, delay: float, what: str, since: float | None = None) -> list[Action]:
        """Node-level liveness says the master's node is gone: act as Master_Down_Interval would, ``delay``
        from now (0 for the best-ranked backup, more for each one ranked after it, so exactly one takes
        over). A backup that hears a master again before then resets its timer as usual. ``since``: when
        the node was last heard (the failover is counted from then, as after Master_Down)."""
        if self.phase is not Phase.BACKUP or self.released:
            return []
        at = now + max(0.0, delay)
        if self._down_at is None or at < self._down_at:
            self._arm_down(at, ranked=True)  # the caller's delay already orders the backups by rank
            self._trigger_at = min(since, now) if since is not None else now
            self._trigger, self._lost = "peer_lost", what
            self._detected_at = now
        return []

    def _arm_down(self, at: float, ranked: bool = False) -> None:
        """Arm the Master_Down timer at ``at`` (RFC 5798's wait); the rank delay is added when it runs out."""
        self._down_at = at
        self._down_ranked = ranked

    # -- RFC 5798 6.4.2 / 6.4.3 ------------------------------------------------

    def _backup_receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        if adv.priority == RESIGN_PRIORITY:
            if src != self.master:
                self._master_rank = None
            self.master, self.master_priority = src, adv.priority
            if not self.released:
                self._arm_down(now + self.skew_time)
                self._trigger_at, self._trigger = now, "resigned"
                self._detected_at = now  # a resignation is its own detection
            return []
        if not self.config.preempt or adv.priority >= self.config.priority or self.released:
            # A released router defers to any master: remember it, so that
            # rejoin() knows whether it outranks the master it returns to.
            self.master, self.master_priority = src, adv.priority
            self._master_rank = adv.priority
            self.master_adver_interval = adv.interval
            self._trigger_at, self._trigger = now, "heard"
            self._detected_at = None
            if not self.released:
                self._arm_down(now + self.master_down_interval)
            return []
        if src == self.master:
            # Our master now advertises less than us (a drain re-ranked it): not
            # obeyed (RFC: we preempt it), but its new rank is what the rank delay
            # must leave out, not the rank it had (another member has that now).
            self.master_priority = self._master_rank = adv.priority
        return [Dropped("lower_priority")]

    def _master_receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        if adv.priority == RESIGN_PRIORITY:
            self._advert_at = now + self.config.interval
            return self._advertise(now)
        if adv.priority > self.config.priority or (
            adv.priority == self.config.priority and _address_key(src) > _address_key(self.config.primary)
        ):
            self.master, self.master_priority = src, adv.priority
            self._master_rank = adv.priority
            self.master_adver_interval = adv.interval
            self._trigger_at, self._trigger = now, "heard"
            return self._transition(Event.PREEMPTED, now, f"preempted by {src} (priority {adv.priority})",
                                    TransitionCause.PREEMPTED)
        # A lower-priority router thinks it is master: it has announced the
        # VIPs too, so win the neighbours back first, then make it back off.
        # At most once per interval: announcing costs far more than an advert.
        self._advert_at = now + self.config.interval
        actions: list[Action] = [Dropped("lower_priority")]
        if now - self._reannounced_at >= self.config.interval:
            self._reannounced_at = now
            actions.append(Announce(self.config.vips))
        return actions + self._advertise(now)

    def _handover_receive(self, adv: Advertisement, src: IPAddress, now: float) -> list[Action]:
        if adv.priority != RESIGN_PRIORITY and self._handover_at is None:
            self._handover_to = src
            self._handover_at = now + self._linger
        return []

    # -- transitions -------------------------------------------------------------

    def _transition(self, event: Event, now: float, reason: str, cause: TransitionCause) -> list[Action]:
        old = self.phase
        try:
            new = TRANSITIONS[(old, event)]
        except KeyError:
            raise TransitionError(f"no transition from {old.value} on {event.value}") from None
        self.phase = new
        self._steady_heard = None
        actions: list[Action] = []
        failover: float | None = None
        phases: FailoverPhases | None = None
        # Leaving a phase: cancel its timers.
        self._down_at = self._advert_at = None
        if old in (Phase.RESIGNING, Phase.RELEASING):
            self._handover_at = self._handover_deadline = self._handover_to = None
        # Entering a phase: its effects, in the order the caller must apply them.
        if self._yield_at is not None and new is not Phase.BACKUP:
            self._yield_at = None
            if new in (Phase.STOPPED, Phase.FAULT):
                actions.append(RemoveVips(self.config.vips))
        if new is Phase.MASTER:
            self.master = self.master_priority = self._master_rank = None
            if not old.holds:
                if cause in (TransitionCause.MASTER_DOWN, TransitionCause.PEER_LOST):
                    # The master is gone: nobody lets go on our advert, so it goes
                    # first (RFC 5798 6.4.2's order) and silences the other backups
                    # at once, instead of waiting behind address work — which, with
                    # many groups failing over together on a loaded node, took
                    # longer than the runner-up's rank delay (two masters). (Inside
                    # the liveness coordinator's pass the driver holds it until that
                    # pass has added and announced every group's VIPs, synchronously:
                    # milliseconds, never behind queued work.)
                    actions += self._advertise(now)
                    actions += [AddVips(self.config.vips), Announce(self.config.vips)]
                else:
                    # Make-before-break: VIPs up and announced before our advert
                    # makes a resigning (or preempted) master let go of them.
                    actions += [AddVips(self.config.vips), Announce(self.config.vips)]
                    actions += self._advertise(now)
                if self._trigger_at is not None and event is not Event.START_OWNER:
                    failover = max(0.0, now - self._trigger_at)
                    if event is Event.MASTER_DOWN and self._detected_at is not None:
                        detected = min(max(self._detected_at, self._trigger_at), now)
                        phases = FailoverPhases(detect=detected - self._trigger_at, elect=now - detected)
            else:
                actions.append(Announce(self.config.vips))
                actions += self._advertise(now)
            self._advert_at = now + self.config.interval
        elif new is Phase.BACKUP:
            if event is Event.PREEMPTED:
                # Make-before-break here too: neighbours may still send to us
                # (our announcement can have come after the new master's), so
                # keep answering for one linger while the new master announces.
                self._yield_at = now + self._linger
            elif old.holds:
                actions.append(RemoveVips(self.config.vips))
            if not self.released:
                self._arm_down(now + self.master_down_interval)
            # The advert a takeover starts with, encoded now: when a node dies, its groups' backups take
            # over in one pass of the loop, and each then only looks it up (~10 µs saved per router).
            self._encoded(self.config.priority, self.config.vips)
        elif new in (Phase.RESIGNING, Phase.RELEASING):
            actions += self._advertise(now, RESIGN_PRIORITY)
            self._advert_at = now + self.config.interval
            self._handover_deadline = now + self.resign_timeout_bound
        elif new in (Phase.STOPPED, Phase.FAULT):
            if old is Phase.MASTER:
                actions += self._advertise(now, RESIGN_PRIORITY)
            if old.holds:
                actions.append(RemoveVips(self.config.vips))
        if new.state is not old.state:
            actions.append(StateChanged(old.state, new.state, reason, failover, cause, phases))
        if new is not Phase.BACKUP:
            self._trigger_at, self._trigger, self._detected_at = None, "", None
        return actions

    def _advertise(self, now: float, priority: int | None = None) -> list[Action]:
        # For the first half of the update grace a master keeps advertising the
        # previous set: members that have not applied the change yet still
        # accept it, and members that applied it up to half a grace earlier
        # still accept it as their previous set.
        grace = now < self._previous_until - self.config.update_grace / 2 and self._previous_vips
        addresses = self._previous_vips if grace else self.config.vips
        prio = self.config.priority if priority is None else priority
        last = self._last_sends
        if last is not None and last[0] == prio and last[1] is addresses:
            sends = last[2]
        else:
            sends = self._encoded(prio, addresses)
            self._last_sends = (prio, addresses, sends)
        auth = self.config.auth
        if auth is not None:
            wall = now + self.config.wall_offset
            return [Send(auth.seal(s.data, s.src, s.dst, wall), s.src, s.dst) for s in sends
                    if isinstance(s, Send)]
        return list(sends)

    def _encoded(self, prio: int, addresses: tuple[IPAddress, ...]) -> list[Action]:
        """The adverts of ``prio`` and ``addresses``, one per destination. Adverts repeat byte for byte:
        each kind is encoded (and checksummed) once."""
        key = (prio, addresses)
        cached = self._sends.get(key)
        if cached is None:
            adv = Advertisement(vrid=self.config.vrid, priority=prio, interval_cs=self.config.interval_cs,
                                addresses=addresses)
            src = self.config.primary
            cached = self._sends[key] = [Send(encode(adv, src, dst), src, dst) for dst in self.config.destinations]
        return cached

    # -- checks ---------------------------------------------------------------

    def _source_allowed(self, src: IPAddress) -> bool:
        if self.config.sources is None:
            return True
        if src in self.config.sources:
            return True
        return self.config.link_local_sources and src.is_link_local

    def _consistency(self, priority: int, src: IPAddress, now: float) -> str | None:
        """A drop reason if the advert contradicts what ``src`` can send, else None."""
        if len(self._advertised_at) > MAX_TRACKED_SOURCES:  # only without the source check
            self._advertised_at.clear()
            self._resigned_at.clear()
            self._contradicted.clear()
        # A genuine resignation follows the source's last full-priority advert;
        # a forged one comes while the source keeps advertising. Answer each
        # priority 0 only if the source has been quiet for a Master_Down_Interval
        # since it was caught contradicting itself.
        window = self.master_down_interval
        if priority == RESIGN_PRIORITY:
            if src in self._contradicted and now - self._advertised_at.get(src, float("-inf")) < window:
                return "inconsistent_resign"
            self._resigned_at[src] = now
        else:
            self._advertised_at[src] = now
            resigned = self._resigned_at.pop(src, None)
            if resigned is not None and now - resigned < window:
                self._contradicted.add(src)
        if priority == RESIGN_PRIORITY or not self._priority_checked(src):
            return None
        if priority in self._allowed_priorities(src, now):
            return None
        return "priority_mismatch"

    def _priority_checked(self, src: IPAddress) -> bool:
        if self.config.peer_priorities is None or src in self.config.relaxed_sources:
            return False
        return not (self.config.relax_link_local and src.is_link_local)

    def _current_table_allows(self, src: IPAddress, priority: int) -> bool:
        """Whether ``priority`` from ``src`` passes the priority check whatever the time (not only
        through the previous placement's grace)."""
        if not self._priority_checked(src):
            return True
        return priority in self._allowed_priorities(src, float("inf"))

    def _allowed_priorities(self, src: IPAddress, now: float) -> set[int]:
        tables = [self.config.peer_priorities or {}]
        if self._previous_priorities is not None and now < self._priorities_until:
            tables.append(self._previous_priorities)
        allowed: set[int] = set()
        for table in tables:
            if src in table:
                allowed.add(table[src])
            elif src.is_link_local and self.config.link_local_sources:
                # IPv6 multicast comes from link-local addresses the core does
                # not know: any member's priority, never one nobody has.
                allowed.update(table.values())
            else:
                # Not a known member (only reachable with check_source off): no claim to check.
                allowed.update(range(1, 256))
        return allowed

    def _addresses_match(self, addresses: tuple[IPAddress, ...], now: float) -> bool:
        if addresses == self.config.vips:
            return True
        received = frozenset(addresses)
        if len(received) != len(addresses):
            return False
        if received == frozenset(self.config.vips):
            return True
        return now < self._previous_until and received == frozenset(self._previous_vips)

    @property
    def resign_timeout_bound(self) -> float:
        if self.config.resign_timeout is not None:
            return self.config.resign_timeout
        return master_down_interval(1, self.config.interval)

    @property
    def _linger(self) -> float:
        if self.config.handover_linger is not None:
            return self.config.handover_linger
        return self.config.interval


def followers(change: StateChanged, siblings: Iterable[Router]) -> list[Router]:
    """The routers of the same group's other family that should follow ``change``.

    Both families get the same priority, so with preemption they elect the
    same node; this keeps them together when timing differs (one family
    fails over first, or preemption is off). A router that became master for
    any cause but a sync pulls each sibling that is a backup, not released,
    and outranks the master it last heard (or heard none). A sibling that
    hears a better master stays put, so the sync never fights the election.
    """
    if change.new is not State.MASTER or change.cause is TransitionCause.SYNC:
        return []
    return [r for r in siblings if r.phase is Phase.BACKUP and not r.released and r.outranks_master()]


def _address_key(address: IPAddress) -> int:
    # RFC 5798: compare primary addresses as unsigned integers (network order).
    return int(ipaddress.ip_address(address))
