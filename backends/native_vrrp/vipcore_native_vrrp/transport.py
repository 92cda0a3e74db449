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

Steady adverts are sent together: :meth:`Link.queue` keeps a message until
the end of the loop pass and :meth:`Link.flush` sends all of them with one
``sendmmsg`` (issue 14: at 255 groups the 510 ``sendmsg`` calls a second,
their argument parsing and system call entries, were about an eighth of the
agent's CPU). Each message's header is built once per ``Send`` object: a steady
master's is the same one every interval until its configuration changes.

The wire keeps the order the routers decided in: a direct :meth:`Link.send` goes
after what is queued, and while queued messages wait for a full send buffer to
drain, behind them (a resigning master's priority 0 must not reach the backups
before its own last steady advert: RFC 5798 6.4.2).
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs

from vipcore.core.model import Family, IPAddress
from vipcore_native_vrrp.protocol.actions import Send
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


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32), ("msg_iov", ctypes.c_void_p),
                ("msg_iovlen", ctypes.c_size_t), ("msg_control", ctypes.c_void_p),
                ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)


def _libc_sendmmsg() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):  # not glibc / no sendmmsg: each message on its own
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


_sendmmsg = _libc_sendmmsg()
#: What a send into a full send buffer gets: EAGAIN, or ENOBUFS from a raw socket.
_FULL = (errno.EAGAIN, errno.ENOBUFS)
#: A prepared message: the ``Send`` it was built for, its ``mmsghdr``'s bytes (pointers into the buffers
#: that follow, which the entry keeps alive).
_Prepared = tuple[Send, bytes, tuple[object, ...]]


@attrs.define
class LinkCounters:
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    dropped: collections.Counter[str] = attrs.field(factory=collections.Counter)


def _nothing() -> None:
    """What a failure of a message whose sender asked nothing calls (it is counted and logged all the same)."""


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
        #: Prepared messages by the identity of their ``Send`` (a router's cached steady advert).
        self._prepared: dict[int, _Prepared] = {}
        #: Messages queued in this loop pass, and what to call for each one that does not go out.
        self._queued: list[_Prepared] = []
        self._on_failure: list[Callable[[], None]] = []
        #: Waiting for the send buffer to drain (flush() met a full one).
        self._draining = False
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
        """Idempotent: a link closed because its interface vanished is closed again at stop.

        What still waits for the send buffer gets one last try (a stopping master's priority 0 may be
        among it): what does not go out is counted, and reported to its sender, as a failed send.
        """
        if self.closed:
            return
        self.closed = True
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.remove_reader(self.sock.fileno())
            loop.remove_writer(self.sock.fileno())
        self._send_queued(again=False)  # without a loop a full buffer is a failure: nothing is put back
        self._queued, self._on_failure, self._draining = [], [], False
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

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
        """Send one message from ``src`` to ``dst`` now, after what is queued; a failure is counted, not raised.

        The wire keeps the order the routers decided in: what :meth:`queue` holds goes first. If that meets a
        full send buffer, the queued messages wait for it to drain and this one waits behind them (queued
        last, as :meth:`queue` would): a resigning master's priority 0 must not reach the backups before its
        own steady advert, which would reset their Master_Down timer (RFC 5798 6.4.2).

        True if the message went out, or waits behind the queued ones (a full send buffer is no failure:
        ``failed`` is then called, in a later callback, if it does not go out once the buffer drains, counted
        and logged as here); False if it failed now.
        """
        if self._queued:
            self.flush()
            if self._queued:  # they wait for the send buffer to drain: this one behind them
                self._queued.append(self._prepare(Send(data, src, dst), cache=False))
                self._on_failure.append(failed if failed is not None else _nothing)
                return True
        try:
            route = self._routes.get((id(src), id(dst)))
            if route is None or route[0] is not src or route[1] is not dst:
                route = self._route(src, dst)
            self.sock.sendmsg([data], route[2], 0, route[3])
        except OSError as exc:
            self._failed(exc, src, dst)
            return False
        self._sent(1)
        return True

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        """Carry out ``send`` by the end of this loop pass, with the others queued.

        ``send`` is a router's cached steady advert: the message is prepared once per ``Send`` object (and
        again if the object was not seen lately). ``failed`` is called, in a later callback of the pass, if
        the message did not go out (counted and logged as :meth:`send` does); a full send buffer is no
        failure: the message waits for it to drain, ahead of later ones. A message sent with
        :meth:`send` meanwhile goes after the queued ones, waiting behind them too if they wait for the
        buffer. Before :meth:`start`, or without ``sendmmsg``, it is sent at once.
        """
        if self._loop is None or _sendmmsg is None:
            if not self.send(send.data, send.src, send.dst):
                failed()
            return
        prepared = self._prepared.get(id(send))
        if prepared is None or prepared[0] is not send:
            prepared = self._prepare(send)
        if not self._queued:
            self._loop.call_soon(self.flush)
        self._queued.append(prepared)
        self._on_failure.append(failed)

    def flush(self) -> None:
        """Send what :meth:`queue` holds: one ``sendmmsg`` for all of it (more only around a failure).

        Nothing while the queued messages wait for a full send buffer to drain: they go when it does,
        in order, with whatever was queued behind them meanwhile.
        """
        if not self._draining:
            self._send_queued(again=False)

    def _send_queued(self, again: bool) -> None:
        """The queued messages, in order; ``again``: the buffer was full and is said to have room now."""
        queued, on_failure = self._queued, self._on_failure
        self._draining = False
        if not queued:
            return
        self._queued, self._on_failure = [], []
        assert _sendmmsg is not None
        headers = bytearray(b"".join([prepared[1] for prepared in queued]))
        array = (ctypes.c_char * len(headers)).from_buffer(headers)
        fd, count, start = self.sock.fileno(), len(queued), 0
        while start < count:
            done = _sendmmsg(fd, ctypes.byref(array, start * _MMSG_SIZE), count - start, 0)
            if done > 0:
                self._sent(done)
                again = False
                start += done
                continue
            code = ctypes.get_errno() if done < 0 else errno.EIO
            if code == errno.EINTR:
                continue
            if code in _FULL and self._loop is not None and not (again and start == 0):
                # The send buffer is full (a NIC's transmit queue behind it; a wake-up sends hundreds at
                # once; a raw socket says ENOBUFS): the rest goes once it drains, ahead of anything queued
                # meanwhile (direct sends included), and is not reported. A message refused again once the
                # socket said it had room is (no busy loop). Without a loop (closing) there is no later.
                self._queued[:0], self._on_failure[:0] = queued[start:], on_failure[start:]
                self._draining = True
                self._loop.add_writer(fd, self._writable)
                return
            # The kernel stops at the first message that fails: that one is reported, the rest tried again;
            # all of them when closing meets a full buffer (none could go after the refused one).
            end = count if code in _FULL and self._loop is None else start + 1
            for index in range(start, end):
                self._failed(OSError(code, os.strerror(code)), queued[index][0].src, queued[index][0].dst)
                try:
                    on_failure[index]()
                except Exception:  # one router's bug must not keep the others' adverts
                    log.exception("a failed send's handler failed")
            start = end

    def _writable(self) -> None:
        if self._loop is not None:
            self._loop.remove_writer(self.sock.fileno())
        self._send_queued(again=True)

    def _prepare(self, send: Send, cache: bool = True) -> _Prepared:
        """``send`` as an ``mmsghdr`` and the buffers it points into; kept for the next :meth:`queue` of the
        same object if ``cache`` (a direct message waiting for the send buffer is not seen again)."""
        if cache and len(self._prepared) > 1024 and not self._queued:  # bounded: one per router, replaced on a change
            self._prepared.clear()
        data, src, dst = send.data, send.src, send.dst
        if self.family is Family.IPV4:
            name = struct.pack("=H2s4s8x", socket.AF_INET, b"", dst.packed)
            level, kind, info = socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", self.ifindex, src.packed, b"")
        else:
            name = struct.pack("=H2sI16sI", socket.AF_INET6, b"", 0, dst.packed, self.ifindex)
            level, kind, info = socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("=16si", src.packed, self.ifindex)
        control = struct.pack("@Nii", socket.CMSG_LEN(len(info)), level, kind)
        control = (control.ljust(socket.CMSG_LEN(0), b"\0") + info).ljust(socket.CMSG_SPACE(len(info)), b"\0")
        name_buffer = ctypes.create_string_buffer(name, len(name))
        control_buffer = ctypes.create_string_buffer(control, len(control))
        data_buffer = ctypes.c_char_p(data)  # points into ``data`` itself, which the entry keeps alive
        iov = _IoVec(ctypes.cast(data_buffer, ctypes.c_void_p), len(data))
        header = _MMsgHdr(_MsgHdr(ctypes.addressof(name_buffer), len(name), ctypes.addressof(iov), 1,
                                  ctypes.addressof(control_buffer), len(control), 0), 0)
        prepared = send, bytes(header), (data, name_buffer, control_buffer, data_buffer, iov)
        if cache:
            self._prepared[id(send)] = prepared
        return prepared

    def _failed(self, exc: OSError, src: IPAddress, dst: IPAddress) -> None:
        self.counters.send_errors += 1
        # A downed link or a still-tentative source address heals on its
        # own: warn at the first failure of a run, not at every advert.
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        log.log(level, "send on %s from %s to %s failed: %s (%s)", self.interface, src, dst, exc,
                errno.errorcode.get(exc.errno or 0, "?"))

    def _sent(self, count: int) -> None:
        if self._failing:
            self._failing = False
            log.info("sending on %s works again", self.interface)
        self.counters.sent += count
