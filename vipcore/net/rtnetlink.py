"""rtnetlink by hand: the messages the address holder sends on its hot path, and the socket that carries them.

Only :mod:`vipcore.net.addresses` uses this module. pyroute2 costs about
1.5 ms of CPU per address change and 1.8 ms per link read (it builds and
parses generic message objects); packing the few messages the failover path
needs with :mod:`struct` costs microseconds, and many of them travel in one
``sendmsg``: the kernel processes every message of a datagram in order, in
the sender's system call, and queues one acknowledgement per message.

Pure parts (packing, parsing) are plain functions; :class:`RtnetlinkChannel`
owns one ``NETLINK_ROUTE`` socket, numbers requests and matches replies to
them by sequence number.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Iterator, Sequence

import attrs

from vipcore.core.model import IPAddress

# -- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h) --

NETLINK_ROUTE = 0
SOL_NETLINK = 270
#: Acknowledgements without a copy of the request: 36 bytes each, not ~80.
NETLINK_CAP_ACK = 10
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
#: NLM_F_ROOT | NLM_F_MATCH: every object of the kind, in as many datagrams as it takes.
NLM_F_DUMP = 0x300
#: Set on a dump's messages when the table changed while it was being dumped (the dump is inconsistent).
NLM_F_DUMP_INTR = 0x10
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_FLAGS = 8
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
#: Skip duplicate address detection: an IPv6 VIP is usable at once.
IFA_F_NODAD = 0x02
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000

NLMSG_HEADER = struct.Struct("=IHHII")
IFINFO = struct.Struct("=BxHiII")
IFADDR = struct.Struct("=BBBBi")
RTATTR = struct.Struct("=HH")
NLMSG_ERR = struct.Struct("=i")
NETLINK_BUFFER = 65536
#: Receive buffer asked for (SO_RCVBUFFORCE, else SO_RCVBUF capped by
#: net.core.rmem_max): every acknowledgement of a batch is queued before
#: the first is read, about 768 bytes of accounting each.
RECEIVE_BUFFER = 1 << 20
#: Most address messages in one ``sendmsg``: the routers of 64 dual-stack
#: groups. The kernel handles them inside that call (about 3 ms for 128 on
#: the 2-core lab machine), so a batch is also the longest the event loop
#: waits; the acks of a full batch fit the default receive buffer even
#: where the forced size is refused.
MAX_BATCH = 128
#: How long to wait for acknowledgements the kernel has not queued by the
#: time ``sendmsg`` returned (it normally has: rtnetlink runs in the sender's call).
REPLY_TIMEOUT = 2.0
HOST_PREFIX = {4: 32, 6: 128}
#: asm-generic/socket.h; not in Python's socket module.
SO_RCVBUFFORCE = 33


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, payload: bytes) -> bytes:
    """One rtattr, padded to four bytes."""
    return (RTATTR.pack(RTATTR.size + len(payload), kind) + payload).ljust(_align(RTATTR.size + len(payload)), b"\0")


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """One netlink message: header + ``body`` (already padded)."""
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, seq, 0) + body


def address_message(add: bool, index: int, vip: IPAddress, seq: int) -> bytes:
    """``RTM_NEWADDR`` (create, exclusive) or ``RTM_DELADDR`` of ``vip``/32 or /128 on ``index``, acknowledged.

    IPv6 adds carry ``IFA_F_NODAD`` in the header and in ``IFA_FLAGS``, as
    ``ip addr add ... nodad`` does. Exclusive create: an address already
    present answers ``EEXIST`` (the holder's "already so").
    """
    family = socket.AF_INET if vip.version == 4 else socket.AF_INET6
    flags = IFA_F_NODAD if add and vip.version == 6 else 0
    packed = vip.packed
    body = IFADDR.pack(family, HOST_PREFIX[vip.version], flags, 0, index)
    body += attribute(IFA_LOCAL, packed) + attribute(IFA_ADDRESS, packed)
    if flags:
        body += attribute(IFA_FLAGS, struct.pack("=I", flags))
    if add:
        return message(RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, body)
    return message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def link_request(name: str, seq: int) -> bytes:
    """``RTM_GETLINK`` of one interface by name (the reply is an ``RTM_NEWLINK`` or an error)."""
    body = IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attribute(IFLA_IFNAME, name.encode() + b"\0")
    return message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def address_dump_request(seq: int) -> bytes:
    """``RTM_GETADDR`` dump of every address (IPv4 and IPv6) of every interface."""
    return message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0))


@attrs.frozen
class Address:
    """What an ``RTM_NEWADDR`` message says: one address of one interface (its bytes, not parsed)."""

    family: int
    prefixlen: int
    index: int
    #: ``IFA_LOCAL`` if present (the interface's own address on a point-to-point link), else ``IFA_ADDRESS``.
    address: bytes
    #: ``IFA_FLAGS`` if present (32 bits), else the header's 8-bit flags.
    flags: int


def parse_addresses(data: bytes, index: int | None = None) -> list[Address]:
    """The ``RTM_NEWADDR`` messages of one netlink datagram, of interface ``index`` only if given.

    Messages of other interfaces are skipped after their 8-byte header: a
    node's address table is mostly VIPs, and the caller usually wants one
    interface's.
    """
    found: list[Address] = []
    for kind, _, offset, length in messages(data):
        if kind != RTM_NEWADDR or length < NLMSG_HEADER.size + IFADDR.size:
            continue
        body = offset + NLMSG_HEADER.size
        family, prefixlen, flags, _, owner = IFADDR.unpack_from(data, body)
        if index is not None and owner != index:
            continue
        local = address = b""
        for attr_type, start, stop in attributes(data, body + IFADDR.size, offset + length):
            if attr_type == IFA_LOCAL:
                local = data[start:stop]
            elif attr_type == IFA_ADDRESS:
                address = data[start:stop]
            elif attr_type == IFA_FLAGS and stop - start >= 4:
                (flags,) = struct.unpack_from("=I", data, start)
        found.append(Address(family=family, prefixlen=prefixlen, index=owner, address=bytes(local or address),
                             flags=flags))
    return found


@attrs.frozen
class Link:
    """What an ``RTM_NEWLINK`` / ``RTM_DELLINK`` message says about one interface."""

    name: str
    index: int
    flags: int
    mac: bytes


def parse_link(data: bytes, offset: int, length: int) -> Link:
    """The link message of ``length`` bytes at ``offset`` (its netlink header included)."""
    body = offset + NLMSG_HEADER.size
    _, _, index, flags, _ = IFINFO.unpack_from(data, body)
    name, mac = "", b""
    for attr_type, start, stop in attributes(data, body + IFINFO.size, offset + length):
        if attr_type == IFLA_IFNAME:
            name = data[start:stop].split(b"\0", 1)[0].decode(errors="replace")
        elif attr_type == IFLA_ADDRESS:
            mac = bytes(data[start:stop])
    return Link(name=name, index=index, flags=flags, mac=mac)


def attributes(data: bytes, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """``(type, payload start, payload end)`` of each route attribute between ``offset`` and ``end``
    (a malformed length ends the walk: the message is read as far as it is sound)."""
    while offset + RTATTR.size <= end:
        attr_length, attr_type = RTATTR.unpack_from(data, offset)
        if attr_length < RTATTR.size or offset + attr_length > end:
            return
        yield attr_type, offset + RTATTR.size, offset + attr_length
        offset += _align(attr_length)


def messages(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """``(kind, seq, offset, length)`` of each netlink message in a datagram (a truncated tail is dropped)."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _, seq, _ = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > len(data):
            return
        yield kind, seq, offset, length
        offset += _align(length)


@attrs.frozen
class Reply:
    """The answer to one request: an errno (0: done) or, for a query, the message itself."""

    error: int
    kind: int = NLMSG_ERROR
    data: bytes = b""


@attrs.define
class Exchange:
    """What came back for one batch: replies by sequence number; ``overflowed`` if some were lost (ENOBUFS)."""

    replies: dict[int, Reply] = attrs.Factory(dict)
    overflowed: bool = False


def prepare(sock: socket.socket) -> socket.socket:
    """A ``NETLINK_ROUTE`` socket made ready for batches of acknowledged requests: non-blocking, room for
    :data:`RECEIVE_BUFFER` of acknowledgements, acknowledgements without a copy of the request, bound."""
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except OSError:  # no CAP_NET_ADMIN: as much as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    except OSError:  # older kernels echo the request in the ack: only bigger
        pass
    sock.bind((0, 0))
    return sock


class RtnetlinkChannel:
    """One ``NETLINK_ROUTE`` request socket: numbered requests out, replies matched back.

    Not safe for concurrent use: the owner runs one :meth:`exchange` at a
    time (replies to an earlier, abandoned exchange are recognised by their
    sequence numbers and dropped).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = prepare(sock)
        self._seq = 0

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def close(self) -> None:
        self.sock.close()

    async def exchange(self, requests: Sequence[tuple[int, bytes]]) -> Exchange:
        """Send ``(seq, message)`` requests in one ``sendmsg`` and collect one reply per sequence number.

        Every request must ask for an acknowledgement or be a query (whose
        reply is its answer). Raises :class:`OSError` if the socket fails
        (the caller discards the channel), ``TimeoutError`` if replies stay
        missing for :data:`REPLY_TIMEOUT` seconds.
        """
        self.send(requests)
        return await self.collect({seq for seq, _ in requests})

    def send(self, requests: Sequence[tuple[int, bytes]]) -> None:
        """The first half of :meth:`exchange`: the requests out in one ``sendmsg``, now.

        The kernel carries out ``NETLINK_ROUTE`` requests inside the call; their
        replies wait on the socket for :meth:`collect`. Raises :class:`OSError`.
        """
        self.sock.sendmsg([data for _, data in requests])

    async def collect(self, wanted: set[int], result: Exchange | None = None) -> Exchange:
        """The second half of :meth:`exchange`: one reply per sequence number in ``wanted`` (consumed).

        ``result``: replies :meth:`read_ready` already took (the others are added to it)."""
        requests = len(wanted)
        result = result if result is not None else Exchange()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_TIMEOUT
        while True:
            self.read_ready(wanted, result)
            if not wanted or result.overflowed:  # overflowed: the missing replies were dropped by the kernel
                return result
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"no netlink reply to {len(wanted)} of {requests} requests")
            await _readable(loop, self.sock, left)

    def read_ready(self, wanted: set[int], result: Exchange) -> None:
        """The replies to ``wanted`` already on the socket, into ``result``, without waiting (each one
        read is taken out of ``wanted``). ``NETLINK_ROUTE`` answers a request inside its ``sendmsg``, so
        right after :meth:`send` they are all there. Raises :class:`OSError` (ENOBUFS only marks
        ``result.overflowed``: what was queued before the overflow is still read)."""
        while wanted:
            try:
                data = self.sock.recv(NETLINK_BUFFER)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                result.overflowed = True
                continue
            for kind, seq, offset, length in messages(data):
                if seq not in wanted:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = NLMSG_ERR.unpack_from(data, offset + NLMSG_HEADER.size)
                    result.replies[seq] = Reply(error=-code)
                elif kind == NLMSG_DONE:
                    continue
                else:
                    result.replies[seq] = Reply(error=0, kind=kind, data=bytes(data[offset: offset + length]))
                wanted.discard(seq)

    async def dump(self, seq: int, request: bytes) -> list[bytes]:
        """Send one dump request; the datagrams of its answer, up to its ``NLMSG_DONE`` (excluded).

        A dump is answered in as many datagrams as it takes, each produced by
        the kernel as the previous one is read. Raises :class:`OSError` with
        the kernel's errno for an error reply, ``EINTR`` if the table changed
        while it was dumped (``NLM_F_DUMP_INTR``: ask again), ``ENOBUFS`` if
        the socket overflowed; ``TimeoutError`` as :meth:`exchange` does.
        Replies to other requests that turn up meanwhile are dropped.
        """
        self.sock.sendmsg([request])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPLY_TIMEOUT
        datagrams: list[bytes] = []
        interrupted = False
        while True:
            try:
                data = self.sock.recv(NETLINK_BUFFER)
            except (BlockingIOError, InterruptedError):
                left = deadline - loop.time()
                if left <= 0:
                    raise TimeoutError(f"the netlink dump {seq} did not end") from None
                await _readable(loop, self.sock, left)
                continue
            ours = False
            for kind, reply_seq, offset, length in messages(data):
                if reply_seq != seq:
                    continue
                ours = True
                _, _, flags, _, _ = NLMSG_HEADER.unpack_from(data, offset)
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if kind == NLMSG_ERROR:
                    (code,) = NLMSG_ERR.unpack_from(data, offset + NLMSG_HEADER.size)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                elif kind == NLMSG_DONE:
                    if interrupted:
                        raise OSError(errno.EINTR, "the table changed during the dump")
                    datagrams.append(data)
                    return datagrams
            if ours:
                datagrams.append(data)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        loop.remove_reader(sock.fileno())
