"""What a :class:`~vipcore_native_vrrp.protocol.machine.Router` asks its caller to do.

Each input of the router returns a list of these, to be carried out in order.
"""

from __future__ import annotations

import attrs

from vipcore.core.model import FailoverPhases, IPAddress, State, TransitionCause


@attrs.frozen
class Send:
    """Send ``data`` (a VRRP message, checksum included) from ``src`` to ``dst``."""

    data: bytes
    src: IPAddress
    dst: IPAddress


@attrs.frozen
class AddVips:
    vips: tuple[IPAddress, ...]


@attrs.frozen
class RemoveVips:
    vips: tuple[IPAddress, ...]


@attrs.frozen
class Announce:
    """Start announcing ``vips`` (gratuitous ARP / unsolicited NA), replacing any earlier schedule."""

    vips: tuple[IPAddress, ...]


@attrs.frozen
class StateChanged:
    old: State
    new: State
    reason: str
    #: For transitions into MASTER: seconds since the trigger (the last advert
    #: heard from the old master, or its priority-0 advert). None if unknown.
    failover_seconds: float | None = None
    #: Why, typed: what metrics and the family sync decide on (``reason`` is for people).
    cause: TransitionCause | None = None
    #: For a takeover after the master failed (Master_Down, a lost peer, a resignation): ``detect`` and
    #: ``elect`` as the machine decided them; the driver adds ``address`` and ``announce`` (its I/O).
    phases: FailoverPhases | None = None


@attrs.frozen
class Dropped:
    """A received message was discarded; ``reason`` is a counter label.

    ``source`` is the sender for the reasons that say something about a peer
    (``duplicate_identity``, ``priority_mismatch``, ``inconsistent_resign``), so
    the caller can name it in a log line.
    """

    reason: str
    source: IPAddress | None = attrs.field(default=None, eq=False)


Action = Send | AddVips | RemoveVips | Announce | StateChanged | Dropped
