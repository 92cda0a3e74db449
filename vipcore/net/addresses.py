"""The one place that puts VIPs on interfaces and tells the LAN about them.

:class:`AddressHolder` adds and removes host-prefix addresses (/32, /128),
optionally inside a named network namespace, and announces them: one
gratuitous ARP per IPv4 VIP, one unsolicited Neighbor Advertisement per IPv6
VIP. Every backend uses it; no other module speaks netlink or sends ARP.

Two netlink paths, by cost:

* The failover path (``add``, ``remove``, ``announce``) packs its messages by
  hand (:mod:`vipcore.net.rtnetlink`) on a request socket of its own.
  Changes asked for in the same pass of the event loop (every router of a
  dead node's groups, woken by one detection) are queued and go out
  together: one ``sendmsg`` carrying up to
  :data:`~vipcore.net.rtnetlink.MAX_BATCH` ``RTM_NEWADDR``/``RTM_DELADDR``
  messages, one wait for their acknowledgements, matched to the callers by
  sequence number; each caller gets its own result or error.
  :attr:`AddressHolder.netlink` counts batches, messages and link reads.
  The interface's index and MAC come from a cache that a link-event
  subscription of the holder invalidates (a re-created, renamed or
  re-addressed interface is read again), and so does an error.
* Dumps (``held``, ``tentative``, ``interface``, ``interfaces``) keep
  pyroute2's :class:`~pyroute2.AsyncIPRoute`: they are off the failover
  path, and parsing address dumps by hand would buy nothing there.

Contracts:

* ``add`` and ``remove`` are idempotent: an address already present
  (``EEXIST``) or already absent (``EADDRNOTAVAIL``) is "already so" and
  simply not part of the returned tuple.
* IPv6 VIPs are added with ``IFA_F_NODAD``, so they are usable at once
  instead of staying tentative for about a second.
* A missing interface raises :class:`~vipcore.core.errors.InterfaceNotFoundError`
  (also for the callers of a batch whose interface vanished before it went
  out); any other failure raises :class:`~vipcore.core.errors.AddressError`
  naming the address and the errno. Only failures that can heal (an
  interrupted dump, a busy kernel, an overflowed netlink socket) are
  retried, a bounded number of times; acknowledgements lost to an overflow
  are asked for again (an "already so" then counts as done by us).
* With ``netns=`` every socket (netlink, AF_PACKET, ICMPv6) is created in
  that namespace; the calling process never changes namespace.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import tenacity
from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkDumpInterrupted, NetlinkError
from pyroute2.netns import create_socket

from vipcore.core.checksum import internet_checksum
from vipcore.core.errors import AddressError, ConfigError, InterfaceNotFoundError
from vipcore.core.model import Family, IPAddress
from vipcore.net.rtnetlink import (
    IFF_LOWER_UP,
    IFF_UP,
    IFINFO,
    MAX_BATCH,
    NETLINK_BUFFER,
    NETLINK_ROUTE,
    NLMSG_HEADER,
    RTM_DELLINK,
    RTM_NEWLINK,
    Address,
    Exchange,
    RtnetlinkChannel,
    address_dump_request,
    address_message,
    link_request,
    messages,
    parse_addresses,
    parse_link,
    prepare as prepare_netlink,
)

log = logging.getLogger(__name__)

# -- netlink constants (linux/if_addr.h, linux/if.h) --------------------------

#: The address is still undergoing duplicate address detection.
IFA_F_TENTATIVE = 0x40
#: An address that cannot be a packet's source: DAD failed or not done (linux/if_addr.h).
IFA_F_UNUSABLE = 0x08 | IFA_F_TENTATIVE
#: rtnetlink multicast group of link changes (linux/rtnetlink.h).
RTMGRP_LINK = 0x1
IPV4_HOST_PREFIX = 32
IPV6_HOST_PREFIX = 128
#: Errnos that mean "no such interface" (ENXIO: index vanished between calls).
_NO_INTERFACE = frozenset({errno.ENODEV, errno.ENXIO})
#: Errnos worth another try: the kernel was busy or our socket overflowed.
_TRANSIENT = frozenset({errno.EBUSY, errno.EAGAIN, errno.EINTR, errno.ENOBUFS})
NETLINK_ATTEMPTS = 3
#: Interface names are shorter than this (linux/if.h, with the NUL).
IFNAMSIZ = 16
NETLINK_RETRY_WAIT = 0.05

# -- ARP (RFC 826, RFC 5227 announcements) ----------------------------------

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_HTYPE_ETHERNET = 1
ARP_OP_REQUEST = 1
ARP_OP_REPLY = 2
ETHER_HEADER = 14
ARP_BODY = struct.Struct("!HHBBH6s4s6s4s")
#: How long :meth:`AddressHolder.responders` listens for replies by default (seconds).
RESPONDERS_WAIT = 0.2
ETHER_BROADCAST = b"\xff" * 6
ETHER_ZERO = b"\x00" * 6
#: Ethernet frames shorter than this (without FCS) are padded on the wire.
ETHER_MIN_FRAME = 60
MAC_LENGTH = 6

# -- Neighbor Discovery (RFC 4861) ------------------------------------------

ICMPV6_NEIGHBOR_SOLICIT = 135
ICMPV6_NEIGHBOR_ADVERT = 136
ND_OPT_SOURCE_LINKADDR = 1
ND_OPT_TARGET_LINKADDR = 2
#: The Override flag: replace the cached link-layer address.
NA_FLAG_OVERRIDE = 0x20000000
#: Receivers drop ND packets whose hop limit is not 255 (RFC 4861 7.1.2).
ND_HOP_LIMIT = 255
ALL_NODES = ipaddress.IPv6Address("ff02::1")
#: Its text, as the socket calls take it: formatting an IPv6 address per announced VIP showed in a takeover's profile.
ALL_NODES_TEXT = str(ALL_NODES)
#: Socket option (linux/icmpv6.h) and a filter that blocks every ICMPv6 type.
ICMPV6_FILTER = 1
ICMPV6_FILTER_BLOCK_ALL = b"\xff" * 32


def _parse_mac(text: str | None) -> bytes:
    if not text:
        return ETHER_ZERO
    return bytes.fromhex(text.replace(":", ""))


def _as_address(value: IPAddress | str) -> IPAddress:
    return value if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) else ipaddress.ip_address(value)


def _unique(vips: Iterable[IPAddress | str]) -> tuple[IPAddress, ...]:
    return tuple(dict.fromkeys(_as_address(v) for v in vips))


@attrs.frozen
class LinkEvent:
    """An interface appeared, changed or went away (rtnetlink ``RTM_NEWLINK`` / ``RTM_DELLINK``)."""

    name: str
    #: The kernel's ifindex: a re-created interface gets a new one.
    index: int
    #: False: the interface was deleted.
    present: bool
    #: Administratively up.
    admin_up: bool = False
    #: Carrier (``IFF_LOWER_UP``).
    carrier: bool = False

    @property
    def up(self) -> bool:
        return self.present and self.admin_up and self.carrier

    def describe(self) -> str:
        """Why the link is not usable, in words (or ``"is up"``)."""
        if not self.present:
            return f"{self.name} was deleted"
        if not self.admin_up:
            return f"{self.name} is down"
        if not self.carrier:
            return f"{self.name} lost carrier"
        return f"{self.name} is up (ifindex {self.index})"


async def _nothing() -> AsyncIterator[Any]:
    """An empty async iterator (no address dump)."""
    return
    yield


@attrs.frozen
class InterfaceInfo:
    """A network interface as the holder sees it."""

    name: str
    index: int
    mac: bytes
    #: Administratively up and with carrier.
    up: bool
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: tuple[ipaddress.IPv6Interface, ...] = ()

    def primary(self, family: Family) -> IPAddress | None:
        """IPv4: the first address that is not a /32 (the primary); IPv6: the fe80:: link-local."""
        if family is Family.IPV4:
            for v4 in self.ipv4:
                if v4.network.prefixlen != IPV4_HOST_PREFIX:
                    return v4.ip
            return None
        for v6 in self.ipv6:
            if v6.ip.is_link_local:
                return v6.ip
        return None

    def addresses(self) -> frozenset[IPAddress]:
        """Every address on the interface, without prefixes."""
        return frozenset([i.ip for i in self.ipv4] + [i.ip for i in self.ipv6])


@attrs.frozen
class AnnounceSchedule:
    """When to announce held VIPs: a burst of ``count`` announcements
    ``interval`` seconds apart, then one every ``refresh`` seconds (never if None).

    ``initial_delay`` postpones the burst, for callers that sent the first
    announcement themselves.
    """

    count: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    interval: float = attrs.field(default=0.2, validator=attrs.validators.ge(0.0))
    refresh: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0.0))
    )
    initial_delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None, *, field: str = "garp") -> "AnnounceSchedule":
        """Build from a config mapping ``{count, interval, refresh}``; missing keys take defaults.

        Raises :class:`~vipcore.core.errors.ConfigError` naming the bad key.
        """
        section = dict(section or {})
        unknown = set(section) - {"count", "interval", "refresh"}
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; expected count, interval, refresh", field=field)
        kwargs: dict[str, Any] = {}
        try:
            if "count" in section:
                kwargs["count"] = int(section["count"])
            if "interval" in section:
                kwargs["interval"] = float(section["interval"])
            if "refresh" in section:
                refresh = section["refresh"]
                kwargs["refresh"] = None if refresh in (None, 0, "") else float(refresh)
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"{exc}; count must be an integer >= 0, interval a number >= 0, refresh a number > 0 or null",
                field=field,
            ) from None


# -- packets (pure) -----------------------------------------------------------


def gratuitous_arp(mac: bytes, vip: ipaddress.IPv4Address) -> bytes:
    """A broadcast Ethernet frame carrying an ARP request with sender = target = ``vip``."""
    arp = struct.pack(
        "!HHBBH6s4s6s4s",
        ARP_HTYPE_ETHERNET,
        ETH_P_IP,
        MAC_LENGTH,
        4,
        ARP_OP_REQUEST,
        mac,
        vip.packed,
        ETHER_ZERO,
        vip.packed,
    )
    frame = ETHER_BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp
    return frame.ljust(ETHER_MIN_FRAME, b"\x00")


def arp_request(mac: bytes, sender: ipaddress.IPv4Address | None, target: ipaddress.IPv4Address) -> bytes:
    """A broadcast "who has ``target``" from ``mac`` (sender 0.0.0.0 if None: an RFC 5227 probe)."""
    arp = ARP_BODY.pack(ARP_HTYPE_ETHERNET, ETH_P_IP, MAC_LENGTH, 4, ARP_OP_REQUEST, mac,
                        (sender or ipaddress.IPv4Address(0)).packed, ETHER_ZERO, target.packed)
    frame = ETHER_BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp
    return frame.ljust(ETHER_MIN_FRAME, b"\x00")


def arp_reply_sender(frame: bytes, target: ipaddress.IPv4Address) -> bytes | None:
    """The MAC that ``frame`` says answers for ``target`` (an ARP reply from it), else None."""
    if len(frame) < ETHER_HEADER + ARP_BODY.size or frame[12:14] != struct.pack("!H", ETH_P_ARP):
        return None
    _, ptype, _, _, op, sender_mac, sender_ip, _, _ = ARP_BODY.unpack_from(frame, ETHER_HEADER)
    if ptype != ETH_P_IP or op != ARP_OP_REPLY or sender_ip != target.packed:
        return None
    return bytes(sender_mac)


def parse_link_messages(data: bytes) -> list["LinkEvent"]:
    """The ``RTM_NEWLINK`` / ``RTM_DELLINK`` messages in one netlink datagram (others skipped)."""
    events: list[LinkEvent] = []
    for kind, _, offset, length in messages(data):
        if kind in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSG_HEADER.size + IFINFO.size:
            link = parse_link(data, offset, length)
            events.append(LinkEvent(name=link.name, index=link.index, present=kind == RTM_NEWLINK,
                                    admin_up=bool(link.flags & IFF_UP), carrier=bool(link.flags & IFF_LOWER_UP)))
    return events


def solicited_node(address: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    """The solicited-node multicast address of ``address`` (RFC 4291): ff02::1:ffXX:XXXX."""
    return ipaddress.IPv6Address(b"\xff\x02" + b"\x00" * 9 + b"\x01\xff" + address.packed[13:])


def neighbor_solicitation(mac: bytes, target: ipaddress.IPv6Address) -> bytes:
    """An ICMPv6 Neighbor Solicitation for ``target`` with our link-layer address (checksum by the kernel)."""
    option = struct.pack("!BB6s", ND_OPT_SOURCE_LINKADDR, 1, mac)
    return struct.pack("!BBHI16s", ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, target.packed) + option


def na_responder(message: bytes, source: str, target: ipaddress.IPv6Address) -> bytes | None:
    """Who ``message`` (an ICMPv6 packet from ``source``) says answers for ``target``:
    the target link-layer address of a Neighbor Advertisement, else its source address; None if not one."""
    if len(message) < 24 or message[0] != ICMPV6_NEIGHBOR_ADVERT or message[8:24] != target.packed:
        return None
    offset = 24
    while offset + 8 <= len(message):
        kind, units = message[offset], message[offset + 1]
        if units == 0:
            break
        if kind == ND_OPT_TARGET_LINKADDR:
            return bytes(message[offset + 2: offset + 8])
        offset += units * 8
    return source.split("%", 1)[0].encode()


def icmpv6_filter_only(kind: int) -> bytes:
    """An ``ICMP6_FILTER`` value that passes ICMPv6 type ``kind`` alone (a set bit blocks)."""
    words = [0xFFFFFFFF] * 8
    words[kind >> 5] &= ~(1 << (kind & 31)) & 0xFFFFFFFF
    return struct.pack("=8I", *words)


def unsolicited_na(mac: bytes, vip: ipaddress.IPv6Address) -> bytes:
    """An ICMPv6 Neighbor Advertisement for ``vip`` with Override set and the
    target link-layer address option. The checksum is left 0: the kernel
    fills it in for raw ICMPv6 sockets."""
    option = struct.pack("!BB6s", ND_OPT_TARGET_LINKADDR, 1, mac)
    return struct.pack("!BBHI16s", ICMPV6_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, vip.packed) + option


ETH_P_IPV6 = 0x86DD
#: The Ethernet address of the all-nodes group ff02::1 (RFC 2464: 33:33 and the group's last 32 bits).
ALL_NODES_MAC = b"\x33\x33" + ALL_NODES.packed[12:]
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
IPPROTO_ICMPV6 = 58


def _icmpv6_checksum(source: bytes, destination: bytes, message: bytes) -> int:
    """The ICMPv6 checksum of ``message`` (its checksum field 0) over the IPv6 pseudo-header (RFC 4443 2.3)."""
    return internet_checksum(source + destination + struct.pack("!I3xB", len(message), IPPROTO_ICMPV6) + message)


def unsolicited_na_frame(mac: bytes, vip: ipaddress.IPv6Address) -> bytes:
    """:func:`unsolicited_na` as a whole Ethernet frame for an ``AF_PACKET`` socket: from ``vip`` (as the
    kernel sends its own) to ff02::1, hop limit 255, checksum filled in (no kernel does it on this path)."""
    message = bytearray(unsolicited_na(mac, vip))
    struct.pack_into("!H", message, 2, _icmpv6_checksum(vip.packed, ALL_NODES.packed, bytes(message)))
    header = _IPV6_HEADER.pack(6 << 28, len(message), IPPROTO_ICMPV6, ND_HOP_LIMIT, vip.packed, ALL_NODES.packed)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + header + bytes(message)


def announcement_frames(mac: bytes, vips: Iterable[IPAddress]) -> tuple[bytes, ...]:
    """The Ethernet frames of one announcement of ``vips``: a gratuitous ARP per IPv4 VIP, an unsolicited
    NA per IPv6 VIP, in order."""
    return tuple(gratuitous_arp(mac, vip) if isinstance(vip, ipaddress.IPv4Address) else unsolicited_na_frame(mac, vip)
                 for vip in vips)


@attrs.frozen
class TakeoverPlan:
    """The bytes that put ``vips`` on one interface and announce them, built in advance for a process that
    only sends them (``native_vrrp``'s liveness worker claims a lost peer's groups with it).

    ``netlink``: ``NETLINK_ROUTE`` datagrams of ``RTM_NEWADDR`` messages (exclusive create, acknowledged:
    the holder's own :func:`~vipcore.net.rtnetlink.address_message`, so ``EEXIST`` means "already so"),
    at most :data:`~vipcore.net.rtnetlink.MAX_BATCH` a datagram; ``frames``: whole Ethernet frames
    (:func:`announcement_frames`) for an ``AF_PACKET`` socket on ``interface``. Valid for the interface's
    index and MAC it was built with: a plan is rebuilt when they may have changed."""

    interface: str
    index: int
    vips: tuple[IPAddress, ...]
    netlink: tuple[bytes, ...]
    frames: tuple[bytes, ...]


def takeover_plan(info: InterfaceInfo, vips: Iterable[IPAddress | str]) -> TakeoverPlan:
    """The :class:`TakeoverPlan` of ``vips`` on ``info``'s interface (pure)."""
    wanted = _unique(vips)
    datagrams = tuple(b"".join(address_message(True, info.index, vip, start + offset + 1)
                               for offset, vip in enumerate(wanted[start:start + MAX_BATCH]))
                      for start in range(0, len(wanted), MAX_BATCH))
    return TakeoverPlan(interface=info.name, index=info.index, vips=wanted, netlink=datagrams,
                        frames=announcement_frames(info.mac, wanted))


def claim_sockets() -> tuple[socket.socket, socket.socket]:
    """The two sockets a :class:`TakeoverPlan` is sent with, in this process's namespace: a ``NETLINK_ROUTE``
    socket (bound, acknowledgements capped) and an ``AF_PACKET`` socket that only sends (protocol 0).
    Raises :class:`OSError` (no ``CAP_NET_RAW``, for one)."""
    netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    try:
        # As the holder's own channel: room for a plan's acks, read after all its datagrams went.
        prepare_netlink(netlink)
        packet = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError:
        netlink.close()
        raise
    return netlink, packet


# -- retries ------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, NetlinkDumpInterrupted):
        return True
    if isinstance(exc, NetlinkError):
        return exc.code in _TRANSIENT
    return isinstance(exc, OSError) and exc.errno in _TRANSIENT


#: The one retry policy for netlink calls: transient errors only, bounded.
NETLINK_RETRY = tenacity.retry(
    retry=tenacity.retry_if_exception(_transient),
    stop=tenacity.stop_after_attempt(NETLINK_ATTEMPTS),
    wait=tenacity.wait_fixed(NETLINK_RETRY_WAIT),
    before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
    reraise=True,
)


@attrs.define
class AnnounceCounters:
    """What the holder sent, for metrics."""

    garp_sent: int = 0
    na_sent: int = 0
    errors: int = 0


@attrs.define
class NetlinkCounters:
    """What the holder asked of rtnetlink on its own socket (not the pyroute2 dumps)."""

    #: ``sendmsg`` calls carrying address changes: one per batch of up to
    #: :data:`~vipcore.net.rtnetlink.MAX_BATCH` messages.
    batches: int = 0
    #: Of the batches, those sent at the end of the pass that queued them (:meth:`AddressHolder.send_queued`).
    early: int = 0
    #: Of those, the ones whose replies were all there and final at once: their callers answered in that pass.
    answered_early: int = 0
    #: Address messages (one per VIP added or removed) in them.
    changes: int = 0
    #: Interfaces read by name: the link cache was empty or invalidated.
    lookups: int = 0
    #: Address dumps (the split-brain probe's, one a round and interface).
    dumps: int = 0


@attrs.define(eq=False)
class _Change:
    """One caller's ``add`` / ``remove``, waiting in the holder's queue for the next batch."""

    add: bool
    interface: str
    index: int
    vips: tuple[IPAddress, ...]
    done: asyncio.Future[tuple[IPAddress, ...]]
    changed: set[IPAddress] = attrs.Factory(set)
    #: VIPs whose acknowledgement was lost (ENOBUFS) and that were sent again:
    #: "already so" on the second try means the first one did it.
    lost: set[IPAddress] = attrs.Factory(set)
    error: Exception | None = None

    @property
    def verb(self) -> str:
        return "add" if self.add else "del"

    def fail(self, error: Exception) -> None:
        if self.error is None:  # the first failure names the change
            self.error = error

    def finish(self) -> None:
        if self.done.done():  # the caller was cancelled; the kernel did the work anyway
            return
        if self.error is not None:
            self.done.set_exception(self.error)
        else:
            self.done.set_result(tuple(v for v in self.vips if v in self.changed))


class _Turn:
    """The request channel's one user at a time (an exchange: requests out, their replies read).

    Like :class:`asyncio.Lock`, in turn; unlike it, :meth:`take_now` takes it without waiting (when nobody
    holds it or waits for it): the synchronous send at the end of a takeover's pass, whose replies are
    read later by the flusher, which then gives it back.
    """

    def __init__(self) -> None:
        self._held = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def locked(self) -> bool:
        return self._held or any(not w.done() for w in self._waiters)

    def take_now(self) -> bool:
        if self.locked():
            return False
        self._held = True
        return True

    async def take(self) -> None:
        if self.take_now():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed the turn, then cancelled before using it: on to the next one
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def give(self) -> None:
        """Hand the turn to the first waiter still waiting (it stays held), else free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._held = False

    async def __aenter__(self) -> None:
        await self.take()

    async def __aexit__(self, *exc: object) -> None:
        self.give()


@attrs.define(eq=False)
class _Posted:
    """Address messages that went out in one ``sendmsg``; their replies are still to be read."""

    channel: RtnetlinkChannel
    sent: dict[int, tuple[_Change, IPAddress]]
    #: Replies already read (:meth:`AddressHolder.send_queued` reads what is there at once).
    result: Exchange = attrs.Factory(Exchange)


class AddressHolder:
    """Adds, removes, lists and announces VIPs; one per agent.

    Use as an async context manager or call :meth:`close`. All methods are
    coroutines except :meth:`start_announcing`, which returns a task.
    """

    def __init__(self, *, netns: str | None = None) -> None:
        self.netns = netns
        self.counters = AnnounceCounters()
        self.netlink = NetlinkCounters()
        self._ipr: Any = None
        self._lock = asyncio.Lock()
        # The hot path (add, remove, announce) uses a request socket of its
        # own and a link cache kept honest by a link-event subscription.
        self._channel: RtnetlinkChannel | None = None
        self._channel_lock = _Turn()
        self._watch: socket.socket | None = None
        self._links: dict[str, InterfaceInfo] = {}
        self._queue: list[_Change] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Whether the flusher has started on a batch (the queue then waits for it).
        self._flushing = False
        #: A batch :meth:`send_queued` sent; the flusher reads its replies (it holds the channel's turn).
        self._posted: tuple[list[_Change], _Posted] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._packet_socket: socket.socket | None = None
        self._nd_sockets: dict[str, tuple[int, socket.socket]] = {}
        self._arp_listeners: dict[str, tuple[int, socket.socket]] = {}
        #: Takeover plans built, by interface and VIPs, with the link entry they were built from.
        self._plans: dict[tuple[str, tuple[IPAddress, ...]], tuple[InterfaceInfo, TakeoverPlan]] = {}

    async def __aenter__(self) -> "AddressHolder":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every announcing task and close the netlink socket. Held addresses stay."""
        tasks = list(self._tasks)
        if self._flusher is not None:
            tasks.append(self._flusher)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A flusher cancelled before its first step never ran its cleanup.
        self._abandon(self._drop_posted() + self._queue)
        self._queue = []
        self._close_sockets()
        self._reset()
        self._close_channel()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        self._links.clear()

    def _reset(self) -> None:
        if self._ipr is not None:
            try:
                self._ipr.close()
            except Exception:  # closing a broken socket must not mask the real error
                log.debug("closing netlink socket failed", exc_info=True)
            self._ipr = None

    def _where(self) -> str:
        return f"network namespace {self.netns!r}" if self.netns else "this node"

    @NETLINK_RETRY
    async def _call(self, interface: str, operation: Callable[[Any], Any]) -> Any:
        """Run ``operation(ipr)`` under the lock; reopen the socket after an overflow."""
        async with self._lock:
            if self._ipr is None:
                # flags=0: a misspelt namespace raises instead of being created.
                self._ipr = AsyncIPRoute(netns=self.netns, flags=0)
            try:
                return await operation(self._ipr)
            except FileNotFoundError:
                self._reset()
                raise AddressError(interface, f"network namespace {self.netns!r} does not exist") from None
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self._reset()
                raise

    def _error(self, interface: str, exc: NetlinkError | OSError, action: str) -> Exception:
        code = exc.code if isinstance(exc, NetlinkError) else exc.errno
        if code in _NO_INTERFACE:
            return InterfaceNotFoundError(interface, self._where())
        return AddressError(interface, f"{action} failed: {exc.args[-1]} (errno {code})")

    def _errno_error(self, interface: str, code: int, action: str) -> Exception:
        return self._error(interface, OSError(code, os.strerror(code)), action)

    # -- the hot path: hand-packed rtnetlink on a socket of our own ------------

    def _netlink_socket(self, interface: str) -> socket.socket:
        try:
            return self._socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        except FileNotFoundError:
            raise AddressError(interface, f"network namespace {self.netns!r} does not exist") from None
        except OSError as exc:
            raise AddressError(interface, f"opening a netlink socket failed: {exc.strerror}") from None

    def _rtnl(self, interface: str) -> RtnetlinkChannel:
        if self._channel is None:
            self._channel = RtnetlinkChannel(self._netlink_socket(interface))
        return self._channel

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _watch_links(self, interface: str) -> None:
        """Drop cached links that changed since the last look (one non-blocking read, usually empty).

        The subscription exists before the first lookup, so no change that
        follows a lookup goes unseen: a re-created interface (new index, new
        MAC), a renamed one, a changed MAC. An overflowed subscription lost
        events: forget every link.
        """
        if self._watch is None:
            sock = self._netlink_socket(interface)
            try:
                sock.setblocking(False)
                sock.bind((0, RTMGRP_LINK))
            except OSError:
                sock.close()
                raise
            self._watch = sock
            self._links.clear()
            return
        try:
            while True:
                for event in parse_link_messages(self._watch.recv(NETLINK_BUFFER)):
                    self._forget(event.name, event.index)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._links.clear()

    def _forget(self, name: str, index: int | None = None) -> None:
        self._links.pop(name, None)
        if index is not None:
            for other in [n for n, info in self._links.items() if info.index == index]:
                del self._links[other]

    async def _link(self, name: str) -> InterfaceInfo:
        """Index and MAC of ``name`` (no addresses), from the cache when nothing changed since."""
        self._watch_links(name)
        cached = self._links.get(name)
        if cached is not None:
            return cached
        info = await self._read_link(name)
        self._links[name] = info
        return info

    async def _read_link(self, name: str) -> InterfaceInfo:
        if not name or len(name.encode()) >= IFNAMSIZ:  # the kernel would answer EINVAL
            raise InterfaceNotFoundError(name, self._where())
        async with self._channel_lock:
            channel = self._rtnl(name)
            seq = channel.next_seq()
            self.netlink.lookups += 1
            try:
                result = await channel.exchange([(seq, link_request(name, seq))])
            except OSError as exc:
                self._close_channel()
                raise self._errno_error(name, exc.errno or errno.ETIMEDOUT, "looking up the interface") from None
        reply = result.replies.get(seq)
        if reply is None:
            raise self._errno_error(name, errno.ENOBUFS, "looking up the interface")
        if reply.error:
            raise self._errno_error(name, reply.error, "looking up the interface")
        link = next((parse_link(reply.data, offset, length) for kind, _, offset, length in messages(reply.data)
                     if kind == RTM_NEWLINK), None)
        if link is None:
            raise AddressError(name, "looking up the interface failed: the kernel's reply carried no link")
        return InterfaceInfo(name=name, index=link.index, mac=link.mac or ETHER_ZERO,
                             up=bool(link.flags & IFF_UP) and bool(link.flags & IFF_LOWER_UP))

    async def _addresses(self, name: str) -> tuple[InterfaceInfo, list[Address]]:
        """``name`` (index and MAC, as :meth:`_link`) and its addresses, dumped on the hand-packed channel.

        What the split-brain probe reads every round: through pyroute2 the
        dump of a node's ~500 VIPs cost ~40 ms of CPU, parsed into objects
        the probe mostly threw away; here it is a few milliseconds.
        """
        info = await self._link(name)
        async with self._channel_lock:
            channel = self._rtnl(name)
            seq = channel.next_seq()
            self.netlink.dumps += 1
            try:
                datagrams = await channel.dump(seq, address_dump_request(seq))
            except OSError as exc:
                if exc.errno not in (errno.EINTR, errno.EBUSY):
                    self._close_channel()
                raise self._errno_error(name, exc.errno or errno.EIO, "listing addresses") from None
            except TimeoutError:
                self._close_channel()
                raise self._errno_error(name, errno.ETIMEDOUT, "listing addresses") from None
        return info, [a for data in datagrams for a in parse_addresses(data, info.index)]

    # -- link events ------------------------------------------------------------

    async def link_events(self, subscribed: Callable[[], None] | None = None) -> AsyncIterator[LinkEvent]:
        """Every link change in the holder's namespace, as it happens, until cancelled.

        A netlink socket of its own subscribed to ``RTMGRP_LINK`` (a plain
        socket, parsed here: a second pyroute2 socket in the same loop was
        seen to hang the agent's start), so waiting for events never holds
        up address changes. The caller re-reads the state it cares about once
        subscribed (``subscribed`` is called then; earlier events are not
        replayed) and after an error: an overflowed socket (ENOBUFS) loses
        events and raises :class:`OSError`.
        """
        sock = self._socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            sock.setblocking(False)
            sock.bind((0, RTMGRP_LINK))
            if subscribed is not None:
                subscribed()
            loop = asyncio.get_running_loop()
            while True:
                data = await loop.sock_recv(sock, NETLINK_BUFFER)
                for event in parse_link_messages(data):
                    yield event
        finally:
            sock.close()

    # -- queries --------------------------------------------------------------

    async def interface(self, name: str, *, addresses: bool = True) -> InterfaceInfo:
        """Describe interface ``name``; raises InterfaceNotFoundError if it does not exist.

        ``addresses=False`` skips the address dump (``ipv4``/``ipv6`` stay
        empty): an announcement needs only the index and the MAC, and the
        dump grows with every VIP held (128 VIPs made announcing the largest
        CPU cost of a node holding 64 dual-stack groups).
        """

        async def query(ipr: Any) -> InterfaceInfo:
            links = [link async for link in await ipr.get_links(ifname=name)]
            if not links:
                raise InterfaceNotFoundError(name, self._where())
            link = links[0]
            index = int(link["index"])
            v4: list[ipaddress.IPv4Interface] = []
            v6: list[ipaddress.IPv6Interface] = []
            dump = await ipr.get_addr(index=index) if addresses else _nothing()
            async for msg in dump:
                text = f"{msg.get('address')}/{msg['prefixlen']}"
                if msg["family"] == socket.AF_INET:
                    v4.append(ipaddress.IPv4Interface(text))
                elif msg["family"] == socket.AF_INET6:
                    v6.append(ipaddress.IPv6Interface(text))
            flags = int(link["flags"])
            return InterfaceInfo(
                name=name,
                index=index,
                mac=_parse_mac(link.get("address")),
                up=bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP),
                ipv4=tuple(v4),
                ipv6=tuple(v6),
            )

        try:
            result: InterfaceInfo = await self._call(name, query)
        except (NetlinkError, OSError) as exc:
            raise self._error(name, exc, "reading the interface") from None
        return result

    async def interfaces(self) -> tuple[str, ...]:
        """Names of every interface (in the holder's namespace), by index."""

        async def dump(ipr: Any) -> list[tuple[int, str]]:
            return [(int(link["index"]), str(link.get("ifname"))) async for link in await ipr.get_links()]

        try:
            links: list[tuple[int, str]] = await self._call("*", dump)
        except (NetlinkError, OSError) as exc:
            raise self._error("*", exc, "listing interfaces") from None
        return tuple(name for _, name in sorted(links))

    async def _host_addresses(self, name: str) -> dict[IPAddress, int]:
        """Host-prefix addresses on ``name`` with their IFA flags."""
        index = (await self._link(name)).index

        async def dump(ipr: Any) -> dict[IPAddress, int]:
            found: dict[IPAddress, int] = {}
            async for msg in await ipr.get_addr(index=index):
                host = IPV4_HOST_PREFIX if msg["family"] == socket.AF_INET else IPV6_HOST_PREFIX
                if msg["prefixlen"] == host:
                    flags = msg.get("IFA_FLAGS")
                    found[ipaddress.ip_address(msg.get("address"))] = int(flags if flags is not None else msg["flags"])
            return found

        try:
            result: dict[IPAddress, int] = await self._call(name, dump)
        except (NetlinkError, OSError) as exc:
            raise self._error(name, exc, "listing addresses") from None
        return result

    async def held(self, interface: str) -> frozenset[IPAddress]:
        """Host-prefix addresses (/32, /128) on ``interface``."""
        return frozenset(await self._host_addresses(interface))

    async def tentative(self, interface: str) -> frozenset[IPAddress]:
        """Host-prefix addresses on ``interface`` still in duplicate address detection."""
        return frozenset(a for a, f in (await self._host_addresses(interface)).items() if f & IFA_F_TENTATIVE)

    # -- changes --------------------------------------------------------------

    def _change(self, add: bool, interface: str, vips: Iterable[IPAddress | str]) -> Awaitable[tuple[IPAddress, ...]]:
        """Queue the change now when the interface is known (its index cached and no link event since),
        else once it is looked up; the result is awaited later.

        Queued when asked, not when awaited: routers that take over in one pass of the loop (a node
        died) queue their VIPs in that pass, and the batch goes out in the next one — not a pass
        later, once each router's task has started, with received packets and timers run first."""
        wanted = _unique(vips)
        queued = self._change_now(add, interface, wanted)
        return queued if queued is not None else self._change_later(add, interface, wanted)

    def _change_now(self, add: bool, interface: str,
                    wanted: tuple[IPAddress, ...]) -> asyncio.Future[tuple[IPAddress, ...]] | None:
        """The change queued in this pass when the interface is known; None (nothing queued) otherwise."""
        if not (wanted and interface in self._links):
            return None
        try:
            self._watch_links(interface)  # a link event since the lookup forgets the cached index
        except Exception:  # the lookup (the caller's later one) meets it again and raises it to whoever awaits
            pass
        cached = self._links.get(interface)
        return self._queue_change(add, interface, cached.index, wanted) if cached is not None else None

    def add_now(self, interface: str, vips: Iterable[IPAddress | str]) -> asyncio.Future[tuple[IPAddress, ...]] | None:
        """:meth:`add`, only if it can be queued in this pass (the interface known): its future, or None
        and nothing asked (a takeover's VIPs claimed before its router decides, ``native_vrrp``)."""
        return self._change_now(True, interface, _unique(vips))

    def takeover_plan(self, interface: str, vips: Iterable[IPAddress | str]) -> TakeoverPlan | None:
        """The :class:`TakeoverPlan` of ``vips`` on ``interface`` from the link cache (index and MAC as the
        holder's own changes and announcements use them); None when the interface is not known yet or a
        link event since its lookup made it stale (nothing built from a guess)."""
        wanted = _unique(vips)
        if not wanted or interface not in self._links:
            return None
        try:
            self._watch_links(interface)  # a link event since the lookup forgets the cached entry
        except Exception:
            return None
        info = self._links.get(interface)
        if info is None:
            return None
        # Asked again after every burst of transitions, mostly for the same VIPs: built once per link
        # entry (a new one, after a link event, builds afresh).
        cached = self._plans.get((interface, wanted))
        if cached is not None and cached[0] is info:
            return cached[1]
        if len(self._plans) >= 1024:
            self._plans.clear()
        plan = takeover_plan(info, wanted)
        self._plans[interface, wanted] = (info, plan)
        return plan

    async def _change_later(self, add: bool, interface: str, wanted: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        if not wanted:
            return ()
        index = (await self._link(interface)).index
        return await self._queue_change(add, interface, index, wanted)

    def _queue_change(self, add: bool, interface: str, index: int,
                      wanted: tuple[IPAddress, ...]) -> asyncio.Future[tuple[IPAddress, ...]]:
        loop = asyncio.get_running_loop()
        change = _Change(add=add, interface=interface, index=index, vips=wanted, done=loop.create_future())
        self._queue.append(change)
        if self._flusher is None:
            # The task's first step runs in the next pass of the loop, after
            # every router woken in this pass has queued its change: one batch.
            self._flusher = loop.create_task(self._flush(), name="address changes")
        return change.done

    def send_queued(self) -> bool:
        """Send the queued changes now, in this pass of the loop; their replies are read in the next one.

        For the end of a pass that queued many changes (a node died: every group it held taken in one
        pass), so nothing else the loop has ready — received adverts, periodic adverts — runs before the
        kernel has the VIPs: it carries out ``NETLINK_ROUTE`` requests inside the ``sendmsg``. Callers
        await their changes as before, each gets its own result. Nothing is sent (False) when nothing is
        queued, the flusher is already at work, or the channel is in use; the flusher then sends them as
        usual. At most :data:`MAX_BATCH` messages go now, the rest with the replies."""
        if not self._queue or self._flusher is None or self._flushing or self._posted is not None:
            return False
        if not self._channel_lock.take_now():
            return False
        batch = self._queue
        chunk = [(change, vip) for change in batch for vip in change.vips][:MAX_BATCH]
        try:
            posted = self._post(chunk)
        except (AddressError, OSError) as exc:  # left to the flusher, which meets it again and answers
            if isinstance(exc, OSError):
                self._close_channel()
            self._channel_lock.give()
            return False
        self._queue = []
        self.netlink.early += 1
        if len(chunk) == sum(len(change.vips) for change in batch) and self._answered(posted):
            # The kernel did the work inside the sendmsg and every reply is final: the callers are
            # answered in this pass (a takeover announces its VIPs before the pass ends).
            self._judge(posted.sent, posted.result, {})
            self._channel_lock.give()
            self._finish(batch)
            self.netlink.answered_early += 1
            return True
        self._posted = (batch, posted)
        return True

    @staticmethod
    def _answered(posted: _Posted) -> bool:
        """Whether every reply of ``posted`` is on the socket now and needs no second try (read into
        ``posted.result``; when not, the flusher reads the rest and judges them all)."""
        wanted = set(posted.sent)
        try:
            posted.channel.read_ready(wanted, posted.result)
        except OSError:  # the flusher meets the socket's failure again and answers it
            return False
        return not wanted and not posted.result.overflowed and all(
            reply.error not in _TRANSIENT for reply in posted.result.replies.values())

    def _drop_posted(self) -> list[_Change]:
        """The changes of a batch sent but never read (the holder closing); the channel's turn given back."""
        if self._posted is None:
            return []
        batch, _ = self._posted
        self._posted = None
        self._close_channel()  # its replies are left unread
        self._channel_lock.give()
        return batch

    async def _flush(self) -> None:
        """Send what is queued, in batches, until the queue stays empty; answer every caller."""
        batch: list[_Change] = []
        self._flushing = True
        try:
            while self._queue or self._posted is not None:
                posted: _Posted | None = None
                if self._posted is not None:
                    (batch, posted), self._posted = self._posted, None
                else:
                    batch, self._queue = self._queue, []
                await self._apply(batch, posted)
                self._finish(batch)
        finally:
            self._flusher = None
            self._flushing = False
            # Cancelled (the holder closed): nobody will send these.
            self._abandon(batch + self._drop_posted() + self._queue)
            self._queue = []

    @staticmethod
    def _finish(batch: list[_Change]) -> None:
        """Log what changed and answer every caller of ``batch``."""
        # One line per interface and direction, not per caller: a takeover of 64 groups logs twice.
        done: dict[tuple[bool, str], list[str]] = {}
        for change in batch:
            done.setdefault((change.add, change.interface), []).extend(
                str(v) for v in change.vips if v in change.changed)
        for (add, interface), changed in done.items():
            if changed:
                log.info("%s %s on %s", "added" if add else "removed", ", ".join(changed), interface)
        for change in batch:
            change.finish()

    @staticmethod
    def _abandon(changes: list[_Change]) -> None:
        for change in changes:
            if not change.done.done():
                change.fail(AddressError(change.interface, "the address holder closed before the change was confirmed"))
                change.finish()

    async def _apply(self, batch: list[_Change], posted: _Posted | None = None) -> None:
        """Every VIP of ``batch`` in as few ``sendmsg`` calls as :data:`MAX_BATCH` allows; retry what can heal.

        ``posted``: the first chunk already went out (:meth:`send_queued`), its replies are read here.

        Acks lost to an overflowed socket are asked again at once as long as
        each round gets some through; a round without progress (a busy
        kernel, a failing socket) counts against :data:`NETLINK_ATTEMPTS`.
        """
        pending = [(change, vip) for change in batch for vip in change.vips]
        last: dict[tuple[int, IPAddress], int] = {}
        failures = 0
        while pending:
            again: list[tuple[_Change, IPAddress]] = []
            for start in range(0, len(pending), MAX_BATCH):
                if start:
                    await asyncio.sleep(0)  # the kernel's work on one batch is the longest the loop waits
                again += await self._send(pending[start:start + MAX_BATCH], last, posted)
                posted = None
            if not again:
                return
            if len(again) == len(pending):
                failures += 1
                if failures >= NETLINK_ATTEMPTS:
                    break
            if any(last.get((id(change), vip)) != errno.ENOBUFS for change, vip in again):
                log.warning("netlink busy; retrying %d address changes", len(again))
                await asyncio.sleep(NETLINK_RETRY_WAIT)
            pending = again
        for change, vip in pending:
            change.fail(self._errno_error(change.interface, last.get((id(change), vip), errno.EBUSY),
                                          f"{change.verb} {vip}"))

    def _post(self, chunk: list[tuple[_Change, IPAddress]]) -> _Posted:
        """One ``sendmsg`` of ``chunk`` (the caller holds the channel's turn). Raises :class:`AddressError`
        (no socket) or :class:`OSError` (the send failed)."""
        channel = self._rtnl(chunk[0][0].interface)
        sent: dict[int, tuple[_Change, IPAddress]] = {}
        requests: list[tuple[int, bytes]] = []
        for change, vip in chunk:
            seq = channel.next_seq()
            sent[seq] = (change, vip)
            requests.append((seq, address_message(change.add, change.index, vip, seq)))
        self.netlink.batches += 1
        self.netlink.changes += len(requests)
        channel.send(requests)
        return _Posted(channel=channel, sent=sent)

    async def _send(self, chunk: list[tuple[_Change, IPAddress]], last: dict[tuple[int, IPAddress], int],
                    posted: _Posted | None = None) -> list[tuple[_Change, IPAddress]]:
        """One ``sendmsg`` of ``chunk`` (unless ``posted``: sent already, the channel's turn held), one wait
        for its acks; returns what is worth another try."""
        if posted is None:
            await self._channel_lock.take()
        try:
            if posted is None:
                posted = self._post(chunk)
            sent = posted.sent
            result = await posted.channel.collect(set(sent) - set(posted.result.replies), posted.result)
        except AddressError as exc:  # no socket
            for change, _ in chunk:
                change.fail(exc)
            return []
        except OSError as exc:  # the socket failed (a TimeoutError too): start afresh
            self._close_channel()
            code = exc.errno or errno.ETIMEDOUT
            for change, vip in chunk:
                last[id(change), vip] = code
            if code in _TRANSIENT:
                return chunk
            for change, vip in chunk:
                change.fail(self._errno_error(change.interface, code, f"{change.verb} {vip}"))
            return []
        finally:
            self._channel_lock.give()
        return self._judge(sent, result, last)

    def _judge(self, sent: dict[int, tuple[_Change, IPAddress]], result: Exchange,
               last: dict[tuple[int, IPAddress], int]) -> list[tuple[_Change, IPAddress]]:
        """Each reply's verdict on its change; returns what is worth another try."""
        again: list[tuple[_Change, IPAddress]] = []
        for seq, (change, vip) in sent.items():
            reply = result.replies.get(seq)
            if reply is None:  # its ack was dropped (ENOBUFS): ask again, the answer tells
                change.lost.add(vip)
                last[id(change), vip] = errno.ENOBUFS
                again.append((change, vip))
                continue
            code = reply.error
            already = errno.EEXIST if change.add else errno.EADDRNOTAVAIL
            if code == 0 or (code == already and vip in change.lost):
                change.changed.add(vip)
            elif code == already:
                pass
            elif code in _TRANSIENT:
                last[id(change), vip] = code
                again.append((change, vip))
            else:
                if code in _NO_INTERFACE:
                    self._forget(change.interface)  # gone or re-created: read it afresh next time
                change.fail(self._errno_error(change.interface, code, f"{change.verb} {vip}"))
        return again

    def add(self, interface: str, vips: Iterable[IPAddress | str]) -> Awaitable[tuple[IPAddress, ...]]:
        """Add each VIP as a /32 or /128 (IPv6 with nodad); awaited, those newly added.

        The change joins the next batch when asked (see :meth:`_change`); await it to learn the result."""
        return self._change(True, interface, vips)

    def remove(self, interface: str, vips: Iterable[IPAddress | str]) -> Awaitable[tuple[IPAddress, ...]]:
        """Remove each VIP's host-prefix address; awaited, those that were present."""
        return self._change(False, interface, vips)

    async def remove_stale(
        self,
        interface: str,
        is_managed: Callable[[IPAddress], bool],
        keep: Iterable[IPAddress | str] = (),
    ) -> tuple[IPAddress, ...]:
        """Remove host-prefix addresses that ``is_managed`` claims, except ``keep``.

        Used at start: a killed holder leaves its VIPs behind.
        """
        kept = set(_unique(keep))
        stale = sorted(
            (a for a in await self.held(interface) if a not in kept and is_managed(a)),
            key=lambda a: (a.version, int(a)),
        )
        return await self.remove(interface, stale)

    # -- announcements --------------------------------------------------------

    def _socket(self, family: int, kind: int, proto: int) -> socket.socket:
        if self.netns is None:
            return socket.socket(family, kind, proto)
        sock: socket.socket = create_socket(self.netns, family, kind, proto, flags=0)
        return sock

    # Announcement sockets stay open for the holder's lifetime: closing an
    # AF_PACKET socket waits for an RCU grace period (~13 ms measured), which
    # would otherwise sit on the failover path of every announcement.

    def _arp_socket(self) -> socket.socket:
        if self._packet_socket is None:
            # Protocol 0: the socket only sends and never queues received frames.
            self._packet_socket = self._socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        return self._packet_socket

    def _nd_socket(self, info: InterfaceInfo) -> socket.socket:
        cached = self._nd_sockets.get(info.name)
        if cached is not None and cached[0] == info.index:
            return cached[1]
        if cached is not None:  # the interface was re-created under the same name
            self._discard_nd(info.name)
        sock = self._socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, info.name.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            # A raw ICMPv6 socket gets a copy of every ICMPv6 packet: block them all.
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, ICMPV6_FILTER_BLOCK_ALL)
        except OSError:
            sock.close()
            raise
        self._nd_sockets[info.name] = (info.index, sock)
        return sock

    def _discard_nd(self, name: str) -> None:
        cached = self._nd_sockets.pop(name, None)
        if cached is not None:
            cached[1].close()

    def _close_sockets(self) -> None:
        for name in list(self._nd_sockets):
            self._discard_nd(name)
        for _, listener in self._arp_listeners.values():
            listener.close()
        self._arp_listeners.clear()
        if self._packet_socket is not None:
            self._packet_socket.close()
            self._packet_socket = None

    def _send_arp(self, info: InterfaceInfo, vips: list[ipaddress.IPv4Address]) -> None:
        sock = self._arp_socket()
        for vip in vips:
            sock.sendto(gratuitous_arp(info.mac, vip), (info.name, ETH_P_ARP))
            self.counters.garp_sent += 1

    def _send_na(self, info: InterfaceInfo, vips: list[ipaddress.IPv6Address]) -> None:
        try:
            sock = self._nd_socket(info)
            for vip in vips:
                message = unsolicited_na(info.mac, vip)
                # Send from the VIP itself, as the kernel does for its own
                # unsolicited NAs; fall back to the kernel's choice (the
                # link-local) when the VIP is not (yet) on the interface.
                pktinfo = struct.pack("16sI", vip.packed, info.index)
                try:
                    sock.sendmsg([message], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                                 0, (ALL_NODES_TEXT, 0, 0, info.index))
                except OSError as exc:
                    if exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
                        raise
                    sock.sendto(message, (ALL_NODES_TEXT, 0, 0, info.index))
                self.counters.na_sent += 1
        except OSError:
            self._discard_nd(info.name)  # the next announcement starts afresh
            raise

    async def announce(self, interface: str, vips: Iterable[IPAddress | str]) -> None:
        """Send one gratuitous ARP per IPv4 VIP and one unsolicited NA per IPv6 VIP."""
        wanted = _unique(vips)
        if not wanted:
            return
        try:
            info = await self._link(interface)
        except (InterfaceNotFoundError, AddressError):
            self.counters.errors += 1
            raise
        self._announce(info, wanted)

    def announce_now(self, interface: str, vips: Iterable[IPAddress | str]) -> bool:
        """:meth:`announce` in this pass, when the interface is known already (False, nothing sent, when
        it is not: the caller awaits :meth:`announce`). The end of a takeover's pass, once
        :meth:`send_queued` answered: every group's announcement goes before anything else the loop has."""
        wanted = _unique(vips)
        info = self._links.get(interface)
        if info is None or not wanted:
            return False
        self._announce(info, wanted)
        return True

    def _announce(self, info: InterfaceInfo, wanted: tuple[IPAddress, ...]) -> None:
        interface = info.name
        v4 = [v for v in wanted if isinstance(v, ipaddress.IPv4Address)]
        v6 = [v for v in wanted if isinstance(v, ipaddress.IPv6Address)]
        try:
            if v4:
                try:
                    self._send_arp(info, v4)
                except OSError:
                    if self._packet_socket is not None:
                        self._packet_socket.close()
                        self._packet_socket = None
                    raise
            if v6:
                self._send_na(info, v6)
        except OSError as exc:
            self.counters.errors += 1
            self._forget(interface)  # perhaps re-created: read its index and MAC afresh next time
            if exc.errno in _NO_INTERFACE:
                raise InterfaceNotFoundError(interface, self._where()) from None
            raise AddressError(interface, f"announcing {', '.join(map(str, wanted))} failed: {exc.strerror}") from None

    async def responders(self, interface: str, vips: Iterable[IPAddress | str],
                         wait: float = RESPONDERS_WAIT) -> dict[IPAddress, frozenset[bytes]]:
        """Who answers for each of ``vips`` on ``interface``, asked all at once and heard for ``wait`` s.

        IPv4: an ARP request; IPv6: a Neighbor Solicitation to the VIP's
        solicited-node group. Each responder is its MAC address (an NA
        without a target link-layer option counts by its source address).
        Exactly one is healthy; two or more is a split brain (or a host
        answering for an address it should not); none, no holder. Our own
        MAC is included when the VIP is on our interface (the kernel does not
        answer its own request). The ND socket is opened per call,
        the ARP one kept open per interface (binding or closing a packet
        socket waits for an RCU grace period).
        """
        wanted = _unique(vips)
        info, addresses = await self._addresses(interface)
        found: dict[IPAddress, set[bytes]] = {vip: set() for vip in wanted}
        own = {a.address for a in addresses}
        for vip in wanted:
            if vip.packed in own:
                found[vip].add(info.mac)
        v4 = [v for v in wanted if isinstance(v, ipaddress.IPv4Address)]
        v6 = [v for v in wanted if isinstance(v, ipaddress.IPv6Address)]
        sender = next((ipaddress.IPv4Address(a.address) for a in addresses
                       if a.family == socket.AF_INET and a.prefixlen != IPV4_HOST_PREFIX), None)
        link_local = next((a.address for a in addresses if a.family == socket.AF_INET6
                           and a.address[0] == 0xFE and a.address[1] & 0xC0 == 0x80  # fe80::/10
                           and not a.flags & IFA_F_UNUSABLE), None)
        try:
            await asyncio.gather(self._ask_arp(info, sender, v4, wait, found),
                                 self._ask_nd(info, link_local, v6, wait, found))
        except OSError as exc:
            stale = self._arp_listeners.pop(interface, None)
            if stale is not None:
                stale[1].close()
            if exc.errno in _NO_INTERFACE:
                raise InterfaceNotFoundError(interface, self._where()) from None
            raise AddressError(interface, f"asking who answers for its VIPs failed: {exc.strerror}") from None
        return {vip: frozenset(macs) for vip, macs in found.items()}

    async def _ask_arp(self, info: InterfaceInfo, sender: ipaddress.IPv4Address | None,
                       vips: list[ipaddress.IPv4Address], wait: float, found: dict[IPAddress, set[bytes]]) -> None:
        if not vips:
            return
        loop = asyncio.get_running_loop()
        sock = self._arp_listener(info)
        try:
            while True:  # what queued up since the last round is stale
                sock.recv(128)
        except (BlockingIOError, InterruptedError):
            pass
        for vip in vips:
            sock.sendto(arp_request(info.mac, sender, vip), (info.name, ETH_P_ARP))
        # By address: a backup hears a reply for every VIP of the round (matching each against every VIP
        # was 65,000 comparisons for 255 of them).
        asked = {vip.packed: vip for vip in vips}
        deadline = loop.time() + wait
        while (left := deadline - loop.time()) > 0:
            try:
                frame = await asyncio.wait_for(loop.sock_recv(sock, 128), left)
            except asyncio.TimeoutError:
                break
            target = asked.get(bytes(frame[ETHER_HEADER + 14: ETHER_HEADER + 18]))
            if target is not None:
                mac = arp_reply_sender(frame, target)
                if mac is not None:
                    found[target].add(mac)

    def _arp_listener(self, info: InterfaceInfo) -> socket.socket:
        """An AF_PACKET socket receiving ARP on ``info``, kept for the holder's lifetime.

        Binding and closing a packet socket with a protocol waits for an RCU
        grace period, which took hundreds of milliseconds on a loaded host and
        stalled every router on the loop: open it once per interface (and
        again only if the interface was re-created).
        """
        cached = self._arp_listeners.get(info.name)
        if cached is not None and cached[0] == info.index:
            return cached[1]
        if cached is not None:
            cached[1].close()
        # Protocol 0 at creation: the one protocol hook is registered by bind().
        sock = self._socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setblocking(False)
            sock.bind((info.name, ETH_P_ARP))
        except OSError:
            sock.close()
            raise
        self._arp_listeners[info.name] = (info.index, sock)
        return sock

    async def _ask_nd(self, info: InterfaceInfo, source: bytes | None, vips: list[ipaddress.IPv6Address],
                      wait: float, found: dict[IPAddress, set[bytes]]) -> None:
        """One Neighbor Solicitation per VIP from ``source`` (the link-local address; None: the kernel's
        choice), and the advertisements heard for ``wait`` s.

        Given a source, the kernel skips its source address selection, which scores every address of
        the interface for every packet: with a node's 255 IPv6 VIPs on it, 50-60 µs per solicitation
        instead of 7 (the probe runs every 30 s over every VIP). Its choice for these link-scope
        destinations is the link-local address anyway.
        """
        if not vips:
            return
        loop = asyncio.get_running_loop()
        sock = self._socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, info.name.encode())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, icmpv6_filter_only(ICMPV6_NEIGHBOR_ADVERT))
            ancillary = [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("16sI", source, info.index))
                         ] if source is not None else None
            for vip in vips:
                message = neighbor_solicitation(info.mac, vip)
                destination = (socket.inet_ntop(socket.AF_INET6, solicited_node(vip).packed), 0, 0, info.index)
                if ancillary is not None:
                    try:
                        sock.sendmsg([message], ancillary, 0, destination)
                        continue
                    except OSError as exc:
                        # The link-local went tentative or away since the dump: the kernel's choice, as before.
                        if exc.errno not in (errno.EADDRNOTAVAIL, errno.EINVAL):
                            raise
                        ancillary = None
                sock.sendto(message, destination)
            asked = {vip.packed: vip for vip in vips}
            deadline = loop.time() + wait
            while (left := deadline - loop.time()) > 0:
                try:
                    message, address = await asyncio.wait_for(loop.sock_recvfrom(sock, 256), left)
                except asyncio.TimeoutError:
                    break
                target = asked.get(bytes(message[8:24]))
                if target is not None:
                    responder = na_responder(message, str(address[0]), target)
                    if responder is not None:
                        found[target].add(responder)
        finally:
            sock.close()

    def start_announcing(
        self, interface: str, vips: Iterable[IPAddress | str], schedule: AnnounceSchedule
    ) -> asyncio.Task[None]:
        """Announce ``vips`` on ``schedule`` in a task; cancel the task to stop.

        A failed announcement is logged and counted, and the schedule goes on:
        a link that comes back up is announced on the next round.
        """
        wanted = _unique(vips)
        task = asyncio.get_running_loop().create_task(
            self._announce_loop(interface, wanted, schedule), name=f"announce {interface}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _announce_loop(self, interface: str, vips: tuple[IPAddress, ...], schedule: AnnounceSchedule) -> None:
        if schedule.initial_delay:
            await asyncio.sleep(schedule.initial_delay)
        for round_ in range(schedule.count):
            if round_:
                await asyncio.sleep(schedule.interval)
            await self._announce_logged(interface, vips)
        if schedule.refresh is None:
            return
        while True:
            await asyncio.sleep(schedule.refresh)
            await self._announce_logged(interface, vips)

    async def _announce_logged(self, interface: str, vips: tuple[IPAddress, ...]) -> None:
        try:
            await self.announce(interface, vips)
        except (InterfaceNotFoundError, AddressError) as exc:
            log.warning("%s", exc)
