"""Leader election when the leader is cut off: step-down, takeover, and the gap with no leader.

    .venv/bin/python bench/leadership.py [--trials 10] [--duration 2] [--renew-deadline 1.5] [--retry-period 0.25]

Runs the test API server in-process and two candidates (``LeaderElector``
over the one writer, each on its own event loop). Per trial: the leader's
connection is black-holed (the server accepts its requests and never
answers), and the bench times, from that moment, when the old leader stops
leading (bounded by ``renew_deadline``) and when the other one takes over
(``duration`` after it last saw a renewal, plus up to ``retry_period``). The
gap between the two must be positive: never two leaders. Median and p95
(nearest rank) in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vipcore.kube import KubernetesWriter  # noqa: E402
from vipcore.kube.leases import LeaderElector, LeaseClient, LeaseTiming  # noqa: E402
from vipcore.testing.apiserver import ApiServer  # noqa: E402


class Candidate:
    def __init__(self, server: ApiServer, identity: str, timing: LeaseTiming) -> None:
        self.client = server.client()
        self.client.user_agent = f"bench/{identity}"
        self.elector = LeaderElector(LeaseClient(KubernetesWriter(self.client), "default"), "bench", identity, timing)
        self.changes: list[tuple[float, bool]] = []
        self.elector.on_change.append(lambda leading: self.changes.append((time.monotonic(), leading)))
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    async def _lead(self) -> None:
        await asyncio.Event().wait()

    def _main(self) -> None:
        self.task = self.loop.create_task(self.elector.run(self._lead))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        finally:
            self.loop.close()

    def stop(self) -> None:
        while self.task is None:
            time.sleep(0.01)
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(30)
        self.client.close()


def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench trial timed out")
        time.sleep(0.005)


def trial(timing: LeaseTiming) -> tuple[float, float]:
    with ApiServer() as server:
        a = Candidate(server, "a", timing)
        try:
            wait(lambda: a.elector.leading, 10)
            b = Candidate(server, "b", timing)
            try:
                time.sleep(timing.retry_period * 2)
                with server.black_hole("bench/a"):
                    cut = time.monotonic()
                    wait(lambda: b.elector.leading, timing.duration * 5)
                stopped = next(t for t, leading in a.changes if not leading)
                took = next(t for t, leading in b.changes if leading)
                return stopped - cut, took - cut
            finally:
                b.stop()
        finally:
            a.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--renew-deadline", type=float, default=1.5)
    parser.add_argument("--retry-period", type=float, default=0.25)
    args = parser.parse_args()
    timing = LeaseTiming(duration=args.duration, renew_deadline=args.renew_deadline, retry_period=args.retry_period)
    stops, takes, gaps = [], [], []
    for i in range(args.trials):
        stop, take = trial(timing)
        stops.append(stop)
        takes.append(take)
        gaps.append(take - stop)
        print(f"trial {i + 1}: old leader stopped {stop:.3f}s, new leader {take:.3f}s after the cut",
              file=sys.stderr)
    print(f"leader cut off (black hole), {args.trials} trials, Lease {timing.duration:g}s / renew deadline "
          f"{timing.renew_deadline:g}s / retry {timing.retry_period:g}s")
    print(f"{'seconds after the cut':<34} {'median':>8} {'p95':>8} {'min':>8}")
    for label, values in (("old leader stops leading", stops), ("new leader starts", takes),
                          ("no leader (gap between the two)", gaps)):
        print(f"{label:<34} {statistics.median(values):>8.3f} {pct(values, 0.95):>8.3f} {min(values):>8.3f}")
    print(f"two leaders at once: {sum(1 for g in gaps if g <= 0)} of {args.trials} trials")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
