"""The agent's VipGroup view in process: what a Node flip costs it, without a server or a loaded machine.

Run: .venv/bin/python bench/groupview.py [--sizes 1000x10000,5000x50000] [--events 15] [--profile]

For each size (nodes x Services) the synthetic cluster of ``bench/scale.py``
is planned once as the controller plans it (``vipcore.core.plan.plan``), and
its VipGroups are fed, as watch lines, through what the agent runs in the
VipGroup view: JSON decoding, the informer's slim copy
(``vipcore.kube.informer.keep_vipgroup``) and identity cache (``handed_on``),
and ``vipcore.sources.vipgroups.GroupView``. Then Nodes flip readiness one at
a time: ``bench/scale.py``'s controller stand-in computes the VipGroup writes
(the group renamed: its shard 0 created anew and the old one deleted, with
the ``Local`` groups on that node), and the timed part is the agent's:
decoding those watch lines, the view's change and ``take()``, its state and
the memberships that changed. CPU time per flip, median and p95; ``--profile``
prints where it went. The wall-clock bench with a server is ``scale.py``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (the synthetic cluster and the controller stand-in)


class _Listed:
    """The stand-in's view of the server: the VipGroups the planner wrote."""

    def __init__(self, groups: list[Any]) -> None:
        self.groups = groups

    def list_cluster_custom_object(self, *_: Any) -> dict[str, Any]:
        return {"items": [{"metadata": {"name": w.name}, "spec": w.spec} for w in self.groups]}


def run(nodes: int, services: int, events: int, profile: bool) -> list[float]:
    import attrs

    from vipcore.core import objects
    from vipcore.core.plan import plan
    from vipcore.kube.informer import AGENT_FIELDS, KubernetesSource
    from vipcore.kube.kinds import NODES, VIP_GROUPS
    from vipcore.sources.vipgroups import GroupView

    shapes, objs = scale.cluster(nodes, services, 0)
    me = shapes[0][0]
    node_objs = [o for o in objs if o["kind"] == "Node"]
    planned = plan([o for o in objs if o["kind"] == "Service"],
                   nodes=[objects.node_from_k8s(n) for n in node_objs],
                   endpoint_slices=[objects.endpoint_slice_from_k8s(e) for e in objs if e["kind"] == "EndpointSlice"],
                   pools=[objects.pool_from_k8s(scale.POOL_OBJ)], vipgroups=[])
    standin = scale.ControllerStandIn({"nodes": nodes, "services": services, "pending": 0, "node": me},
                                      _Listed(list(planned.groups)))
    version = [100]

    def line(etype: str, obj: dict[str, Any]) -> bytes:
        version[0] += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(version[0]),
                                   "managedFields": scale.MANAGED}}
        return json.dumps({"type": etype, "object": obj}).encode()

    def group(name: str, spec: Any) -> dict[str, Any]:
        return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": name},
                **({"spec": spec} if spec is not None else {})}

    # The agent's side, as KubernetesAgentSource wires it in the VipGroup view.
    cache = KubernetesSource(None, kinds=(NODES, VIP_GROUPS), keep=AGENT_FIELDS, handed_on=("nodes", "vipgroups"))
    view = GroupView(me)
    cache.on_object_change.append(lambda c: view.change(c.kind, c.type, c.key, c.obj))
    kinds = {"Node": NODES, "VipGroup": VIP_GROUPS}

    def receive(raw: bytes) -> None:  # what the informer's watch thread does with one line
        event = json.loads(raw)
        obj = event["object"]
        kind = kinds[obj["kind"]]
        cache._apply(kind, event["type"], cache._kept(kind, obj))

    for n in node_objs:
        receive(line("ADDED", n))
    for w in planned.groups:
        receive(line("ADDED", group(w.name, w.spec)))
    view.take()
    current = dict(view.state().memberships)

    rnd = random.Random(3)
    flipped: dict[int, bool] = {}
    cpu: list[float] = []
    profiler = cProfile.Profile() if profile else None
    for _ in range(events):
        i = rnd.randrange(1, nodes)
        while f"node-{i:05d}" == me:
            i = rnd.randrange(1, nodes)
        flipped[i] = not flipped.get(i, False)
        name = f"node-{i:05d}"
        state = attrs.evolve(standin.state, nodes=tuple(attrs.evolve(n, ready=not flipped[i]) if n.name == name
                                                        else n for n in standin.state.nodes))
        verbs = {"create": "ADDED", "patch": "MODIFIED", "delete": "DELETED"}
        lines = [line(verbs[verb], group(g, spec)) for verb, g, spec in standin.change(state)]
        if profiler is not None:
            profiler.enable()
        began = time.process_time()
        for raw in lines:
            receive(raw)
        if view.take():
            desired = dict(view.state().memberships)
            [g for g in desired if current.get(g) != desired[g]]  # what the agent's dispatch compares
            current = desired
        cpu.append((time.process_time() - began) * 1000)
        if profiler is not None:
            profiler.disable()
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    return cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000x10000,5000x50000", help="NODESxSERVICES, comma-separated")
    parser.add_argument("--events", type=int, default=15, help="Node flips per size")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the timed parts (stderr)")
    args = parser.parse_args()
    print(f"{'nodes':>6} {'services':>8} {'flips':>5} {'CPU median ms':>13} {'CPU p95 ms':>10}")
    for size in args.sizes.split(","):
        nodes, services = (int(x) for x in size.split("x"))
        cpu = run(nodes, services, args.events, args.profile)
        print(f"{nodes:>6} {services:>8} {len(cpu):>5} {statistics.median(cpu):>13.1f} "
              f"{scale.percentile(cpu, 0.95):>10.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
