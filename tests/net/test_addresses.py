"""AddressHolder: netlink add/remove/held, stale cleanup, and real GARP / NA on the wire.

The lab tests build two namespaces joined by a veth pair (``vcB…`` names)
and drive the holder with ``netns=``, so the pytest process never leaves the
root namespace.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Awaitable, Iterator

import attrs
import pytest
from pyroute2.netns import create_socket

from vipcore.net.addresses import (
    ALL_NODES,
    ETH_P_ARP,
    ICMPV6_NEIGHBOR_ADVERT,
    NA_FLAG_OVERRIDE,
    AddressHolder,
    AnnounceSchedule,
    InterfaceInfo,
    gratuitous_arp,
    takeover_plan,
    unsolicited_na,
    unsolicited_na_frame,
)
from vipcore.core.errors import AddressError, ConfigError, InterfaceNotFoundError
from vipcore.core.model import Family
from vipcore.net.rtnetlink import MAX_BATCH

ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003
CAPTURE_TIMEOUT = 2.0

V4_VIP = ipaddress.IPv4Address("198.51.100.77")
V6_VIP = ipaddress.IPv6Address("2001:db8:77::7")


def _lab_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 ('ip')"
    return None


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@attrs.frozen
class Pair:
    """Namespace ``ns`` with interface ``link`` wired to ``peer_ns``/``peer_link``."""

    ns: str
    link: str
    peer_ns: str
    peer_link: str


@pytest.fixture
def pair() -> Iterator[Pair]:
    tag = uuid.uuid4().hex[:6]
    made = Pair(f"vcB{tag}a", f"vcB{tag}a", f"vcB{tag}b", f"vcB{tag}b")
    created: list[str] = []
    try:
        for ns in (made.ns, made.peer_ns):
            ip("netns", "add", ns)
            created.append(ns)
        ip("-n", made.ns, "link", "add", made.link, "type", "veth", "peer", "name", made.peer_link,
           "netns", made.peer_ns)
        ip("-n", made.ns, "addr", "add", "198.51.100.1/24", "dev", made.link)
        ip("-n", made.peer_ns, "addr", "add", "198.51.100.2/24", "dev", made.peer_link)
        for ns, link in ((made.ns, made.link), (made.peer_ns, made.peer_link)):
            ip("-n", ns, "link", "set", link, "up")
        yield made
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def wait_ipv6_ready(ns: str, link: str) -> None:
    """Wait for the kernel's ff00::/8 route on ``link``: until linkwatch adds it
    (about 1 s after carrier-up) every IPv6 multicast is dropped as "no route"."""
    deadline = time.monotonic() + 3.0
    while f"ff00::/8 dev {link} " not in ip("-n", ns, "-6", "route", "show", "table", "local"):
        assert time.monotonic() < deadline, f"IPv6 on {ns}/{link} never came up"
        time.sleep(0.02)


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def capture(ns: str, link: str, proto: int) -> socket.socket:
    sock = create_socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto), flags=0)
    sock.bind((link, proto))
    return sock


def frames(sock: socket.socket, want: int, match: object, timeout: float = CAPTURE_TIMEOUT) -> list[bytes]:
    """Frames for which ``match(frame)`` is true, until ``want`` are seen or ``timeout``."""
    found: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(found) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        frame = sock.recv(2048)
        if match(frame):  # type: ignore[operator]
            found.append(frame)
    return found


def is_garp_for(vip: ipaddress.IPv4Address) -> object:
    return lambda f: f[12:14] == b"\x08\x06" and f[28:32] == vip.packed


def is_na_for(vip: ipaddress.IPv6Address) -> object:
    return lambda f: f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == ICMPV6_NEIGHBOR_ADVERT and f[62:78] == vip.packed


def icmpv6_checksum(src: bytes, dst: bytes, payload: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(payload), socket.IPPROTO_ICMPV6)
    data = pseudo + payload
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


# -- pure --------------------------------------------------------------------


def test_gratuitous_arp_layout() -> None:
    mac = bytes.fromhex("020000000001")
    frame = gratuitous_arp(mac, V4_VIP)
    assert len(frame) == 60
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac
    assert struct.unpack("!H", frame[12:14])[0] == ETH_P_ARP
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac and frame[28:32] == V4_VIP.packed and frame[38:42] == V4_VIP.packed


def test_unsolicited_na_layout() -> None:
    mac = bytes.fromhex("020000000002")
    msg = unsolicited_na(mac, V6_VIP)
    assert len(msg) == 32
    kind, code, _checksum, flags = struct.unpack("!BBHI", msg[:8])
    assert (kind, code) == (ICMPV6_NEIGHBOR_ADVERT, 0)
    assert flags == NA_FLAG_OVERRIDE  # Override only: not solicited, not a router
    assert msg[8:24] == V6_VIP.packed
    assert msg[24:26] == b"\x02\x01" and msg[26:32] == mac


def test_interface_primary() -> None:
    info = InterfaceInfo(
        "eth0", 2, b"\x00" * 6, True,
        ipv4=(ipaddress.IPv4Interface("198.51.100.9/32"), ipaddress.IPv4Interface("198.51.100.1/24")),
        ipv6=(ipaddress.IPv6Interface("2001:db8::1/64"), ipaddress.IPv6Interface("fe80::1/64")),
    )
    assert info.primary(Family.IPV4) == ipaddress.IPv4Address("198.51.100.1")
    assert info.primary(Family.IPV6) == ipaddress.IPv6Address("fe80::1")
    assert InterfaceInfo("eth0", 2, b"\x00" * 6, True).primary(Family.IPV4) is None


def test_schedule_from_config() -> None:
    assert AnnounceSchedule.from_config(None) == AnnounceSchedule()
    assert AnnounceSchedule.from_config({"count": 3, "interval": 0.5, "refresh": 30}) == AnnounceSchedule(3, 0.5, 30.0)
    assert AnnounceSchedule.from_config({"refresh": None}).refresh is None
    with pytest.raises(ConfigError, match="garp.*unknown keys.*'burst'"):
        AnnounceSchedule.from_config({"burst": 3})
    with pytest.raises(ConfigError, match="count must be"):
        AnnounceSchedule.from_config({"count": -1})
    with pytest.raises(ConfigError, match="refresh"):
        AnnounceSchedule.from_config({"refresh": "often"})


# -- lab ---------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.skipif(_lab_reason() is not None, reason=_lab_reason() or "")
class TestLab:
    def test_add_remove_idempotent(self, pair: Pair) -> None:
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                assert await holder.add(pair.link, [V4_VIP, str(V6_VIP)]) == (V4_VIP, V6_VIP)
                assert await holder.add(pair.link, [V4_VIP, V6_VIP]) == ()
                assert await holder.held(pair.link) == {V4_VIP, V6_VIP}
                shown = ip("-n", pair.ns, "addr", "show", "dev", pair.link)
                assert f"{V4_VIP}/32" in shown and f"{V6_VIP}/128" in shown
                assert await holder.remove(pair.link, [V4_VIP]) == (V4_VIP,)
                assert await holder.remove(pair.link, [V4_VIP]) == ()
                assert await holder.held(pair.link) == {V6_VIP}
                assert await holder.remove(pair.link, [V6_VIP]) == (V6_VIP,)
                assert await holder.held(pair.link) == frozenset()
                # The /24 primary is no host address and was never touched.
                assert "198.51.100.1/24" in ip("-n", pair.ns, "addr", "show", "dev", pair.link)

        run(go())

    def test_ipv6_vip_is_not_tentative(self, pair: Pair) -> None:
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V6_VIP])
                assert await holder.tentative(pair.link) == frozenset()
                shown = ip("-n", pair.ns, "-6", "addr", "show", "dev", pair.link)
                line = next(line for line in shown.splitlines() if str(V6_VIP) in line)
                assert "nodad" in line and "tentative" not in line
                # Usable at once: bind to it right away.
                sock = create_socket(pair.ns, socket.AF_INET6, socket.SOCK_DGRAM, 0, flags=0)
                with sock:
                    sock.bind((str(V6_VIP), 0))

        run(go())

    def test_interface_info(self, pair: Pair) -> None:
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V4_VIP])
                info = await holder.interface(pair.link)
            mac = ip("-n", pair.ns, "-br", "link", "show", "dev", pair.link).split()[2]
            assert info.name == pair.link and info.up
            assert info.mac == bytes.fromhex(mac.replace(":", ""))
            assert info.primary(Family.IPV4) == ipaddress.IPv4Address("198.51.100.1")
            assert ipaddress.IPv4Interface(f"{V4_VIP}/32") in info.ipv4

        run(go())

    def test_interfaces(self, pair: Pair) -> None:
        async def go() -> tuple[str, ...]:
            async with AddressHolder(netns=pair.ns) as holder:
                return await holder.interfaces()

        assert run(go()) == ("lo", pair.link)

    def test_remove_stale(self, pair: Pair) -> None:
        managed = ipaddress.ip_network("198.51.100.64/26")
        stale = [ipaddress.IPv4Address("198.51.100.70"), ipaddress.IPv4Address("198.51.100.71")]
        foreign = ipaddress.IPv4Address("203.0.113.9")

        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [*stale, V4_VIP, foreign])
                removed = await holder.remove_stale(
                    pair.link, lambda a: a in managed, keep=[V4_VIP]
                )
                assert set(removed) == set(stale)
                assert await holder.held(pair.link) == {V4_VIP, foreign}

        run(go())

    def test_missing_interface(self, pair: Pair) -> None:
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                for call in (
                    holder.add("vcBmissing0", [V4_VIP]),
                    holder.remove("vcBmissing0", [V4_VIP]),
                    holder.held("vcBmissing0"),
                    holder.interface("vcBmissing0"),
                    holder.announce("vcBmissing0", [V4_VIP]),
                ):
                    with pytest.raises(InterfaceNotFoundError, match="'vcBmissing0' does not exist"):
                        await call

        run(go())

    def test_missing_namespace_is_not_created(self) -> None:
        name = f"vcB{uuid.uuid4().hex[:6]}x"

        async def go() -> None:
            async with AddressHolder(netns=name) as holder:
                with pytest.raises(AddressError, match="does not exist"):
                    await holder.held("lo")

        run(go())
        assert name not in ip("netns", "list")

    def test_responders_from_the_fast_address_dump(self, pair: Pair) -> None:
        # The split-brain probe: our VIP answered by our MAC, the peer's by the peer's, an unheld one by nobody.
        peer_vip = ipaddress.IPv4Address("198.51.100.78")
        nobody = ipaddress.IPv4Address("198.51.100.79")
        ip("-n", pair.peer_ns, "addr", "add", f"{peer_vip}/32", "dev", pair.peer_link)
        peer_mac = bytes.fromhex(json.loads(ip("-n", pair.peer_ns, "-j", "link", "show", pair.peer_link))[0]
                                 ["address"].replace(":", ""))

        seen: dict[str, object] = {}

        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V4_VIP, V6_VIP])
                seen["answers"] = await holder.responders(pair.link, [V4_VIP, V6_VIP, peer_vip, nobody], wait=0.3)
                seen["mac"] = (await holder.interface(pair.link, addresses=False)).mac
                seen["dumps"] = holder.netlink.dumps

        run(go())
        mac = seen["mac"]
        assert seen["answers"] == {V4_VIP: {mac}, V6_VIP: {mac}, peer_vip: {peer_mac}, nobody: frozenset()}
        assert seen["dumps"] == 1  # one hand-packed dump, not pyroute2's

    def test_the_probe_solicits_from_the_link_local_address(self, pair: Pair) -> None:
        # The probe's Neighbor Solicitations name their source (the link-local): the kernel's source address
        # selection scored every VIP on the interface for every one. Without a usable link-local the kernel
        # chooses, and the peer still answers.
        peer_vip = ipaddress.IPv6Address("2001:db8:77::8")
        for ns, link in ((pair.ns, pair.link), (pair.peer_ns, pair.peer_link)):
            wait_ipv6_ready(ns, link)
        ip("-n", pair.peer_ns, "addr", "add", f"{peer_vip}/128", "dev", pair.peer_link, "nodad")
        peer_mac = bytes.fromhex(json.loads(ip("-n", pair.peer_ns, "-j", "link", "show", pair.peer_link))[0]
                                 ["address"].replace(":", ""))
        deadline = time.monotonic() + 5.0
        while "tentative" in ip("-n", pair.ns, "-6", "addr", "show", "dev", pair.link, "scope", "link"):
            assert time.monotonic() < deadline, "the link-local address stayed tentative"
            time.sleep(0.05)
        link_local = next(ipaddress.IPv6Address(a["local"]) for a in json.loads(
            ip("-n", pair.ns, "-j", "-6", "addr", "show", "dev", pair.link))[0]["addr_info"] if a["scope"] == "link")

        def probe() -> dict[object, frozenset[bytes]]:
            async def go() -> dict[object, frozenset[bytes]]:
                async with AddressHolder(netns=pair.ns) as holder:
                    await holder.add(pair.link, [V6_VIP])
                    return dict(await holder.responders(pair.link, [V6_VIP, peer_vip], wait=0.3))
            return run(go())

        def solicits(frame: bytes) -> bool:
            return frame[12:14] == b"\x86\xdd" and frame[20] == 58 and frame[54] == 135 and frame[62:78] == peer_vip.packed

        with capture(pair.peer_ns, pair.peer_link, ETH_P_ALL) as sock:
            answers = probe()
            heard = frames(sock, 1, solicits)
        assert answers[peer_vip] == {peer_mac}
        assert heard and ipaddress.IPv6Address(heard[0][22:38]) == link_local

        ip("-n", pair.ns, "-6", "addr", "flush", "dev", pair.link, "scope", "link")
        ip("-n", pair.ns, "addr", "add", "2001:db8:77::1/64", "dev", pair.link, "nodad")
        with capture(pair.peer_ns, pair.peer_link, ETH_P_ALL) as sock:
            answers = probe()
            heard = frames(sock, 1, solicits)
        assert answers[peer_vip] == {peer_mac}
        assert heard and ipaddress.IPv6Address(heard[0][22:38]) != link_local

    def test_gratuitous_arp_arrives(self, pair: Pair) -> None:
        async def go() -> InterfaceInfo:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V4_VIP])
                await holder.announce(pair.link, [V4_VIP])
                return await holder.interface(pair.link)

        with capture(pair.peer_ns, pair.peer_link, ETH_P_ARP) as sock:
            info = run(go())
            got = frames(sock, 1, is_garp_for(V4_VIP))
        assert isinstance(info, InterfaceInfo)
        assert len(got) == 1
        frame = got[0]
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == info.mac
        assert struct.unpack("!H", frame[20:22])[0] == 1  # request
        assert frame[22:28] == info.mac and frame[38:42] == V4_VIP.packed

    def test_unsolicited_na_arrives(self, pair: Pair) -> None:
        async def go() -> InterfaceInfo:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V6_VIP])
                await holder.announce(pair.link, [V6_VIP])
                return await holder.interface(pair.link)

        with capture(pair.peer_ns, pair.peer_link, ETH_P_IPV6) as sock:
            info = run(go())
            got = frames(sock, 1, is_na_for(V6_VIP))
        assert isinstance(info, InterfaceInfo)
        assert len(got) == 1
        frame = got[0]
        ip6, icmp = frame[14:54], frame[54:]
        payload_length = struct.unpack("!H", ip6[4:6])[0]
        icmp = icmp[:payload_length]
        assert frame[6:12] == info.mac
        assert ip6[7] == 255, "hop limit must be 255 or receivers drop it"
        assert ip6[24:40] == ALL_NODES.packed
        assert ip6[8:24] == V6_VIP.packed  # sent from the VIP, as the kernel does
        flags = struct.unpack("!I", icmp[4:8])[0]
        assert flags & NA_FLAG_OVERRIDE and not flags & 0xC0000000
        assert icmp[24:26] == b"\x02\x01" and icmp[26:32] == info.mac
        assert icmpv6_checksum(ip6[8:24], ip6[24:40], icmp) == 0xFFFF

    @pytest.mark.parametrize("vip", [V4_VIP, V6_VIP], ids=["ipv4", "ipv6"])
    def test_announcement_updates_peer_neighbour_cache(self, pair: Pair, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
        if vip.version == 6:
            wait_ipv6_ready(pair.peer_ns, pair.peer_link)
        # The peer believes another host owns the VIP (as after a failover).
        ip("-n", pair.peer_ns, "neigh", "replace", str(vip), "lladdr", "02:00:5e:00:00:99",
           "dev", pair.peer_link, "nud", "stale")

        async def go() -> bytes:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [vip])
                await holder.announce(pair.link, [vip])
                return (await holder.interface(pair.link)).mac

        mac = run(go())
        assert isinstance(mac, bytes)
        want = ":".join(f"{b:02x}" for b in mac)
        deadline = time.monotonic() + CAPTURE_TIMEOUT
        while True:
            shown = ip("-n", pair.peer_ns, "neigh", "show", str(vip), "dev", pair.peer_link)
            if want in shown or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert want in shown, shown

    def test_start_announcing_burst_and_cancel(self, pair: Pair) -> None:
        schedule = AnnounceSchedule(count=3, interval=0.02, refresh=0.05)

        async def go(sock: socket.socket) -> tuple[int, int]:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V4_VIP])
                task = holder.start_announcing(pair.link, [V4_VIP], schedule)
                # Until the burst and two refreshes went out (no fixed sleep: a loaded machine is slower).
                deadline = asyncio.get_running_loop().time() + 5.0
                while holder.counters.garp_sent < 5 and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.005)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                sent = holder.counters.garp_sent
                await asyncio.sleep(0.1)
                assert holder.counters.garp_sent == sent, "cancelled task kept sending"
                return sent, holder.counters.errors

        with capture(pair.peer_ns, pair.peer_link, ETH_P_ARP) as sock:
            sent, errors = run(go(sock))  # type: ignore[misc]
            got = frames(sock, 100, is_garp_for(V4_VIP), timeout=0.2)
        # 3 in the burst, then refreshes; none after the cancel; every one on the wire.
        assert errors == 0
        assert sent >= 5
        assert len(got) == sent

    def test_link_only_query_skips_the_address_dump(self, pair: Pair) -> None:
        # What an announcement reads: index and MAC, not the (growing) address list.
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V4_VIP])
                full = await holder.interface(pair.link)
                light = await holder.interface(pair.link, addresses=False)
                assert (light.index, light.mac, light.up) == (full.index, full.mac, full.up)
                assert V4_VIP in full.addresses() and light.ipv4 == () and light.ipv6 == ()

        run(go())

    def test_announce_after_interface_recreated(self, pair: Pair) -> None:
        # Announcement sockets are cached; a re-created interface (new index)
        # must still get its NA, on the new interface.
        async def go() -> None:
            async with AddressHolder(netns=pair.ns) as holder:
                await holder.add(pair.link, [V6_VIP])
                await holder.announce(pair.link, [V4_VIP, V6_VIP])
                ip("-n", pair.ns, "link", "del", pair.link)
                ip("-n", pair.ns, "link", "add", pair.link, "type", "veth", "peer", "name", pair.peer_link,
                   "netns", pair.peer_ns)
                for ns, link in ((pair.ns, pair.link), (pair.peer_ns, pair.peer_link)):
                    ip("-n", ns, "link", "set", link, "up")
                await holder.add(pair.link, [V6_VIP])
                with capture(pair.peer_ns, pair.peer_link, ETH_P_IPV6) as na, \
                        capture(pair.peer_ns, pair.peer_link, ETH_P_ARP) as arp:
                    await holder.announce(pair.link, [V4_VIP, V6_VIP])
                    assert len(frames(na, 1, is_na_for(V6_VIP))) == 1
                    assert len(frames(arp, 1, is_garp_for(V4_VIP))) == 1
                assert holder.counters.errors == 0

        run(go())


# -- link events and ARP probing (pure parts) --------------------------------------------------


def _newlink(kind: int, index: int, flags: int, name: bytes) -> bytes:
    from vipcore.net.rtnetlink import IFINFO, NLMSG_HEADER, RTATTR

    attr_payload = name + b"\0"
    attr = RTATTR.pack(RTATTR.size + len(attr_payload), 3) + attr_payload
    attr += b"\0" * (-len(attr) % 4)
    body = IFINFO.pack(0, 1, index, flags, 0) + attr
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, 0, 0, 0) + body


def test_link_messages_parse_into_events() -> None:
    from vipcore.net.addresses import parse_link_messages
    from vipcore.net.rtnetlink import IFF_LOWER_UP, IFF_UP, RTM_DELLINK, RTM_NEWLINK

    data = (_newlink(RTM_NEWLINK, 7, IFF_UP | IFF_LOWER_UP, b"eth0") + _newlink(RTM_NEWLINK, 7, IFF_UP, b"eth0")
            + _newlink(RTM_DELLINK, 7, IFF_UP, b"eth0") + _newlink(20, 7, 0, b"x"))  # RTM_NEWADDR: skipped
    events = parse_link_messages(data)
    assert [(e.name, e.index, e.up) for e in events] == [("eth0", 7, True), ("eth0", 7, False), ("eth0", 7, False)]
    assert [e.describe() for e in events[1:]] == ["eth0 lost carrier", "eth0 was deleted"]
    assert parse_link_messages(data[:10]) == [] and parse_link_messages(data[:-3])[:3] == events


def test_arp_request_and_reply_sender() -> None:
    from vipcore.net.addresses import ARP_BODY, ETH_P_ARP, ETH_P_IP, arp_reply_sender, arp_request

    vip = ipaddress.IPv4Address("198.51.100.100")
    request = arp_request(b"\x02" * 6, ipaddress.IPv4Address("198.51.100.11"), vip)
    assert len(request) == 60 and request[:6] == b"\xff" * 6 and arp_reply_sender(request, vip) is None
    reply = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ETH_P_ARP) + ARP_BODY.pack(
        1, ETH_P_IP, 6, 4, 2, b"\x04" * 6, vip.packed, b"\x02" * 6, ipaddress.IPv4Address("198.51.100.11").packed)
    assert arp_reply_sender(reply, vip) == b"\x04" * 6
    assert arp_reply_sender(reply, ipaddress.IPv4Address("198.51.100.101")) is None


def test_neighbor_solicitation_and_advert_responder() -> None:
    from vipcore.net.addresses import (
        icmpv6_filter_only,
        na_responder,
        neighbor_solicitation,
        solicited_node,
    )

    vip = ipaddress.IPv6Address("2001:db8:100::1:2:100")
    assert solicited_node(vip) == ipaddress.IPv6Address("ff02::1:ff02:100")
    ns = neighbor_solicitation(b"\x02" * 6, vip)
    assert ns[0] == 135 and ns[8:24] == vip.packed and ns[24:26] == b"\x01\x01" and ns[26:] == b"\x02" * 6
    na = struct.pack("!BBHI16s", 136, 0, 0, 0x60000000, vip.packed) + b"\x02\x01" + b"\x04" * 6
    assert na_responder(na, "fe80::4%eth0", vip) == b"\x04" * 6
    assert na_responder(na[:24], "fe80::4%eth0", vip) == b"fe80::4"  # no option: by source address
    assert na_responder(na, "fe80::4", ipaddress.IPv6Address("2001:db8::1")) is None
    assert na_responder(ns, "fe80::4", vip) is None
    words = struct.unpack("=8I", icmpv6_filter_only(136))
    assert words[4] == 0xFFFFFFFF & ~(1 << 8) and all(w == 0xFFFFFFFF for i, w in enumerate(words) if i != 4)


# -- the hot path: batched rtnetlink, the link cache (lab, prefix vcFa) -------------------------


@attrs.frozen
class Duo:
    """Namespace ``ns`` with veth ``link`` (peer ``peer_link`` in ``peer_ns``) and a veth ``other``
    (its peer in ``ns`` too; this kernel has no dummy interfaces)."""

    ns: str
    link: str
    other: str
    peer_ns: str
    peer_link: str


@pytest.fixture
def duo() -> Iterator[Duo]:
    tag = uuid.uuid4().hex[:6]
    made = Duo(f"vcFa{tag}a", f"vcFa{tag}a", f"vcFa{tag}d", f"vcFa{tag}b", f"vcFa{tag}b")
    created: list[str] = []
    try:
        for ns in (made.ns, made.peer_ns):
            ip("netns", "add", ns)
            created.append(ns)
        ip("-n", made.ns, "link", "add", made.link, "type", "veth", "peer", "name", made.peer_link,
           "netns", made.peer_ns)
        ip("-n", made.ns, "link", "add", made.other, "type", "veth", "peer", "name", f"{made.other}p")
        for ns, link in ((made.ns, made.link), (made.ns, made.other), (made.peer_ns, made.peer_link)):
            ip("-n", ns, "link", "set", link, "up")
        yield made
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def host_addresses(ns: str, link: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    shown = ip("-n", ns, "-o", "addr", "show", "dev", link)
    return {ipaddress.ip_interface(word).ip for line in shown.splitlines() for word in line.split()[3:4]
            if word.endswith(("/32", "/128"))}


def recreate(duo: Duo, mac: str) -> None:
    """Delete ``duo.link`` and make it again under the same name, with ``mac``."""
    ip("-n", duo.ns, "link", "del", duo.link)
    ip("-n", duo.ns, "link", "add", duo.link, "address", mac, "type", "veth", "peer", "name", duo.peer_link,
       "netns", duo.peer_ns)
    for ns, link in ((duo.ns, duo.link), (duo.peer_ns, duo.peer_link)):
        ip("-n", ns, "link", "set", link, "up")


BURST = 64


def burst_vips(n: int = BURST) -> list[tuple[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    return [(ipaddress.IPv4Address(f"198.51.100.{100 + i}"), ipaddress.IPv6Address(f"2001:db8:fa::{i + 1:x}"))
            for i in range(n)]


@pytest.mark.lab
@pytest.mark.skipif(_lab_reason() is not None, reason=_lab_reason() or "")
class TestBatches:
    def test_burst_of_callers_is_one_netlink_batch(self, duo: Duo) -> None:
        # 64 dual-stack routers becoming master in the same loop pass: 128
        # addresses, one sendmsg, one wait for the acks; each caller its own answer.
        pairs = burst_vips()

        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                await holder.add(duo.link, [V4_VIP])  # reads the link once
                before = attrs.evolve(holder.netlink)
                added = await asyncio.gather(*(holder.add(duo.link, pair) for pair in pairs))
                assert added == [pair for pair in pairs]
                assert holder.netlink.batches - before.batches == 1
                assert holder.netlink.changes - before.changes == 2 * BURST
                assert holder.netlink.lookups == before.lookups == 1
                assert host_addresses(duo.ns, duo.link) == {V4_VIP, *(v for pair in pairs for v in pair)}
                assert await holder.tentative(duo.link) == frozenset()
                assert ip("-n", duo.ns, "-6", "addr", "show", "dev", duo.link).count("nodad") == BURST
                removed = await asyncio.gather(*(holder.remove(duo.link, pair) for pair in pairs))
                assert removed == [pair for pair in pairs]
                assert holder.netlink.batches - before.batches == 2
                assert host_addresses(duo.ns, duo.link) == {V4_VIP}

        run(go())

    def test_same_vip_twice_in_one_batch(self, duo: Duo) -> None:
        # Replies are matched by sequence number: the first caller added it, the second found it there.
        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                first, second, gone, again = await asyncio.gather(
                    holder.add(duo.link, [V4_VIP, V6_VIP]), holder.add(duo.link, [V6_VIP, V4_VIP]),
                    holder.remove(duo.other, [V4_VIP]), holder.add(duo.other, [V4_VIP]))
                assert (first, second, gone, again) == ((V4_VIP, V6_VIP), (), (), (V4_VIP,))
                assert holder.netlink.batches == 1
                assert host_addresses(duo.ns, duo.link) == {V4_VIP, V6_VIP}
                assert host_addresses(duo.ns, duo.other) == {V4_VIP}

        run(go())

    def test_refused_address_fails_its_caller_alone(self, duo: Duo) -> None:
        # IPv6 disabled on the other interface: the kernel refuses that add (EACCES);
        # the other callers of the same batch get their addresses.
        ip("netns", "exec", duo.ns, "sysctl", "-qw", f"net.ipv6.conf.{duo.other}.disable_ipv6=1")

        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                results = await asyncio.gather(
                    holder.add(duo.link, [V4_VIP]), holder.add(duo.other, [V6_VIP]),
                    holder.add(duo.link, [V6_VIP]), return_exceptions=True)
                assert results[0] == (V4_VIP,) and results[2] == (V6_VIP,)
                error = results[1]
                assert isinstance(error, AddressError) and not isinstance(error, InterfaceNotFoundError)
                assert f"add {V6_VIP} failed" in str(error) and "(errno 13)" in str(error)
                assert duo.other in str(error)
                assert holder.netlink.batches == 1

        run(go())

    def test_interface_vanishes_mid_batch(self, duo: Duo) -> None:
        # Callers queued with the other interface's index; it is deleted before the batch
        # goes out: they get InterfaceNotFoundError, the veth's callers their VIPs.
        pairs = burst_vips(8)

        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                await holder.add(duo.other, [V4_VIP])
                await holder.add(duo.link, [V4_VIP])
                before = holder.netlink.batches
                # Queued when asked (the indexes cached), sent in the next pass of the loop.
                tasks = [holder.add(duo.other if i % 2 else duo.link, pair) for i, pair in enumerate(pairs)]
                assert holder.netlink.batches == before
                ip("-n", duo.ns, "link", "del", duo.other)
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert holder.netlink.batches == before + 1
                for i, (pair, result) in enumerate(zip(pairs, results)):
                    if i % 2:
                        assert isinstance(result, InterfaceNotFoundError), result
                        assert f"'{duo.other}' does not exist" in str(result)
                    else:
                        assert result == pair
                with pytest.raises(InterfaceNotFoundError):
                    await holder.add(duo.other, [V4_VIP])
                assert host_addresses(duo.ns, duo.link) == {V4_VIP, *(v for p in pairs[::2] for v in p)}

        run(go())

    def test_lost_acks_are_asked_again(self, duo: Duo) -> None:
        # A receive buffer too small for the batch's acks (ENOBUFS): what was
        # lost is sent again and still reported as added, once.
        pairs = burst_vips(32)

        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                await holder.add(duo.link, [V4_VIP])
                channel = holder._channel
                assert channel is not None
                channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
                added = await asyncio.gather(*(holder.add(duo.link, pair) for pair in pairs))
                assert added == [pair for pair in pairs]
                assert holder.netlink.batches > 2  # the overflow happened and was recovered from
                assert host_addresses(duo.ns, duo.link) == {V4_VIP, *(v for p in pairs for v in p)}

        run(go())

    def test_missing_namespace_on_the_hot_path(self) -> None:
        name = f"vcFa{uuid.uuid4().hex[:6]}x"

        async def go() -> None:
            async with AddressHolder(netns=name) as holder:
                for call in (holder.add("lo", [V4_VIP]), holder.announce("lo", [V4_VIP])):
                    with pytest.raises(AddressError, match="does not exist"):
                        await call

        run(go())
        assert name not in ip("netns", "list")

    def test_announce_reads_the_link_once(self, duo: Duo) -> None:
        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                await holder.add(duo.link, [V4_VIP, V6_VIP])
                for _ in range(10):
                    await holder.announce(duo.link, [V4_VIP, V6_VIP])
                assert holder.netlink.lookups == 1
                assert holder.counters.garp_sent == holder.counters.na_sent == 10

        run(go())

    @pytest.mark.parametrize("how", ["recreated", "new-mac"])
    def test_announce_uses_the_new_mac(self, duo: Duo, how: str) -> None:
        # The cached index and MAC are dropped on the link event: a re-created
        # interface (new index) or a changed MAC is announced with the MAC it has now.
        new_mac = "02:00:5e:fa:00:42"

        async def go() -> None:
            async with AddressHolder(netns=duo.ns) as holder:
                await holder.add(duo.link, [V4_VIP, V6_VIP])
                await holder.announce(duo.link, [V4_VIP, V6_VIP])
                old = (await holder.interface(duo.link, addresses=False)).index
                if how == "recreated":
                    recreate(duo, new_mac)
                    await holder.add(duo.link, [V4_VIP, V6_VIP])
                    assert (await holder.interface(duo.link, addresses=False)).index != old
                else:
                    ip("-n", duo.ns, "link", "set", "dev", duo.link, "address", new_mac)
                with capture(duo.peer_ns, duo.peer_link, ETH_P_IPV6) as na, \
                        capture(duo.peer_ns, duo.peer_link, ETH_P_ARP) as arp:
                    await holder.announce(duo.link, [V4_VIP, V6_VIP])
                    garps = frames(arp, 1, is_garp_for(V4_VIP))
                    nas = frames(na, 1, is_na_for(V6_VIP))
                mac = bytes.fromhex(new_mac.replace(":", ""))
                assert len(garps) == 1 and garps[0][6:12] == mac and garps[0][22:28] == mac
                assert len(nas) == 1 and nas[0][6:12] == mac and nas[0][54 + 26: 54 + 32] == mac
                assert holder.netlink.lookups == 2 and holder.counters.errors == 0

        run(go())

    def test_close_answers_queued_callers(self, duo: Duo) -> None:
        # Closed before the batch went out: the callers hear so instead of waiting forever.
        async def go() -> None:
            holder = AddressHolder(netns=duo.ns)
            await holder.add(duo.link, [V4_VIP])
            waiting = holder.add(duo.link, [V6_VIP])  # queued when asked, not sent yet
            await holder.close()
            with pytest.raises(AddressError, match="closed before the change was confirmed"):
                await asyncio.wait_for(waiting, 2.0)
            assert host_addresses(duo.ns, duo.link) == {V4_VIP}

        run(go())


@pytest.mark.lab
@pytest.mark.skipif(_lab_reason() is not None, reason=_lab_reason() or "")
def test_an_add_is_queued_when_asked_not_when_awaited(duo: Duo) -> None:
    """A node dying hands its groups to a survivor in one pass of the loop: each router asks for its
    VIPs in that pass, and the batch must go out in the next one — not after each router's own task
    has started (a loop pass more, in which received adverts and timers ran first: 1.5-9 ms in the lab)."""
    async def go() -> None:
        async with AddressHolder(netns=duo.ns) as holder:
            await holder.add(duo.link, [V4_VIP])  # reads the link once
            before = holder.netlink.batches
            first = holder.add(duo.link, [V6_VIP])  # asked now, awaited later (by another task)
            second = holder.add(duo.link, [ipaddress.IPv4Address("198.51.100.201")])
            assert await first == (V6_VIP,)
            assert await second == (ipaddress.IPv4Address("198.51.100.201"),)
            assert holder.netlink.batches - before == 1
            # Unknown interfaces, nothing to add and errors behave as before.
            assert await holder.add(duo.link, []) == ()
            with pytest.raises(InterfaceNotFoundError):
                await holder.add("vcM5nothere", [V4_VIP])

    run(go())


@pytest.mark.lab
@pytest.mark.skipif(_lab_reason() is not None, reason=_lab_reason() or "")
def test_a_takeover_batch_is_in_the_kernel_before_a_packet_queued_in_the_same_pass(duo: Duo) -> None:
    """The pass that takes a dead node's groups ends by sending their VIPs (:meth:`AddressHolder.send_queued`):
    a packet read in that same loop pass, handled after it, finds them in the kernel already (before, the
    batch went out in the next pass, after every received advert: 7-10 ms in 2 of 6 traced takeovers). The
    replies are read later, each caller still gets its own result, and one sendmsg carried them all."""
    extra = ipaddress.IPv4Address("198.51.100.202")
    seen: list[set[object]] = []

    async def go() -> None:
        async with AddressHolder(netns=duo.ns) as holder:
            await holder.add(duo.link, [V4_VIP])  # reads the link once
            before = holder.netlink.batches
            loop = asyncio.get_running_loop()
            asked: list[Awaitable[tuple[object, ...]]] = []

            def takeover() -> None:
                asked.append(holder.add(duo.link, [V6_VIP]))
                asked.append(holder.add(duo.link, [extra]))
                assert holder.send_queued()
                # The kernel answered inside the sendmsg: each caller has its result in this pass already
                # (a takeover announces its VIPs before the pass ends).
                assert all(asyncio.ensure_future(a).done() for a in asked)

            def packet() -> None:  # already in the loop's ready queue behind the takeover, as a read advert is
                seen.append(set(host_addresses(duo.ns, duo.link)))

            loop.call_soon(takeover)
            loop.call_soon(packet)
            await asyncio.sleep(0)
            assert seen == [{V4_VIP, V6_VIP, extra}]
            assert await asked[0] == (V6_VIP,)
            assert await asked[1] == (extra,)
            assert holder.netlink.batches - before == 1
            assert holder.netlink.early == 1 and holder.netlink.answered_early == 1
            # Nothing queued, or the channel in use: nothing sent now, the flusher does it as before.
            assert not holder.send_queued()
            async with holder._channel_lock:
                late = holder.add(duo.link, [ipaddress.IPv4Address("198.51.100.203")])
                assert not holder.send_queued()
            assert await late == (ipaddress.IPv4Address("198.51.100.203"),)
            assert holder.netlink.early == 1
            # Each caller its own result: one VIP already there (not counted), the other added.
            again = holder.add(duo.link, [V6_VIP])
            ok = holder.add(duo.link, [ipaddress.IPv4Address("198.51.100.204")])
            assert holder.send_queued()
            assert await again == ()
            assert await ok == (ipaddress.IPv4Address("198.51.100.204"),)

    run(go())


@pytest.mark.lab
@pytest.mark.skipif(_lab_reason() is not None, reason=_lab_reason() or "")
def test_a_change_sent_now_is_answered_when_the_holder_closes_before_its_replies_are_read(duo: Duo) -> None:
    # More than one sendmsg can carry: the first part goes now, its replies are left to the flusher.
    many = [ipaddress.IPv6Address(f"2001:db8:5::{i:x}") for i in range(1, MAX_BATCH + 2)]

    async def go() -> None:
        holder = AddressHolder(netns=duo.ns)
        await holder.add(duo.link, [V4_VIP])
        pending = holder.add(duo.link, many)
        assert holder.send_queued()
        assert holder.netlink.answered_early == 0
        await holder.close()
        with pytest.raises(AddressError, match="closed before the change was confirmed"):
            await asyncio.wait_for(pending, 2.0)
        assert not holder._channel_lock.locked()

    run(go())


def test_add_now_asks_nothing_for_an_interface_not_looked_up_yet() -> None:
    """``add_now`` queues only what can go in this pass: an interface it has not looked up gets None and
    no change (the caller adds the usual way, which looks the interface up)."""
    async def scenario() -> None:
        holder = AddressHolder()
        try:
            assert holder.add_now("vcN-none0", [V4_VIP]) is None
            assert holder.send_queued() is False  # nothing was queued
        finally:
            await holder.close()

    asyncio.run(scenario())


# -- takeover plans (the liveness worker's claim, native_vrrp) -----------------------------------------


def test_an_unsolicited_na_frame_is_a_whole_ipv6_packet_with_its_checksum() -> None:
    mac, vip = bytes.fromhex("020000000001"), ipaddress.IPv6Address("2001:db8::7")
    frame = unsolicited_na_frame(mac, vip)
    assert frame[:6] == bytes.fromhex("333300000001") and frame[6:12] == mac and frame[12:14] == b"\x86\xdd"
    version, length, next_header, hops, source, destination = struct.unpack_from("!IHBB16s16s", frame, 14)
    assert version >> 28 == 6 and next_header == 58 and hops == 255
    assert source == vip.packed and destination == ALL_NODES.packed
    message = frame[54:]
    assert length == len(message) == 32
    # The same message the raw-socket path sends, with the checksum the kernel would have filled in.
    assert message[:2] + b"\0\0" + message[4:] == unsolicited_na(mac, vip)
    pseudo = source + destination + struct.pack("!I3xB", len(message), 58) + message
    total = sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF  # a correct checksum sums to all ones


def test_a_takeover_plan_is_the_holders_own_add_messages_and_one_announcement_per_vip() -> None:
    from vipcore.net.rtnetlink import NLM_F_CREATE, NLM_F_EXCL, RTM_NEWADDR, messages, parse_addresses

    info = InterfaceInfo(name="eth0", index=7, mac=bytes.fromhex("020000000001"), up=True)
    vips = [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, MAX_BATCH + 3)] + \
        [ipaddress.ip_address("2001:db8::7")]
    plan = takeover_plan(info, vips)
    assert plan.interface == "eth0" and plan.index == 7 and plan.vips == tuple(vips)
    assert len(plan.netlink) == 2  # at most MAX_BATCH messages a datagram
    found = []
    for datagram in plan.netlink:
        for kind, _, offset, length in messages(datagram):
            assert kind == RTM_NEWADDR
            flags = struct.unpack_from("=H", datagram, offset + 6)[0]
            assert flags & NLM_F_CREATE and flags & NLM_F_EXCL  # "already so" answers EEXIST, as for the holder
        found += [ipaddress.ip_address(a.address) for a in parse_addresses(datagram, 7)]
    assert found == vips
    assert plan.frames[0] == gratuitous_arp(info.mac, vips[0])
    assert plan.frames[-1] == unsolicited_na_frame(info.mac, vips[-1])
    assert len(plan.frames) == len(vips)


def test_the_holder_builds_no_plan_for_an_interface_it_has_not_looked_up() -> None:
    assert AddressHolder().takeover_plan("eth0", [ipaddress.ip_address("198.51.100.1")]) is None


def test_the_holder_builds_a_plan_once_per_link_entry_and_afresh_after_a_link_change() -> None:
    holder = AddressHolder()
    vips = [ipaddress.ip_address("198.51.100.1"), ipaddress.ip_address("2001:db8::1")]
    info = InterfaceInfo(name="eth0", index=7, mac=bytes.fromhex("020000000001"), up=True)
    try:
        holder._links["eth0"] = info
        holder.takeover_plan("eth0", vips)  # the first look subscribes to link events (and forgets the cache)
        holder._links["eth0"] = info
        plan = holder.takeover_plan("eth0", vips)
        assert plan is not None and plan == takeover_plan(info, vips)
        assert holder.takeover_plan("eth0", vips) is plan  # the same bytes, not built again
        # The interface was re-created (the link cache has a new entry): index and MAC as they are now.
        holder._links["eth0"] = attrs.evolve(info, index=8, mac=bytes.fromhex("020000000002"))
        again = holder.takeover_plan("eth0", vips)
        assert again is not None and again.index == 8 and again.frames[0][6:12] == bytes.fromhex("020000000002")
    finally:
        asyncio.run(holder.close())
