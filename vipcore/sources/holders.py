"""Record which node holds each VipGroup in the group's status: a ``vipcore_state_changed`` observer.

When this node's router for (group, family) becomes MASTER, the observer
writes ``status.holders.<ipv4|ipv6> = {node, since, backend, lastFailoverSeconds, lastFailover}`` through the
``/status`` subresource; when it stops being MASTER it clears the entry, but
only if the entry still names this node (a compare-and-swap on the
resourceVersion it read, so it never erases the new holder's record). So
``kubectl get vipgroups`` answers "which node holds my VIP?".

The hook is called on the agent's event loop and must not block: it only
records the latest wish per (group, family); one worker thread writes them
through the one writer (:class:`vipcore.kube.KubernetesWriter`), coalescing
bursts and retrying with a bounded backoff while the API server is
unreachable. A VipGroup that does not exist (yet, or any more) is skipped.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from vipcore.backend import hookimpl
from vipcore.core.model import Family, State, StateChange
from vipcore.core.objects import family_key
from vipcore.kube import KubernetesWriter, describe, status_of

log = logging.getLogger("vipcore.sources.holders")

CONFLICT_RETRIES = 5
#: Seconds between two re-recordings of one router (a real split brain must not become a write storm).
REASSERT_INTERVAL = 1.0


class HolderStatus:
    """The observer plugin; register it with the agent's plugin manager, :meth:`close` on stop."""

    def __init__(self, writer: KubernetesWriter, node: str, *, retry_max: float = 5.0) -> None:
        self.writer = writer
        self.node = node
        self.retry_max = retry_max
        self._pending: dict[tuple[str, Family], StateChange] = {}
        #: Routers this node holds now, with the transition that made them MASTER.
        self._holding: dict[tuple[str, Family], StateChange] = {}
        self._asserted: dict[tuple[str, Family], float] = {}
        self._timers: dict[tuple[str, Family], threading.Timer] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._work, name=f"holder-status:{node}", daemon=True)
        self._thread.start()
        # The agent reports its last transitions (STOPPED) while stopping; write them before the process exits.
        atexit.register(self.flush, 2.0)

    @hookimpl
    def vipcore_state_changed(self, change: StateChange) -> None:
        if change.node != self.node:
            return
        if change.new is not State.MASTER and change.old is not State.MASTER:
            return  # BACKUP <-> INIT/FAULT/STOPPED: this node did not hold and does not hold
        key = (change.group, change.family)
        with self._cond:
            if change.new is State.MASTER:
                self._holding[key] = change
            else:
                self._holding.pop(key, None)
            self._pending[key] = change
            self._cond.notify()

    def check(self, obj: Mapping[str, Any]) -> None:
        """Re-record this node where a VipGroup's status names another holder (or none) while it holds.

        Two routers that start together can both become MASTER for an instant;
        the one that steps down clears the record if it wrote last. Called on
        every VipGroup change the agent sees; at most once a second per router
        (a check that comes sooner looks again when the second is over), so a
        real split brain does not turn into a write storm.
        """
        name = str((obj.get("metadata") or {}).get("name"))
        status = obj.get("status") or {}
        holders = status.get("holders") if isinstance(status, Mapping) else None
        holders = holders if isinstance(holders, Mapping) else {}
        now = time.monotonic()
        with self._cond:
            for family in Family:
                key = (name, family)
                change = self._holding.get(key)
                if change is None or key in self._pending:
                    continue
                recorded = holders.get(family_key(family))
                if isinstance(recorded, Mapping) and recorded.get("node") == self.node:
                    continue
                wait = self._asserted.get(key, float("-inf")) + REASSERT_INTERVAL - now
                if wait > 0:
                    # Too soon after the last time: look again then (the record may be fine by then).
                    if key not in self._timers and not self._closed:
                        timer = threading.Timer(wait, self._recheck, args=(key, obj))
                        timer.daemon = True
                        self._timers[key] = timer
                        timer.start()
                    continue
                self._asserted[key] = now
                self._pending[key] = change
                self._cond.notify()

    def _recheck(self, key: tuple[str, Family], obj: Mapping[str, Any]) -> None:
        with self._cond:
            self._timers.pop(key, None)
        if self._closed:
            return
        try:
            fresh: Mapping[str, Any] | None = self.writer.read_vipgroup(key[0])
        except Exception:  # noqa: BLE001 - the API may be down: judge by what was seen last
            fresh = obj
        if fresh is not None:
            self.check(fresh)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded wish was written (or given up); True if the queue drained."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        atexit.unregister(self.flush)
        with self._cond:
            self._closed = True
            timers, self._timers = list(self._timers.values()), {}
            self._cond.notify_all()
        for timer in timers:
            timer.cancel()
        self._thread.join(timeout=2)

    # -- the worker --------------------------------------------------------------

    _busy = False

    def _work(self) -> None:
        delay = 0.1
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                key = next(iter(self._pending))
                change = self._pending.pop(key)
                self._busy = True
            try:
                self._write(change)
                self.written += 1
                delay = 0.1
                failed = False
            except Exception as exc:  # noqa: BLE001 - the API may be down; keep the latest wish and retry
                self.failures += 1
                failed = True
                log.warning("holder status of group %s (%s): %s; retrying in %.1fs", change.group[:12],
                            change.family.k8s_name, describe(exc), delay,
                            extra={"event": "holder_status_error", "group": change.group})
            with self._cond:
                self._busy = False
                if failed:
                    # A newer wish for the same router wins over the one that failed.
                    self._pending.setdefault(key, change)
                self._cond.notify_all()
                if failed:
                    self._cond.wait_for(lambda: self._closed, delay)
                    delay = min(delay * 2, self.retry_max)

    def _write(self, change: StateChange) -> None:
        if change.new is State.MASTER:
            recorded = self.writer.set_vipgroup_holder(change.group, change.family, self.node, since=change.at,
                                                       backend=change.backend,
                                                       failover_seconds=change.failover_seconds,
                                                       phases=change.failover_phases)
            if recorded is None:
                # The agent can be faster than the controller's VipGroup write: try again shortly.
                raise LookupError(f"VipGroup {change.group} does not exist yet")
            return
        for _ in range(CONFLICT_RETRIES):
            obj = self.writer.read_vipgroup(change.group)
            if obj is None:
                return
            holder = ((obj.get("status") or {}).get("holders") or {}).get(family_key(change.family)) or {}
            if holder.get("node") != self.node:
                return  # someone else holds it now: their record stays
            try:
                self.writer.set_vipgroup_holder(change.group, change.family, None,
                                                resource_version=obj["metadata"]["resourceVersion"])
                return
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
