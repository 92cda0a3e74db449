"""The Internet checksum (RFC 1071), shared by every packet vipcore builds or checks: VRRP adverts
(native_vrrp's sans-IO protocol) and the unsolicited NAs of the address holder's takeover plans."""

from __future__ import annotations

import struct


def internet_checksum(data: bytes) -> int:
    """The 16-bit one's complement of the one's complement sum of ``data`` (odd lengths padded with a zero
    byte). Over a message whose checksum field holds the right value (pseudo-header included), it is 0."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)
