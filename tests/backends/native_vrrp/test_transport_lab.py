"""The raw VRRP socket between two network namespaces: a loop pass's queued adverts (one ``sendmmsg``).

Marked ``lab``: needs root. Namespaces ``vcT<tag>a`` / ``vcT<tag>b`` joined by a veth pair, deleted at the end.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest
from pyroute2.netns import create_socket

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

ETH_P_ALL = 0x0003
SOURCE4 = ipaddress.IPv4Address("198.51.100.1")
#: Not on the interface: the kernel refuses it as an IPv6 source (EINVAL).
FOREIGN6 = ipaddress.IPv6Address("2001:db8:ffff::1")

SENDER = textwrap.dedent("""
    import asyncio, ipaddress, json, sys
    from vipcore.core.model import Family
    from vipcore_native_vrrp.protocol import Send
    from vipcore_native_vrrp.transport import Link

    interface, source4, link_local, foreign = sys.argv[1:5]
    group4, group6 = ipaddress.IPv4Address("224.0.0.18"), ipaddress.IPv6Address("ff02::12")
    src4, ll, bad = ipaddress.IPv4Address(source4), ipaddress.IPv6Address(link_local), ipaddress.IPv6Address(foreign)

    def advert(vrid):
        return bytes([0x31, vrid, 100, 0, 0, 100, 0, 0])

    async def main():
        loop = asyncio.get_running_loop()
        v4, v6 = Link(interface, Family.IPV4, multicast=False), Link(interface, Family.IPV6, multicast=False)
        v4.start(loop)
        v6.start(loop)
        failed = []
        for vrid in range(1, 201):
            v4.queue(Send(advert(vrid), src4, group4), lambda vrid=vrid: failed.append(vrid))
        v4.send(advert(255), src4, group4)  # sent now: after what was queued
        v6.queue(Send(advert(1), ll, group6), lambda: failed.append("v6 1"))
        v6.queue(Send(advert(2), bad, group6), lambda: failed.append("v6 2"))
        v6.queue(Send(advert(3), ll, group6), lambda: failed.append("v6 3"))
        queued_counts = (v4.counters.sent, v6.counters.sent)
        await asyncio.sleep(0.05)
        print(json.dumps({"before_pass_end": queued_counts, "v4": v4.counters.sent, "v6": v6.counters.sent,
                          "v6_errors": v6.counters.send_errors, "failed": failed}))
        v4.close()
        v6.close()

    asyncio.run(main())
""")


#: The same link with a send buffer a few adverts deep and a slow queue discipline behind it (as a NIC's
#: transmit queue under a burst): the kernel answers EAGAIN part-way through a pass's adverts.
SLOW_SENDER = textwrap.dedent("""
    import asyncio, ipaddress, json, socket, sys
    from vipcore.core.model import Family
    from vipcore_native_vrrp.protocol import Send
    from vipcore_native_vrrp.transport import Link

    interface, source4, count = sys.argv[1], ipaddress.IPv4Address(sys.argv[2]), int(sys.argv[3])
    # "direct": a direct send after the queued adverts; "close": then the link closed at once.
    direct, close = "direct" in sys.argv[4:], "close" in sys.argv[4:]
    group4 = ipaddress.IPv4Address("224.0.0.18")

    async def main():
        loop = asyncio.get_running_loop()
        total = count + direct
        v4 = Link(interface, Family.IPV4, multicast=False)
        v4.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the kernel's minimum: a few packets
        v4.start(loop)
        failed = []
        for vrid in range(1, count + 1):
            v4.queue(Send(bytes([0x31, vrid, 100, 0, 0, 100, 0, 0]), source4, group4), lambda vrid=vrid: failed.append(vrid))
        accepted = None
        if direct:
            # In the same pass, as a resigning master's priority 0: its flush meets the full buffer.
            accepted = v4.send(bytes([0x31, 255, 0, 0, 0, 100, 0, 0]), source4, group4, lambda: failed.append(255))
        if close:
            v4.close()
        deadline = loop.time() + 10.0
        while v4.counters.sent + v4.counters.send_errors < total and loop.time() < deadline:
            await asyncio.sleep(0.01)
        print(json.dumps({"sent": v4.counters.sent, "errors": v4.counters.send_errors, "failed": failed,
                          "accepted": accepted}))
        v4.close()

    asyncio.run(main())
""")


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def veth() -> Iterator[tuple[str, str]]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"vcT{tag}a", f"vcT{tag}b"
    made: list[str] = []
    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("-n", a, "link", "add", a, "type", "veth", "peer", "name", b, "netns", b)
        ip("-n", a, "addr", "add", f"{SOURCE4}/24", "dev", a)
        for ns in (a, b):
            ip("-n", ns, "link", "set", ns, "up")
        deadline = time.monotonic() + 5.0
        while ("tentative" in ip("-n", a, "-6", "addr", "show", "dev", a) or "fe80" not in ip("-n", a, "-6", "addr")
               or f"ff00::/8 dev {a} " not in ip("-n", a, "-6", "route", "show", "table", "local")):
            assert time.monotonic() < deadline, "IPv6 never came up on the veth"
            time.sleep(0.05)
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def run_captured(a: str, b: str, program: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Run ``program`` with the link ``a`` in its namespace; every frame ``b`` received meanwhile."""
    capture = create_socket(b, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL), flags=0)
    with capture:
        capture.bind((b, ETH_P_ALL))
        capture.settimeout(0.5)
        done = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", program, a, *args], check=True,
                              capture_output=True, text=True, timeout=30)
        frames = []
        while True:
            try:
                frames.append(capture.recv(2048))
            except TimeoutError:
                break
    return done, frames


def test_queued_adverts_go_out_in_order_and_a_failure_is_reported_for_its_message_alone(veth: tuple[str, str]) -> None:
    a, b = veth
    link_local = json.loads(ip("-n", a, "-j", "-6", "addr", "show", "dev", a))[0]["addr_info"][0]["local"]
    done, frames = run_captured(a, b, SENDER, str(SOURCE4), link_local, str(FOREIGN6))
    report = json.loads(done.stdout)
    # Queued adverts wait for the end of the loop pass, unless a direct send comes first (it sends them before
    # itself); a failure is reported for its message alone and the others go.
    assert report["before_pass_end"] == [201, 0]
    assert report["v4"] == 201 and report["v6"] == 2 and report["v6_errors"] == 1
    assert report["failed"] == ["v6 2"]
    v4 = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 112]
    v6 = [f for f in frames if f[12:14] == b"\x86\xdd" and f[20] == 112]
    assert [f[14 + 20 + 1] for f in v4] == [*range(1, 201), 255], "in the order queued, the direct send after them"
    assert {(f[22], ipaddress.IPv4Address(f[26:30])) for f in v4} == {(255, SOURCE4)}  # TTL 255, the given source
    assert [f[54 + 1] for f in v6] == [1, 3]
    assert {(f[21], ipaddress.IPv6Address(f[22:38])) for f in v6} == {(255, ipaddress.IPv6Address(link_local))}


def test_adverts_the_full_send_buffer_refused_go_once_it_drains_none_reported_failed(veth: tuple[str, str]) -> None:
    a, b = veth
    # 1 Mbit/s behind the socket: 60 adverts take about 50 ms to leave, the buffer holds a few.
    ip("-n", a, "link", "set", a, "txqueuelen", "1000")
    subprocess.run(["tc", "-n", a, "qdisc", "add", "dev", a, "root", "tbf", "rate", "1mbit", "burst", "1600",
                    "latency", "5s"], check=True, capture_output=True, timeout=30)
    done, frames = run_captured(a, b, SLOW_SENDER, str(SOURCE4), "60")
    report = json.loads(done.stdout)
    assert report == {"sent": 60, "errors": 0, "failed": [], "accepted": None}, done.stderr
    v4 = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 112]
    assert [f[14 + 20 + 1] for f in v4] == list(range(1, 61)), "all of them, in order"


def test_a_direct_send_waits_behind_the_adverts_a_full_send_buffer_holds(veth: tuple[str, str]) -> None:
    a, b = veth
    # As above; then a direct send (a resignation's priority 0) in the same pass: its flush of the queued
    # adverts meets the full buffer. It must not overtake them (a backup hearing the master's normal priority
    # after its priority 0 resets its Master_Down timer: RFC 5798 6.4.2) nor be refused: it goes last.
    ip("-n", a, "link", "set", a, "txqueuelen", "1000")
    subprocess.run(["tc", "-n", a, "qdisc", "add", "dev", a, "root", "tbf", "rate", "1mbit", "burst", "1600",
                    "latency", "5s"], check=True, capture_output=True, timeout=30)
    done, frames = run_captured(a, b, SLOW_SENDER, str(SOURCE4), "60", "direct")
    report = json.loads(done.stdout)
    assert report == {"sent": 61, "errors": 0, "failed": [], "accepted": True}, done.stderr
    v4 = [f for f in frames if f[12:14] == b"\x08\x00" and f[23] == 112]
    assert [f[14 + 20 + 1] for f in v4] == [*range(1, 61), 255], "the queued adverts in order, the direct one last"
    assert v4[-1][14 + 20 + 2] == 0, "the priority-0 advert itself"


def test_closing_the_link_gives_what_waits_for_the_send_buffer_a_last_try_and_reports_the_rest(
        veth: tuple[str, str]) -> None:
    a, b = veth
    # As above, the link closed right after the direct send (a stopping agent): nothing is dropped unheard.
    # What the buffer takes goes, in order; every other message is a failed send reported to its sender.
    ip("-n", a, "link", "set", a, "txqueuelen", "1000")
    subprocess.run(["tc", "-n", a, "qdisc", "add", "dev", a, "root", "tbf", "rate", "1mbit", "burst", "1600",
                    "latency", "5s"], check=True, capture_output=True, timeout=30)
    done, frames = run_captured(a, b, SLOW_SENDER, str(SOURCE4), "60", "direct", "close")
    report = json.loads(done.stdout)
    assert report["accepted"] is True
    assert report["sent"] + report["errors"] == 61 and report["errors"] == len(report["failed"]) > 0, report
    v4 = [f[14 + 20 + 1] for f in frames if f[12:14] == b"\x08\x00" and f[23] == 112]
    assert v4 == [*range(1, 61), 255][:report["sent"]], "what went, in order"
    assert sorted(v4 + report["failed"]) == [*range(1, 61), 255], "every other one reported failed"
