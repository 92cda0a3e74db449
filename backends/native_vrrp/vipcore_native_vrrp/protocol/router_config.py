"""A virtual router's configuration and the RFC 5798 timer formulas."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from vipcore.core.model import Family, IPAddress
from vipcore_native_vrrp.protocol.auth import Authenticator
from vipcore_native_vrrp.protocol.packet import MAX_INTERVAL_CS, address_tuple


def _interval_cs(seconds: float) -> int:
    cs = round(seconds * 100)
    if not 1 <= cs <= MAX_INTERVAL_CS:
        raise ValueError(f"advert interval must be 0.01..{MAX_INTERVAL_CS / 100} s, got {seconds}")
    return cs


@attrs.frozen
class Member:
    """Another member of the group, for the rank delay."""

    priority: int
    addresses: frozenset[IPAddress] = frozenset()


def _members(value: Iterable[Member | int]) -> tuple[Member, ...]:
    return tuple(sorted((m if isinstance(m, Member) else Member(int(m)) for m in value), key=_member_order))


def _member_order(member: Member) -> tuple[int, list[str]]:
    return -member.priority, sorted(str(a) for a in member.addresses)


@attrs.frozen
class RouterConfig:
    """What one virtual router needs to know. Changed only through ``Router.update``."""

    vrid: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(255)))
    family: Family
    #: The source of our adverts and our tie-break address: the interface's
    #: primary IPv4 address or IPv6 link-local address (multicast), or the
    #: node address in the peers' subnet (unicast).
    primary: IPAddress
    vips: tuple[IPAddress, ...] = attrs.field(converter=address_tuple)
    priority: int = attrs.field(validator=attrs.validators.and_(attrs.validators.ge(1), attrs.validators.le(255)))
    #: Our Advertisement_Interval in centiseconds.
    interval_cs: int = 10
    preempt: bool = True
    #: Where adverts go: the multicast group, or each unicast peer.
    destinations: tuple[IPAddress, ...] = ()
    #: Allowed advert sources (member node addresses); None disables the check.
    sources: frozenset[IPAddress] | None = None
    #: Also accept any link-local source (IPv6 multicast: peers send from fe80::).
    link_local_sources: bool = False
    #: Bound on a make-before-break hand-over; None: Master_Down_Interval of a priority-1 router.
    resign_timeout: float | None = None
    #: How long a resigning master keeps its VIPs after the new master's first
    #: advert; None: one advertisement interval.
    handover_linger: float | None = None
    #: How long adverts with the previous address set are accepted after a change.
    update_grace: float = 5.0
    #: The priority each member advertises, by its address (placement is
    #: shared, so every vipcore node knows them). An advert from a member with
    #: another priority is dropped (``priority_mismatch``); a link-local source
    #: (IPv6 multicast) may carry any member's priority. None disables the check.
    peer_priorities: Mapping[IPAddress, int] | None = attrs.field(default=None, hash=False)
    #: Sources whose priority is not checked (keepalived peers with hand-set priorities).
    relaxed_sources: frozenset[IPAddress] = frozenset()
    #: Also relax the check for link-local sources (IPv6 multicast with keepalived peers).
    relax_link_local: bool = False
    #: This node's own addresses: an advert from one of them (or from
    #: ``primary``) comes from a second speaker with our identity.
    identity: frozenset[IPAddress] = frozenset()
    #: Authenticated mode: adverts are sealed and only sealed adverts are accepted.
    auth: Authenticator | None = attrs.field(default=None, eq=False, hash=False)
    #: Wall-clock time minus the ``now`` the router is fed (for auth timestamps).
    wall_offset: float = 0.0
    #: The other members: the priority each advertises (placement is shared)
    #: and its addresses. A backup that is not the best-ranked survivor among
    #: them waits ``rank_delay`` longer per better-ranked survivor (see
    #: :func:`rank_delay`). Empty: no member list, plain RFC 5798 timers.
    #: Plain integers are members whose addresses are unknown.
    members: tuple[Member, ...] = attrs.field(default=(), converter=_members)
    #: Extra Master_Down wait per better-ranked surviving member (seconds).
    #: None: :func:`rank_step` of the master's advert interval (0.1 s at 0.1 s adverts, 0.25 s at 1 s).
    rank_delay: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.ge(0.0)))

    def __attrs_post_init__(self) -> None:
        if not self.vips:
            raise ValueError("a virtual router needs at least one VIP")
        for address in (self.primary, *self.vips, *self.destinations):
            if address.version != self.family:
                raise ValueError(f"{address} is not an IPv{int(self.family)} address")
        if not 1 <= self.interval_cs <= MAX_INTERVAL_CS:
            raise ValueError(f"interval_cs must be 1..{MAX_INTERVAL_CS}, got {self.interval_cs}")

    @classmethod
    def seconds(cls, interval: float) -> int:
        """Centiseconds for an interval in seconds (centisecond resolution)."""
        return _interval_cs(interval)

    @property
    def interval(self) -> float:
        return self.interval_cs / 100.0


def skew_time(priority: int, master_adver_interval: float) -> float:
    """RFC 5798: ((256 - Priority) * Master_Adver_Interval) / 256."""
    return ((256 - priority) * master_adver_interval) / 256


def master_down_interval(priority: int, master_adver_interval: float) -> float:
    """RFC 5798: 3 * Master_Adver_Interval + Skew_Time."""
    return 3 * master_adver_interval + skew_time(priority, master_adver_interval)



#: Ranks beyond this many better-ranked survivors wait no longer (the bound on the extra delay).
MAX_RANK_STEPS = 3
#: Bounds of the default rank step (seconds): at least what a loaded node's timers were seen to
#: run late (40-80 ms), at most a quarter second per rank.
RANK_STEP_MIN, RANK_STEP_MAX = 0.1, 0.25


def rank_step(master_adver_interval: float) -> float:
    """The default rank delay step: a quarter of the advert interval, within 0.1..0.25 s.

    Late timers are scheduling delays, not a fraction of the interval, so the
    step has a floor; at 1 s adverts a busier node's stalls reach further, and
    0.25 s is still less than a tenth of the Master_Down_Interval it adds to.
    """
    return min(max(RANK_STEP_MIN, master_adver_interval / 4), RANK_STEP_MAX)


def rank_delay(
    priority: int, members: Iterable[Member], master: IPAddress | None, master_priority: int | None, step: float
) -> float:
    """The extra wait before a backup of ``priority`` declares the master down.

    RFC 5798 separates backups only by Skew_Time: 6.25 ms per 16 priority
    points at a 0.1 s interval, 62.5 ms at 1 s. A best-ranked backup whose
    timer fires later than that (a loaded node) lets the next one time out
    before the new master's first advert arrives: two masters. So a backup
    waits ``step`` more for every member that outranks it and survives, at
    most :data:`MAX_RANK_STEPS` steps. The silent master is not a survivor:
    it is known by its address (``master``) when that is a member's, else
    (IPv6 multicast comes from link-local addresses) by the last positive
    priority it advertised. By address is what survives a re-ranking that
    members apply a moment apart (a drain: the drained master goes last and
    another member takes its priority). The best-ranked survivor waits
    nothing extra, so the usual failover keeps its time; waiting longer only
    delays this node, which is safe with any RFC 5798 peer.
    """
    members = tuple(members)
    known = master is not None and any(master in m.addresses for m in members)
    better = 0
    for member in members:
        if member.priority <= priority:
            continue
        if (master in member.addresses) if known else (member.priority == master_priority):
            continue
        better += 1
    return min(better, MAX_RANK_STEPS) * step
