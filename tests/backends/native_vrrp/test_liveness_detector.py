"""The liveness detector and its worker process on the wire between two namespaces (marked ``lab``, root).

What it must never do is cry wolf: a detection while the peer is alive is a split
brain. The sessions run in a worker process of their own, so a blocked event loop or two
saturated cores must not expire them; a peer that really stops must.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.e2e import in_netns
from vipcore.lab.topology import Lab, run
from vipcore_native_vrrp.liveness.detector import Detector
from vipcore_native_vrrp.liveness.packet import Diagnostic, SessionState
from vipcore_native_vrrp.liveness.session import SessionConfig

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

CONFIG = SessionConfig(desired_min_tx=0.01, required_min_rx=0.01, detect_mult=4, slow_interval=0.05)
Change = tuple[float, str, SessionState, SessionState, Diagnostic]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab(prefix="vcQd", nodes=("a", "b")) as the_lab:
        yield the_lab


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_sessions_stay_up_through_a_blocked_loop_and_saturated_cores_and_expire_when_the_peer_stops(
        lab: Lab) -> None:
    changes: list[Change] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def make(node: str) -> Detector:
            def record(peer: object, old: SessionState, new: SessionState, diag: Diagnostic) -> None:
                changes.append((time.monotonic(), node, old, new, diag))
            return in_netns(lab.ns(node), lambda: Detector("eth0", lab.address(node), CONFIG, loop=loop,
                                                            on_change=record))

        a, b = make("a"), make("b")
        a.start()
        b.start()
        a.set_peers([lab.address("b")])
        b.set_peers([lab.address("a")])
        try:
            deadline = time.monotonic() + 5
            while not (a.state(lab.address("b")) is SessionState.UP and b.state(lab.address("a")) is SessionState.UP):
                assert time.monotonic() < deadline, changes
                await asyncio.sleep(0.02)
            # The event loop blocked for 20 detection times: the workers keep the sessions up.
            time.sleep(0.8)
            # Both cores saturated by other processes for a while.
            hogs = [multiprocessing.Process(target=_spin, args=(2.0,)) for _ in range(2)]
            for hog in hogs:
                hog.start()
            await asyncio.sleep(2.2)
            for hog in hogs:
                hog.join()
            await asyncio.sleep(0.1)
            assert [c for c in changes if c[3] is SessionState.DOWN] == []
            flaps = a.snapshot()[lab.address("b")].flaps
            assert flaps == 0
            # b dies without a word (no AdminDown): a declares it down after the detection time.
            stopped = time.monotonic()
            b.close(graceful=False)
            await asyncio.sleep(0.3)
            down = [c for c in changes if c[1] == "a" and c[3] is SessionState.DOWN]
            assert len(down) == 1 and down[0][4] is Diagnostic.CONTROL_DETECTION_EXPIRED, changes
            assert down[0][0] - stopped < 0.04 + 0.05, down  # detection time plus scheduling slack
        finally:
            a.close(graceful=False)
            b.close(graceful=False)

    asyncio.run(scenario())


def test_only_current_peers_are_heard(lab: Lab) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a = in_netns(lab.ns("a"), lambda: Detector("eth0", lab.address("a"), CONFIG, loop=loop,
                                                   on_change=lambda *args: None))
        b = in_netns(lab.ns("b"), lambda: Detector("eth0", lab.address("b"), CONFIG, loop=loop,
                                                   on_change=lambda *args: None))
        a.start()
        b.start()
        b.set_peers([lab.address("a")])  # b talks to a, but a does not count b as a peer
        try:
            deadline = time.monotonic() + 3
            while a.drops["source"] < 1:  # counted by the worker, reported in its stats frames
                assert time.monotonic() < deadline, a.drops
                await asyncio.sleep(0.05)
            assert b.state(lab.address("a")) is SessionState.DOWN
        finally:
            a.close(graceful=False)
            b.close(graceful=False)

    asyncio.run(scenario())


def test_a_killed_worker_is_no_lost_peer_for_either_side_and_comes_back(lab: Lab) -> None:
    """The agent notices its worker died, tells the peer AdminDown (not a failure) and starts another."""
    changes: list[Change] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def make(node: str) -> Detector:
            def record(peer: object, old: SessionState, new: SessionState, diag: Diagnostic) -> None:
                changes.append((time.monotonic(), node, old, new, diag))
            return in_netns(lab.ns(node), lambda: Detector("eth0", lab.address(node), CONFIG, loop=loop,
                                                            on_change=record, stats_interval=0.05))

        a, b = make("a"), make("b")
        a.start()
        b.start()
        a.set_peers([lab.address("b")])
        b.set_peers([lab.address("a")])
        try:
            async def until_up() -> None:
                deadline = time.monotonic() + 5
                while not (a.state(lab.address("b")) is SessionState.UP
                           and b.state(lab.address("a")) is SessionState.UP
                           and a.snapshot()[lab.address("b")].your_discriminator):  # a's stats know b's
                    assert time.monotonic() < deadline, changes
                    await asyncio.sleep(0.02)

            await until_up()
            first = a.pid
            assert first is not None
            changes.clear()
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(0.3)
            assert a.crashes == 1
            # a reports no loss (its sessions just read Down until the new worker's come Up) ...
            assert [c for c in changes if c[1] == "a" and c[3] is SessionState.DOWN] == [], changes
            # ... and b heard AdminDown, not silence: no expiry, so no takeover.
            expired = [c for c in changes if c[4] is Diagnostic.CONTROL_DETECTION_EXPIRED]
            assert expired == [] and b.expiries == 0, changes
            assert any(c[1] == "b" and c[2] is SessionState.UP and c[3] is SessionState.DOWN
                       and c[4] is Diagnostic.NEIGHBOR_DOWN for c in changes), changes
            await until_up()  # the new worker brings the session back
            assert a.pid not in (None, first)
        finally:
            a.close(graceful=False)
            b.close(graceful=False)

    asyncio.run(scenario())


# -- asymmetric rates on the wire (issue 14) ------------------------------------------------------


def _packets(lab: Lab, node: str) -> tuple[int, int]:
    """(sent, received) packets of ``node``'s eth0 so far, as the kernel counted them on the link."""
    stats = json.loads(lab.exec(node, ["ip", "-s", "-j", "link", "show", "eth0"]).stdout)[0]["stats64"]
    return int(stats["tx"]["packets"]), int(stats["rx"]["packets"])


async def _rates(lab: Lab, nodes: tuple[str, ...], seconds: float) -> dict[str, tuple[float, float]]:
    before = {node: _packets(lab, node) for node in nodes}
    await asyncio.sleep(seconds)
    after = {node: _packets(lab, node) for node in nodes}
    return {node: ((after[node][0] - before[node][0]) / seconds, (after[node][1] - before[node][1]) / seconds)
            for node in nodes}


@pytest.fixture
def lab3() -> Iterator[Lab]:
    with Lab(prefix="vcWl", nodes=("a", "b", "c")) as the_lab:
        yield the_lab


def test_the_master_sends_fast_hears_slowly_and_a_new_master_is_sped_up_by_a_poll(lab3: Lab) -> None:
    """a holds every group: b and c watch it (fast from a), a need not watch them (slow to a), nor b and c
    each other. Then b becomes the master of a group c backs up: c asks b for the fast rate, no flap."""
    lab = lab3
    changes: list[Change] = []
    address = {node: lab.address(node) for node in ("a", "b", "c")}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        def make(node: str) -> Detector:
            def record(peer: object, old: SessionState, new: SessionState, diag: Diagnostic) -> None:
                changes.append((time.monotonic(), node, old, new, diag))
            return in_netns(lab.ns(node), lambda: Detector("eth0", address[node], CONFIG, loop=loop,
                                                            on_change=record, stats_interval=0.02))

        detectors = {node: make(node) for node in ("a", "b", "c")}
        a, b, c = detectors["a"], detectors["b"], detectors["c"]
        for detector in detectors.values():
            detector.start()
        a.set_peers([address["b"], address["c"]], relaxed=[address["b"], address["c"]])
        b.set_peers([address["a"], address["c"]], relaxed=[address["c"]])
        c.set_peers([address["a"], address["b"]], relaxed=[address["b"]])
        try:
            deadline = time.monotonic() + 8
            while not all(d.snapshot() and all(s.state is SessionState.UP for s in d.snapshot().values())
                          for d in detectors.values()):
                assert time.monotonic() < deadline, changes
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.2)  # the last fast packets before a peer's slow schedule
            rates = await _rates(lab, ("a", "b", "c"), 2.0)
            print("packets/s (sent, received):", rates)  # -s
            # a: 100/s to each backup (every 7.5-10 ms), 1/s from each; b, c: 100/s from a, 1/s to each peer.
            assert 150 <= rates["a"][0] <= 290 and rates["a"][1] <= 8, rates
            for node in ("b", "c"):
                assert rates[node][0] <= 8 and 75 <= rates[node][1] <= 150, rates
            assert c.snapshot()[address["b"]].detection_time == pytest.approx(4 * CONFIG.relaxed_min_rx)
            assert c.snapshot()[address["a"]].detection_time == pytest.approx(0.04)
            # b becomes the master of a group c backs up: c asks it for the fast rate (a Poll, at once).
            asked = time.monotonic()
            c.set_peers([address["a"], address["b"]])
            while c.snapshot()[address["b"]].detection_time != pytest.approx(0.04):
                assert time.monotonic() < asked + 0.5, c.snapshot()
                await asyncio.sleep(0.005)
            print(f"c watches b closely after {(time.monotonic() - asked) * 1000:.0f} ms")  # -s
            await asyncio.sleep(0.1)
            rates = await _rates(lab, ("a", "b", "c"), 2.0)
            print("packets/s after:", rates)  # -s
            assert 75 <= rates["b"][0] <= 150 and rates["c"][1] >= 150, rates  # c hears a and b fast now
            assert [ch for ch in changes if ch[2] is SessionState.UP] == []  # no session ever left Up
        finally:
            for detector in detectors.values():
                detector.close(graceful=False)

    asyncio.run(scenario())


@pytest.fixture
def lab_x9() -> Iterator[Lab]:
    with Lab(prefix="vcX9", nodes=("a", "b")) as the_lab:
        yield the_lab


def test_the_worker_claims_a_lost_peers_planned_vips_before_telling_the_agent_and_never_at_an_admin_down(
        lab_x9: Lab) -> None:
    """a's worker holds a takeover plan for b (two VIPs on a's eth0). b stopping gracefully (AdminDown):
    nothing claimed. b dying silently: a's worker puts both VIPs in the kernel and announces them (a
    gratuitous ARP and an NA the client's kernel accepts: checksum right) before the agent hears of it."""
    from vipcore.net.addresses import ICMPV6_FILTER, InterfaceInfo, icmpv6_filter_only, takeover_plan

    lab = lab_x9
    vips = (ipaddress.ip_address("198.51.100.199"), ipaddress.ip_address("2001:db8:100::199"))
    heard: list[tuple[float, SessionState, Diagnostic, object]] = []
    link = json.loads(run(["ip", "-n", lab.ns("a"), "-j", "link", "show", "eth0"]).stdout)[0]
    info = InterfaceInfo(name="eth0", index=link["ifindex"], mac=bytes.fromhex(link["address"].replace(":", "")),
                         up=True)
    plan = takeover_plan(info, vips)

    def client_sockets() -> tuple[socket.socket, socket.socket]:
        arp = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
        arp.bind(("eth0", 0))
        na = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        na.setsockopt(socket.IPPROTO_ICMPV6, ICMPV6_FILTER, icmpv6_filter_only(136))
        for sock in (arp, na):
            sock.setblocking(False)
        return arp, na

    def received(sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(2048))
            except BlockingIOError:
                return out

    def in_kernel() -> set[object]:
        out = run(["ip", "-n", lab.ns("a"), "-o", "addr", "show", "dev", "eth0"]).stdout
        return {ipaddress.ip_interface(line.split()[3]).ip for line in out.splitlines()} & set(vips)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        arp, na = in_netns(lab.client, client_sockets)
        a: Detector | None = None

        def record(peer: object, old: SessionState, new: SessionState, diag: Diagnostic) -> None:
            assert a is not None
            heard.append((time.monotonic(), new, diag, a.claim_of(peer)))  # type: ignore[arg-type]

        def make(node: str, on_change: Any) -> Detector:
            return in_netns(lab.ns(node), lambda: Detector("eth0", lab.address(node), CONFIG, loop=loop,
                                                            on_change=on_change, stats_interval=0.02))

        async def up_with_plan(b: Detector) -> None:
            assert a is not None
            b.start()
            b.set_peers([lab.address("a")])
            deadline = time.monotonic() + 5
            while a.state(lab.address("b")) is not SessionState.UP:
                assert time.monotonic() < deadline, heard
                await asyncio.sleep(0.01)
            a.set_plan(lab.address("b"), plan)
            while a.worker_plans != 1:
                assert time.monotonic() < deadline, a.plans_refused
                await asyncio.sleep(0.01)

        a = make("a", record)
        a.start()
        a.set_peers([lab.address("b")])
        b = make("b", lambda *args: None)
        try:
            await up_with_plan(b)
            received(arp), received(na)  # whatever the lab sent so far
            b.close(graceful=True)  # AdminDown: a graceful stop, not a failure
            await asyncio.sleep(0.3)
            assert heard[-1][1] is SessionState.DOWN and heard[-1][2] is Diagnostic.NEIGHBOR_DOWN and heard[-1][3] is None
            assert in_kernel() == set() and received(arp) == [] and received(na) == []
            assert a.worker_plans == 0 and a.claims == 0
            b = make("b", lambda *args: None)
            await up_with_plan(b)
            b.close(graceful=False)  # b dies without a word
            deadline = time.monotonic() + 2
            while heard[-1][1] is not SessionState.DOWN:
                assert time.monotonic() < deadline, heard
                await asyncio.sleep(0.005)
            told, _, diag, claim = heard[-1]
            assert diag is Diagnostic.CONTROL_DETECTION_EXPIRED
            assert claim is not None and claim.ok and claim.vips == vips
            assert claim.announced is not None and claim.sent <= claim.announced <= told
            assert in_kernel() == set(vips)
            await asyncio.sleep(0.05)
            garps = [f for f in received(arp) if f[28:32] == vips[0].packed and f[38:42] == vips[0].packed]
            nas = [m for m in received(na) if m[0] == 136 and m[8:24] == vips[1].packed]
            assert len(garps) == 1 and len(nas) == 1
            await asyncio.sleep(0.05)
            assert a.claims == 1 and a.claim_failures == 0 and a.claims_by_peer[lab.address("b")] == 1
        finally:
            a.close(graceful=False)
            b.close(graceful=False)
            arp.close()
            na.close()

    asyncio.run(scenario())
