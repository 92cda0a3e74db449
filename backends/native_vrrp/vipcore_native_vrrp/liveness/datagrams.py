"""Every queued datagram of a socket in one system call: ``recvmmsg(2)`` through ctypes.

The liveness worker wakes ~110 times a second and reads what its peers sent
since the last wake-up, usually one or two packets per peer. With
``socket.recvmsg`` that is one system call per packet plus one more that finds
the socket empty and raises ``BlockingIOError`` (an exception built with its
``strerror`` text, through gettext, at every wake-up). ``recvmmsg`` with
``MSG_DONTWAIT`` reads them all at once into buffers allocated here once, and
an empty socket is a return value, not an exception (issue 14).

Linux only (glibc and musl both have ``recvmmsg``), as the worker is. Imports
only the standard library: the worker's start stays small.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct

#: Longest datagram kept (a BFD control packet is 24 bytes; longer ones are truncated and fail to decode
#: as they did with ``recvmsg(128)``) and the ancillary space per datagram (TTL and a timespec: 40 bytes).
SIZE = 128
CONTROL = 128
_MSG_DONTWAIT = 0x40
_SO_TIMESTAMPNS = 35
_IP_TTL = 2
_IPV6_HOPLIMIT = getattr(socket, "IPV6_HOPLIMIT", 52)
_SOCKADDR = 28  # sizeof(struct sockaddr_in6), the larger of the two families
_CMSG = struct.Struct("@Nii")  # struct cmsghdr: cmsg_len, cmsg_level, cmsg_type
_ALIGN = struct.calcsize("@N")  # CMSG_ALIGN: to sizeof(size_t)
_TIMESPEC = struct.Struct("@qq")
_INT = struct.Struct("@i")
_UINT = struct.Struct("@I")
_SIZE_T = struct.Struct("@N")
_FAMILY = struct.Struct("@H")
_STAMP_LEN = _CMSG.size + _TIMESPEC.size
_INT_LEN = _CMSG.size + _INT.size
#: The usual ancillary data: a timespec cmsg, then an int one (padded to CMSG_ALIGN).
_USUAL = struct.Struct("@Niiqq" + "Niii" + "x" * (-(_CMSG.size + _INT.size) % _ALIGN))


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_STRIDE = ctypes.sizeof(_Mmsghdr)
_NAMELEN = _Mmsghdr.hdr.offset + _Msghdr.namelen.offset
_CONTROLLEN = _Mmsghdr.hdr.offset + _Msghdr.controllen.offset
_LEN = _Mmsghdr.len.offset

#: One datagram: the source address as packed bytes (4 for IPv4, 16 for IPv6: ``ip_address(x).packed``),
#: its payload, its TTL / hop limit (-1 when the kernel gave none) and the kernel's receive time
#: (CLOCK_REALTIME seconds; None without ``SO_TIMESTAMPNS``).
Datagram = tuple[bytes, bytes, int, float | None]


class Receiver:
    """Reads a non-blocking datagram socket ``slots`` datagrams per system call."""

    def __init__(self, sock: socket.socket, slots: int = 64) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._call = libc.recvmmsg
        self._call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
        self._call.restype = ctypes.c_int
        self.fd = sock.fileno()
        self.slots = slots
        self._names = ctypes.create_string_buffer(slots * _SOCKADDR)
        self._data = ctypes.create_string_buffer(slots * SIZE)
        self._control = ctypes.create_string_buffer(slots * CONTROL)
        self._iov = (_Iovec * slots)()
        self._msgs = (_Mmsghdr * slots)()
        for i in range(slots):
            self._iov[i].base = ctypes.addressof(self._data) + i * SIZE
            self._iov[i].len = SIZE
            header = self._msgs[i].hdr
            header.name = ctypes.addressof(self._names) + i * _SOCKADDR
            header.iov = ctypes.addressof(self._iov[i])
            header.iovlen = 1
            header.control = ctypes.addressof(self._control) + i * CONTROL
        self._address = ctypes.addressof(self._msgs)
        # Views of the same memory: the kernel's answers read (and the lengths it overwrote reset) with struct.
        self._headers = memoryview(self._msgs).cast("B")
        self._name_view = memoryview(self._names).cast("B")
        self._data_view = memoryview(self._data).cast("B")
        self._control_view = memoryview(self._control).cast("B")
        for i in range(slots):
            self._msgs[i].hdr.namelen = _SOCKADDR
            self._msgs[i].hdr.controllen = CONTROL
        self._pristine = bytes(self._headers)

    def _reset(self, count: int) -> None:
        """Give the first ``count`` slots their full name and control space again (the kernel wrote back
        the lengths it used): a copy of the headers as first built."""
        end = count * _STRIDE
        self._headers[:end] = self._pristine[:end]

    def read(self) -> list[Datagram]:
        """What is queued, up to ``slots`` datagrams, oldest first; empty when nothing is.

        Raises OSError for a failure other than an empty socket (or an interrupted call, read as empty).
        """
        count = self._call(self.fd, self._address, self.slots, _MSG_DONTWAIT, None)
        if count <= 0:
            if count == 0:
                return []
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return []
            raise OSError(code, f"recvmmsg: {errno.errorcode.get(code, code)}")
        headers, names, data, control = self._headers, self._name_view, self._data_view, self._control_view
        out: list[Datagram] = []
        for i in range(count):
            base = i * _STRIDE
            length = _UINT.unpack_from(headers, base + _LEN)[0]
            name = i * _SOCKADDR
            family = _FAMILY.unpack_from(names, name)[0]
            if family == socket.AF_INET:
                source = bytes(names[name + 4:name + 8])
            elif family == socket.AF_INET6:
                source = bytes(names[name + 8:name + 24])
            else:
                source = b""
            ttl, stamp = -1, None
            used = _SIZE_T.unpack_from(headers, base + _CONTROLLEN)[0]
            start = i * CONTROL
            if used == _USUAL.size:
                # What the worker's sockets give (the timestamp, then the TTL / hop limit): one unpack.
                size, level, kind, seconds, nanoseconds, size2, level2, kind2, value = _USUAL.unpack_from(control, start)
                if (size == _STAMP_LEN and level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and size2 == _INT_LEN
                        and ((level2, kind2) == (socket.IPPROTO_IP, _IP_TTL)
                             or (level2, kind2) == (socket.IPPROTO_IPV6, _IPV6_HOPLIMIT))):
                    out.append((source, bytes(data[i * SIZE:i * SIZE + min(length, SIZE)]), value,
                                seconds + nanoseconds / 1e9))
                    continue
            offset = 0
            while offset + _CMSG.size <= used:
                size, level, kind = _CMSG.unpack_from(control, start + offset)
                if size < _CMSG.size or offset + size > used:
                    break
                at = start + offset + _CMSG.size
                if kind == _SO_TIMESTAMPNS and level == socket.SOL_SOCKET and size >= _CMSG.size + _TIMESPEC.size:
                    seconds, nanoseconds = _TIMESPEC.unpack_from(control, at)
                    stamp = seconds + nanoseconds / 1e9
                elif size >= _CMSG.size + _INT.size and (
                        (level == socket.IPPROTO_IP and kind == _IP_TTL)
                        or (level == socket.IPPROTO_IPV6 and kind == _IPV6_HOPLIMIT)):
                    ttl = _INT.unpack_from(control, at)[0]
                offset += (size + _ALIGN - 1) & ~(_ALIGN - 1)
            out.append((source, bytes(data[i * SIZE:i * SIZE + min(length, SIZE)]), ttl, stamp))
        self._reset(count)
        return out
