"""recvmmsg through ctypes (liveness/datagrams.py): what ``socket.recvmsg`` gave, many datagrams per call.

Sockets in a network namespace of their own with only its loopback up: no packet leaves it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from vipcore_native_vrrp.liveness.datagrams import SIZE, Receiver

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace of its own needs root")

T = TypeVar("T")
_IP_RECVTTL = 12
_IPV6_RECVHOPLIMIT = getattr(socket, "IPV6_RECVHOPLIMIT", 51)
_SO_TIMESTAMPNS = 35


def in_namespace(body: Callable[[], T]) -> T:
    """``body`` run on a thread moved to a fresh network namespace (loopback up); its sockets stay there."""
    made: list[T] = []
    failed: list[BaseException] = []

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET, this thread only
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed")
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
            made.append(body())
        except BaseException as exc:  # re-raised in the caller
            failed.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def sockets(family: socket.AddressFamily, host: str, sources: list[str]) -> tuple[socket.socket, list[socket.socket]]:
    recv = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET:
        recv.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
    else:
        recv.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVHOPLIMIT, 1)
    recv.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    recv.bind((host, 0))
    recv.setblocking(False)
    senders = []
    for source in sources:
        send = socket.socket(family, socket.SOCK_DGRAM)
        send.bind((source, 0))
        senders.append(send)
    return recv, senders


def test_ipv4_sources_ttls_timestamps_and_payloads() -> None:
    recv, (a, b) = in_namespace(lambda: sockets(socket.AF_INET, "127.0.0.1", ["127.0.0.2", "127.0.0.3"]))
    try:
        receiver = Receiver(recv, slots=4)
        assert receiver.read() == []  # empty: no exception
        a.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
        b.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 7)
        sent_at = time.time()
        a.sendto(b"one" * 8, recv.getsockname())
        b.sendto(b"two", recv.getsockname())
        a.sendto(b"x" * (SIZE + 50), recv.getsockname())  # longer than kept: truncated, as recvmsg(SIZE) did
        time.sleep(0.01)
        got = receiver.read()
        assert [(source, data, ttl) for source, data, ttl, _ in got] == [
            (ipaddress.ip_address("127.0.0.2").packed, b"one" * 8, 255),
            (ipaddress.ip_address("127.0.0.3").packed, b"two", 7),
            (ipaddress.ip_address("127.0.0.2").packed, b"x" * SIZE, 255)]
        for _, _, _, stamp in got:
            assert stamp is not None and sent_at - 0.001 <= stamp <= time.time()
        assert receiver.read() == []
    finally:
        for sock in (recv, a, b):
            sock.close()


def test_ipv6_sources_and_hop_limits_and_more_than_one_call() -> None:
    recv, (a,) = in_namespace(lambda: sockets(socket.AF_INET6, "::1", ["::1"]))
    try:
        receiver = Receiver(recv, slots=4)
        a.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        for i in range(6):
            a.sendto(bytes([i]) * 24, recv.getsockname()[:2])
        time.sleep(0.01)
        first, second = receiver.read(), receiver.read()
        assert [data[0] for _, data, _, _ in first] == [0, 1, 2, 3]  # a full batch: the caller reads again
        assert [data[0] for _, data, _, _ in second] == [4, 5]
        assert {(source, ttl) for source, _, ttl, _ in first + second} == {(ipaddress.ip_address("::1").packed, 255)}
        assert receiver.read() == []
    finally:
        recv.close()
        a.close()


def test_without_ancillary_options_no_ttl_and_no_timestamp() -> None:
    """A socket that asked for neither: TTL -1 (the session drops it as not 255), no kernel time."""
    def plain() -> tuple[socket.socket, socket.socket]:
        recv, send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.bind(("127.0.0.1", 0))
        recv.setblocking(False)
        return recv, send

    recv, send = in_namespace(plain)
    try:
        send.sendto(b"z" * 24, recv.getsockname())
        time.sleep(0.01)
        assert Receiver(recv).read() == [(ipaddress.ip_address("127.0.0.1").packed, b"z" * 24, -1, None)]
    finally:
        recv.close()
        send.close()


def test_a_ttl_without_a_timestamp_is_read_through_the_general_walk() -> None:
    """The usual layout (timestamp, then TTL) is unpacked at once; any other is walked cmsg by cmsg."""
    def ttl_only() -> tuple[socket.socket, socket.socket]:
        recv, send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        recv.setsockopt(socket.IPPROTO_IP, _IP_RECVTTL, 1)
        recv.bind(("127.0.0.1", 0))
        recv.setblocking(False)
        send.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 254)
        return recv, send

    recv, send = in_namespace(ttl_only)
    try:
        send.sendto(b"t" * 24, recv.getsockname())
        time.sleep(0.01)
        assert Receiver(recv).read() == [(ipaddress.ip_address("127.0.0.1").packed, b"t" * 24, 254, None)]
    finally:
        recv.close()
        send.close()


def test_a_closed_socket_is_an_os_error() -> None:
    recv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver = Receiver(recv)
    recv.close()
    with pytest.raises(OSError):
        receiver.read()
