"""``coordination.k8s.io/v1`` Leases: leader election for the controller, heartbeats for nodes.

The algorithm is client-go's ``leaderelection``: a candidate reads the Lease;
it takes it when nobody holds it, when the holder released it (empty
``holderIdentity``), or when the record has not changed for
``leaseDurationSeconds`` *as observed on the candidate's own clock* (so clock
skew between nodes does not matter). Every write carries the resourceVersion
it read, so two candidates racing for one Lease cannot both win: the loser
gets 409 Conflict.

Never two leaders:

* every Lease request is bounded (a request timeout, and each attempt runs in
  a worker thread under the time left until the renew deadline);
* the leader stops leading at ``renewed + renew_deadline`` even if a request
  hangs: the hung worker thread is abandoned, not awaited, and its answer is
  ignored. ``renewed`` is when the last successful renewal *started*, so the
  leader steps down at least ``duration - renew_deadline`` before any other
  candidate can take the Lease over;
* :meth:`LeaderElector.lease_left` is the fence of the controller's writer:
  the time until that deadline, 0 once leadership is lost, read from any
  thread, so a reconcile pass running in a thread stops writing at once;
* :meth:`LeaderElector.healthy` fails once the Lease is overdue while this
  replica still believes it leads (client-go's health check).

Lease requests go through the one writer (:class:`vipcore.kube.KubernetesWriter`)
and its MicroTime-preserving request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from vipcore.core.errors import ConfigError
from vipcore.kube.client import describe, micro_time, status_of
from vipcore.kube.writes import KubernetesWriter

log = logging.getLogger("vipcore.kube.leases")

Obj = dict[str, Any]
T = TypeVar("T")


@attrs.frozen
class LeaseTiming:
    """client-go's three durations. Defaults are kube-controller-manager's."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.duration:
            raise ConfigError(
                f"need 0 < retry_period ({self.retry_period}) < renew_deadline ({self.renew_deadline}) "
                f"< duration ({self.duration})", field="controller.leader_election")

    @classmethod
    def from_config(cls, data: Any, where: str = "controller.leader_election") -> "LeaseTiming":
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ConfigError("must be a mapping with duration, renew_deadline, retry_period", field=where)
        unknown = set(data) - {"duration", "renew_deadline", "retry_period"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}", field=where)
        try:
            values = {k: float(v) for k, v in data.items()}
        except (TypeError, ValueError):
            raise ConfigError("durations must be numbers of seconds", field=where) from None
        return cls(**values)


class LeaseClient:
    """Read, create and replace Leases in one namespace, as plain dicts, through the one writer."""

    def __init__(self, writer: KubernetesWriter, namespace: str) -> None:
        self.writer = writer
        self.namespace = namespace

    def read(self, name: str, *, timeout: float | None = None) -> Obj | None:
        """The Lease, or None when it does not exist."""
        return self.writer.read_lease(self.namespace, name, timeout=timeout)

    def create(self, name: str, spec: Obj, *, timeout: float | None = None) -> Obj:
        """Create the Lease; a KubernetesError with status 409 if it exists."""
        return self.writer.create_lease(self.namespace, name, spec, timeout=timeout)

    def replace(self, lease: Obj, spec: Obj, *, timeout: float | None = None) -> Obj:
        """Write ``spec`` with the resourceVersion ``lease`` was read at (409 if it changed since)."""
        return self.writer.replace_lease(lease, spec, timeout=timeout)


async def call_bounded(fn: Callable[[], T], timeout: float, *, name: str = "bounded-call") -> T:
    """Run blocking ``fn`` in a new daemon thread; its result, or TimeoutError after ``timeout`` seconds.

    On timeout (or cancellation) the thread is abandoned, not awaited: it may
    go on blocking, and its result is dropped. Nothing waits for it at
    interpreter or event-loop shutdown (unlike ``asyncio.to_thread``).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            outcome: tuple[bool, Any] = (True, fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting task
            outcome = (False, exc)
        if loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name=name, daemon=True).start()
    done, _ = await asyncio.wait({future}, timeout=timeout)
    if not done:
        future.cancel()
        raise TimeoutError(f"{name} did not finish within {timeout:.2f}s")
    return future.result()


class LeaderElector:
    """One candidate for one Lease. :meth:`run` leads while it holds the Lease."""

    def __init__(
        self,
        leases: LeaseClient,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leases = leases
        self.name = name
        self.identity = identity
        self.timing = timing
        self.clock = clock
        self.monotonic = monotonic
        #: Set by the campaign loop; :attr:`leading` also checks the deadline.
        self._leading = False
        #: monotonic start of the last successful acquire or renewal.
        self._renewed = float("-inf")
        #: (holderIdentity, renewTime) last seen, and when (monotonic) it was first seen.
        self._observed: tuple[tuple[str, str], float] | None = None
        self.transitions = 0
        #: Called on the event loop with True on becoming leader, False on stopping (for metrics and tests).
        self.on_change: list[Callable[[bool], None]] = []

    # -- what others ask (any thread) ------------------------------------------

    def lease_left(self) -> float:
        """Seconds until this replica must stop leading (the renew deadline); 0 when not leading."""
        if not self._leading:
            return 0.0
        return max(0.0, self._renewed + self.timing.renew_deadline - self.monotonic())

    @property
    def leading(self) -> bool:
        return self.lease_left() > 0

    def healthy(self) -> bool:
        """False once this replica believes it leads but its Lease is overdue (not renewed for ``duration``)."""
        return not (self._leading and self.monotonic() - self._renewed > self.timing.duration)

    # -- one attempt ---------------------------------------------------------

    def _spec(self, old: Obj | None) -> Obj:
        now = micro_time(self.clock())
        old = old or {}
        mine = old.get("holderIdentity") == self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, math.ceil(self.timing.duration)),
            "acquireTime": old.get("acquireTime") if mine and old.get("acquireTime") else now,
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (0 if mine or not old else 1),
        }

    def try_acquire_or_renew(self, timeout: float | None = None) -> bool:
        """One read-and-write round trip; True when this candidate holds the Lease afterwards.

        ``timeout``: the whole attempt's budget (each request gets what is
        left). Raises the writer's errors for anything but 404 on read and 409 on write.
        """
        deadline = None if timeout is None else self.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.01, deadline - self.monotonic())

        lease = self.leases.read(self.name, timeout=left())
        try:
            if lease is None:
                written = self._spec(None)
                self.leases.create(self.name, written, timeout=left())
                self._observe(self.identity, written["renewTime"])
                return True
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            record = (holder, str(spec.get("renewTime") or ""))
            now = self.monotonic()
            if self._observed is None or self._observed[0] != record:
                self._observed = (record, now)
            if holder and holder != self.identity:
                duration = float(spec.get("leaseDurationSeconds") or self.timing.duration)
                if now - self._observed[1] < duration:
                    return False
                log.info("lease %s: holder %s did not renew for %.1fs; taking over", self.name, holder, duration,
                         extra={"event": "lease_expired", "holder": holder})
            written = self._spec(spec)
            self.leases.replace(lease, written, timeout=left())
            self._observe(self.identity, written["renewTime"])
            return True
        except Exception as exc:
            if status_of(exc) == 409:
                return False
            raise

    def _observe(self, holder: str, renew: str) -> None:
        self._observed = ((holder, renew), self.monotonic())

    def release(self, timeout: float | None = None) -> None:
        """Give the Lease up so another candidate takes it at once (client-go's ReleaseOnCancel)."""
        lease = self.leases.read(self.name, timeout=timeout)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return
        now = micro_time(self.clock())
        released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
        self.leases.replace(lease, released, timeout=timeout)

    # -- the loop ------------------------------------------------------------

    async def _attempt(self, budget: float) -> bool:
        """One attempt, given at most ``budget`` seconds; a hung one is abandoned."""
        if budget <= 0:
            return False
        try:
            return await call_bounded(lambda: self.try_acquire_or_renew(budget), budget,
                                      name=f"lease:{self.name}")
        except Exception as exc:  # noqa: BLE001 - any API or connection error, or a timeout, is one failed attempt
            log.warning("lease %s: %s", self.name, describe(exc), extra={"event": "lease_error"})
            return False

    def _set_leading(self, leading: bool) -> None:
        if self._leading == leading:
            return
        self._leading = leading
        for callback in self.on_change:
            try:
                callback(leading)
            except Exception:  # noqa: BLE001 - an observer must not break the election
                log.exception("leadership observer failed")

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; while leading, run ``lead()`` and cancel it when the Lease is lost.

        On cancellation the Lease is released if held.
        """
        t = self.timing
        try:
            while True:
                while True:
                    started = self.monotonic()
                    if await self._attempt(t.renew_deadline):
                        break
                    await asyncio.sleep(t.retry_period * (1 + 0.2 * random.random()))
                self._renewed = started
                self.transitions += 1
                self._set_leading(True)
                log.info("became leader (lease %s, identity %s)", self.name, self.identity,
                         extra={"event": "leader_started", "identity": self.identity})
                task = asyncio.ensure_future(lead())
                try:
                    await self._renew_until_lost(task)
                finally:
                    self._set_leading(False)
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            if self._leading or self._held_by_me():
                self._set_leading(False)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._release_quietly())
            raise

    async def _renew_until_lost(self, task: asyncio.Future[None]) -> None:
        """Renew every retry period; return when ``task`` ends or the renew deadline passes."""
        t = self.timing
        while not task.done():
            deadline = self._renewed + t.renew_deadline
            done, _ = await asyncio.wait({task}, timeout=max(0.0, min(t.retry_period, deadline - self.monotonic())))
            if done:
                return
            started = self.monotonic()
            if started < deadline and await self._attempt(deadline - started):
                self._renewed = started
            elif self.monotonic() >= deadline:
                log.warning("lost the lease %s: not renewed within %.1fs", self.name, t.renew_deadline,
                            extra={"event": "leader_lost"})
                return

    def _held_by_me(self) -> bool:
        return self._observed is not None and self._observed[0][0] == self.identity

    async def _release_quietly(self) -> None:
        budget = self.timing.renew_deadline
        try:
            await call_bounded(lambda: self.release(budget), budget, name=f"lease-release:{self.name}")
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("lease %s: release failed: %s", self.name, describe(exc))
