"""The Internet checksum every packet vipcore builds shares (VRRP adverts, unsolicited NAs)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from vipcore.core.checksum import internet_checksum


def test_rfc_1071_example_and_edge_cases() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (carries folded); the checksum is its complement.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")  # odd length: padded with a zero byte


@given(st.binary(max_size=300))
def test_a_message_carrying_its_checksum_sums_to_zero(data: bytes) -> None:
    message = data + b"\x00" * (len(data) % 2)  # the checksum field goes on a 16-bit boundary
    with_sum = message + struct.pack("!H", internet_checksum(message))
    assert internet_checksum(with_sum) == 0
