"""How long the resolver takes: 1k / 10k / 50k Services over 1,000 nodes.

Run: .venv/bin/python bench/resolve.py [--runs N]
Prints median and p95 wall time per size of a full ``resolve``, and of an
``IncrementalResolver`` taking one change at a time after its first build
(an EndpointSlice moving a Local Service, a Service changing, a Node's
readiness flipping), checked against a full ``resolve`` at the end. A fifth of the Services are
``Local`` with endpoint slices on one of 100 three-node placements (so
there are ~100 groups, as in a real cluster); the rest are ``Cluster`` and dual-stack.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attrs  # noqa: E402

from vipcore import DesiredState, EndpointSlice, Family, Node, Pool, Service, TrafficPolicy, resolve  # noqa: E402
from vipcore.core.incremental import IncrementalResolver  # noqa: E402
from vipcore.core.objects import parse_range  # noqa: E402


def build(services: int, nodes: int = 1000, seed: int = 7) -> DesiredState:
    rnd = random.Random(seed)
    node_list = tuple(Node(f"node-{i:04d}", ready=rnd.random() > 0.02) for i in range(nodes))
    names = [n.name for n in node_list]
    # Local Services land on one of 100 placements (deployments share nodes),
    # so groups stay within one interface's 255 VRIDs, as in a real cluster.
    shapes = [frozenset(rnd.sample(names, 3)) for _ in range(100)]
    svcs = []
    slices = []
    for i in range(services):
        ns = f"ns{i % 200}"
        if i % 5 == 0:
            svcs.append(Service(ns, f"s{i}", traffic_policy=TrafficPolicy.LOCAL, families=(Family.IPV6,)))
            slices.append(EndpointSlice(ns, f"s{i}-x", f"s{i}", rnd.choice(shapes)))
        else:
            svcs.append(Service(ns, f"s{i}", families=(Family.IPV6,)))
    pools = (
        Pool("lan", (parse_range("2001:db8::/104"),), interface="eth0", default=True),
    )
    return DesiredState(nodes=node_list, services=tuple(svcs), endpoint_slices=tuple(slices), pools=pools)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def incremental(state: DesiredState, runs: int) -> tuple[float, dict[str, list[float]]]:
    """First build, then per-change update times (ms) of an agent's resolver (addresses already in status)."""
    held = resolve(state).allocations
    state = attrs.evolve(state, services=tuple(attrs.evolve(s, vips=held.get(s.key, ())) for s in state.services))
    resolver = IncrementalResolver(allocate=False)
    start = time.perf_counter()
    resolver.update(state)
    first = (time.perf_counter() - start) * 1000
    rnd = random.Random(1)
    times: dict[str, list[float]] = {"slice": [], "service": [], "node": []}
    for n in range(runs * 3):
        kind = ("slice", "service", "node")[n % 3]
        if kind == "slice":
            slices = list(state.endpoint_slices)
            i = rnd.randrange(len(slices))
            slices[i] = attrs.evolve(slices[i], ready_nodes=state.endpoint_slices[(i + 1) % len(slices)].ready_nodes)
            state = attrs.evolve(state, endpoint_slices=tuple(slices))
        elif kind == "service":
            services = list(state.services)
            i = rnd.randrange(len(services))
            services[i] = attrs.evolve(services[i], ports=(("TCP", 1000 + n),))
            state = attrs.evolve(state, services=tuple(services))
        else:
            nodes = list(state.nodes)
            i = rnd.randrange(len(nodes))
            nodes[i] = attrs.evolve(nodes[i], ready=not nodes[i].ready)
            state = attrs.evolve(state, nodes=tuple(nodes))
        start = time.perf_counter()
        result = resolver.update(state)
        times[kind].append((time.perf_counter() - start) * 1000)
    assert result == resolve(state, allocate=False), "incremental resolution differs from resolve"
    return first, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--sizes", default="1000,10000,50000")
    args = parser.parse_args()
    print(f"{'services':>9} {'nodes':>6} {'groups':>7} {'unresolved':>10} {'median ms':>10} {'p95 ms':>8}   "
          f"incremental: {'first ms':>8} {'slice p50/p95':>14} {'service p50/p95':>16} {'node p50/p95':>13}")
    for size in (int(s) for s in args.sizes.split(",")):
        state = build(size)
        times = []
        result = None
        for _ in range(args.runs):
            start = time.perf_counter()
            result = resolve(state)
            times.append((time.perf_counter() - start) * 1000)
        assert result is not None
        first, events = incremental(state, max(args.runs, 20))
        cells = " ".join(f"{statistics.median(events[k]):>{w - 7}.1f}/{percentile(events[k], 0.95):<6.1f}"
                         for k, w in (("slice", 14), ("service", 16), ("node", 13)))
        print(f"{size:>9} {len(state.nodes):>6} {len(result.groups):>7} {len(result.unresolved):>10} "
              f"{statistics.median(times):>10.1f} {percentile(times, 0.95):>8.1f}   "
              f"             {first:>8.0f} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
