"""Batched advert timers: shared wake-ups, never late, aligned so that masters keep sharing them.

The drivers run on a fake loop (a float clock, no sleeping): what matters
is when each advert goes out relative to the previous one of its router.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import random
from collections.abc import Callable
from typing import Any

import pytest

from vipcore.core.model import Family, IPAddress
from vipcore.net.addresses import AnnounceSchedule
from vipcore_native_vrrp.driver import ADVANCE, RouterDriver
from vipcore_native_vrrp.protocol import Router, RouterConfig, Send
from vipcore_native_vrrp.timers import CAPACITY, TimerBatch
from vipcore_native_vrrp.transport import Handler, LinkCounters


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._when, self.callback, self.args, self.cancelled = when, callback, args, False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """``time`` and ``call_at`` on a float clock; counts the wake-ups (distinct times timers ran at)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[tuple[float, int, FakeHandle]] = []
        self._seq = 0
        self.wakeups: list[float] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> FakeHandle:
        handle = FakeHandle(when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, handle))
        return handle

    def run_until(self, end: float, cost: float = 0.0) -> None:
        """Run timers due by ``end`` in order; each callback takes ``cost`` seconds of the clock."""
        while self._heap and self._heap[0][0] <= end:
            when, _, handle = heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            if not self.wakeups or self.wakeups[-1] != self.now:
                self.wakeups.append(self.now)
            handle.callback(*handle.args)
            self.now += cost
        self.now = max(self.now, end)


class SendLog:
    """A link that notes when each router's adverts go out."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.handlers: dict[int, Handler] = {}
        self.counters = LinkCounters()
        self.sent: dict[IPAddress, list[float]] = {}

    def send(self, data: bytes, src: IPAddress, dst: IPAddress, failed: Callable[[], None] | None = None) -> bool:
        self.counters.sent += 1
        self.sent.setdefault(src, []).append(self.loop.now)
        return True

    def queue(self, send: Send, failed: Callable[[], None]) -> None:
        self.send(send.data, send.src, send.dst)  # the fake loop's pass has no length: sent when queued


def masters(loop: FakeLoop, link: SendLog, count: int, interval_cs: int, seed: int) -> list[RouterDriver]:
    """``count`` masters (each its own source address, to tell them apart) becoming master at random times."""
    rng = random.Random(seed)
    batch = TimerBatch(loop)  # type: ignore[arg-type]
    drivers = []
    for i in range(count):
        loop.run_until(loop.now + rng.uniform(0, interval_cs / 100 / count * 2))
        config = RouterConfig(
            vrid=1 + i % 255, family=Family.IPV4, primary=ipaddress.IPv4Address(f"198.51.100.{1 + i}"),
            vips=(ipaddress.IPv4Address(f"203.0.113.{1 + i % 250}"),), priority=254, interval_cs=interval_cs,
            destinations=(ipaddress.IPv4Address("224.0.0.18"),),
        )
        driver = RouterDriver(group=f"group-{i}", interface="eth0", router=Router(config), link=link,  # type: ignore[arg-type]
                              holder=None, schedule=AnnounceSchedule(count=0), report=lambda *a: None,  # type: ignore[arg-type]
                              loop=loop, batch=batch)  # type: ignore[arg-type]
        driver.router.start(loop.now)
        driver.feed(driver.router.takeover(loop.now, "test")[-1:])  # its first advert; no address work here
        drivers.append(driver)
    return drivers


@pytest.mark.parametrize("count", [1, 7, 200])
@pytest.mark.parametrize("interval_cs", [10, 100])
@pytest.mark.parametrize("cost", [0.0, 20e-6])
def test_an_advert_never_goes_out_later_than_its_interval_and_masters_align(
        count: int, interval_cs: int, cost: float) -> None:
    interval = interval_cs / 100
    loop = FakeLoop()
    link = SendLog(loop)
    masters(loop, link, count, interval_cs, seed=count * interval_cs)
    began = loop.now
    loop.run_until(began + 20 * interval, cost)
    for src, times in link.sent.items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert len(times) >= 19
        # The clock runs on by ``cost`` per callback: a wake-up's last advert goes out that much after its time.
        late = count * cost + 1e-9
        assert max(gaps) <= interval + late, f"{src}: an advert went out {max(gaps) - interval:.6f} s late"
        assert min(gaps) >= (1 - ADVANCE) * interval - late, f"{src}: an advert went out more than allowed early"
    # Aligned after a couple of intervals: at most two wake-ups per interval and full one (CAPACITY adverts).
    settled = [t for t in loop.wakeups if t >= began + 3 * interval]
    per_interval = len(settled) / 17
    assert per_interval <= 2 * (1 + count // CAPACITY), f"{per_interval:.1f} wake-ups per interval for {count} masters"


def test_a_timer_alone_fires_at_its_time_not_at_the_end_of_a_slot() -> None:
    """Rounding a timer's time *up* to a slot (as 5 ms slots once did) would send an advert late."""
    loop = FakeLoop(now=1000.001)
    batch = TimerBatch(loop)  # type: ignore[arg-type]
    fired: list[float] = []
    due = loop.now + 0.1
    timer = batch.call_at(due, lambda: fired.append(loop.now))
    assert timer.when() <= due
    loop.run_until(due + 0.01)
    assert fired and fired[0] <= due


def test_a_timer_joins_the_latest_wakeup_in_its_window_with_room_or_arms_its_own() -> None:
    loop = FakeLoop()
    batch = TimerBatch(loop, capacity=2)  # type: ignore[arg-type]
    a = batch.call_at(1001.0, lambda: None)
    b = batch.call_at(1001.2, lambda: None, early=0.5)  # joins a (0.2 s early)
    c = batch.call_at(1001.3, lambda: None, early=0.1)  # a is outside its window: its own
    d = batch.call_at(1001.3, lambda: None, early=0.5)  # joins c, the latest in its window
    e = batch.call_at(1001.35, lambda: None, early=0.5)  # c is full, a is full: its own
    assert (a.when(), b.when(), c.when(), d.when(), e.when()) == (1001.0, 1001.0, 1001.3, 1001.3, 1001.35)
    assert batch.armed == 3 and batch.scheduled == 5


def test_a_cancelled_timer_does_not_fire_and_a_failing_one_does_not_stop_its_wakeup() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batch = TimerBatch(loop)
        fired: list[str] = []
        when = loop.time() + 0.01

        def boom() -> None:
            raise RuntimeError("a router bug")

        batch.call_at(when, boom)
        batch.call_at(when, lambda: fired.append("cancelled")).cancel()
        batch.call_at(when, lambda: fired.append("kept"))
        await asyncio.sleep(0.03)
        assert fired == ["kept"]

    asyncio.run(scenario())


def test_capacity_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            TimerBatch(loop, 0)
    finally:
        loop.close()


def test_full_wakeups_at_the_same_time_each_fire_once() -> None:
    loop = FakeLoop()
    batch = TimerBatch(loop, capacity=1)  # type: ignore[arg-type]
    fired: list[int] = []
    for i in range(3):
        batch.call_at(1001.0, lambda i=i: fired.append(i), early=0.5)
    assert batch.armed == 3
    loop.run_until(1002.0)
    assert sorted(fired) == [0, 1, 2]
    batch.call_at(1003.0, lambda: fired.append(3), early=5.0)  # nothing left pending to join
    assert batch.armed == 4


def test_a_fired_timer_armed_again_is_the_same_object_and_follows_the_call_at_rule() -> None:
    loop = FakeLoop()
    batch = TimerBatch(loop, capacity=2)  # type: ignore[arg-type]
    fired: list[float] = []
    timer = batch.call_at(1001.0, lambda: fired.append(loop.now))
    other = batch.call_at(1001.2, lambda: None, early=0.5)  # joins timer's wake-up
    loop.run_until(1001.0)
    assert fired == [1001.0] and other.when() == 1001.0
    late = batch.call_at(1002.0, lambda: None)  # a wake-up armed at 1002.0
    again = batch.again(timer, 1002.3, early=0.5)
    assert again is timer and again.when() == 1002.0, "joins the latest wake-up in its window"
    assert batch.again(other, 1002.4, early=0.1).when() == 1002.4, "outside every window: its own wake-up"
    assert late.when() == 1002.0 and batch.armed == 3 and batch.scheduled == 5
    loop.run_until(1003.0)
    assert fired == [1001.0, 1002.0], "fired once per arming"
    timer.cancel()
    fresh = batch.again(timer, 1004.0)
    assert fresh is not timer and not fresh.cancelled, "a cancelled timer is never armed again"
    loop.run_until(1005.0)
    assert fired == [1001.0, 1002.0, 1004.0]
