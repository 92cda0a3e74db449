"""Leader election against the test API server: bounded attempts, the renew deadline, the fence, MicroTimes."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers.cluster import wait_for
from vipcore.kube import KubernetesWriter
from vipcore.kube.leases import LeaderElector, LeaseClient, LeaseTiming, call_bounded
from vipcore.testing.apiserver import ApiServer

FAST = LeaseTiming(duration=2.0, renew_deadline=1.0, retry_period=0.2)
MICRO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class Candidate:
    """An elector running on its own loop in a thread, recording when it led."""

    def __init__(self, server: ApiServer, identity: str, timing: LeaseTiming = FAST,
                 monotonic: Any = time.monotonic) -> None:
        self.client = server.client()
        self.client.user_agent = f"candidate/{identity}"
        self.elector = LeaderElector(LeaseClient(KubernetesWriter(self.client), "default"), "lead", identity, timing,
                                     monotonic=monotonic)
        self.changes: list[tuple[float, bool]] = []
        self.elector.on_change.append(lambda leading: self.changes.append((time.monotonic(), leading)))
        self.led = threading.Event()
        self.cancelled = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    async def _lead(self) -> None:
        self.led.set()
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()

    def _main(self) -> None:
        self.task = self.loop.create_task(self.elector.run(self._lead))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def stop(self) -> None:
        if self.thread.is_alive():
            wait_for(lambda: self.task is not None)
            assert self.task is not None
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(5)
        assert not self.thread.is_alive()
        self.client.close()


@pytest.fixture
def candidates(server: ApiServer) -> Iterator[list[Candidate]]:
    made: list[Candidate] = []
    yield made
    for c in made:
        c.stop()


def test_leadership_is_lost_at_the_renew_deadline_while_the_renewal_hangs(server: ApiServer,
                                                                          candidates: list[Candidate]) -> None:
    a = Candidate(server, "a")
    candidates.append(a)
    wait_for(lambda: a.elector.leading, what="a leads")
    with server.black_hole("candidate/a"):
        holed = time.monotonic()
        wait_for(lambda: not a.elector.leading, timeout=5, what="a stops leading")
        # Within the renew deadline of the last renewal (which started before the hole), plus scheduling.
        assert time.monotonic() - holed <= FAST.renew_deadline + 0.15
        assert a.elector.lease_left() == 0
        wait_for(a.cancelled.is_set, timeout=2, what="the lead task cancelled")
        # The campaign loop goes on (the hung renewal thread was abandoned, not awaited).
        time.sleep(FAST.retry_period * 3)
        assert a.thread.is_alive()
        assert sum(1 for r in server.requests if r.code == 0 and r.client == "candidate/a") >= 2
    wait_for(lambda: a.elector.leading, timeout=5, what="a leads again once the API answers")


def test_two_candidates_never_lead_at_once(server: ApiServer, candidates: list[Candidate]) -> None:
    a = Candidate(server, "a")
    candidates.append(a)
    wait_for(lambda: a.elector.leading, what="a leads")
    b = Candidate(server, "b")
    candidates.append(b)
    time.sleep(0.5)
    assert not b.elector.leading
    with server.black_hole("candidate/a"):
        wait_for(lambda: b.elector.leading, timeout=10, what="b takes over")
    lost = [t for t, leading in a.changes if not leading]
    took = [t for t, leading in b.changes if leading]
    assert lost and took and lost[0] < took[0]
    # a stepped down at least duration - renew_deadline before b could take over, less scheduling.
    assert took[0] - lost[0] > FAST.duration - FAST.renew_deadline - 0.3
    lease = server.get("coordination.k8s.io/v1", "Lease", "lead", "default")
    assert lease["spec"]["holderIdentity"] == "b" and lease["spec"]["leaseTransitions"] == 1
    assert MICRO.fullmatch(lease["spec"]["renewTime"]) and MICRO.fullmatch(lease["spec"]["acquireTime"])


def test_health_fails_while_a_leader_believes_in_an_overdue_lease(server: ApiServer,
                                                                  candidates: list[Candidate]) -> None:
    offset = [0.0]
    a = Candidate(server, "a", monotonic=lambda: time.monotonic() + offset[0])
    candidates.append(a)
    wait_for(lambda: a.elector.leading, what="a leads")
    assert a.elector.healthy()
    offset[0] = FAST.duration + 0.5  # as if its loop had been stuck past the Lease's duration
    assert not a.elector.leading and not a.elector.healthy()
    wait_for(a.elector.healthy, timeout=3, what="health back once it stepped down")


def test_call_bounded_abandons_a_hung_thread() -> None:
    release = threading.Event()

    async def main() -> None:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await call_bounded(release.wait, 0.1)
        assert time.monotonic() - started < 0.5
        assert await call_bounded(lambda: 42, 1.0) == 42
        with pytest.raises(ValueError):
            await call_bounded(lambda: int("x"), 1.0)

    started = time.monotonic()
    asyncio.run(main())  # returns without waiting for the hung thread
    assert time.monotonic() - started < 1.0
    release.set()
