"""Authenticated adverts between vipcore nodes (opt-in, sans-IO).

VRRPv3 has no authentication (RFC 5798 section 9 removed it). In this mode
every advert carries a 24-byte trailer after the VRRP message: an 8-byte
wall-clock timestamp in microseconds and the first 16 bytes of
HMAC-SHA256(key, label | source | destination | timestamp | message). The
receiver strips and checks it before decoding, so a forged or replayed
advert never reaches the state machine. keepalived drops these adverts (the
length no longer matches the address count): interop is off in this mode.

Replay: a timestamp must be within ``window`` seconds of the receiver's
clock (nodes run NTP) and newer than the last one accepted from that
source, per router.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import attrs

from vipcore.core.model import IPAddress
from vipcore_native_vrrp.protocol.packet import PacketError

LABEL = b"vipcore-vrrp-auth-v1"
STAMP = struct.Struct("!Q")
TAG_LENGTH = 16
TRAILER_LENGTH = STAMP.size + TAG_LENGTH
#: Shortest key accepted (bytes): 128 bits.
MIN_KEY_LENGTH = 16
#: Default bound on clock difference and replay age (seconds).
DEFAULT_WINDOW = 5.0


@attrs.frozen
class Authenticator:
    """Seals and opens adverts with one shared key."""

    key: bytes = attrs.field(repr=False)
    window: float = DEFAULT_WINDOW

    def __attrs_post_init__(self) -> None:
        if len(self.key) < MIN_KEY_LENGTH:
            raise ValueError(f"the key must be at least {MIN_KEY_LENGTH} bytes, got {len(self.key)}")

    def _tag(self, src: IPAddress, dst: IPAddress, stamp: bytes, message: bytes) -> bytes:
        mac = hmac.new(self.key, LABEL + src.packed + dst.packed + stamp + message, hashlib.sha256)
        return mac.digest()[:TAG_LENGTH]

    def seal(self, message: bytes, src: IPAddress, dst: IPAddress, wall: float) -> bytes:
        """``message`` with its trailer, stamped at wall-clock time ``wall``."""
        stamp = STAMP.pack(int(wall * 1_000_000))
        return message + stamp + self._tag(src, dst, stamp, message)

    def open(self, data: bytes, src: IPAddress, dst: IPAddress, wall: float) -> tuple[bytes, int]:
        """The VRRP message and its timestamp (µs); :class:`PacketError` ``auth`` if forged, stale or unsigned."""
        if len(data) <= TRAILER_LENGTH:
            raise PacketError("auth", "no authentication trailer")
        message, stamp, tag = data[:-TRAILER_LENGTH], data[-TRAILER_LENGTH:-TAG_LENGTH], data[-TAG_LENGTH:]
        if not hmac.compare_digest(tag, self._tag(src, dst, stamp, message)):
            raise PacketError("auth", "bad or missing authentication tag")
        (micros,) = STAMP.unpack(stamp)
        if abs(micros / 1_000_000 - wall) > self.window:
            raise PacketError("auth", f"timestamp {micros / 1_000_000:.3f} is more than {self.window}s off")
        return message, micros
