"""Advert timers batched: masters whose adverts fall due in the same slot share one loop timer.

A node holding 64 dual-stack groups at 0.1 s adverts arms 1280 loop timers
a second, one per advert; each is a heap push and pop in asyncio. Rounding a
master's advert time *up* to a slot of :data:`RESOLUTION` seconds lets every
advert due in that slot fire from one loop timer, and since the next advert
is one interval after the slot, masters that share a slot keep sharing it.
An advert goes out at most one slot late (5 ms against a 100 ms interval,
well inside what a backup tolerates: it waits three intervals). Backups'
Master_Down timers are not batched: their precision is the failover time.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Slot width in seconds: the most an advert is delayed by batching.
RESOLUTION = 0.005


class BatchedTimer:
    """One callback in a slot; cancel() keeps it from firing (like ``asyncio.TimerHandle``)."""

    __slots__ = ("_when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        """When it fires: the end of its slot (never before it was asked for)."""
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class TimerBatch:
    """Slots of :data:`RESOLUTION` seconds, each one loop timer running every callback due in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.loop = loop
        self.resolution = resolution
        self._slots: dict[int, list[BatchedTimer]] = {}
        #: Loop timers armed (one per slot in use): what batching saves is the difference to ``scheduled``.
        self.armed = 0
        self.scheduled = 0

    def call_at(self, when: float, callback: Callable[[], None]) -> BatchedTimer:
        """Run ``callback`` at the end of the slot holding ``when`` (at or after ``when``)."""
        slot = math.ceil(when / self.resolution - 1e-9)
        timer = BatchedTimer(slot * self.resolution, callback)
        self.scheduled += 1
        entries = self._slots.get(slot)
        if entries is None:
            entries = self._slots[slot] = []
            self.armed += 1
            self.loop.call_at(timer.when(), self._fire, slot)
        entries.append(timer)
        return timer

    def _fire(self, slot: int) -> None:
        for timer in self._slots.pop(slot, ()):
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:  # one router's bug must not starve the others in its slot
                    log.exception("timer callback failed")
