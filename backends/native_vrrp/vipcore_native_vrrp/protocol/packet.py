"""The VRRPv3 advertisement codec (RFC 5798 section 5.2), IPv4 and IPv6.

Wire format, after the IP header::

     0                   1                   2                   3
    |Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
    |(rsvd) |     Max Adver Int     |          Checksum             |
    |                      IPvX Address(es)                         |

The checksum is the Internet checksum over an IPv4 or IPv6 pseudo-header
followed by the VRRP message, so :func:`encode` and :func:`decode` need the
source and destination addresses of the IP packet.

:func:`decode` raises only :class:`PacketError`, whose ``reason`` is a short
label suitable as a counter label (``"short"``, ``"version"``, ...).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable

import attrs

from vipcore.core.checksum import internet_checksum
from vipcore.core.model import Family, IPAddress

#: IP protocol number of VRRP.
PROTOCOL = 112
VERSION = 3
TYPE_ADVERTISEMENT = 1
HEADER = struct.Struct("!BBBBHH")
#: The 12-bit Max Adver Int field, in centiseconds.
MAX_INTERVAL_CS = 0x0FFF
#: Multicast destinations (RFC 5798 section 5.1.1.2 and 5.1.2.2).
MULTICAST: dict[Family, IPAddress] = {
    Family.IPV4: ipaddress.IPv4Address("224.0.0.18"),
    Family.IPV6: ipaddress.IPv6Address("ff02::12"),
}
#: The TTL / hop limit every advertisement is sent with and must arrive with.
TTL = 255

#: Every reason :func:`decode` can give, for pre-declaring counters.
DECODE_REASONS = ("short", "version", "type", "addr_count", "length", "interval", "checksum", "family")


class PacketError(ValueError):
    """A received message is not a valid VRRPv3 advertisement."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


def address_tuple(values: Iterable[IPAddress]) -> tuple[IPAddress, ...]:
    """attrs converter: any iterable of addresses as a tuple."""
    return tuple(values)


def _positive_cs(instance: object, attribute: "attrs.Attribute[int]", value: int) -> None:
    if not 1 <= value <= MAX_INTERVAL_CS:
        raise ValueError(f"{attribute.name} must be 1..{MAX_INTERVAL_CS} centiseconds, got {value}")


def _byte(instance: object, attribute: "attrs.Attribute[int]", value: int) -> None:
    if not 0 <= value <= 255:
        raise ValueError(f"{attribute.name} must be 0..255, got {value}")


@attrs.frozen
class Advertisement:
    """One VRRPv3 advertisement, decoded."""

    vrid: int = attrs.field(validator=_byte)
    priority: int = attrs.field(validator=_byte)
    #: Max Advertise Interval in centiseconds (1..4095).
    interval_cs: int = attrs.field(validator=_positive_cs)
    addresses: tuple[IPAddress, ...] = attrs.field(converter=address_tuple)

    def __attrs_post_init__(self) -> None:
        if not 1 <= len(self.addresses) <= 255:
            raise ValueError(f"an advertisement carries 1..255 addresses, got {len(self.addresses)}")
        if len({a.version for a in self.addresses}) != 1:
            raise ValueError("an advertisement carries addresses of one family only")

    @property
    def family(self) -> Family:
        return Family(self.addresses[0].version)

    @property
    def interval(self) -> float:
        """The advertised interval in seconds."""
        return self.interval_cs / 100.0


def _pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    if src.version != dst.version:
        raise PacketError("family", f"source {src} and destination {dst} differ in family")
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, PROTOCOL, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, PROTOCOL)


def encode(adv: Advertisement, src: IPAddress, dst: IPAddress) -> bytes:
    """The advertisement as sent from ``src`` to ``dst`` (checksum filled in)."""
    if adv.family != src.version:
        raise ValueError(f"advertisement of IPv{adv.family} sent from {src}")
    body = b"".join(a.packed for a in adv.addresses)
    header = HEADER.pack(
        (VERSION << 4) | TYPE_ADVERTISEMENT, adv.vrid, adv.priority, len(adv.addresses), adv.interval_cs, 0
    )
    message = header + body
    csum = internet_checksum(_pseudo_header(src, dst, len(message)) + message)
    return message[:6] + struct.pack("!H", csum) + message[8:]


def peek_vrid(data: bytes) -> int | None:
    """The VRID byte of a message, without validating anything (for dispatch)."""
    return data[1] if len(data) >= 2 else None


def decode(data: bytes, src: IPAddress, dst: IPAddress) -> Advertisement:
    """Validate and decode a VRRP message received from ``src`` to ``dst``.

    Raises :class:`PacketError` (and nothing else) when the message is not a
    valid VRRPv3 advertisement for the family of ``src``.
    """
    if src.version != dst.version:
        raise PacketError("family", "source and destination differ in family")
    if len(data) < HEADER.size:
        raise PacketError("short", f"{len(data)} bytes")
    vt, vrid, priority, count, interval_field, _ = HEADER.unpack_from(data)
    if vt >> 4 != VERSION:
        raise PacketError("version", f"version {vt >> 4}")
    if vt & 0x0F != TYPE_ADVERTISEMENT:
        raise PacketError("type", f"type {vt & 0x0F}")
    if count == 0:
        raise PacketError("addr_count", "no addresses")
    width = 4 if src.version == 4 else 16
    if len(data) != HEADER.size + count * width:
        raise PacketError("length", f"{len(data)} bytes for {count} IPv{src.version} addresses")
    interval_cs = interval_field & MAX_INTERVAL_CS
    if interval_cs == 0:
        raise PacketError("interval", "max advertise interval 0")
    if internet_checksum(_pseudo_header(src, dst, len(data)) + data) != 0:
        raise PacketError("checksum")
    cls = ipaddress.IPv4Address if width == 4 else ipaddress.IPv6Address
    addresses = tuple(
        cls(data[offset : offset + width]) for offset in range(HEADER.size, len(data), width)
    )
    return Advertisement(vrid, priority, interval_cs, addresses)
