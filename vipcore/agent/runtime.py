"""The node agent: source -> resolve -> this node's groups -> the backend, by difference.

The agent owns no protocol: it tells the active backend (through the hooks
facade) which groups this node takes part in, and fans the backend's state
reports out to observers. A failure in one group is logged with the group's
name and never disturbs the others.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vipcore.backend import BackendContext
from vipcore.core.settings import Config
from vipcore.core.errors import InterfaceNotFoundError, VipcoreError
from vipcore.core.model import DesiredState, Family, IPAddress, Membership, Resolution, State, StateChange
from vipcore.backend.host import Hooks, load_hooks
from vipcore.core.incremental import IncrementalResolver
from vipcore.core.resolve import membership
from vipcore.sources import Source
from vipcore.sources.kubernetes import KubernetesAgentSource
from vipcore.sources.manifests import ManifestSource

log = logging.getLogger("vipcore.agent")


def interface_exists(name: str) -> bool:
    """Whether the interface exists in this network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


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
        self.hooks = hooks or load_hooks()
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
        self.started_at = time.time()
        self.ready = False
        self._managed: frozenset[IPAddress] = frozenset()
        self.pools: tuple[Any, ...] = ()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()

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
        )
        log.info(
            "transition group=%s family=%s vrid=%s old=%s new=%s reason=%r%s",
            change.group[:12], change.family.k8s_name, change.vrid, change.old.value, change.new.value,
            change.reason,
            f" failover_ms={change.failover_seconds * 1000:.1f}" if change.failover_seconds is not None else "",
            extra={"event": "transition", "group": change.group, "family": change.family.k8s_name,
                   "vrid": change.vrid, "old": change.old.value, "new": change.new.value, "reason": change.reason,
                   "failover_seconds": change.failover_seconds},
        )
        self.hooks.state_changed(change=change)

    def is_managed(self, address: IPAddress) -> bool:
        """A VIP of a known group or an address inside a known pool."""
        return address in self._managed or any(pool.contains(address) for pool in self.pools)

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
        """Load the backend and the first state; every error is a VipcoreError."""
        info = self.hooks.backend(self.config.backend)
        state = await self.source.initial()
        self._remember(state, None)
        resolution = self._resolve(state)
        missing = sorted({
            g.interface for g in resolution.groups_of(self.node) if not self.interface_check(g.interface)
        })
        if missing:
            raise InterfaceNotFoundError(missing[0], f"node {self.node!r} (needed by its VIP groups)")
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.hooks.activate(info)
        await self.hooks.start(context=self.context())
        await self.apply(state, resolution)
        self.ready = True

    async def stop(self, *, graceful: bool = True) -> None:
        """Hand over (graceful) and stop the backend."""
        self.ready = False
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
        log.info("agent running node=%s backend=%s groups=%d", self.node, self.config.backend,
                 len(self.memberships), extra={"event": "started"})
        watcher = asyncio.create_task(self.source.watch(self.apply))
        stopper = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        watcher.cancel()
        if watcher in done and watcher.exception() is not None:
            log.error("source failed: %s", watcher.exception())
        # Let the source close (stop watch threads, release Leases) now.
        await asyncio.wait({watcher})
        log.info("stopping gracefully", extra={"event": "stopping"})
        await self.stop(graceful=True)

    # -- desired state -----------------------------------------------------

    def _resolve(self, state: DesiredState) -> Resolution:
        """What ``resolve`` gives for ``state``, recomputing only what changed since the last state.

        One resolver per agent: a burst of changes the source coalesced into
        one state is one update, and its cost follows the groups it reaches.
        """
        if self._resolver is None:
            self._resolver = IncrementalResolver(vrid_policy=self.config.vrid_policy, allocate=self.source.allocates)
        return self._resolver.update(state)

    def _remember(self, state: DesiredState, resolution: Resolution | None) -> None:
        self.pools = state.pools
        if resolution is not None:
            self._managed = frozenset(ip for g in resolution.groups for f in Family for ip in g.vips(f))

    async def apply(self, state: DesiredState, resolution: Resolution | None = None) -> None:
        """Resolve ``state`` and dispatch only what changed for this node."""
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
            for name, reason in skipped.items():
                if self.skipped.get(name) != reason:
                    log.error("group %s skipped: %s", name[:12], reason, extra={"event": "group_error", "group": name})
            self.skipped = skipped
            await self._dispatch(desired)
            me = next((n for n in state.nodes if n.name == self.node), None)
            await self._drain(bool(me and me.drained))

    async def _dispatch(self, desired: Mapping[str, Membership]) -> None:
        current = self.memberships
        for name in sorted(set(current) - set(desired)):
            await self._guard(name, self.hooks.leave(membership=current[name], graceful=True))
            self.memberships.pop(name, None)
            for family in Family:
                self.routers.pop((name, family), None)
        for name in sorted(desired):
            new = desired[name]
            old = current.get(name)
            if old is None:
                if await self._guard(name, self.hooks.join(membership=new)):
                    self.memberships[name] = new
            elif old != new:
                if await self._guard(name, self.hooks.update(old=old, new=new)):
                    self.memberships[name] = new

    async def _drain(self, drained: bool) -> None:
        """Release this node's groups while it is drained; take them back after."""
        self.released &= set(self.memberships)
        if drained:
            for name in sorted(set(self.memberships) - self.released):
                if await self._guard(name, self.hooks.release(group=name, reason="node drained")):
                    self.released.add(name)
        else:
            for name in sorted(self.released):
                if await self._guard(name, self.hooks.takeover(group=name, reason="node no longer drained")):
                    self.released.discard(name)

    async def _guard(self, group: str, call: Any) -> bool:
        try:
            await call
        except VipcoreError as exc:
            log.error("group %s: %s", group[:12], exc, extra={"event": "group_error", "group": group})
            return False
        return True


def make_source(config: Config) -> Source:
    """The configured source of desired state."""
    if config.source == "manifests":
        return ManifestSource(config.manifests)
    return KubernetesAgentSource(config)
