"""The hand-packed rtnetlink messages of the address holder's failover path (pure: no sockets), and one
read-only dump of this process's own namespace (no privileges needed)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

from vipcore.net.rtnetlink import (
    IFA_ADDRESS,
    IFA_F_NODAD,
    IFA_FLAGS,
    IFA_LOCAL,
    IFADDR,
    IFINFO,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_HEADER,
    NETLINK_ROUTE,
    RTM_DELADDR,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RtnetlinkChannel,
    address_dump_request,
    address_message,
    attribute,
    link_request,
    message,
    messages,
    parse_addresses,
    parse_link,
)


def attributes(data: bytes, offset: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        found[kind] = data[offset + 4: offset + length]
        offset += (length + 3) & ~3
    return found


def test_ipv6_add_is_exclusive_acknowledged_and_nodad() -> None:
    vip = ipaddress.IPv6Address("2001:db8::7")
    data = address_message(True, 9, vip, seq=42)
    length, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(data)
    assert (length, kind, seq) == (len(data), RTM_NEWADDR, 42)
    assert flags == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    family, prefix, ifa_flags, scope, index = IFADDR.unpack_from(data, NLMSG_HEADER.size)
    assert (family, prefix, ifa_flags, scope, index) == (socket.AF_INET6, 128, IFA_F_NODAD, 0, 9)
    attrs = attributes(data, NLMSG_HEADER.size + IFADDR.size)
    assert attrs[IFA_LOCAL] == attrs[IFA_ADDRESS] == vip.packed
    assert struct.unpack("=I", attrs[IFA_FLAGS]) == (IFA_F_NODAD,)
    assert len(data) % 4 == 0


def test_ipv4_add_and_deletes() -> None:
    vip = ipaddress.IPv4Address("198.51.100.7")
    add = address_message(True, 3, vip, seq=1)
    assert IFADDR.unpack_from(add, NLMSG_HEADER.size) == (socket.AF_INET, 32, 0, 0, 3)
    assert set(attributes(add, NLMSG_HEADER.size + IFADDR.size)) == {IFA_LOCAL, IFA_ADDRESS}
    for address in (vip, ipaddress.IPv6Address("2001:db8::7")):
        delete = address_message(False, 3, address, seq=2)
        _, kind, flags, _, _ = NLMSG_HEADER.unpack_from(delete)
        assert (kind, flags) == (RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK)
        assert IFADDR.unpack_from(delete, NLMSG_HEADER.size)[2] == 0  # no NODAD on a delete
        assert IFA_FLAGS not in attributes(delete, NLMSG_HEADER.size + IFADDR.size)


def test_link_request_and_reply_parse() -> None:
    request = link_request("eth0", seq=5)
    _, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(request)
    assert (kind, flags, seq) == (RTM_GETLINK, NLM_F_REQUEST, 5)
    assert attributes(request, NLMSG_HEADER.size + IFINFO.size)[IFLA_IFNAME] == b"eth0\0"
    mac = bytes.fromhex("020000fa0042")
    reply = message(RTM_NEWLINK, 0, 5, IFINFO.pack(0, 1, 7, 0x10001, 0)
                    + attribute(IFLA_IFNAME, b"eth0\0") + attribute(IFLA_ADDRESS, mac))
    ((kind, seq, offset, length),) = list(messages(reply + reply[:10]))  # a truncated tail is dropped
    link = parse_link(reply, offset, length)
    assert (kind, seq, link.name, link.index, link.flags, link.mac) == (RTM_NEWLINK, 5, "eth0", 7, 0x10001, mac)


def test_address_dump_request_and_replies_parse() -> None:
    request = address_dump_request(seq=9)
    _, kind, flags, seq, _ = NLMSG_HEADER.unpack_from(request)
    assert (kind, flags, seq) == (RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 9)
    assert IFADDR.unpack_from(request, NLMSG_HEADER.size) == (socket.AF_UNSPEC, 0, 0, 0, 0)
    primary = ipaddress.IPv4Address("198.51.100.1")
    vip6 = ipaddress.IPv6Address("2001:db8::7")
    datagram = (
        # The interface's own address: IFA_LOCAL wins over IFA_ADDRESS (a point-to-point peer).
        message(RTM_NEWADDR, 2, 9, IFADDR.pack(socket.AF_INET, 24, 0x80, 0, 7)
                + attribute(IFA_ADDRESS, ipaddress.IPv4Address("198.51.100.254").packed)
                + attribute(IFA_LOCAL, primary.packed))
        # IPv6 has IFA_ADDRESS only; IFA_FLAGS (32 bits) overrides the header's 8.
        + message(RTM_NEWADDR, 2, 9, IFADDR.pack(socket.AF_INET6, 128, 0x02, 0, 7)
                  + attribute(IFA_ADDRESS, vip6.packed) + attribute(IFA_FLAGS, struct.pack("=I", 0x302)))
        # Another interface's: skipped when one interface is asked for.
        + message(RTM_NEWADDR, 2, 9, IFADDR.pack(socket.AF_INET, 8, 0, 0, 1)
                  + attribute(IFA_LOCAL, ipaddress.IPv4Address("127.0.0.1").packed))
    )
    everything = parse_addresses(datagram)
    assert [a.index for a in everything] == [7, 7, 1]
    four, six = parse_addresses(datagram, 7)
    assert (four.family, four.prefixlen, four.address, four.flags) == (socket.AF_INET, 24, primary.packed, 0x80)
    assert (six.family, six.prefixlen, six.address, six.flags) == (socket.AF_INET6, 128, vip6.packed, 0x302)
    assert parse_addresses(datagram[:-4], 1) == []  # a truncated message is dropped


def test_a_dump_of_this_namespace_has_the_loopback_address() -> None:
    # Every datagram of the answer up to NLMSG_DONE; lo (index 1 in any namespace) holds 127.0.0.1/8.
    async def dump() -> list[bytes]:
        channel = RtnetlinkChannel(socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE))
        try:
            seq = channel.next_seq()
            return await channel.dump(seq, address_dump_request(seq))
        finally:
            channel.close()

    lo = socket.if_nametoindex("lo")
    found = [a for data in asyncio.run(dump()) for a in parse_addresses(data, lo)]
    assert any(a.family == socket.AF_INET and a.address == ipaddress.IPv4Address("127.0.0.1").packed
               and a.prefixlen == 8 for a in found), found
