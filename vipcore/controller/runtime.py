"""``vipcore controller``: IPAM, Service status, VipGroups with persisted VRIDs, Events.

Every replica lists and watches the cluster through
:class:`vipcore.kube.KubernetesSource` (so a standby is warm);
only the replica holding the ``coordination.k8s.io/v1`` Lease reconciles. A
reconcile pass is level-triggered: it takes the cache as it is, asks
:func:`vipcore.core.plan.plan` what should change (the core's resolver
decides addresses, groups and VRIDs), and carries that out with
:class:`vipcore.controller.writer.ClusterWriter` over the one writer,
:class:`vipcore.kube.KubernetesWriter`. Any object change wakes it;
bursts coalesce; an object whose write met a conflict or an error is retried
on its own backoff (below); a periodic resync catches anything else.

Writes are fenced by leadership: a pass runs in a worker thread with a
writer whose fence is the time left in *this* leadership term
(:meth:`vipcore.kube.leases.LeaderElector.lease_left`), so a pass still
running when the Lease is lost (or from an earlier term) sends nothing more.
``/healthz`` fails once the Lease is overdue (:meth:`Controller.healthy`).

Configuration (the ``controller`` and ``kubernetes`` sections of the config
file)::

    kubernetes:
      kubeconfig: /path/to/kubeconfig     # default: in-cluster, else ~/.kube/config
      namespace: vipcore-system           # Leases live here
      heartbeat: {enabled: false, duration: 4}
    controller:
      default_class: false                # also serve LoadBalancers without a class
      openelb: true                       # honour OpenELB's opt-in annotation
      lease_name: vipcore-controller
      identity: ""                        # default: $POD_NAME, else hostname_pid
      leader_election: {duration: 15, renew_deadline: 10, retry_period: 2}
      resync: 60
      quarantine: 5                       # seconds a freed address rests before reuse
      qps: 50                             # client-side rate limit of every write (0: none) ...
      burst: 100                          # ... and the burst it allows
      workers: 8                          # Services written in parallel within a pass
      backoff: {initial: 0.1, max: 60}    # per object: a write that failed waits initial * 2^n, at most max

Backoff is per object (Service key or VipGroup name): a write that fails
(an API error, or a conflict that needs a re-plan) puts that object alone on
an exponential schedule, and passes in between leave it out, so one object the
API server keeps refusing never slows the others. A pass that fails as a whole
(an exception) is retried with a bounded global backoff.

Events are written only for what a user can act on or wants to know happened
later (refusals, invalid Services and pools, a holder or group that changed),
aggregated by :class:`vipcore.kube.EventRecorder` (one Event per object,
reason and message, its ``count`` raised on repeats). A new Service's first
address, group and holder are log lines, not Events (its status says them):
the steady path costs exactly one write per Service, its status.

Services carry no finalizer: an address is freed from what the controller
already holds (the persisted VipGroups' VIPs and its previous pass's
addresses, :func:`vipcore.core.plan.plan`'s ``previous``), so a Service
deleted while no controller ran frees its address on the next start or
leader change, after the quarantine; the finalizer older releases added is
removed.

Pools (see :meth:`Controller.keep_pools`): each VipPool gets the finalizer
``vipcore.io/pool`` and a status (allocated and free addresses per family, a
``Valid`` condition); a deleted pool stays until no Service holds an address
from it; an invalid edit keeps the last valid pool in force, with a Warning
Event, ``Valid=False`` and the ``vipcore_controller_stale_pools`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge

from vipcore.core.settings import Config, check_number
from vipcore.kube.leases import LeaderElector, LeaseClient, LeaseTiming
from vipcore.core.plan import (
    COMPONENT,
    POOL_FINALIZER,
    GROUP_ASSIGNED,
    IP_ALLOCATED,
    IP_REFUSED,
    WRITE_FAILED,
    Note,
    Plan,
    Selection,
    has_finalizer,
    holder_notes,
    key_of,
    group_status,
    plan,
    pool_in_use,
    pool_status,
)
from vipcore.controller.writer import ClusterWriter, NotLeading, WriteResult
from vipcore.core.errors import ConfigError
from vipcore.kube.heartbeat import HeartbeatConfig, HeartbeatTracker, with_heartbeats
from vipcore.core.model import LOAD_BALANCER_CLASS
from vipcore.core.shards import SHARD_VIPS
from vipcore.kube import (
    ALL_KINDS,
    EventRecorder,
    Fence,
    KubernetesSource,
    KubernetesWriter,
    RateLimit,
    Wakeup,
    lease_kind,
)
from vipcore.ops.metrics import SampleCollector, allocation_samples

log = logging.getLogger("vipcore.controller")

DEFAULT_NAMESPACE = "vipcore-system"
DEFAULT_LEASE = "vipcore-controller"
_CONTROLLER_KEYS = {"default_class", "classes", "openelb", "lease_name", "identity", "leader_election", "resync",
                    "namespace", "quarantine", "qps", "burst", "workers", "backoff"}
#: Seconds a released address is kept from fresh allocation (clients' ARP caches age out meanwhile).
DEFAULT_QUARANTINE = 5.0
#: Client-side rate limit (writes a second) and burst: client-go's defaults (5/10) are sized for one
#: object at a time; 10,000 Services at 50 writes a second are addressed in under 7 minutes.
DEFAULT_QPS = 50.0
DEFAULT_BURST = 100
DEFAULT_WORKERS = 8


@attrs.frozen
class ControllerSettings:
    """The controller's part of the configuration, validated."""

    selection: Selection = Selection()
    namespace: str = DEFAULT_NAMESPACE
    lease_name: str = DEFAULT_LEASE
    identity: str = ""
    timing: LeaseTiming = LeaseTiming()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    resync: float = 60.0
    kubeconfig: str | None = None
    context: str | None = None
    quarantine: float = DEFAULT_QUARANTINE
    #: Client-side rate limit of the controller's writes (token bucket; 0: none), and its burst.
    qps: float = DEFAULT_QPS
    burst: int = DEFAULT_BURST
    #: Threads writing Services within a pass.
    workers: int = DEFAULT_WORKERS
    #: Per-object backoff after a failed write: ``initial * 2**(failures - 1)``, at most ``backoff_max`` seconds.
    backoff_initial: float = 0.1
    backoff_max: float = 60.0
    #: A group of more VIPs is written as VipGroup shards (vipcore.core.shards); tests set it small.
    shard_vips: int = SHARD_VIPS

    @classmethod
    def from_config(cls, config: Config) -> "ControllerSettings":
        section = dict(config.controller)
        kube = dict(config.kubernetes)
        unknown = set(section) - _CONTROLLER_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}", field="controller")
        classes = section.get("classes", [LOAD_BALANCER_CLASS])
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
            raise ConfigError("must be a list of loadBalancerClass names", field="controller.classes")
        try:
            resync = float(section.get("resync", 60.0))
        except (TypeError, ValueError):
            raise ConfigError("must be a number of seconds", field="controller.resync") from None
        try:
            quarantine = float(section.get("quarantine", DEFAULT_QUARANTINE))
        except (TypeError, ValueError):
            raise ConfigError("must be a number of seconds", field="controller.quarantine") from None
        if quarantine < 0:
            raise ConfigError("must not be negative", field="controller.quarantine")
        qps = check_number(section.get("qps", DEFAULT_QPS), field="controller.qps", low=0, high=100_000)
        burst = int(check_number(section.get("burst", DEFAULT_BURST), field="controller.burst", low=1,
                                 high=100_000, integer=True))
        workers = int(check_number(section.get("workers", DEFAULT_WORKERS), field="controller.workers", low=1,
                                   high=64, integer=True))
        backoff = section.get("backoff") or {}
        if not isinstance(backoff, Mapping) or set(backoff) - {"initial", "max"}:
            raise ConfigError("must be a mapping {initial, max} (seconds)", field="controller.backoff")
        initial = check_number(backoff.get("initial", 0.1), field="controller.backoff.initial", low=0.01, high=3600)
        most = check_number(backoff.get("max", 60.0), field="controller.backoff.max", low=initial, high=86400)
        namespace = str(section.get("namespace") or kube.get("namespace") or DEFAULT_NAMESPACE)
        identity = str(section.get("identity") or os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}")
        return cls(
            selection=Selection(classes=frozenset(classes), default_class=bool(section.get("default_class", False)),
                                openelb=bool(section.get("openelb", True))),
            namespace=namespace,
            lease_name=str(section.get("lease_name") or DEFAULT_LEASE),
            identity=identity,
            timing=LeaseTiming.from_config(section.get("leader_election")),
            heartbeat=HeartbeatConfig.from_config(kube),  # as the agents read it
            resync=resync,
            kubeconfig=kube.get("kubeconfig"),
            context=kube.get("context"),
            quarantine=quarantine,
            qps=qps,
            burst=burst,
            workers=workers,
            backoff_initial=initial,
            backoff_max=most,
        )


class ControllerMetrics:
    """The controller's own counters, in a private registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.allocations = Counter("vipcore_controller_allocations", "Addresses written to Service status",
                                   registry=registry)
        self.refusals = Counter("vipcore_controller_refusals", "Services refused an address (once per reason)",
                                registry=registry)
        self.reconciles = Counter("vipcore_controller_reconciles", "Reconcile passes, by outcome", ["outcome"],
                                  registry=registry)
        self.conflicts = Counter("vipcore_controller_conflicts", "409 Conflicts met while writing", registry=registry)
        self.leader = Gauge("vipcore_controller_leader", "1 while this replica holds the leader Lease",
                            registry=registry)
        self.groups = Gauge("vipcore_controller_groups", "VipGroups the last pass resolved", registry=registry)
        self.stale_pools = Gauge("vipcore_controller_stale_pools",
                                 "Pools whose current spec is invalid (the last valid one stays in force)",
                                 registry=registry)
        self.backing_off = Gauge("vipcore_controller_backing_off",
                                 "Objects whose last write failed, waiting out their own backoff", registry=registry)
        self.quarantined = Gauge("vipcore_controller_quarantined_addresses",
                                 "Released addresses resting before reuse", registry=registry)


class Controller:
    """One replica. :meth:`run` until cancelled; :meth:`reconcile` is one pass (blocking; tests call it)."""

    def __init__(self, settings: ControllerSettings, client: Any, *, config: Config | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.client = client
        self.config = config or Config(source="kubernetes")
        kinds = ALL_KINDS + ((lease_kind(settings.heartbeat.namespace),) if settings.heartbeat.enabled else ())
        sel = settings.selection
        # The source's own Service filter is irrelevant here: the controller reads raw Services.
        self.source = KubernetesSource(client, kinds=kinds, classes=sel.classes, default_class=sel.default_class,
                                       openelb=sel.openelb)
        # Say who we are in every request (API server audit logs; the test server's records).
        client.user_agent = f"{COMPONENT}/{settings.identity}"
        #: One bucket for every writer this replica builds (one per pass): the limit is the process's.
        self.limit = RateLimit(settings.qps, settings.burst)
        self.elector = LeaderElector(LeaseClient(self._writer(None), settings.namespace), settings.lease_name,
                                     settings.identity, settings.timing)
        self.tracker = HeartbeatTracker()
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.metrics = ControllerMetrics(self.registry)
        self.registry.register(SampleCollector(self._usage_samples))
        # API connectivity and invalid objects, as the agents report them.
        self.registry.register(SampleCollector(self.source.metrics))
        self.last_plan: Plan | None = None
        #: Service key -> addresses, from this term's last pass: what the next pass frees when a Service is
        #: gone (with the persisted VipGroups' VIPs). A new term starts from the cluster alone.
        self._previous: Mapping[str, Any] | None = None
        self.last_pools: tuple[Any, ...] = ()
        self._noted: dict[tuple[str, str], str] = {}
        self._holders: dict[str, dict[str, str]] | None = None
        self._dirty = Wakeup()
        self.source.on_object_change.append(self._dirty.set)
        #: Counts leadership terms; a pass's fence holds only during the term it started in.
        self._term = 0
        self._released: dict[Any, float] = {}
        self._pool_noted: dict[str, str] = {}
        self.events = EventRecorder()
        #: Object (Service key or VipGroup name) -> (failed writes in a row, monotonic time of the next try).
        self._backoff: dict[str, tuple[int, float]] = {}

    def _writer(self, fence: Fence | None) -> KubernetesWriter:
        return KubernetesWriter(self.client, component=COMPONENT, instance=self.settings.identity, fence=fence,
                                limit=self.limit)

    def backing_off(self, now: float | None = None) -> dict[str, float]:
        """Objects waiting out their backoff: key -> seconds until their next try."""
        now = time.monotonic() if now is None else now
        return {key: at - now for key, (_, at) in self._backoff.items() if at > now}

    def _schedule(self, result: WriteResult, now: float) -> None:
        """Per-object backoff after a pass: failures wait longer each time, successes are forgotten."""
        for key in result.done:
            self._backoff.pop(key, None)
        for key in set(result.failed) | set(result.stale):
            failures = self._backoff.get(key, (0, 0.0))[0] + 1
            delay = min(self.settings.backoff_initial * 2 ** min(failures - 1, 30), self.settings.backoff_max)
            self._backoff[key] = (failures, now + delay)
            log.info("%s: try %d failed; next try in %.1f s", key, failures, delay,
                     extra={"event": "backoff", "object": key})
        if self._backoff:
            self._wake_after(max(0.0, min(at for _, at in self._backoff.values()) - now) + 0.01)

    def _term_fence(self) -> Fence:
        """Leadership left, for the current term only."""
        term = self._term
        return lambda: self.elector.lease_left() if self._term == term else 0.0

    # -- one pass ----------------------------------------------------------------

    def inputs(self) -> dict[str, Any]:
        """The planner's inputs from the cache, now."""
        state = self.source.state()
        if self.settings.heartbeat.enabled:
            leases = self.source.objects("leases").values()
            alive = self.tracker.observe(leases, fresh=self.source.connection().connected)
            state = with_heartbeats(state, alive)
        services = [o for o in self.source.objects("services").values()
                    if (o.get("spec") or {}).get("type") == "LoadBalancer" or has_finalizer(o)]
        return {"services": services, "nodes": state.nodes, "endpoint_slices": state.endpoint_slices,
                "pools": state.pools, "vipgroups": list(self.source.objects("vipgroups").values()),
                "eips": list(self.source.objects("eips").values())}

    def reconcile(self, inputs: Mapping[str, Any] | None = None, *, fence: Fence | None = None) -> WriteResult:
        """Plan from ``inputs`` (default: the cache now) and write; blocking.

        ``fence``: the writer's leadership fence (the running controller passes
        its term's); without one the pass writes unconditionally (tests, one-shot use).
        Raises :class:`~vipcore.controller.writer.NotLeading` when the fence stops the pass.
        """
        inputs = dict(inputs) if inputs is not None else self.inputs()
        result_plan = plan(selection=self.settings.selection, vrid_policy=self.config.vrid_policy,
                           convert=self.source.service_model, quarantined=self.quarantined(),
                           shard_vips=self.settings.shard_vips,
                           previous=self._previous,
                           rest_released=self.settings.quarantine > 0, **inputs)
        self.last_plan = result_plan
        self._previous = result_plan.addresses
        self.last_pools = tuple(inputs["pools"])
        originals = {key_of(o): o for o in inputs["services"]}
        writer = ClusterWriter(self._writer(fence), selection=self.settings.selection,
                               workers=self.settings.workers, events=self.events)
        now = time.monotonic()
        result = writer.apply(result_plan, originals, skip=self.backing_off(now))
        self._schedule(result, time.monotonic())
        failed = set(result.stale) | set(result.failed) | result.skipped
        for key, addresses in result_plan.allocated.items():
            if key not in failed:
                self.metrics.allocations.inc(len(addresses))
                log.info("allocated %s to %s", ", ".join(map(str, addresses)), key,
                         extra={"event": "allocated", "service": key})
        notes = [n for n in result_plan.notes
                 if not (n.reason in (IP_ALLOCATED, GROUP_ASSIGNED) and n.service in failed)]
        for write in result_plan.services:
            if write.key in result.why:  # refused: something a user can act on (it is retried meanwhile)
                obj_meta = (originals.get(write.key) or {}).get("metadata") or {}
                notes.append(Note(write.namespace, write.name, obj_meta.get("uid"), "Warning", WRITE_FAILED,
                                  f"the API server refused vipcore's write: {result.why[write.key]}; "
                                  "retried with backoff"))
        holders, holder_changes = holder_notes(self._holders or {}, inputs["vipgroups"])
        if self._holders is None:
            holder_changes = []  # a fresh leader does not announce holders it did not see change
        self._holders = holders
        self._record(writer, notes + holder_changes, live={key_of(o) for o in inputs["services"]})
        self.metrics.conflicts.inc(result.conflicts)
        self.metrics.groups.set(len(result_plan.resolution.groups))
        self.metrics.reconciles.labels("clean" if result.clean else "retry").inc()
        self.metrics.backing_off.set(len(self._backoff))
        self.keep_pools(result_plan, inputs["pools"], writer.writer)
        self.keep_groups(writer.writer)
        return result

    # -- pools and quarantine ------------------------------------------------------

    def quarantined(self) -> frozenset[Any]:
        """Released addresses still resting (forgetting those whose quarantine is over)."""
        now = time.monotonic()
        self._released = {ip: t for ip, t in self._released.items() if now - t < self.settings.quarantine}
        self.metrics.quarantined.set(len(self._released))
        return frozenset(self._released)

    def keep_pools(self, result_plan: Plan, pools: Any, writer: KubernetesWriter) -> None:
        """After a pass: start the quarantine of released addresses, and keep every VipPool's
        finalizer, status, Events and the stale-pool gauge. Errors are logged; the next pass retries."""
        now = time.monotonic()
        if self.settings.quarantine > 0 and result_plan.released:
            for ip in result_plan.released:
                self._released.setdefault(ip, now)
            self._wake_after(self.settings.quarantine + 0.05)
        self.metrics.quarantined.set(len(self._released))
        in_force = {p.name: p for p in pools}
        invalid = {key.split("/", 1)[1]: msg for key, msg in self.source.invalid.items()
                   if key.startswith("vippools/")}
        # Eips count too (their last valid form is kept as well), though vipcore writes nothing to them.
        self.metrics.stale_pools.set(sum(1 for key in self.source.invalid if key.startswith(("vippools/", "eips/"))))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, obj in self.source.objects("vippools").items():
            meta = obj.get("metadata") or {}
            try:
                pool = in_force.get(name)
                finalizers = list(meta.get("finalizers") or [])
                if meta.get("deletionTimestamp"):
                    if POOL_FINALIZER in finalizers and (pool is None or not pool_in_use(pool, result_plan.addresses)):
                        writer.set_vippool_finalizers(name, str(meta.get("resourceVersion")),
                                                      [f for f in finalizers if f != POOL_FINALIZER])
                    continue
                if POOL_FINALIZER not in finalizers:
                    obj = writer.set_vippool_finalizers(name, str(meta.get("resourceVersion")),
                                                        finalizers + [POOL_FINALIZER]) or obj
                problem = invalid.get(name)
                if problem is not None and self._pool_noted.get(name) != problem:
                    writer.create_event(obj, "InvalidPool", f"{problem}; the last valid spec stays in force"
                                             if pool is not None else problem, type="Warning")
                    log.warning("VipPool %s is invalid: %s", name, problem, extra={"event": "invalid_pool"})
                if problem is None:
                    self._pool_noted.pop(name, None)
                else:
                    self._pool_noted[name] = problem
                if pool is None:
                    continue  # never valid: no usage to report
                status = pool_status(pool, result_plan.addresses, invalid=problem,
                                     generation=(obj.get("metadata") or {}).get("generation"),
                                     previous=obj.get("status"), now=stamp)
                if status != {k: v for k, v in (obj.get("status") or {}).items()}:
                    writer.patch_vippool_status(name, status)
            except Exception as exc:  # noqa: BLE001 - pool bookkeeping never stops a pass
                log.warning("VipPool %s: %s", name, exc, extra={"event": "pool_error"})

    def keep_groups(self, writer: KubernetesWriter) -> None:
        """Each VipGroup's ``observedGeneration`` and ``Held`` condition (agents write the holders)."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, obj in self.source.objects("vipgroups").items():
            status = group_status(obj, now=stamp)
            if status is None:
                continue
            try:
                writer.patch_vipgroup_status(name, status)
            except Exception as exc:  # noqa: BLE001 - reported, retried on the next pass
                log.warning("VipGroup %s status: %s", name, exc, extra={"event": "group_status_error"})

    def _wake_after(self, delay: float) -> None:
        """Ask for a pass in ``delay`` seconds (thread-safe): a quarantine ends then."""
        self._dirty.set_after(delay)

    def _usage_samples(self) -> list[Any]:
        """Pool and VRID usage of the last pass (the agent's gauges, from the controller's view)."""
        plan_ = self.last_plan
        if plan_ is None:
            return []
        return allocation_samples(plan_.resolution, self.last_pools, self.config.vrid_policy)

    def _record(self, writer: ClusterWriter, notes: list[Note], live: set[str]) -> None:
        """Write Events, once per (Service, reason) until the message changes."""
        for note in notes:
            key = (note.service, note.reason)
            if self._noted.get(key) == note.message:
                continue
            self._noted[key] = note.message
            if note.reason == "IPRefused":
                self.metrics.refusals.inc()
                log.warning("refused %s: %s", note.service, note.message,
                            extra={"event": "refused", "service": note.service})
            if note.routine:
                if note.reason != IP_ALLOCATED:  # "allocated" is logged already
                    log.info("%s %s: %s", note.reason, note.service, note.message,
                             extra={"event": note.reason, "service": note.service})
                continue
            writer.event(note)
        current = {(n.service, n.reason) for n in notes}
        backing_off = self.backing_off()  # a refused write not tried this pass is not over
        for key in list(self._noted):
            # Forget a refusal once it is over (so a new one is reported), and Services that are gone.
            if key[0] not in live or (key[1] in (IP_REFUSED, WRITE_FAILED) and key not in current
                                      and key[0] not in backing_off):
                del self._noted[key]

    # -- the loop ------------------------------------------------------------------

    def wake(self) -> None:
        """Ask for a pass soon (thread-safe)."""
        self._dirty.set()

    async def lead(self) -> None:
        """Reconcile while leading: on every change, on retry, and every ``resync`` seconds."""
        self._term += 1
        fence = self._term_fence()
        self.metrics.leader.set(1)
        self._holders = None
        self._previous = None
        backoff = 0.1
        try:
            self._dirty.set()
            while True:
                timeout = self.settings.resync
                if self.settings.heartbeat.enabled:
                    expiry = self.tracker.next_expiry()
                    if expiry is not None:
                        timeout = min(timeout, expiry + 0.05)
                await self._dirty.wait(timeout)
                self._dirty.clear()
                await asyncio.sleep(0.02)  # let a burst of watch events land in the cache
                self._dirty.clear()
                try:
                    result = await asyncio.to_thread(self.reconcile, fence=fence)
                except NotLeading as exc:
                    log.warning("reconcile pass stopped: %s", exc, extra={"event": "not_leading"})
                    return
                except Exception as exc:  # noqa: BLE001 - a pass that fails is retried, never fatal
                    log.exception("reconcile failed: %s", exc)
                    result = None
                if result is None:
                    # The pass itself failed: retry it whole. Failed writes of single objects
                    # are not this: they wait on their own schedule (see _schedule).
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    self._dirty.set()
                else:
                    backoff = 0.1
        finally:
            self._term += 1  # a pass still running in its thread is fenced off from now on
            self.metrics.leader.set(0)

    async def run(self, *, timeout: float = 60.0) -> None:
        """Sync the cache, then campaign for the Lease and lead while holding it; until cancelled."""
        self._dirty.bind()
        await self.source.initial(timeout=timeout)
        log.info("controller %s synced; campaigning for lease %s/%s", self.settings.identity,
                 self.settings.namespace, self.settings.lease_name, extra={"event": "synced"})
        try:
            await self.elector.run(self.lead)
        finally:
            await asyncio.to_thread(self.source.stop, 2.0)

    def healthy(self) -> bool:
        """For ``/healthz``: False once this replica believes it leads but its Lease is overdue."""
        return self.elector.healthy()

    def status(self) -> dict[str, Any]:
        conn = self.source.connection()
        last = self.last_plan
        return {
            "identity": self.settings.identity,
            "leader": self.elector.leading,
            "lease_left": round(self.elector.lease_left(), 3),
            "connected": conn.connected,
            "last_error": conn.last_error,
            "groups": [g.name for g in last.resolution.groups] if last else [],
            "refused": dict(last.refused) if last else {},
        }


__all__ = ["Controller", "ControllerMetrics", "ControllerSettings"]
