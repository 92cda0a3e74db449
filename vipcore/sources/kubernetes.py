"""The agent's Kubernetes source: the shared list+watch cache, heartbeat Leases, holder status.

:func:`agent_source` builds a :class:`KubernetesAgentSource` from the agent's
config. It wraps :class:`vipcore.kube.KubernetesSource` (the
one module that reads the API) and adds what only an agent does:

* the desired state it hands the agent: this node's groups from the
  VipGroups (the default view), or the cache's whole state with nodes whose
  heartbeat Lease expired marked not ready (the full view, when
  ``kubernetes.heartbeat`` is enabled; see :mod:`vipcore.kube.heartbeat`),
  re-evaluated when a Lease would expire, not only when an object changes;
* this node's own heartbeat Lease is renewed while the source runs, and
  released when it stops;
* :meth:`plugins` offers the :class:`vipcore.sources.holders.HolderStatus`
  observer, which records in each VipGroup's status which node holds it.

What the agent watches is ``kubernetes.agent_view``:

* ``groups`` (the default): the VipGroups the controller writes, the Nodes
  (members' addresses and drain labels) and the pools; the agent resolves
  nothing and dispatches :class:`~vipcore.core.model.GroupState` from a
  :class:`vipcore.sources.vipgroups.GroupView`, so its memory and per-event
  cost follow the VipGroups, not the Services. Needs the controller running
  (it also judges heartbeats: an expired Lease leaves the VipGroup's nodes).
* ``full``: every Service, EndpointSlice, Node, pool and VipGroup, resolved on
  the agent as the controller resolves them (for clusters without the
  controller, with ``kubernetes.heartbeat`` judged by each agent); memory and
  per-event cost follow the cluster.

In the full view, Services are selected as the controller selects them
(``controller.classes``, ``controller.default_class``, ``controller.openelb``
from the same config), so agents and controller agree. VRIDs come from the VipGroup objects the
controller wrote (``DesiredState.vrids``). While the API server is
unreachable nothing changes: the last state stays dispatched and VRRP
backends keep holding and failing over on their own; on reconnect only
differences reach the agent, which dispatches only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from vipcore.core.settings import Config
from vipcore.kube import ALL_KINDS, KubernetesSource, KubernetesWriter, Wakeup, api_client, lease_kind
from vipcore.kube.informer import AGENT_FIELDS, ObjectChange
from vipcore.kube.kinds import EIPS, NODES, VIP_GROUPS, VIP_POOLS
from vipcore.kube.leases import LeaseClient
from vipcore.core.errors import ConfigError
from vipcore.kube.heartbeat import HeartbeatConfig, HeartbeatTracker, NodeHeartbeat, with_heartbeats
from vipcore.sources.holders import HolderStatus
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, GroupState, MetricSample
from vipcore.sources.vipgroups import GroupView

log = logging.getLogger("vipcore.sources.kubernetes")

HOLDER_STATUS_PLUGIN = "vipcore.sources.holders"
#: ``kubernetes.agent_view`` values.
VIEWS = ("groups", "full")
#: What the VipGroup view watches (Leases too with the heartbeat: this node's own, renewed).
GROUP_VIEW_KINDS = (NODES, VIP_POOLS, EIPS, VIP_GROUPS)


class KubernetesAgentSource:
    """Implements :class:`vipcore.sources.Source` for one node."""

    allocates = False

    def __init__(self, config: Config, client: Any | None = None, *, record_holders: bool = True) -> None:
        kube = dict(config.kubernetes)
        section = dict(config.controller)
        self.node = config.node_name
        self.heartbeat_config = HeartbeatConfig.from_config(kube)
        classes = section.get("classes", [LOAD_BALANCER_CLASS])
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, list):
            raise ConfigError("must be a list of loadBalancerClass names", field="controller.classes")
        self.client = client if client is not None else api_client(kube.get("kubeconfig"), context=kube.get("context"))
        # Say who we are in every request (API server audit logs; the test server's records).
        self.client.user_agent = f"vipcore-agent/{self.node}"
        self.view = kube.get("agent_view", "groups")
        if self.view not in VIEWS:
            raise ConfigError(f"must be one of {', '.join(VIEWS)}, got {self.view!r}", field="kubernetes.agent_view")
        page_size = kube.get("page_size", 500)
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0:
            raise ConfigError(f"must be a whole number of objects (0: no paging), got {page_size!r}",
                              field="kubernetes.page_size")
        hb = self.heartbeat_config
        if self.view == "groups":
            # The controller judges heartbeats into the VipGroups' nodes: no Lease watch needed here.
            kinds: tuple[Any, ...] = GROUP_VIEW_KINDS
        else:
            kinds = ALL_KINDS + ((lease_kind(hb.namespace),) if hb.enabled else ())
        self.cache = KubernetesSource(self.client, kinds=kinds, classes=frozenset(classes),
                                      default_class=bool(section.get("default_class", False)),
                                      openelb=bool(section.get("openelb", True)), keep=AGENT_FIELDS,
                                      page_size=page_size,
                                      # The GroupView keeps its model of each; the cache, their identity.
                                      handed_on=(NODES.name, VIP_GROUPS.name) if self.view == "groups" else ())
        self.groups: GroupView | None = GroupView(self.node, self.cache.pools) if self.view == "groups" else None
        self.tracker = HeartbeatTracker()
        self.writer = KubernetesWriter(self.client, component="vipcore-agent", instance=self.node)
        self.heartbeat = NodeHeartbeat(LeaseClient(self.writer, hb.namespace), self.node, hb.duration) \
            if hb.enabled else None
        self.holder_status = HolderStatus(self.writer, self.node) if record_holders else None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._wake = Wakeup()
        if self.groups is not None:
            self.cache.on_object_change.append(self._group_view_change)  # before the wake-up
        self.cache.on_object_change.append(self._wake.set)
        if self.holder_status is not None:
            self.cache.on_object_change.append(self._vipgroup_changed)

    def plugins(self) -> list[tuple[str, object]]:
        """Observer plugins the agent should register (the holder-status writer)."""
        return [(HOLDER_STATUS_PLUGIN, self.holder_status)] if self.holder_status is not None else []

    def _group_view_change(self, change: ObjectChange) -> None:
        assert self.groups is not None
        if change.kind in ("vippools", "eips"):
            self.groups.pools_changed()
        else:
            self.groups.change(change.kind, change.type, change.key, change.obj)

    def state(self) -> DesiredState | GroupState:
        """The desired state: the VipGroup view's groups, or the cache's state with heartbeat verdicts."""
        if self.groups is not None:
            self.groups.take()
            return self.groups.state()
        state = self.cache.state()
        if self.heartbeat is None:
            return state
        alive = self.tracker.observe(self.cache.objects("leases").values(),
                                     fresh=self.cache.connection().connected)
        return with_heartbeats(state, alive)

    def _vipgroup_changed(self, change: Any) -> None:
        if change.kind == "vipgroups" and change.type != "DELETED" and self.holder_status is not None:
            self.holder_status.check(change.obj)

    async def initial(self, timeout: float = 30.0) -> DesiredState | GroupState:
        loop = asyncio.get_running_loop()
        self._wake.bind()
        if self.heartbeat is not None and self._heartbeat_task is None:
            self._heartbeat_task = asyncio.create_task(self.heartbeat.run())
        await self.cache.initial(timeout=timeout)
        if self.groups is not None:
            self.groups.pools_changed()
        elif self.heartbeat is not None:
            # Our own Lease must be in the cache before we judge anyone (us included).
            deadline = loop.time() + min(timeout, self.heartbeat_config.duration)
            while self.heartbeat.name not in self.cache.objects("leases") and loop.time() < deadline:
                await asyncio.sleep(0.05)
        return self.state()

    async def watch(self, on_change: Callable[[DesiredState | GroupState], Awaitable[None]]) -> None:
        """Call ``on_change`` when the desired state changes (objects, or a Lease expiring); until cancelled.

        In the VipGroup view a change costs what it reaches (:class:`GroupView`); nothing is rebuilt.
        """
        if not self._wake.bound:
            await self.initial()
        # The VipGroup view compares nothing: what changed since the state last handed out is pending in
        # the view (taken at the first wake-up, which is now).
        last = self.state() if self.groups is None else None
        self._wake.set()
        try:
            while True:
                if self.groups is not None:
                    await self._wake.wait(None)
                    self._wake.clear()
                    if self.groups.take():
                        await on_change(self.groups.state())
                    continue
                timeout = None
                if self.heartbeat is not None:
                    expiry = self.tracker.next_expiry()
                    timeout = self.heartbeat_config.duration / 3 if expiry is None else min(
                        expiry + 0.05, self.heartbeat_config.duration / 3)
                await self._wake.wait(timeout)
                self._wake.clear()
                state = self.state()
                if state != last:
                    last = state
                    await on_change(state)
        finally:
            await self.close()

    async def close(self) -> None:
        """Release the heartbeat Lease and stop watching (holder records still drain in the background)."""
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.cache.stop, 2.0)

    def vipcore_collect_metrics(self) -> list[MetricSample]:
        """Watch health (the informer's own samples: connection, relists, errors, cached and invalid
        objects) and heartbeat counters, for the agent's /metrics."""
        samples = self.cache.metrics()
        if self.groups is not None:
            # In the VipGroup view the view validates VipGroups and Nodes; the informer, the rest.
            samples = [s for s in samples if s.name != "vipcore_kubernetes_invalid_objects"]
            samples.append(MetricSample("vipcore_kubernetes_invalid_objects",
                                        float(len(self.cache.invalid) + len(self.groups.invalid)), kind="gauge",
                                        help="Objects skipped because they failed validation"))
        if self.heartbeat is not None:
            samples.append(MetricSample("vipcore_heartbeat_renewal_failures", float(self.heartbeat.failures),
                                        help="Heartbeat Lease renewals that failed"))
        if self.holder_status is not None:
            samples.append(MetricSample("vipcore_holder_status_writes", float(self.holder_status.written),
                                        help="VipGroup holder records written"))
        return samples


def agent_source(config: Config) -> KubernetesAgentSource:
    """The agent's source for ``source: kubernetes``."""
    return KubernetesAgentSource(config)
