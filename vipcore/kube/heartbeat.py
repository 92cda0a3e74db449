"""Per-node heartbeat Leases: a node whose agent stopped renewing is not eligible to hold VIPs.

Each agent renews the ``coordination.k8s.io/v1`` Lease ``vipcore-node-<node>``
(in the configured namespace) every third of its duration. Everyone who
resolves groups (the controller and every agent, so VipGroups and the agents'
own resolutions agree) feeds the verdict into the desired state as "node not
ready", the same path as a NotReady Node: the resolver drops the node from the
groups' node lists, and the next node in placement order becomes the holder.
This is what gives ``netlink_static`` failover when a node dies; VRRP
backends do not need it.

Expiry is judged as client-go's leader election does: a Lease is alive while
its record (holder, renewTime) changed less than ``leaseDurationSeconds`` ago
*on the observer's own monotonic clock*, so clock skew between nodes does not
matter. A node with no Lease is not eligible (it runs no agent). While the
observer's view of the API is stale (the watch is down), the last verdict is
kept: an unreachable API server must not make every node look dead; when
the view is current again every Lease gets a full duration to be renewed.

Configuration (``kubernetes.heartbeat`` in the shared config)::

    kubernetes:
      heartbeat: {enabled: true, namespace: vipcore-system, duration: 4}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from vipcore.kube.client import describe, micro_time, status_of
from vipcore.kube.leases import LeaseClient, call_bounded
from vipcore.core.errors import ConfigError
from vipcore.core.model import DesiredState

log = logging.getLogger("vipcore.kube.heartbeat")

PREFIX = "vipcore-node-"
DEFAULT_NAMESPACE = "vipcore-system"
DEFAULT_DURATION = 4.0


def lease_name(node: str) -> str:
    return f"{PREFIX}{node}"


@attrs.frozen
class HeartbeatConfig:
    enabled: bool = False
    namespace: str = DEFAULT_NAMESPACE
    #: Seconds without renewal after which a node is not eligible (whole seconds on the wire).
    duration: float = DEFAULT_DURATION

    @classmethod
    def from_config(cls, kubernetes: Mapping[str, Any]) -> "HeartbeatConfig":
        data = kubernetes.get("heartbeat")
        if data is None:
            return cls()
        where = "kubernetes.heartbeat"
        if not isinstance(data, Mapping):
            raise ConfigError("must be a mapping with enabled, namespace, duration", field=where)
        unknown = set(data) - {"enabled", "namespace", "duration"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}", field=where)
        try:
            duration = float(data.get("duration", DEFAULT_DURATION))
        except (TypeError, ValueError):
            raise ConfigError("must be a number of seconds", field=f"{where}.duration") from None
        if duration < 1:
            raise ConfigError("must be at least 1 (Leases count whole seconds)", field=f"{where}.duration")
        namespace = data.get("namespace", kubernetes.get("namespace", DEFAULT_NAMESPACE))
        return cls(enabled=bool(data.get("enabled", True)), namespace=str(namespace), duration=duration)


class HeartbeatTracker:
    """Which nodes' heartbeat Leases are alive, judged on this process's clock."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        #: node -> ((holder, renewTime), duration, first seen at)
        self._seen: dict[str, tuple[tuple[str, str], float, float]] = {}
        self._alive: frozenset[str] = frozenset()
        self._stale = False

    def observe(self, leases: Iterable[Mapping[str, Any]], *, fresh: bool = True) -> frozenset[str]:
        """The nodes alive now, given the heartbeat Leases the observer currently sees.

        ``fresh``: whether the view is current (the watch is connected). When
        it is not, the previous answer is returned unchanged.
        """
        if not fresh:
            self._stale = True
            return self._alive
        now = self.monotonic()
        if self._stale:
            # Back from an outage: nobody could renew meanwhile, so restart every clock now.
            self._stale = False
            self._seen = {node: (record, duration, now) for node, (record, duration, _) in self._seen.items()}
        current: dict[str, tuple[tuple[str, str], float, float]] = {}
        for lease in leases:
            name = str((lease.get("metadata") or {}).get("name") or "")
            if not name.startswith(PREFIX):
                continue
            node = name[len(PREFIX):]
            spec = lease.get("spec") or {}
            record = (str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""))
            duration = float(spec.get("leaseDurationSeconds") or DEFAULT_DURATION)
            previous = self._seen.get(node)
            since = previous[2] if previous is not None and previous[0] == record else now
            current[node] = (record, duration, since)
        self._seen = current
        self._alive = frozenset(
            node for node, (record, duration, since) in current.items()
            if record[0] == node and now - since < duration
        )
        return self._alive

    def next_expiry(self) -> float | None:
        """Seconds until the next alive Lease expires if not renewed (to re-check then)."""
        now = self.monotonic()
        left = [since + duration - now for node, (_, duration, since) in self._seen.items() if node in self._alive]
        return max(0.0, min(left)) if left else None


def with_heartbeats(state: DesiredState, alive: frozenset[str]) -> DesiredState:
    """``state`` with every node outside ``alive`` marked not ready."""
    if all(n.name in alive or not n.ready for n in state.nodes):
        return state
    nodes = tuple(n if n.name in alive or not n.ready else attrs.evolve(n, ready=False) for n in state.nodes)
    return attrs.evolve(state, nodes=nodes)


class NodeHeartbeat:
    """Renews this node's heartbeat Lease until cancelled; then releases it so peers react at once."""

    def __init__(self, leases: LeaseClient, node: str, duration: float = DEFAULT_DURATION,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.leases = leases
        self.node = node
        self.duration = duration
        self.clock = clock
        self.renewals = 0
        self.failures = 0

    @property
    def name(self) -> str:
        return lease_name(self.node)

    def renew(self, *, release: bool = False, timeout: float | None = None) -> None:
        """Create or renew the Lease (one round trip, plus one on conflict), each request within ``timeout``."""
        for _ in range(3):
            lease = self.leases.read(self.name, timeout=timeout)
            spec = {
                "holderIdentity": "" if release else self.node,
                "leaseDurationSeconds": max(1, math.ceil(self.duration)),
                "renewTime": micro_time(self.clock()),
            }
            try:
                if lease is None:
                    if release:
                        return
                    self.leases.create(self.name, spec, timeout=timeout)
                else:
                    self.leases.replace(lease, {**(lease.get("spec") or {}), **spec}, timeout=timeout)
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise

    async def run(self) -> None:
        interval = self.duration / 3
        try:
            while True:
                try:
                    # Bounded: a renewal that cannot finish within the interval is abandoned.
                    await call_bounded(lambda: self.renew(timeout=interval), interval, name=f"heartbeat:{self.node}")
                    self.renewals += 1
                except Exception as exc:  # noqa: BLE001 - the API may be unreachable; keep trying
                    self.failures += 1
                    log.warning("heartbeat lease %s: %s", self.name, describe(exc),
                                extra={"event": "heartbeat_error"})
                await asyncio.sleep(interval)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):  # best effort on the way out
                await asyncio.shield(call_bounded(lambda: self.renew(release=True, timeout=interval), interval,
                                                  name=f"heartbeat-release:{self.node}"))
            raise
