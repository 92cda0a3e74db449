"""Raw IP protocol 112 sockets: one :class:`Link` per (interface, family).

Thin on purpose; every rule it follows was reproduced on Linux (see
``docs/native-vrrp.md``):

* The socket is **not bound** to the node's address — a raw socket bound to
  a unicast address receives no multicast adverts. The source is set per
  packet with ``IP_PKTINFO`` / ``IPV6_PKTINFO``.
* ``SO_BINDTODEVICE`` ties it to the interface; the multicast group is
  joined on that interface only, and ``IP_MULTICAST_ALL`` /
  ``IPV6_MULTICAST_ALL`` are switched off so groups joined by other sockets
  do not leak in.
* TTL / hop limit 255 on send; the received TTL is read from the IPv4
  header and the IPv6 hop limit from ``IPV6_HOPLIMIT`` ancillary data.
* Multicast loopback is off: a router never hears itself.

A Link hands each received message to the handler registered for its VRID
(peeked from byte 1; the router validates everything) and counts what it
receives, sends and drops.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs

from vipcore.core.model import Family, IPAddress
from vipcore_native_vrrp.protocol.packet import MULTICAST, PROTOCOL, TTL, peek_vrid

log = logging.getLogger(__name__)

# Missing from Python 3.11's socket module (linux/in.h, linux/in6.h).
IP_PKTINFO = 8
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
IPV4_HEADER_MIN = 20
RECV_BUFFER = 65535
ANCILLARY_BUFFER = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + 64

#: Handler of one VRID: ``(data, src, dst, ttl)``.
Handler = Callable[[bytes, IPAddress, IPAddress, int], None]
#: A cached route: the source and destination objects it was built for, the ancillary data, the socket address.
_Route = tuple[IPAddress, IPAddress, list[tuple[int, int, bytes]], tuple[Any, ...]]


@attrs.define
class LinkCounters:
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)


class Link:
    """A raw VRRP socket on one interface for one address family."""

    def __init__(self, interface: str, family: Family, *, multicast: bool = True) -> None:
        self.interface = interface
        self.family = family
        self.multicast = multicast
        self.counters = LinkCounters()
        self.handlers: dict[int, Handler] = {}
        self.ifindex = socket.if_nametoindex(interface)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._failing = False
        self._sources: dict[str, ipaddress.IPv6Address] = {}
        self._addresses4: dict[bytes, ipaddress.IPv4Address] = {}
        self._routes: dict[tuple[int, int], _Route] = {}
        self.sock = self._open()

    def _open(self) -> socket.socket:
        af = socket.AF_INET if self.family is Family.IPV4 else socket.AF_INET6
        sock = socket.socket(af, socket.SOCK_RAW, PROTOCOL)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.interface.encode())
            group = MULTICAST[self.family]
            if self.family is Family.IPV4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
                mreqn = struct.pack("=4s4si", group.packed, b"\0" * 4, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
                if self.multicast:
                    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, self.ifindex)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                if self.multicast:
                    mreq = struct.pack("=16si", group.packed, self.ifindex)
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        except BaseException:
            sock.close()
            raise
        return sock

    # -- lifecycle ---------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def close(self) -> None:
        """Idempotent: a link closed because its interface vanished is closed again at stop."""
        if self.closed:
            return
        self.closed = True
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    # -- receive ------------------------------------------------------------

    def _readable(self) -> None:
        # Drain everything queued: one wake-up can carry many adverts.
        for _ in range(256):
            try:
                data, ancillary, _flags, address = self.sock.recvmsg(RECV_BUFFER, ANCILLARY_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("receive on %s IPv%d failed: %s", self.interface, self.family, exc)
                return
            self.counters.received += 1
            parsed = self._parse(data, ancillary, address)
            if parsed is None:
                self.counters.dropped["short"] += 1
                continue
            message, src, dst, ttl = parsed
            vrid = peek_vrid(message)
            handler = self.handlers.get(vrid) if vrid is not None else None
            if handler is None:
                self.counters.dropped["unknown_vrid" if vrid is not None else "short"] += 1
                continue
            try:
                handler(message, src, dst, ttl)
            except Exception:  # a bug in one router must not stop the socket
                log.exception("VRID %s on %s: handling an advert failed", vrid, self.interface)

    def _parse(
        self, data: bytes, ancillary: list[tuple[int, int, bytes]], address: tuple[object, ...]
    ) -> tuple[bytes, IPAddress, IPAddress, int] | None:
        if self.family is Family.IPV4:
            # IPv4 raw sockets deliver the IP header: TTL and addresses from it.
            if len(data) < IPV4_HEADER_MIN:
                return None
            ihl = (data[0] & 0x0F) * 4
            if ihl < IPV4_HEADER_MIN or len(data) < ihl:
                return None
            return data[ihl:], self._v4(data[12:16]), self._v4(data[16:20]), data[8]
        hops: int | None = None
        dst6: ipaddress.IPv6Address | None = None
        for level, kind, value in ancillary:
            if level != socket.IPPROTO_IPV6:
                continue
            if kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
                (hops,) = struct.unpack("=i", value[:4])
            elif kind == socket.IPV6_PKTINFO and len(value) >= 16:
                dst6 = ipaddress.IPv6Address(value[:16])
        if hops is None or dst6 is None:
            return None
        text = str(address[0])
        src6 = self._sources.get(text)
        if src6 is None:
            if len(self._sources) > 1024:  # bounded: sources are a handful of peers
                self._sources.clear()
            src6 = self._sources[text] = ipaddress.IPv6Address(text.split("%", 1)[0])
        return data, src6, dst6, hops

    def _v4(self, packed: bytes) -> ipaddress.IPv4Address:
        # Sources and destinations are a handful of peers and one group: parse each once.
        address = self._addresses4.get(packed)
        if address is None:
            if len(self._addresses4) > 1024:
                self._addresses4.clear()
            address = self._addresses4[packed] = ipaddress.IPv4Address(packed)
        return address

    # -- send ---------------------------------------------------------------

    def _route(self, src: IPAddress, dst: IPAddress) -> _Route:
        """The ancillary data and socket address for ``src`` -> ``dst``, built once per pair (every
        advert of a router repeats them; packing and formatting them per send showed in the profile).

        Cached by the identity of the two address objects (a router sends from and to the same objects
        every time; hashing an ``ipaddress`` object runs Python code, ~0.3 µs each): the entry keeps
        them alive, so their ids cannot be reused while it exists.
        """
        if len(self._routes) > 1024:  # bounded: pairs are routers x destinations
            self._routes.clear()
        route: _Route
        if self.family is Family.IPV4:
            pktinfo = struct.pack("=i4s4s", self.ifindex, src.packed, b"\0" * 4)
            route = src, dst, [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], (str(dst), 0)
        else:
            pktinfo6 = struct.pack("=16si", src.packed, self.ifindex)
            route = src, dst, [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo6)], (str(dst), 0, 0, self.ifindex)
        self._routes[(id(src), id(dst))] = route
        return route

    def send(self, data: bytes, src: IPAddress, dst: IPAddress) -> bool:
        """Send one message from ``src`` to ``dst``; a failure is counted, not raised."""
        try:
            route = self._routes.get((id(src), id(dst)))
            if route is None or route[0] is not src or route[1] is not dst:
                route = self._route(src, dst)
            self.sock.sendmsg([data], route[2], 0, route[3])
        except OSError as exc:
            self.counters.send_errors += 1
            # A downed link or a still-tentative source address heals on its
            # own: warn at the first failure of a run, not at every advert.
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            log.log(level, "send on %s from %s to %s failed: %s (%s)", self.interface, src, dst, exc,
                    errno.errorcode.get(exc.errno or 0, "?"))
            return False
        if self._failing:
            self._failing = False
            log.info("sending on %s works again", self.interface)
        self.counters.sent += 1
        return True
