"""The VRRPv3 codec: byte-exact vectors (captured from keepalived 2.2.7) and fuzzing."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipcore.core.checksum import internet_checksum
from vipcore_native_vrrp.protocol.packet import (
    Advertisement,
    PacketError,
    decode,
    encode,
)

# Captured by tests/helpers/capture_keepalived.py from keepalived 2.2.7
# (vrrp_version 3) in a namespace: VRID 51, priority 200, advert_int 0.1,
# two IPv4 VIPs; VRID 52, priority 150, advert_int 0.5, one IPv6 VIP.
KEEPALIVED_V4 = (
    bytes.fromhex("3133c802000aa6bcc6336464c6336465"),
    IPv4Address("198.51.100.11"),
    IPv4Address("224.0.0.18"),
)
KEEPALIVED_V6 = (
    bytes.fromhex("313496010032bc2a20010db8010000000000000000000100"),
    IPv6Address("fe80::f8bb:87ff:fec3:cf16"),
    IPv6Address("ff02::12"),
)


def test_decode_keepalived_ipv4() -> None:
    data, src, dst = KEEPALIVED_V4
    adv = decode(data, src, dst)
    assert adv == Advertisement(51, 200, 10, (IPv4Address("198.51.100.100"), IPv4Address("198.51.100.101")))
    assert adv.interval == pytest.approx(0.1)


def test_decode_keepalived_ipv6() -> None:
    data, src, dst = KEEPALIVED_V6
    adv = decode(data, src, dst)
    assert adv == Advertisement(52, 150, 50, (IPv6Address("2001:db8:100::100"),))


@pytest.mark.parametrize("vector", [KEEPALIVED_V4, KEEPALIVED_V6], ids=["ipv4", "ipv6"])
def test_encode_matches_keepalived_byte_for_byte(vector: tuple[bytes, object, object]) -> None:
    data, src, dst = vector
    assert encode(decode(data, src, dst), src, dst) == data  # type: ignore[arg-type]


def test_checksum_depends_on_pseudo_header() -> None:
    data, src, _ = KEEPALIVED_V4
    with pytest.raises(PacketError) as info:
        decode(data, src, IPv4Address("198.51.100.12"))  # as if sent unicast
    assert info.value.reason == "checksum"
    with pytest.raises(PacketError) as info:
        decode(data, IPv4Address("198.51.100.13"), KEEPALIVED_V4[2])
    assert info.value.reason == "checksum"


def test_unicast_encoding_round_trips() -> None:
    adv = Advertisement(7, 100, 5, (IPv6Address("2001:db8:100::1"), IPv6Address("2001:db8:100::2")))
    src, dst = IPv6Address("2001:db8:100::11"), IPv6Address("2001:db8:100::12")
    data = encode(adv, src, dst)
    assert decode(data, src, dst) == adv


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d[:7], "short"),
        (lambda d: b"\x21" + d[1:], "version"),
        (lambda d: b"\x32" + d[1:], "type"),
        (lambda d: d[:3] + b"\x00" + d[4:], "addr_count"),
        (lambda d: d[:3] + b"\x03" + d[4:], "length"),
        (lambda d: d + b"\x00", "length"),
        (lambda d: d[:4] + b"\xf0\x00" + d[6:], "interval"),
        (lambda d: d[:6] + b"\x00\x00" + d[8:], "checksum"),
        (lambda d: d[:8] + b"\xc7" + d[9:], "checksum"),
    ],
)
def test_decode_rejects_with_reason(mutate: object, reason: str) -> None:
    data, src, dst = KEEPALIVED_V4
    with pytest.raises(PacketError) as info:
        decode(mutate(data), src, dst)  # type: ignore[operator]
    assert info.value.reason == reason


def test_decode_rejects_mixed_families() -> None:
    data, src, _ = KEEPALIVED_V4
    with pytest.raises(PacketError) as info:
        decode(data, src, IPv6Address("ff02::12"))
    assert info.value.reason == "family"


def test_reserved_bits_of_interval_are_ignored() -> None:
    adv = Advertisement(1, 100, 100, (IPv4Address("198.51.100.1"),))
    src, dst = IPv4Address("198.51.100.2"), IPv4Address("224.0.0.18")
    data = bytearray(encode(adv, src, dst))
    data[4] |= 0xF0  # reserved bits set: fix the checksum up
    data[6:8] = b"\x00\x00"
    from vipcore_native_vrrp.protocol.packet import _pseudo_header  # noqa: PLC0415

    csum = internet_checksum(_pseudo_header(src, dst, len(data)) + bytes(data))
    data[6:8] = csum.to_bytes(2, "big")
    assert decode(bytes(data), src, dst) == adv


@settings(max_examples=400, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=80),
        # Mostly-valid headers reach deeper into the decoder.
        st.builds(lambda tail, n: bytes([0x31, 5, 100, n]) + tail, st.binary(max_size=72), st.integers(0, 255)),
    ),
    v6=st.booleans(),
)
def test_random_bytes_raise_only_packet_error(data: bytes, v6: bool) -> None:
    src = ip_address("fe80::1" if v6 else "198.51.100.1")
    dst = ip_address("ff02::12" if v6 else "224.0.0.18")
    try:
        adv = decode(data, src, dst)
    except PacketError as error:
        assert error.reason
    else:
        assert encode(adv, src, dst)[:6] == data[:6] or data[4] & 0xF0
