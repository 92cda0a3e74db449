"""The node agent: source -> resolve -> this node's groups -> the backend, by difference.

The agent owns no protocol: it tells the active backend (through the hooks
facade) which groups this node takes part in, and fans the backend's state
reports out to observers.

Nothing a plugin or a source does stops it:

* A group whose hook fails (raises, returns garbage, misses its deadline) is
  recorded in :attr:`Agent.failed`, shown on ``/status`` and in metrics, makes
  the agent not ready, and is retried with exponential backoff, on its own;
  the other groups are not disturbed. Groups are dispatched concurrently, so a
  slow one does not delay the rest.
* A group whose interface is missing is skipped and reported, at start as later.
* A source that fails (bad input, API down) leaves the last good state in
  place (groups joined, VIPs held): the watch restarts with backoff. At start,
  the first state is retried with backoff while ``/readyz`` answers 503 and
  ``/status`` says why.

Settings live in the config's ``agent:`` section (see docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import difflib
import gc
import logging
import math
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from vipcore.backend import BackendContext
from vipcore.core.settings import Config
from vipcore.core.errors import ConfigError, MissingExtraError, VipcoreError
from vipcore.core.model import (
    DesiredState,
    FailoverPhases,
    Family,
    GroupState,
    IPAddress,
    Membership,
    Resolution,
    State,
    StateChange,
)
from vipcore.backend.host import Hooks, load_hooks
from vipcore.core.incremental import IncrementalResolver
from vipcore.core.resolve import membership, membership_changes
from vipcore.sources import Source
from vipcore.sources.manifests import ManifestSource

if TYPE_CHECKING:  # imported when configured (kubernetes_source): the ``kubernetes`` extra may be absent
    from vipcore.sources.kubernetes import KubernetesAgentSource

log = logging.getLogger("vipcore.agent")


def interface_exists(name: str) -> bool:
    """Whether the interface exists in this network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


#: The agent's own config section (its timings, :class:`AgentSettings`); every other section is a backend's.
AGENT_SECTION = "agent"
AGENT_SECTIONS = frozenset({AGENT_SECTION})

@attrs.frozen
class AgentSettings:
    """The ``agent:`` section of the config."""

    #: Seconds a group hook (join, update, leave, release, takeover) may take before the group is failed.
    hook_timeout: float = 30.0
    #: Seconds the backend's start and stop may take (SIGTERM never waits longer).
    stop_timeout: float = 60.0
    #: First and longest wait (seconds) before retrying a failed group or a failed source.
    retry_initial: float = 1.0
    retry_max: float = 60.0

    @classmethod
    def from_config(cls, config: Config) -> "AgentSettings":
        section = config.sections.get(AGENT_SECTION, {})
        where = str(config.path) if config.path else None
        values: dict[str, float] = {}
        for key, raw in section.items():
            if key not in attrs.fields_dict(cls):
                raise ConfigError(f"unknown setting (known: {', '.join(attrs.fields_dict(cls))})",
                                  source=where, field=f"agent.{key}")
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw <= 0:
                raise ConfigError(f"must be a positive number of seconds, got {raw!r}", source=where,
                                  field=f"agent.{key}")
            values[key] = float(raw)
        settings = cls(**values)
        if settings.retry_initial > settings.retry_max:
            raise ConfigError("must not exceed agent.retry_max", source=where, field="agent.retry_initial")
        return settings

    def backoff(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1, 2, ...): doubling, capped, with +-20% jitter."""
        base = min(self.retry_max, self.retry_initial * 2.0 ** min(attempt - 1, 30))
        return base * random.uniform(0.8, 1.2)


@attrs.define
class GroupFailure:
    """A group whose last hook failed: retried with backoff until it succeeds or the group goes away."""

    group: str
    hook: str
    error: str
    since: float
    attempts: int = 1
    #: Wall-clock time of the next retry.
    retry_at: float | None = None


@attrs.define
class RouterStatus:
    """The last reported state of one (group, family) router on this node."""

    group: str
    family: Family
    state: State
    since: float
    reason: str
    vrid: int | None = None
    last_failover_seconds: float | None = None
    #: The phases of the last failover into MASTER after a master failed (kept across later transitions).
    last_failover: FailoverPhases | None = None


class Agent:
    """Runs on every node; drives the configured backend."""

    def __init__(
        self,
        config: Config,
        *,
        hooks: Hooks | None = None,
        source: Source | None = None,
        interface_check: Callable[[str], bool] = interface_exists,
    ) -> None:
        self.config = config
        self.settings = AgentSettings.from_config(config)
        self.hooks = hooks or load_hooks()
        self.hooks.deadline = self.settings.hook_timeout
        self.hooks.stop_deadline = self.settings.stop_timeout
        self.source = source if source is not None else make_source(config)
        # A source may bring observers of its own (the Kubernetes source's
        # holder-status writer records who holds each VipGroup).
        offered = getattr(self.source, "plugins", None)
        for name, plugin in (offered() if callable(offered) else []):
            if self.hooks.pm.get_plugin(name) is None:
                self.hooks.pm.register(plugin, name=name)
        self.interface_check = interface_check
        self.node = config.node_name
        self.memberships: dict[str, Membership] = {}
        self.resolution: Resolution | None = None
        self._resolver: IncrementalResolver | None = None
        self.routers: dict[tuple[str, Family], RouterStatus] = {}
        self.skipped: dict[str, str] = {}
        self.released: set[str] = set()
        #: What the backend should have: this node's groups as last resolved (memberships: what it has).
        self.desired: dict[str, Membership] = {}
        self.drained = False
        self.failed: dict[str, GroupFailure] = {}
        #: The source's last failure, until a state from it is applied again.
        self.source_error: str | None = None
        self.started_at = time.time()
        self._started = False
        self._waiting: str | None = "starting"
        self._retries: dict[str, asyncio.Task[None]] = {}
        #: Whether an address is a VIP of a known group.
        self._managed: Callable[[IPAddress], bool] = frozenset[IPAddress]().__contains__
        self.pools: tuple[Any, ...] = ()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()

    # -- readiness ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Started and no group failed (see :meth:`not_ready_reason`)."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why ``/readyz`` fails, or None: not started yet (and why), or a group of this node failed.

        A router in FAULT (its interface went away, lost carrier, or its IPv6
        prefix did not come back) makes the agent unready until it recovers.
        Skipped groups (missing interface) and unresolved Services do not make
        the agent unready: they are input problems that another node cannot fix.
        """
        if not self._started:
            return self._waiting or "starting"
        if self.failed:
            names = ", ".join(sorted(_short(f.group) for f in self.failed.values()))
            return f"{len(self.failed)} group(s) failed in the backend: {names}"
        faults = sorted((r for r in self.routers.values() if r.state is State.FAULT and r.group in self.memberships),
                        key=lambda r: (r.group, r.family.value))
        if faults:
            first = faults[0]
            return (f"{len(faults)} router(s) in fault, e.g. group {_short(first.group)} "
                    f"{first.family.k8s_name}: {first.reason}")
        return None

    # -- reporting ---------------------------------------------------------

    def report(self, change: StateChange) -> None:
        """Record a backend's transition and notify observers."""
        key = (change.group, change.family)
        previous = self.routers.get(key)
        self.routers[key] = RouterStatus(
            group=change.group, family=change.family, state=change.new, since=change.at,
            reason=change.reason, vrid=change.vrid,
            last_failover_seconds=change.failover_seconds if change.failover_seconds is not None
            else (previous.last_failover_seconds if previous else None),
            # The breakdown belongs to the failover whose duration is kept: a newer failover without one
            # (a control-plane takeover) must not show an older one's phases.
            last_failover=change.failover_phases if change.failover_seconds is not None or change.failover_phases
            else (previous.last_failover if previous else None),
        )
        phases = change.failover_phases
        log.info(
            "transition group=%s family=%s vrid=%s old=%s new=%s reason=%r%s%s",
            change.group[:12], change.family.k8s_name, change.vrid, change.old.value, change.new.value,
            change.reason,
            f" failover_ms={change.failover_seconds * 1000:.1f}" if change.failover_seconds is not None else "",
            "".join(f" {name}_ms={value * 1000:.1f}" for name, value in phases.items() if value is not None)
            if phases is not None else "",
            extra={"event": "transition", "group": change.group, "family": change.family.k8s_name,
                   "vrid": change.vrid, "old": change.old.value, "new": change.new.value, "reason": change.reason,
                   "failover_seconds": change.failover_seconds,
                   **{f"{name}_seconds": value for name, value in (phases.items() if phases is not None else ())}},
        )
        self.hooks.state_changed(change=change)

    def is_managed(self, address: IPAddress) -> bool:
        """A VIP of a known group or an address inside a known pool."""
        return self._managed(address) or any(pool.contains(address) for pool in self.pools)

    # -- lifecycle ---------------------------------------------------------

    def context(self) -> BackendContext:
        return BackendContext(
            node=self.node,
            config=dict(self.config.backend_section()),
            report=self.report,
            is_managed=self.is_managed,
            state_dir=self.config.state_dir,
            backend_name=self.config.backend,
        )

    async def start(self) -> None:
        """Load the backend, wait for the first state, start the backend and dispatch.

        A faulty configured backend is a PluginError (exit 2); other plugins'
        mistakes are logged, one line each. A failing source is retried with
        backoff until it answers or :meth:`request_stop` is called.
        """
        info = self.hooks.backend(self.config.backend)
        for failure in self.hooks.failures:
            log.warning("skipped: %s", failure.error, extra={"event": "plugin_skipped", "plugin": failure.plugin})
        self._name_unused_sections()
        state = await self._first_state()
        if state is None:
            return
        self._remember(state, None)
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.hooks.activate(info)
        await self.hooks.start(context=self.context())
        self._started = True
        self._waiting = None
        await self.apply(state)
        # What the first sync built (caches, groups) lives as long as the agent: keep the collector from
        # walking it on every full collection (events make thousands of objects; a full collection over
        # a large heap is tens of milliseconds in the middle of an event).
        gc.freeze()

    def _name_unused_sections(self) -> None:
        """A config section that is neither a setting nor an installed backend's is ignored: most likely
        a misspelled backend name. Not an error (a node may lack a backend another node has), but said
        once at start, with the closest name known."""
        known = {*self.hooks.backends(), *(failure.name for failure in self.hooks.failures), *AGENT_SECTIONS}
        for name in sorted(set(self.config.sections) - known):
            close = difflib.get_close_matches(name, sorted(known), n=1)
            log.warning("config section %r is neither a setting nor an installed backend's: ignored%s", name,
                        f" (did you mean {close[0]!r}?)" if close else "",
                        extra={"event": "config_section_unused", "section": name})

    async def _first_state(self) -> DesiredState | GroupState | None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                return await self.source.initial()
            except Exception as exc:  # any source failure: wait and retry, never crash-loop
                attempt += 1
                delay = self.settings.backoff(attempt)
                self._waiting = f"waiting for the first desired state: {_describe(exc)}"
                log.error("%s; retrying in %.1f s", self._waiting, delay, extra={"event": "source_error"})
                log.debug("source failed", exc_info=exc)
                try:
                    await asyncio.wait_for(self._stopping.wait(), delay)
                except TimeoutError:
                    pass
        return None

    def request_stop(self) -> None:
        """Stop :meth:`run` (as SIGTERM does)."""
        self._stopping.set()

    async def stop(self, *, graceful: bool = True) -> None:
        """Hand over (graceful) and stop the backend; bounded by ``agent.stop_timeout``."""
        started, self._started = self._started, False
        self._waiting = "stopping"
        gc.unfreeze()  # what start() froze may be collected again (a process that starts agents again)
        for task in self._retries.values():
            task.cancel()
        self._retries.clear()
        if not started or self.hooks.active is None:
            return
        try:
            await self.hooks.stop(graceful=graceful)
        finally:
            self.hooks.deactivate()

    async def run(self) -> None:
        """Start, watch the source until SIGTERM/SIGINT, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        if self._started:
            log.info("agent running node=%s backend=%s groups=%d", self.node, self.config.backend,
                     len(self.memberships), extra={"event": "started"})
            watcher = asyncio.create_task(self._watch())
            await self._stopping.wait()
            watcher.cancel()
            # Let the source close (stop watch threads, release Leases) now.
            await asyncio.wait({watcher})
        log.info("stopping gracefully", extra={"event": "stopping"})
        await self.stop(graceful=True)

    async def _watch(self) -> None:
        """Run the source's watch; when it fails keep the last good state and restart it with backoff."""
        attempt = 0
        while True:
            began = time.monotonic()
            try:
                await self.source.watch(self.apply)
            except Exception as exc:
                # A watch that ran for a while before failing starts its backoff afresh.
                attempt = 1 if time.monotonic() - began > self.settings.retry_max else attempt + 1
                delay = self.settings.backoff(attempt)
                self.source_error = _describe(exc)
                log.error("source failed: %s; keeping the last good state, restarting the watch in %.1f s",
                          self.source_error, delay, extra={"event": "source_error"})
                log.debug("source failed", exc_info=exc)
                await asyncio.sleep(delay)
                continue
            log.info("the source ended its watch; keeping the last state until stopped", extra={"event": "source"})
            return

    # -- desired state -----------------------------------------------------

    def _resolve(self, state: DesiredState) -> Resolution:
        """What ``resolve`` gives for ``state``, recomputing only what changed since the last state.

        One resolver per agent: a burst of changes the source coalesced into
        one state is one update, and its cost follows the groups it reaches.
        """
        if self._resolver is None:
            self._resolver = IncrementalResolver(vrid_policy=self.config.vrid_policy, allocate=self.source.allocates)
        return self._resolver.update(state)

    def _remember(self, state: DesiredState | GroupState, resolution: Resolution | None) -> None:
        self.pools = state.pools
        if isinstance(state, GroupState):
            self._managed = state.managed
        elif resolution is not None:
            self._managed = frozenset(ip for g in resolution.groups for f in Family for ip in g.vips(f)).__contains__

    async def apply(self, state: DesiredState | GroupState, resolution: Resolution | None = None) -> None:
        """Resolve ``state`` (or take a :class:`GroupState`'s groups as they are) and dispatch only what
        changed for this node."""
        if isinstance(state, GroupState):
            await self._apply_groups(state)
            return
        async with self._lock:
            resolution = resolution or self._resolve(state)
            self.resolution = resolution
            self._remember(state, resolution)
            self.hooks.resolved(node=self.node, resolution=resolution)
            for item in resolution.unresolved:
                log.warning("service %s has no VIP group: %s", item.service, item.reason,
                            extra={"event": "unresolved", "service": item.service})
            desired: dict[str, Membership] = {}
            skipped: dict[str, str] = {}
            for group in resolution.groups_of(self.node):
                if not self.interface_check(group.interface):
                    skipped[group.name] = f"interface {group.interface!r} does not exist on node {self.node!r}"
                    continue
                desired[group.name] = membership(group, self.node, state.nodes)
            self._note_skipped(skipped)
            await self._dispatch(desired)
            me = next((n for n in state.nodes if n.name == self.node), None)
            await self._drain(bool(me and me.drained))
            self.source_error = None

    async def _apply_groups(self, state: GroupState) -> None:
        """Dispatch the VipGroup view's memberships: nothing resolved, nothing walked but this node's groups."""
        async with self._lock:
            self.resolution = Resolution(groups=state.groups)
            self._remember(state, None)
            self.hooks.resolved(node=self.node, resolution=self.resolution)
            desired: dict[str, Membership] = {}
            skipped: dict[str, str] = {}
            for name, member in state.memberships.items():
                if not self.interface_check(member.group.interface):
                    skipped[name] = f"interface {member.group.interface!r} does not exist on node {self.node!r}"
                    continue
                desired[name] = member
            self._note_skipped(skipped)
            await self._dispatch(desired)
            await self._drain(state.drained)
            self.source_error = None

    def _note_skipped(self, skipped: dict[str, str]) -> None:
        for name, reason in skipped.items():
            if self.skipped.get(name) != reason:
                log.error("group %s skipped: %s", name[:12], reason, extra={"event": "group_error", "group": name})
        self.skipped = skipped

    async def _dispatch(self, desired: Mapping[str, Membership]) -> None:
        self.desired = dict(desired)
        # A group renamed by a membership change keeps its identity (same VRID and interface): the
        # backend gets one update(old, new) and keeps its router, not a leave and a join.
        renames = [(old, new) for old, new in membership_changes(self.memberships, desired).updates
                   if old.name != new.name]
        await _concurrently(self._rename(old, new) for old, new in renames)
        current = self.memberships
        # Leave first (a group renamed by a node change hands its VIPs to its successor), then join and
        # update; each group on its own, concurrently: one slow group does not delay the others.
        leaving = sorted(set(current) - set(desired))
        await _concurrently(self._reconcile(name) for name in leaving)
        # The view hands on the same Membership object while a group is unchanged: compared by identity
        # first (a value comparison walks a big group's VIPs).
        changed = sorted(name for name in desired if (old := current.get(name)) is not desired[name]
                         and old != desired[name])
        await _concurrently(self._reconcile(name) for name in changed)
        for name in sorted(set(self.failed) - set(desired) - set(self.memberships)):
            self._forget_failure(name)  # gone from the desired state and not held: nothing to retry

    async def _drain(self, drained: bool) -> None:
        """Release this node's groups while it is drained; take them back after."""
        self.drained = drained
        self.released &= set(self.memberships)
        # Only the groups whose release must change: a pass that changes nothing schedules nothing.
        await _concurrently(self._reconcile_release(name) for name in sorted(self.memberships)
                            if drained != (name in self.released))
        # Still one yield to the loop per pass, as the gather over every group gave: a watch loop whose
        # wake-up is set again already does not run pass after pass before anything else.
        await asyncio.sleep(0)

    # -- one group: guard, failure, retry ------------------------------------

    async def _rename(self, old: Membership, new: Membership) -> bool:
        """Carry a renamed group over with one update; on failure the old name is left and the new one
        joined as usual (by :meth:`_dispatch`, right after)."""
        if not await self._guard(new.name, "vipcore_group_update", self.hooks.update(old=old, new=new)):
            return False
        self.memberships.pop(old.name, None)
        for family in Family:
            status = self.routers.pop((old.name, family), None)
            if status is not None:
                self.routers[(new.name, family)] = attrs.evolve(status, group=new.name)
        if old.name in self.released:
            self.released.discard(old.name)
            self.released.add(new.name)
        self.memberships[new.name] = new
        return True

    async def _reconcile(self, name: str) -> bool:
        """Bring one group's membership in the backend to ``self.desired``; False if its hook failed."""
        new, old = self.desired.get(name), self.memberships.get(name)
        if new is None and old is not None:
            if not await self._guard(name, "vipcore_group_leave", self.hooks.leave(membership=old, graceful=True)):
                return False  # still held by the backend: stays in status as failed and is retried
            self.memberships.pop(name, None)
            self.released.discard(name)
            for family in Family:
                self.routers.pop((name, family), None)
        elif new is not None and old is None:
            if not await self._guard(name, "vipcore_group_join", self.hooks.join(membership=new)):
                return False
            self.memberships[name] = new
        elif new is not None and old is not None and old != new:
            if not await self._guard(name, "vipcore_group_update", self.hooks.update(old=old, new=new)):
                return False
            self.memberships[name] = new
        return True

    async def _reconcile_release(self, name: str) -> bool:
        """Release or take back one group as the node's drain label says; False if the hook failed."""
        if name not in self.memberships:
            return True
        if self.drained and name not in self.released:
            if not await self._guard(name, "vipcore_group_release",
                                     self.hooks.release(group=name, reason="node drained")):
                return False
            self.released.add(name)
        elif not self.drained and name in self.released:
            if not await self._guard(name, "vipcore_group_takeover",
                                     self.hooks.takeover(group=name, reason="node no longer drained")):
                return False
            self.released.discard(name)
        return True

    async def _guard(self, group: str, hook: str, call: Awaitable[None]) -> bool:
        """Await one group hook; a failure is recorded, logged in one line and retried later."""
        try:
            await call
        except VipcoreError as exc:
            self._record_failure(group, hook, str(exc))
            return False
        if group in self.failed:
            self._forget_failure(group)
            log.info("group %s recovered (%s succeeded)", _short(group), hook,
                     extra={"event": "group_recovered", "group": group})
        return True

    def _record_failure(self, group: str, hook: str, error: str) -> None:
        previous = self.failed.get(group)
        failure = GroupFailure(group, hook, error, since=previous.since if previous else time.time(),
                               attempts=previous.attempts + 1 if previous else 1)
        delay = self.settings.backoff(failure.attempts)
        failure.retry_at = time.time() + delay
        self.failed[group] = failure
        log.error("group %s: %s (attempt %d; retrying in %.2g s)", _short(group), error, failure.attempts, delay,
                  extra={"event": "group_error", "group": group, "hook": hook})
        pending = self._retries.get(group)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()
        self._retries[group] = asyncio.get_running_loop().create_task(self._retry(group, delay))

    def _forget_failure(self, group: str) -> None:
        self.failed.pop(group, None)
        pending = self._retries.pop(group, None)
        if pending is not None and pending is not asyncio.current_task():
            pending.cancel()

    async def _retry(self, group: str, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            if self._retries.get(group) is not asyncio.current_task() or not self._started:
                return
            if await self._reconcile(group) and await self._reconcile_release(group):
                self._forget_failure(group)  # also when no hook was needed any more


async def _concurrently(calls: Iterable[Awaitable[bool]]) -> None:
    """Await every call, concurrently; none costs nothing (no gather, no pass of the loop)."""
    pending = list(calls)
    if pending:
        await asyncio.gather(*pending)


def _short(group: str) -> str:
    """A group's name as tables show it: 12 hex digits of the hash and the interface."""
    digest, sep, interface = group.partition("-")
    return f"{digest[:12]}-{interface}" if sep else group


def _describe(exc: BaseException) -> str:
    """One line for an error: a VipcoreError's message, else the exception type and message."""
    return str(exc) if isinstance(exc, VipcoreError) else f"{type(exc).__name__}: {exc}"


def make_source(config: Config) -> Source:
    """The configured source of desired state."""
    if config.source == "manifests":
        return ManifestSource(config.manifests)
    return kubernetes_source()(config)


def kubernetes_source() -> "type[KubernetesAgentSource]":
    """The Kubernetes source's class, imported on first use: a node installed with the ``agent`` extra
    alone runs from manifests without the ``kubernetes`` client (:class:`MissingExtraError` otherwise)."""
    try:
        from vipcore.sources.kubernetes import KubernetesAgentSource
    except ImportError as exc:
        missing = MissingExtraError.of("source: kubernetes", exc, "kubernetes")
        if missing is None:
            raise
        raise missing from None
    return KubernetesAgentSource
