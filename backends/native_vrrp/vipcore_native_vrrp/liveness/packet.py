"""BFD control packets (RFC 5880 section 4.1), the mandatory section only: encode and decode.

Sans-IO: bytes in, values out. Authentication is not used (the A bit is refused);
the liveness fast path runs between vipcore nodes on one link, where TTL 255 and
the member-source filter already stop off-link and outsider packets (RFC 5881).
"""

from __future__ import annotations

import enum
import struct

import attrs

VERSION = 1
LENGTH = 24
#: RFC 5881: single-hop control packets go to UDP 3784, from a source port in 49152..65535.
PORT = 3784
SOURCE_PORTS = (49152, 65535)
#: RFC 5881 section 5: sent with TTL / hop limit 255; anything else received is dropped.
TTL = 255
_FORMAT = struct.Struct("!BBBBIIIII")

_FLAG_P, _FLAG_F, _FLAG_C, _FLAG_A, _FLAG_D, _FLAG_M = 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
#: The Poll and Final bits in a packet's second byte (a packet with either set is never a plain repeat).
POLL_OR_FINAL = _FLAG_P | _FLAG_F


class SessionState(enum.IntEnum):
    """bfd.SessionState (RFC 5880 section 4.1, Sta)."""

    ADMIN_DOWN = 0
    DOWN = 1
    INIT = 2
    UP = 3


class Diagnostic(enum.IntEnum):
    """The reason for the last change to Down (RFC 5880 section 4.1, Diag)."""

    NONE = 0
    CONTROL_DETECTION_EXPIRED = 1
    ECHO_FAILED = 2
    NEIGHBOR_DOWN = 3
    FORWARDING_RESET = 4
    PATH_DOWN = 5
    CONCATENATED_PATH_DOWN = 6
    ADMIN_DOWN = 7
    REVERSE_CONCATENATED_PATH_DOWN = 8


class PacketError(ValueError):
    """A control packet that RFC 5880 section 6.8.6 says to discard; ``reason`` is a short counter label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


#: Enum members by wire value: a tuple/dict lookup per packet instead of ``EnumType.__call__``.
_STATES = tuple(SessionState)
_DIAGNOSTICS = {int(d): d for d in Diagnostic}

#: Every reason :func:`decode` can give, for drop counters that start at zero.
DECODE_REASONS = ("short", "version", "length", "detect_mult", "multipoint", "my_discriminator",
                  "your_discriminator", "auth", "diagnostic")


@attrs.frozen
class ControlPacket:
    """One BFD control packet. Intervals are in microseconds, as on the wire."""

    state: SessionState
    my_discriminator: int
    your_discriminator: int
    desired_min_tx: int
    required_min_rx: int
    detect_mult: int
    diagnostic: Diagnostic = Diagnostic.NONE
    poll: bool = False
    final: bool = False
    required_min_echo_rx: int = 0


def encode(packet: ControlPacket) -> bytes:
    flags = (_FLAG_P if packet.poll else 0) | (_FLAG_F if packet.final else 0)
    return _FORMAT.pack(
        (VERSION << 5) | packet.diagnostic, (packet.state << 6) | flags, packet.detect_mult, LENGTH,
        packet.my_discriminator, packet.your_discriminator, packet.desired_min_tx, packet.required_min_rx,
        packet.required_min_echo_rx,
    )


def decode(data: bytes) -> ControlPacket:
    """Parse and check one packet (RFC 5880 section 6.8.6, the checks that need no session)."""
    if len(data) < LENGTH:
        raise PacketError("short", f"{len(data)} bytes, a control packet has at least {LENGTH}")
    vers_diag, sta_flags, mult, length, mine, yours, tx, rx, echo = _FORMAT.unpack_from(data)
    if vers_diag >> 5 != VERSION:
        raise PacketError("version", f"version {vers_diag >> 5}, expected {VERSION}")
    if sta_flags & _FLAG_A:
        raise PacketError("auth", "authentication present; vipcore's liveness sessions use none")
    if length < LENGTH or length > len(data):
        raise PacketError("length", f"length field {length} for a {len(data)}-byte payload")
    if mult == 0:
        raise PacketError("detect_mult", "detect multiplier 0")
    if sta_flags & _FLAG_M:
        raise PacketError("multipoint", "multipoint bit set")
    if mine == 0:
        raise PacketError("my_discriminator", "my discriminator 0")
    state = _STATES[sta_flags >> 6]
    if yours == 0 and state not in (SessionState.DOWN, SessionState.ADMIN_DOWN):
        raise PacketError("your_discriminator", f"your discriminator 0 in state {state.name}")
    diagnostic = _DIAGNOSTICS.get(vers_diag & 0x1F)
    if diagnostic is None:
        raise PacketError("diagnostic", f"unknown diagnostic {vers_diag & 0x1F}")
    return ControlPacket(
        state=state, my_discriminator=mine, your_discriminator=yours, desired_min_tx=tx, required_min_rx=rx,
        detect_mult=mult, diagnostic=diagnostic, poll=bool(sta_flags & _FLAG_P), final=bool(sta_flags & _FLAG_F),
        required_min_echo_rx=echo,
    )
