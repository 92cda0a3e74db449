"""The liveness detector and its worker process on the wire between two namespaces (marked ``lab``, root).

What it must never do is cry wolf: a detection while the peer is alive is a split
brain. The sessions run in a worker process of their own, so a blocked event loop or two
saturated cores must not expire them; a peer that really stops must.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.helpers.e2e import in_netns
from vipcore.lab.topology import Lab
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
