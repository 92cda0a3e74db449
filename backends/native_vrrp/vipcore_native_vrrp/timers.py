"""Advert timers batched: masters' adverts share wake-ups, aligned so that they keep sharing them.

The CPU of a node holding many groups goes with the number of times its
event loop wakes up more than with the adverts it sends (issue 14: 255 groups
at 1 s adverts, 510 adverts/s, woke the agent about 100 times a second with
5 ms slots and cost ~40 µs of CPU per advert against ~9 µs of Python for
the advert itself). So a timer here may fire **early**, never late:

* :meth:`TimerBatch.call_at` takes the time the callback is due and how
  much earlier it may run (``early``). It joins the latest wake-up already
  armed in ``[when - early, when]`` that has room (at most
  :data:`CAPACITY` callbacks: one wake-up must not stall the loop for long),
  or arms a new one at ``when`` exactly.
* A master's next advert is one interval after the wake-up that sent the
  previous one, so masters that share a wake-up stay together, and one that
  was moved earlier to join others stays with them: after one interval the
  adverts of an interface's masters with the same interval go out in
  wake-ups that are more than ``early`` apart (one or two per interval with
  the driver's half-interval window), and no advert ever goes out later than
  it was due.

Sending an advert early is safe (RFC 5798: a backup's Master_Down_Interval
only restarts sooner); late is not. Backups' Master_Down timers are not
batched: their precision is the failover time.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

#: Most callbacks one wake-up runs: a full one makes the next timer arm another. A steady master's
#: advert costs about 5 µs of Python here and 5 µs more in the link's ``sendmmsg`` at the end of the pass
#: (issue 14; 10-20 µs before both), so a full wake-up holds the loop about 2.5 ms, far below anything
#: timed on it (Master_Down is at least three intervals; liveness detection runs in its own process). A
#: wake-up costs 100-300 µs of CPU on the loaded lab VM (the poll, being scheduled): 255 dual-stack groups
#: at 1 s share two per interval (four with 128), 128 masters at 0.1 s one.
CAPACITY = 256


class BatchedTimer:
    """One callback in a wake-up; cancel() keeps it from firing (like ``asyncio.TimerHandle``)."""

    __slots__ = ("_when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self._when = when
        self.callback = callback
        self.cancelled = False

    def when(self) -> float:
        """When it fires: its wake-up's time (at or before it was asked for, by at most ``early``)."""
        return self._when

    def cancel(self) -> None:
        self.cancelled = True


class _Wakeup:
    __slots__ = ("when", "timers")

    def __init__(self, when: float) -> None:
        self.when = when
        self.timers: list[BatchedTimer] = []


class TimerBatch:
    """Wake-ups shared by timers that may fire early: one loop timer runs every callback that joined it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.loop = loop
        self.capacity = capacity
        #: Armed wake-ups, sorted by time (a handful: one or two per interval in use).
        self._pending: list[_Wakeup] = []
        #: Loop timers armed (wake-ups): what batching saves is the difference to ``scheduled``.
        self.armed = 0
        self.scheduled = 0

    def call_at(self, when: float, callback: Callable[[], None], early: float = 0.0) -> BatchedTimer:
        """Run ``callback`` once, at a time in ``[when - early, when]``: with others if one is armed there."""
        self.scheduled += 1
        pending = self._pending
        if pending:
            # The common case first: a master re-armed from a wake-up joins the latest one, armed
            # by the first master re-armed there (what the search below finds, without searching).
            latest = pending[-1]
            if when - early <= latest.when <= when and len(latest.timers) < self.capacity:
                timer = BatchedTimer(latest.when, callback)
                latest.timers.append(timer)
                return timer
        return self._search(when, callback, early)

    def again(self, timer: BatchedTimer, when: float, early: float = 0.0) -> BatchedTimer:
        """:meth:`call_at` for the callback of ``timer``, which has fired: the same object, armed again."""
        self.scheduled += 1
        pending = self._pending
        if pending and not timer.cancelled:
            latest = pending[-1]
            if when - early <= latest.when <= when and len(latest.timers) < self.capacity:
                timer._when = latest.when
                latest.timers.append(timer)
                return timer
        self.scheduled -= 1
        return self.call_at(when, timer.callback, early)

    def _search(self, when: float, callback: Callable[[], None], early: float) -> BatchedTimer:
        pending = self._pending
        i = bisect.bisect_right(pending, when, key=_when)
        while i > 0:
            wakeup = pending[i - 1]
            if wakeup.when < when - early:
                break
            if len(wakeup.timers) < self.capacity:
                timer = BatchedTimer(wakeup.when, callback)
                wakeup.timers.append(timer)
                return timer
            i -= 1
        wakeup = _Wakeup(when)
        pending.insert(bisect.bisect_right(pending, when, key=_when), wakeup)
        self.armed += 1
        self.loop.call_at(when, self._fire, wakeup)
        timer = BatchedTimer(when, callback)
        wakeup.timers.append(timer)
        return timer

    def _fire(self, wakeup: _Wakeup) -> None:
        # Out of the pending list first: callbacks re-arm, and must not join the wake-up being run.
        pending = self._pending
        for i in range(bisect.bisect_left(pending, wakeup.when, key=_when), len(pending)):
            if pending[i] is wakeup:
                del pending[i]
                break
        for timer in wakeup.timers:
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception:  # one router's bug must not starve the others in its wake-up
                    log.exception("timer callback failed")


def _when(wakeup: _Wakeup) -> float:
    return wakeup.when
