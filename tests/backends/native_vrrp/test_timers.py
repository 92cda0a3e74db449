"""Batched advert timers: one loop timer per slot, never early, at most one slot late."""

from __future__ import annotations

import asyncio

import pytest

from vipcore_native_vrrp.timers import RESOLUTION, TimerBatch


def test_timers_in_one_slot_share_a_loop_timer_and_fire_in_their_slot() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        batch = TimerBatch(loop)
        start = loop.time() + 0.02
        fired: dict[int, float] = {}
        due = {i: start + i * RESOLUTION / 40 for i in range(40)}  # 40 timers within about one slot
        for i, when in due.items():
            batch.call_at(when, lambda i=i: fired.__setitem__(i, loop.time()))
        assert batch.scheduled == 40 and batch.armed <= 2
        await asyncio.sleep(0.02 + 3 * RESOLUTION)
        assert sorted(fired) == list(range(40))
        for i, at in fired.items():
            assert at >= due[i] - 1e-6, "never early"
            assert at - due[i] <= RESOLUTION + 0.05, "at most a slot late (plus the test loop's own lag)"

    asyncio.run(scenario())


def test_a_cancelled_timer_does_not_fire_and_a_failing_one_does_not_stop_its_slot() -> None:
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
        await asyncio.sleep(0.01 + 2 * RESOLUTION)
        assert fired == ["kept"]

    asyncio.run(scenario())


def test_resolution_must_be_positive() -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError):
            TimerBatch(loop, 0)
    finally:
        loop.close()
