"""Scale: an agent's per-event dispatch latency and memory against a synthetic cluster.

Run: .venv/bin/python bench/scale.py [--sizes 1000x10000,5000x50000] [--events 30] [--view groups|full|both]
     [--full-cache] [--trace]

For each size (nodes x Services) the test API server (vipcore.testing, in
this process, on loopback) is filled with a synthetic cluster: Nodes with
labels and conditions, LoadBalancer Services (half ``Local``) that already
hold an address, and one EndpointSlice of 10 endpoints per Service; objects
carry managedFields, a last-applied annotation and pod references as a real
cluster serves them. ``Local`` endpoints land on one of 200 ten-node
placements, so there are ~200 groups, within one interface's 255 VRIDs.

A real agent (``vipcore.agent.runtime.Agent`` with the Kubernetes source, a
recording backend and no heartbeat) runs in a child process so its memory is
its own. After the sync it takes events one at a time and times each from
the write (the child sends it through the ``kubernetes`` client) to the end
of the backend dispatch it causes:

* ``slice``: an EndpointSlice of a Local Service moves to other nodes;
* ``service``: a Service gets its address in status (what the controller writes);
* ``node``: a Node's Ready condition flips.

``--view`` is the agent's ``kubernetes.agent_view``. ``groups`` (the
default): the server also holds the VipGroups the controller's planner
(``vipcore.core.plan.plan``, run once) writes for that cluster, and the
agent watches those, the Nodes and the pools; each event is then what the
controller writes for that change (VipGroup creates, patches, deletes),
computed by a stand-in (the cluster as a model and the incremental resolver,
equal to ``resolve``) in the agent's process before the clock starts; the
stand-in's memory is left out (RSS and peak are taken at sync). ``full``:
the agent watches every Service and EndpointSlice and resolves.

The writes are sent by a process of their own (:class:`Writer`): in the
agent's process the ``kubernetes`` client serialising them held the GIL
the agent waited for. ``agent`` is the same, from the moment the agent's
watch delivered the first write's change (which can be another group's:
the controller's later writes are then in it); ``react`` from the watch
event delivered last before the dispatch, the one it answers (what the
agent itself takes); ``CPU`` is the agent process's CPU time over the
whole span (what the event cost the agent, whatever the machine's load);
``--trace`` adds a table of where it went (threads, stages, passes);
``resolve`` is the time spent in the agent's incremental resolution. RSS is the child's resident memory after the
first dispatch, and its peak (VmHWM). ``--full-cache`` runs the agent with
whole objects cached (the behaviour before slimming) for comparison.
Prints a table; median and p95 per event kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = 200
ENDPOINTS = 10
POOL = "2001:db8:ff::/104"
MANAGED = [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                         "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:port": {}}}}}}]


def vip(i: int) -> str:
    return str(ipaddress.ip_address("2001:db8:ff::1") + i)


def node_obj(i: int, ready: bool = True) -> dict[str, Any]:
    name = f"node-{i:05d}"
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "managedFields": MANAGED,
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "topology.kubernetes.io/zone": f"zone-{i % 3}"}},
        "status": {
            "conditions": [{"type": t, "status": "False", "reason": f"KubeletHas{t}", "message": "ok"}
                           for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
            + [{"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}],
            "addresses": [{"type": "InternalIP", "address": str(ipaddress.ip_address("2001:db8:1::1") + i)},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"kernelVersion": "6.1.0-18-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                         "kubeletVersion": "v1.31.0", "containerRuntimeVersion": "containerd://1.7.13"},
            "images": [{"names": [f"registry.example/team/app{k}@sha256:{k:064x}"], "sizeBytes": 10_000_000 + k}
                       for k in range(10)],
        },
    }


def service_obj(i: int, local: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"s{i}", "namespace": f"ns{i % 50}", "managedFields": MANAGED,
                     "labels": {"app": f"s{i}"},
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                     json.dumps({"kind": "Service", "metadata": {"name": f"s{i}"},
                                                 "spec": {"type": "LoadBalancer"}})}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "ipFamilies": ["IPv6"],
                 "externalTrafficPolicy": "Local" if local else "Cluster", "selector": {"app": f"s{i}"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]},
    }


def slice_obj(i: int, nodes: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv6",
        "metadata": {"name": f"s{i}-abcde", "namespace": f"ns{i % 50}", "managedFields": MANAGED,
                     "labels": {"kubernetes.io/service-name": f"s{i}",
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [str(ipaddress.ip_address("2001:db8:2::1") + i * ENDPOINTS + k)],
                       "conditions": {"ready": True, "serving": True, "terminating": False},
                       "nodeName": n, "zone": "zone-0",
                       "targetRef": {"kind": "Pod", "namespace": f"ns{i % 50}", "name": f"s{i}-pod-{k}",
                                     "uid": f"{i:08x}-0000-0000-0000-{k:012x}"}}
                      for k, n in enumerate(nodes)],
    }


POOL_OBJ = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
            "spec": {"addresses": [POOL], "interface": "eth0", "default": True}}


def cluster(nodes: int, services: int, pending: int, seed: int = 7) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """The synthetic cluster: the Local placements (shapes) and every object, Services with their status
    (pending ones without), in creation order. Deterministic: the agent child rebuilds the same."""
    rnd = random.Random(seed)
    names = [f"node-{i:05d}" for i in range(nodes)]
    shapes = [rnd.sample(names, ENDPOINTS) for _ in range(SHAPES)]
    objs: list[dict[str, Any]] = [node_obj(i) for i in range(nodes)] + [POOL_OBJ]
    for i in range(services + pending):
        local = i % 2 == 0 and i < services  # pending Services are Cluster: each address reaches this node
        svc = service_obj(i, local)
        if i < services:
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": vip(i), "ipMode": "VIP"}]}}
        objs.append(svc)
        objs.append(slice_obj(i, shapes[i % SHAPES] if local else rnd.sample(names, ENDPOINTS)))
    return shapes, objs


def populate(server: Any, nodes: int, services: int, pending: int, view: str = "full",
             seed: int = 7) -> dict[str, Any]:
    """Fill ``server``; returns what the agent child needs to make its events.

    For the VipGroup view the VipGroups are written as the controller writes them: the controller's
    planner (:func:`vipcore.core.plan.plan`) runs once over the cluster.
    """
    shapes, objs = cluster(nodes, services, pending, seed)
    me = shapes[0][0]
    for obj in objs:
        status = obj.pop("status", None)
        created = server.create(obj)
        if status is not None:
            created["status"] = status
            server.update(created, subresource="status")
    if view == "groups":
        from vipcore.core import objects
        from vipcore.core.plan import plan

        listed = {k: server.objects(*k) for k in (("v1", "Node"), ("v1", "Service"),
                                                  ("discovery.k8s.io/v1", "EndpointSlice"))}
        # Pending Services get their address during the events (as the controller writes it): not yet.
        served = [s for s in listed[("v1", "Service")] if (s.get("status") or {}).get("loadBalancer")]
        planned = plan(served, nodes=[objects.node_from_k8s(n) for n in listed[("v1", "Node")]],
                       endpoint_slices=[objects.endpoint_slice_from_k8s(e)
                                        for e in listed[("discovery.k8s.io/v1", "EndpointSlice")]],
                       pools=[objects.pool_from_k8s(POOL_OBJ)], vipgroups=[])
        for write in planned.groups:
            server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
                           "metadata": {"name": write.name}, "spec": write.spec})
    # Local Services whose slices can move between a placement with this node and one without.
    movable = [i for i in range(0, services, 2) if me in shapes[i % SHAPES]][:200]
    without = next(s for s in shapes if me not in s)
    return {"node": me, "nodes": nodes, "services": services, "pending": pending, "movable": movable,
            "with": shapes[0], "without": without, "view": view}


class ControllerStandIn:
    """What the controller writes for one change, in the VipGroup view's bench: the cluster as a model,
    the incremental resolver (equal to ``resolve``, property-tested), and the VipGroup writes that take
    the server's VipGroups to the new answer. Runs in the agent child before each timed write."""

    def __init__(self, plan_: dict[str, Any], custom: Any) -> None:
        from vipcore.core import objects
        from vipcore.core.incremental import IncrementalResolver

        self.custom = custom
        _, objs = cluster(plan_["nodes"], plan_["services"], plan_["pending"])
        served = [o for o in objs if o["kind"] != "Service" or "status" in o]
        self.state = objects.state_from_objects((None, o) for o in served)
        self.pending = {f"ns{i % 50}/s{i}": next(o for o in objs if o["kind"] == "Service"
                                                 and o["metadata"]["name"] == f"s{i}")
                        for i in range(plan_["services"], plan_["services"] + plan_["pending"])}
        self.resolver = IncrementalResolver(allocate=False)
        listed = custom.list_cluster_custom_object("vipcore.io", "v1alpha1", "vipgroups")["items"]
        self.groups = {g["metadata"]["name"]: g["spec"] for g in listed}
        self.resolver.update(self._persisted(self.state))

    def _persisted(self, state: Any) -> Any:
        import attrs

        from vipcore.core.plan import persisted_lineage, persisted_vrids

        objs = [{"metadata": {"name": n}, "spec": s} for n, s in self.groups.items()]
        return attrs.evolve(state, vrids=persisted_vrids(objs), lineage=persisted_lineage(objs))

    def change(self, state: Any) -> list[tuple[str, str, Any]]:
        """The VipGroup writes for ``state``: (verb, name, spec) in the planner's order (writes adding
        VIPs, then those removing some, each with the most members first: :func:`vipcore.core.plan.by_reach`;
        then deletes), big groups as shards (:func:`vipcore.core.shards.split`), as the planner writes them."""
        from vipcore.core.objects import vipgroup_spec
        from vipcore.core.plan import GroupWrite, by_reach
        from vipcore.core.shards import split

        self.state = state
        resolution = self.resolver.update(self._persisted(state))
        addresses = {**resolution.allocations, **resolution.addresses}
        wanted: dict[str, Any] = {}
        growing: list[tuple[int, GroupWrite]] = []
        shrinking: list[tuple[int, GroupWrite]] = []
        for g in resolution.groups:
            for part in split(g, addresses, self._count(g)):
                spec = wanted[part.name] = vipgroup_spec(part)
                old = self.groups.get(part.name)
                if old is None:
                    growing.append((len(g.nodes), GroupWrite(part)))
                elif old != spec:
                    gone = any(set((old.get("vips") or {}).get(f) or ()) - set(spec["vips"][f]) for f in ("ipv4", "ipv6"))
                    (shrinking if gone else growing).append((len(g.nodes), GroupWrite(part, "")))
        writes: list[tuple[str, str, Any]] = [("create" if w.create else "patch", w.name, wanted[w.name])
                                              for w in by_reach(growing) + by_reach(shrinking)]
        writes += [("delete", n, None) for n in sorted(self.groups) if n not in wanted]
        self.groups = wanted
        return writes

    def _count(self, group: Any) -> int | None:
        """The shard count ``group`` is written with: its shard 0's, or (renamed) its set's."""
        from vipcore.core.shards import shard_name

        spec = self.groups.get(group.name) or self.groups.get(shard_name(group, 1)) or {}
        count = (spec.get("shard") or {}).get("count")
        return count if isinstance(count, int) else None

    @staticmethod
    def requests(writes: list[tuple[str, str, Any]]) -> list[list[Any]]:
        """The writes as :class:`Writer` requests."""
        return [["create_group", name, spec] if verb == "create" else ["patch_group", name, spec]
                if verb == "patch" else ["delete_group", name] for verb, name, spec in writes]


class Writer:
    """The cluster's writes, sent by a process of their own: the ``kubernetes`` client serialising a
    write holds the GIL for milliseconds, and in the agent's process that is the agent waiting (a
    thread that wants the GIL waits up to ``sys.getswitchinterval()``, 5 ms), not its work.

    :meth:`send` is blocking (run it in a thread: it waits on a pipe, without the GIL) and returns
    when every request of the batch has its response.
    """

    def __init__(self, kubeconfig: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--writer-child", kubeconfig],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, requests: list[list[Any]]) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(requests) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if answer.strip() != "ok":
            raise RuntimeError(f"the writer failed: {answer.strip() or 'it ended'}")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def writer_child(kubeconfig: str) -> None:
    """Send each batch of requests read from stdin (one JSON list a line), in order; ``ok`` after each."""
    import kubernetes.client as k8s

    from vipcore.kube import api_client

    client = api_client(kubeconfig)
    core, discovery, custom = k8s.CoreV1Api(client), k8s.DiscoveryV1Api(client), k8s.CustomObjectsApi(client)
    group = ("vipcore.io", "v1alpha1", "vipgroups")
    for line in sys.stdin:
        try:
            for op, *args in json.loads(line):  # each response read: the connection goes back to the pool
                if op == "create_group":
                    custom.create_cluster_custom_object(
                        *group, {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
                                 "metadata": {"name": args[0]}, "spec": args[1]}, _preload_content=False)
                elif op == "patch_group":
                    custom.patch_cluster_custom_object(*group, args[0], {"spec": {"shard": None, **args[1]}},
                                                       _preload_content=False)
                elif op == "delete_group":
                    custom.delete_cluster_custom_object(*group, args[0], _preload_content=False)
                elif op == "patch_slice":
                    discovery.patch_namespaced_endpoint_slice(args[0], args[1], args[2], _preload_content=False)
                elif op == "patch_service_status":
                    core.patch_namespaced_service_status(args[0], args[1], args[2], _preload_content=False)
                elif op == "patch_node_status":
                    core.patch_node_status(args[0], args[1], _preload_content=False)
                else:
                    raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # noqa: BLE001 - reported to the agent child, which stops
            print(f"{type(exc).__name__}: {exc}".replace("\n", " "), flush=True)
            continue
        print("ok", flush=True)


# ------------------------------------------------------------------ the agent, in a child process

def rss() -> dict[str, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


class Stages:
    """``--trace``: where one event's CPU goes in the agent child, per thread and per stage.

    Per event: the CPU of each watching thread (reading the stream, decoding JSON, slimming, the
    informer's cache, the view's change), the part of it in the view's change, the event loop
    thread's CPU split into the view's take and state, the agent's apply (dispatch included) and
    the rest (the loop's wake-ups and scheduling, the bench's own timing loop); and counts: watch
    events delivered, loop passes that took from the view, applies, hook calls.
    """

    def __init__(self, source: Any, agent: Any) -> None:
        import threading

        self.source, self.agent = source, agent
        self.counts = {"events": 0, "passes": 0, "applies": 0}
        #: Wall-clock marks of the current event: its first watch event, the first loop pass after it.
        self.stamps: dict[str, float] = {}
        self.spent = {"change": 0.0, "take": 0.0, "apply": 0.0}
        self._main = threading.get_ident()
        view = source.groups
        source.cache.on_object_change.insert(0, self._event)
        if view is not None:
            change, take, state = view.change, view.take, view.state

            def timed_change(*args: Any) -> None:
                began = time.thread_time()
                try:
                    change(*args)
                finally:
                    self.spent["change"] += time.thread_time() - began

            def timed_take() -> bool:
                self.counts["passes"] += 1
                if "event" in self.stamps:
                    self.stamps.setdefault("pass", time.perf_counter())
                began = time.thread_time()
                try:
                    return bool(take())
                finally:
                    self.spent["take"] += time.thread_time() - began

            def timed_state() -> Any:
                began = time.thread_time()
                try:
                    return state()
                finally:
                    self.spent["take"] += time.thread_time() - began

            view.change, view.take, view.state = timed_change, timed_take, timed_state

    def _event(self, change: Any) -> None:
        self.counts["events"] += 1
        self.stamps.setdefault("event", time.perf_counter())

    async def apply(self, state: Any) -> None:
        self.counts["applies"] += 1
        began = time.thread_time()
        try:
            await self.agent.apply(state)
        finally:
            self.spent["apply"] += time.thread_time() - began

    def threads(self) -> dict[str, float]:
        """CPU seconds so far of the loop thread and each watching thread."""
        import threading

        out = {}
        for t in threading.enumerate():
            if t.ident == self._main or t.name.startswith("k8s-watch:"):
                name = "loop" if t.ident == self._main else t.name.removeprefix("k8s-watch:")
                with contextlib.suppress(OSError):
                    out[name] = time.clock_gettime(time.pthread_getcpuclockid(t.ident))  # type: ignore[arg-type]
        return out

    def mark(self) -> dict[str, float]:
        self.stamps.clear()
        return {**self.threads(), **{f"n_{k}": float(v) for k, v in self.counts.items()},
                **{f"t_{k}": v for k, v in self.spent.items()}}

    def since(self, before: dict[str, float], hook: float, hooks: int) -> dict[str, float]:
        """One event's breakdown: ms per stage, counts; ``hook`` is the time of its last hook call."""
        stamps = dict(self.stamps)
        after = self.mark()
        d = {k: after[k] - before.get(k, 0.0) for k in after}
        event, first = stamps.get("event", hook), stamps.get("pass", hook)
        watch = sum(v for k, v in d.items() if not k.startswith(("n_", "t_", "loop")))
        return {"events": d["n_events"], "passes": d["n_passes"], "applies": d["n_applies"], "hooks": float(hooks),
                "wall: first event to first pass": (first - event) * 1000,
                "wall: first pass to last hook": (hook - first) * 1000,
                "watch threads": watch * 1000, "  view change": d["t_change"] * 1000,
                "loop thread": d["loop"] * 1000, "  view take+state": d["t_take"] * 1000,
                "  agent apply": d["t_apply"] * 1000,
                "  loop, other": (d["loop"] - d["t_take"] - d["t_apply"]) * 1000}


async def agent_child(kubeconfig: str, plan: dict[str, Any], events: int, full_cache: bool,
                      trace: bool = False) -> dict[str, Any]:
    import kubernetes.client as k8s

    from vipcore import hookimpl
    from vipcore.agent.runtime import Agent
    from vipcore.backend.host import load_hooks
    from vipcore.core.settings import Config
    from vipcore.kube import api_client
    from vipcore.sources.kubernetes import KubernetesAgentSource

    calls: list[float] = []
    dispatched = asyncio.Event()  # set by each hook call: the timing loop awaits it, not polls (its own CPU)

    def record() -> None:
        calls.append(time.perf_counter())
        dispatched.set()

    class Recorder:
        name = "bench_recorder"

        @hookimpl
        async def vipcore_backend_start(self, context: Any) -> None:
            pass

        @hookimpl
        async def vipcore_backend_stop(self, graceful: bool) -> None:
            pass

        @hookimpl
        async def vipcore_group_join(self, membership: Any) -> None:
            record()

        @hookimpl
        async def vipcore_group_update(self, old: Any, new: Any) -> None:
            record()

        @hookimpl
        async def vipcore_group_leave(self, membership: Any, graceful: bool) -> None:
            record()

    class Registers:
        @hookimpl
        def vipcore_register_backends(self, registry: Any) -> None:
            registry.add(Recorder)

    state_dir = Path(tempfile.mkdtemp(prefix="vipcore-bench-"))
    config = Config(backend="bench_recorder", node_name=plan["node"], source="kubernetes", state_dir=state_dir,
                    metrics="", kubernetes={"kubeconfig": kubeconfig, "heartbeat": {"enabled": False},
                                            "agent_view": plan["view"]})
    source = KubernetesAgentSource(config, record_holders=False)
    if full_cache:
        source.cache.keep = {}
    arrivals: dict[str, float] = {}
    delivered: list[float] = []  # every watch event's arrival, in order (the event a dispatch answers)
    def arrived(change: Any) -> None:
        now = time.perf_counter()
        arrivals.setdefault(change.key, now)
        delivered.append(now)

    source.cache.on_object_change.append(arrived)
    hooks = load_hooks(plugins=[("bench", Registers())], load_entrypoints=False)
    agent = Agent(config, hooks=hooks, source=source, interface_check=lambda name: True)
    resolving: list[float] = []
    resolve_once = agent._resolve

    def timed_resolve(state: Any) -> Any:
        begun = time.perf_counter()
        try:
            return resolve_once(state)
        finally:
            resolving.append((time.perf_counter() - begun) * 1000)

    agent._resolve = timed_resolve  # type: ignore[method-assign]
    base = rss().get("VmRSS", 0.0)
    started = time.perf_counter()
    await source.initial(timeout=1800)  # the loaded test server lists slowly; agent.start() finds it synced
    await agent.start()
    synced = time.perf_counter() - started
    memory = rss()
    groups = len(agent.memberships)
    stages = Stages(source, agent) if trace else None
    watcher = asyncio.create_task(source.watch(stages.apply if stages is not None else agent.apply))

    client = api_client(kubeconfig)
    writer = Writer(kubeconfig)
    # The VipGroup view's events are what the controller writes for each change (built after the
    # agent's memory was measured: the stand-in is the controller's memory, not the agent's).
    standin = ControllerStandIn(plan, k8s.CustomObjectsApi(client)) if plan["view"] == "groups" else None
    rnd = random.Random(3)
    latencies: dict[str, list[float]] = {"slice": [], "service": [], "node": []}
    agent_share: dict[str, list[float]] = {"slice": [], "service": [], "node": []}
    reaction: dict[str, list[float]] = {"slice": [], "service": [], "node": []}
    cpu: dict[str, list[float]] = {"slice": [], "service": [], "node": []}
    traced: dict[str, list[dict[str, float]]] = {"slice": [], "service": [], "node": []}
    moved: dict[int, bool] = {}
    pending = iter(range(plan["services"], plan["services"] + plan["pending"]))
    flipped: dict[int, bool] = {}

    def prepare(kind: str) -> tuple[str, list[list[Any]]]:
        """The writes of one event, computed (by the controller stand-in) before the clock starts."""
        if standin is None:
            return write(kind)
        import attrs

        from vipcore.core import objects
        from vipcore.core.model import EndpointSlice

        state = standin.state
        if kind == "slice":
            i = rnd.choice(plan["movable"])
            moved[i] = not moved.get(i, False)
            nodes = plan["without"] if moved[i] else plan["with"]
            name = f"s{i}-abcde"
            slices = tuple(EndpointSlice(e.namespace, e.name, e.service, frozenset(nodes)) if e.name == name
                           else e for e in state.endpoint_slices)
            state = attrs.evolve(state, endpoint_slices=slices)
        elif kind == "service":
            i = next(pending)
            obj = dict(standin.pending[f"ns{i % 50}/s{i}"])
            obj["status"] = {"loadBalancer": {"ingress": [{"ip": vip(i)}]}}
            state = attrs.evolve(state, services=state.services + (objects.service_from_k8s(obj),))
        else:
            i = rnd.randrange(1, plan["nodes"])
            while f"node-{i:05d}" == plan["node"]:
                i = rnd.randrange(1, plan["nodes"])
            flipped[i] = not flipped.get(i, False)
            name = f"node-{i:05d}"
            state = attrs.evolve(state, nodes=tuple(attrs.evolve(n, ready=not flipped[i]) if n.name == name else n
                                                    for n in state.nodes))
        writes = standin.change(state)
        return (writes[0][1] if writes else ""), ControllerStandIn.requests(writes)

    def write(kind: str) -> tuple[str, list[list[Any]]]:
        """The full view's event: the object's key and the write."""
        if kind == "slice":
            i = rnd.choice(plan["movable"])
            moved[i] = not moved.get(i, False)
            nodes = plan["without"] if moved[i] else plan["with"]
            body = {"endpoints": slice_obj(i, nodes)["endpoints"]}
            return f"ns{i % 50}/s{i}-abcde", [["patch_slice", f"s{i}-abcde", f"ns{i % 50}", body]]
        if kind == "service":
            i = next(pending)
            return f"ns{i % 50}/s{i}", [["patch_service_status", f"s{i}", f"ns{i % 50}",
                                         {"status": {"loadBalancer": {"ingress": [{"ip": vip(i)}]}}}]]
        i = rnd.randrange(1, plan["nodes"])
        while f"node-{i:05d}" == plan["node"]:
            i = rnd.randrange(1, plan["nodes"])
        flipped[i] = not flipped.get(i, False)
        conditions = node_obj(i, ready=not flipped[i])["status"]["conditions"]
        return f"node-{i:05d}", [["patch_node_status", f"node-{i:05d}", {"status": {"conditions": conditions}}]]

    profile = None
    if os.environ.get("VIPCORE_BENCH_PROFILE"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    resolving.clear()
    for n in range(events * 3):
        kind = ("slice", "service", "node")[n % 3]
        if kind == "service" and n // 3 >= plan["pending"]:
            continue
        await asyncio.sleep(0.05)  # let the previous event settle
        key, requests = prepare(kind)

        before = len(calls)
        arrivals.clear()
        delivered.clear()
        dispatched.clear()
        marked = stages.mark() if stages is not None else {}
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.to_thread(writer.send, requests)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(dispatched.wait(), 30)
        if len(calls) == before:
            print(f"no dispatch for {kind} {key}", file=sys.stderr)
            continue
        # The dispatch is over when its last hook call is in; wait for the burst to end.
        while True:
            count = len(calls)
            await asyncio.sleep(0.002)
            if len(calls) == count:
                break
        done = calls[-1]
        if stages is not None:  # (after done: the last hook's time)
            traced[kind].append(stages.since(marked, done, len(calls) - before))
        # The writes are the cluster's, in their own process: this is the agent's CPU (and the
        # bench's timing loop, and the thread waiting for the writer's answer).
        cpu[kind].append((time.process_time() - cpu0) * 1000)
        latencies[kind].append((done - t0) * 1000)
        if key in arrivals:
            agent_share[kind].append((done - arrivals[key]) * 1000)
        answered = [t for t in delivered if t <= done]
        if answered:
            reaction[kind].append((done - answered[-1]) * 1000)
    if profile is not None:
        import pstats

        profile.disable()
        pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    writer.close()
    watcher.cancel()
    await asyncio.wait({watcher})
    await agent.stop(graceful=False)
    # The VipGroup view's child also ran the controller stand-in: its peak is the one at sync.
    peak = memory.get("VmHWM", 0.0) if standin is not None else rss().get("VmHWM", 0.0)
    return {"sync_s": synced, "groups": groups, "rss_mb": memory.get("VmRSS", 0.0), "base_mb": base,
            "resolve_ms": resolving, "cpu_ms": cpu,
            "peak_mb": peak, "latency_ms": latencies, "agent_ms": agent_share, "react_ms": reaction,
            "trace": traced}


# ------------------------------------------------------------------ the cache alone

def cache_child(nodes: int, services: int, slim: bool, pages: int) -> dict[str, Any]:
    """What the agent's cache holds after listing, without the server: the list bodies as the API sends them.

    Each kind is listed in ``pages`` pages (1: one list, as the informer does today), parsed, slimmed (or
    not) and converted as :class:`vipcore.kube.KubernetesSource` does; RSS is measured after.
    """
    import gc

    from vipcore.core import objects
    from vipcore.kube.informer import AGENT_FIELDS

    rnd = random.Random(7)
    names = [f"node-{i:05d}" for i in range(nodes)]
    shapes = [rnd.sample(names, ENDPOINTS) for _ in range(SHAPES)]
    base = rss()["VmRSS"]
    cache: dict[str, dict[str, Any]] = {"nodes": {}, "services": {}, "endpointslices": {}}
    converted: dict[str, dict[str, Any]] = {"nodes": {}, "services": {}, "endpointslices": {}}
    makers: dict[str, tuple[int, Callable[[int], dict[str, Any]], Callable[[Any], Any]]] = {
        "nodes": (nodes, node_obj, objects.node_from_k8s),
        "services": (services, lambda i: {**service_obj(i, i % 2 == 0),
                                          "status": {"loadBalancer": {"ingress": [{"ip": vip(i)}]}}},
                     objects.service_from_k8s),
        "endpointslices": (services, lambda i: slice_obj(i, shapes[i % SHAPES] if i % 2 == 0
                                                         else rnd.sample(names, ENDPOINTS)),
                           objects.endpoint_slice_from_k8s),
    }
    for kind, (count, make, convert) in makers.items():
        per_page = -(-count // pages)
        for start in range(0, count, per_page):
            body = json.dumps({"items": [make(i) for i in range(start, min(count, start + per_page))]}).encode()
            items = json.loads(body)["items"]
            del body
            for item in items:
                kept = AGENT_FIELDS[kind](item) if slim else item
                meta = kept["metadata"]
                key = f"{meta.get('namespace')}/{meta['name']}" if meta.get("namespace") else meta["name"]
                cache[kind][key] = kept
                converted[kind][key] = (meta.get("resourceVersion", ""), convert(kept))
            del items
    gc.collect()
    return {"base_mb": base, "rss_mb": rss()["VmRSS"], "peak_mb": rss()["VmHWM"]}


# ------------------------------------------------------------------ the controller

WRITES = ("POST", "PUT", "PATCH", "DELETE")


async def controller_child(kubeconfig: str, qps: float = 200.0, burst: int = 200) -> dict[str, Any]:
    """Run one controller replica until SIGTERM (client-side limit ``qps``/``burst``); report its peak memory."""
    import signal

    from vipcore.controller.runtime import Controller, ControllerSettings
    from vipcore.kube import api_client

    settings = ControllerSettings(identity="bench", kubeconfig=kubeconfig, resync=3600, qps=qps, burst=burst)
    controller = Controller(settings, api_client(kubeconfig))
    runner = asyncio.create_task(controller.run(timeout=1800))
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await asyncio.wait({runner, asyncio.create_task(stopping.wait())}, return_when=asyncio.FIRST_COMPLETED)
    runner.cancel()
    await asyncio.wait({runner})
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_mb": rss().get("VmHWM", 0.0), "cpu_s": usage.ru_utime + usage.ru_stime}


def run_controller(services: int, nodes: int = 100, qps: float = 200.0, burst: int = 200) -> dict[str, Any]:
    """``services`` LoadBalancers created at once; time until all have an address, writes per Service."""
    from vipcore.testing.apiserver import ApiServer

    namespaces = ("default", "kube-system", "vipcore-system") + tuple(f"ns{i}" for i in range(50))
    with ApiServer(crds=[ROOT / "deploy" / "crds"], history_limit=max(5000, services * 6),
                   namespaces=namespaces) as server:
        for i in range(nodes):
            server.create(node_obj(i))
        server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                       "spec": {"addresses": [POOL], "interface": "eth0", "default": True}})
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
            child = subprocess.Popen([sys.executable, __file__, "--controller-child", str(kubeconfig),
                                      "--qps", str(qps), "--burst", str(burst)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:  # leading: the Lease is held
                    try:
                        server.get("coordination.k8s.io/v1", "Lease", "vipcore-controller", "vipcore-system")
                        break
                    except Exception:  # noqa: BLE001 - not yet
                        time.sleep(0.2)
                time.sleep(1.0)
                mark = time.monotonic()
                started = time.perf_counter()
                for i in range(services):
                    server.create(service_obj(i, i % 2 == 0))
                created = time.perf_counter() - started
                deadline = time.monotonic() + 3600
                done = 0
                while time.monotonic() < deadline:
                    listed = server.objects("v1", "Service")
                    done = sum(1 for s in listed if ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress"))
                    if done >= services:
                        break
                    time.sleep(0.5)
                elapsed = time.perf_counter() - started
                time.sleep(2.0)  # writes that follow the last address (VipGroups, Events)
            finally:
                child.terminate()
                out, err = child.communicate(timeout=120)
            writes: dict[str, int] = {}
            for record in server.requests_since(mark):
                if record.method in WRITES and "/leases/" not in record.path:
                    parts = record.path.split("?")[0].rstrip("/").split("/")
                    kind = next((p for p in reversed(parts) if p in ("services", "vipgroups", "vippools", "events")),
                                parts[-2])
                    what = f"{kind}/status" if parts[-1] == "status" else kind
                    # Refused requests (409 from a stale cache, 5xx) are counted apart from applied ones.
                    key = f"{record.method} {what}" + ("" if 200 <= record.code < 300 else f" ({record.code})")
                    writes[key] = writes.get(key, 0) + 1
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"services": services, "done": done, "create_s": created, "elapsed_s": elapsed, "writes": writes,
            "peak_mb": report.get("peak_mb", float("nan")), "cpu_s": report.get("cpu_s", float("nan")),
            "stderr": err[-2000:]}


# ------------------------------------------------------------------ the table

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def run_size(nodes: int, services: int, events: int, full_cache: bool, view: str = "groups",
             trace: bool = False) -> dict[str, Any]:
    from vipcore.testing.apiserver import ApiServer

    namespaces = ("default", "kube-system") + tuple(f"ns{i}" for i in range(50))
    with ApiServer(crds=[ROOT / "deploy" / "crds"], history_limit=5000, namespaces=namespaces) as server:
        started = time.perf_counter()
        plan = populate(server, nodes, services, pending=events, view=view)
        filled = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
            argv = [sys.executable, __file__, "--child", str(kubeconfig), "--plan", json.dumps(plan),
                    "--events", str(events)] + (["--full-cache"] if full_cache else []) + (
                        ["--trace"] if trace else [])
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
            if proc.returncode != 0:
                raise SystemExit(f"agent child failed ({proc.returncode}):\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
            if os.environ.get("VIPCORE_BENCH_PROFILE"):
                Path(os.environ["VIPCORE_BENCH_PROFILE"]).write_text(proc.stderr)
            result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["fill_s"] = filled
    return result


def print_rows(nodes: int, services: int, view: str, full_cache: bool, r: dict[str, Any]) -> None:
    for n, kind in enumerate(("slice", "service", "node")):
        lat, share = r["latency_ms"][kind], r["agent_ms"][kind]
        head = (f"{nodes:>6} {services:>8} {view:>6} {'full' if full_cache else 'slim':>5} {r['sync_s']:>7.1f} "
                f"{r['groups']:>6} {r['base_mb']:>7.0f} {r['rss_mb']:>7.0f} {r['peak_mb']:>7.0f}"
                if n == 0 else " " * 69)
        tail = f" {percentile(r['resolve_ms'], 0.95):>11.1f}" if n == 0 else ""
        print(f"{head}  {kind:<7} {len(lat):>3} {statistics.median(lat) if lat else float('nan'):>9.1f} "
              f"{percentile(lat, 0.95):>7.1f} {percentile(share, 0.95):>9.1f} "
              f"{percentile(r.get('react_ms', {}).get(kind, []), 0.95):>9.1f} "
              f"{percentile(r['cpu_ms'][kind], 0.95):>7.1f}{tail}", flush=True)


def print_trace(title: str, traced: dict[str, list[dict[str, float]]]) -> None:
    """``--trace``: per event kind, the median of each stage (ms, or a count)."""
    kinds = [k for k in ("slice", "service", "node") if traced.get(k)]
    if not kinds:
        return
    print(f"\nper event, median ({title}): {'':<6}" + "".join(f" {k:>8}" for k in kinds))
    for stage in traced[kinds[0]][0]:
        print(f"  {stage:<34}" + "".join(f" {statistics.median(e[stage] for e in traced[k]):>8.2f}"
                                        for k in kinds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x10000,5000x50000", help="NODESxSERVICES, comma-separated")
    parser.add_argument("--events", type=int, default=30, help="events of each kind")
    parser.add_argument("--full-cache", action="store_true", help="cache whole objects (before slimming)")
    parser.add_argument("--view", default="groups", help="the agent's kubernetes.agent_view: groups, full or "
                        "both (comma-separated)")
    parser.add_argument("--controller", type=int, default=0,
                        help="also time the controller: this many Services created at once")
    parser.add_argument("--qps", type=float, default=200.0,
                        help="the controller's client-side rate limit, writes a second (0: none)")
    parser.add_argument("--burst", type=int, default=200, help="the controller's client-side burst")
    parser.add_argument("--cache", default="",
                        help="NODESxSERVICES sizes: measure the agent's cache alone (no server), slim and whole")
    parser.add_argument("--trace", action="store_true",
                        help="also print where each event's agent CPU went (threads, stages; medians)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-child", help=argparse.SUPPRESS)
    parser.add_argument("--controller-child", help=argparse.SUPPRESS)
    parser.add_argument("--writer-child", help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cache_child:
        nodes, services, slim, pages = (int(x) for x in args.cache_child.split(","))
        print(json.dumps(cache_child(nodes, services, bool(slim), pages)))
        return 0
    if args.writer_child:
        writer_child(args.writer_child)
        return 0
    if args.controller_child:
        print(json.dumps(asyncio.run(controller_child(args.controller_child, args.qps, args.burst))))
        return 0
    if args.child:
        result = asyncio.run(agent_child(args.child, json.loads(args.plan), args.events, args.full_cache,
                                         args.trace))
        print(json.dumps(result))
        return 0
    if args.cache:
        print(f"{'nodes':>6} {'services':>8} {'cache':>5} {'list':>8} {'base MB':>7} {'RSS MB':>7} {'peak MB':>7}")
        for size in args.cache.split(","):
            nodes, services = (int(x) for x in size.split("x"))
            for slim, pages in ((0, 1), (1, 1), (1, max(1, services // 500))):
                out = subprocess.run([sys.executable, __file__, "--cache-child", f"{nodes},{services},{slim},{pages}"],
                                     capture_output=True, text=True, timeout=3600, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                listing = "1 page" if pages == 1 else f"{pages} pg"
                print(f"{nodes:>6} {services:>8} {'slim' if slim else 'whole':>5} {listing:>8} {r['base_mb']:>7.0f} "
                      f"{r['rss_mb']:>7.0f} {r['peak_mb']:>7.0f}", flush=True)
        if not args.sizes:
            return 0
    print(f"{'nodes':>6} {'services':>8} {'view':>6} {'cache':>5} {'sync s':>7} {'groups':>6} {'base MB':>7} "
          f"{'RSS MB':>7} {'peak MB':>7}  {'event':<7} {'n':>3} {'median ms':>9} {'p95 ms':>7} {'agent p95':>9} {'react p95':>9} "
          f"{'CPU p95':>7} {'resolve p95':>11}")
    views = ["groups", "full"] if args.view == "both" else args.view.split(",")
    traces: list[tuple[str, dict[str, list[dict[str, float]]]]] = []
    for size in [s for s in args.sizes.split(",") if s]:
        nodes, services = (int(x) for x in size.split("x"))
        for view in views:
            r = run_size(nodes, services, args.events, args.full_cache, view, args.trace)
            print_rows(nodes, services, view, args.full_cache, r)
            if args.trace:
                traces.append((f"{nodes}x{services} {view}", r["trace"]))
    for title, traced in traces:
        print_trace(title, traced)
    if args.controller:
        c = run_controller(args.controller, qps=args.qps, burst=args.burst)
        total = sum(c["writes"].values())
        limit = f"{args.qps:g} QPS, burst {args.burst}" if args.qps else "no client-side limit"
        print(f"\ncontroller ({limit}): {c['done']}/{c['services']} Services with an address {c['elapsed_s']:.1f} s "
              f"after the first create (creating took {c['create_s']:.1f} s); {total} writes, "
              f"{total / max(1, c['services']):.2f} per Service; peak RSS {c['peak_mb']:.0f} MB; "
              f"controller CPU {c['cpu_s']:.1f} s (from its start, sync included)")
        for what, count in sorted(c["writes"].items()):
            print(f"  {what:<24} {count:>7} ({count / max(1, c['services']):.2f} per Service)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
