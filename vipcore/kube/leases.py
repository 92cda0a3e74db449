"""``coordination.k8s.io/v1`` Leases: leader election for the controller, heartbeats for nodes.

The algorithm is client-go's ``leaderelection``: a candidate reads the Lease;
it takes it when nobody holds it, when the holder released it (empty
``holderIdentity``), or when the record has not changed for
``leaseDurationSeconds`` *as observed on the candidate's own clock* (so clock
skew between nodes does not matter). Every write carries the resourceVersion
it read, so two candidates racing for one Lease cannot both win: the loser
gets 409 Conflict. A leader that cannot renew within ``renew_deadline`` stops
leading before its Lease can expire elsewhere.

The kubernetes client is synchronous; calls run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from vipcore.core.errors import ConfigError

log = logging.getLogger("vipcore.kube.leases")

Obj = dict[str, Any]


def micro_time(at: float) -> str:
    """A Kubernetes ``MicroTime``: RFC 3339 with microseconds, UTC."""
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: Any) -> float | None:
    """Seconds since the epoch from a ``Time``/``MicroTime`` string, or None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


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
    """Read, create and replace Leases in one namespace, as plain dicts."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        import kubernetes.client

        self.api: Any = kubernetes.client.CoordinationV1Api(api_client)
        self.namespace = namespace

    def read(self, name: str) -> Obj | None:
        """The Lease, or None when it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.read_namespaced_lease(name, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        result: Obj = json.loads(resp.data)
        return result

    def create(self, name: str, spec: Obj) -> Obj:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": self.namespace}, "spec": spec}
        resp = self.api.create_namespaced_lease(self.namespace, body, _preload_content=False)
        result: Obj = json.loads(resp.data)
        return result

    def replace(self, lease: Obj, spec: Obj) -> Obj:
        """Write ``spec`` with the resourceVersion ``lease`` was read at (409 if it changed since)."""
        meta = lease["metadata"]
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": meta["name"], "namespace": self.namespace,
                             "resourceVersion": meta["resourceVersion"]},
                "spec": spec}
        resp = self.api.replace_namespaced_lease(meta["name"], self.namespace, body, _preload_content=False)
        result: Obj = json.loads(resp.data)
        return result

    def list(self) -> list[Obj]:
        resp = self.api.list_namespaced_lease(self.namespace, _preload_content=False)
        items: list[Obj] = json.loads(resp.data).get("items") or []
        return items


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
        self.leading = False
        #: (holderIdentity, renewTime) last seen, and when (monotonic) it was first seen.
        self._observed: tuple[tuple[str, str], float] | None = None
        self.transitions = 0

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

    def try_acquire_or_renew(self) -> bool:
        """One read-and-write round trip; True when this candidate holds the Lease afterwards.

        Raises the client's exceptions for anything but 404 on read and 409 on write.
        """
        from kubernetes.client.exceptions import ApiException

        lease = self.leases.read(self.name)
        try:
            if lease is None:
                written = self._spec(None)
                self.leases.create(self.name, written)
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
            self.leases.replace(lease, written)
            self._observe(self.identity, written["renewTime"])
            return True
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise

    def _observe(self, holder: str, renew: str) -> None:
        self._observed = ((holder, renew), self.monotonic())

    def release(self) -> None:
        """Give the Lease up so another candidate takes it at once (client-go's ReleaseOnCancel)."""
        from kubernetes.client.exceptions import ApiException

        lease = self.leases.read(self.name)
        spec = (lease or {}).get("spec") or {}
        if lease is None or spec.get("holderIdentity") != self.identity:
            return
        now = micro_time(self.clock())
        released = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now}
        with contextlib.suppress(ApiException):
            self.leases.replace(lease, released)

    # -- the loop ------------------------------------------------------------

    async def _attempt(self) -> bool:
        try:
            return await asyncio.to_thread(self.try_acquire_or_renew)
        except Exception as exc:  # noqa: BLE001 - any API or connection error is one failed attempt
            log.warning("lease %s: %s", self.name, _short_error(exc), extra={"event": "lease_error"})
            return False

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign forever; while leading, run ``lead()`` and cancel it when the Lease is lost.

        On cancellation the Lease is released if held.
        """
        t = self.timing
        try:
            while True:
                while not await self._attempt():
                    await asyncio.sleep(t.retry_period * (1 + 0.2 * random.random()))
                self.leading = True
                self.transitions += 1
                log.info("became leader (lease %s, identity %s)", self.name, self.identity,
                         extra={"event": "leader_started", "identity": self.identity})
                task = asyncio.ensure_future(lead())
                renewed = self.monotonic()
                try:
                    while not task.done():
                        done, _ = await asyncio.wait({task}, timeout=t.retry_period)
                        if done:
                            break
                        if await self._attempt():
                            renewed = self.monotonic()
                        elif self.monotonic() - renewed > t.renew_deadline:
                            log.warning("lost the lease %s: not renewed for %.1fs", self.name, t.renew_deadline,
                                        extra={"event": "leader_lost"})
                            break
                finally:
                    self.leading = False
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError, Exception):
                            await task
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        except asyncio.CancelledError:
            if self.leading or self._held_by_me():
                await asyncio.shield(asyncio.to_thread(self._release_quietly))
            raise

    def _held_by_me(self) -> bool:
        return self._observed is not None and self._observed[0][0] == self.identity

    def _release_quietly(self) -> None:
        try:
            self.release()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("lease %s: release failed: %s", self.name, _short_error(exc))


def _short_error(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"HTTP {status} {reason or ''}".strip()
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
