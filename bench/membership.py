"""Membership changes as clients see them: joins, flaps, drains, endpoint moves, a hard failure.

Run (root): .venv/bin/python bench/membership.py [--rounds N] [--backends a,b] [--prefix P] [--json FILE]

A group's name hashes its node list, so every membership change renames
groups. This bench measures what that costs: 16 IPv4 VIP groups on the lab's
eth0 (prefix ``vcMb``, its own namespaces, torn down after each round, also
on Ctrl-C or an error), a client pinging one VIP of each group every 10 ms,
and these events, in order, in every round:

1. **join**: a 4th node starts its agent and appears (Ready) in the manifests.
   It has no endpoints, so it joins only the Cluster group.
2. **flap**: the node holding the fewest groups goes NotReady, then Ready.
3. **drain**: the node holding the most groups is labelled
   ``vipcore.io/drain=true``, then the label is removed.
4. **endpoints**: a Local Service's endpoint moves between two nodes that do
   not hold its VIP.
5. **kill** (the reference, not a planned change): the node holding the most
   groups is SIGKILLed and its links set down (netlink_static: and marked
   NotReady at the same moment, its only way to notice).

Round *k* names its Services with *k* in them, so every round has another
placement (which node holds what, whether the 4th node wins the Cluster
group); every backend sees the same rounds. Groups: one Cluster group, 14 Local groups whose endpoints are on the three
first nodes plus a distinct subset of four "phantom" nodes (Ready Nodes in the
manifests that run no agent, so the groups differ), and the Local group of
the moving endpoint. Service names are chosen so that running nodes rank
above phantoms. Per event and group: echoes lost and the longest gap between
replies (from the change until 1 s after the VIPs are where placement says),
whether the VIP moved (kernel address events, ``ip monitor``) and double
masters (two nodes other than the previous holder took the VIP). Groups
whose holder did not change and groups that moved are reported apart.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core import placement  # noqa: E402
from vipcore.core.errors import LabError, VipcoreError  # noqa: E402
from vipcore.core.model import DRAIN_LABEL  # noqa: E402
from vipcore.lab.agents import Deployment, node_manifest, wait_for_holders  # noqa: E402
from vipcore.lab.monitor import AddressMonitor  # noqa: E402
from vipcore.lab.probe import Probe  # noqa: E402
from vipcore.lab.topology import IPAddress, Lab, require_root  # noqa: E402

PREFIX = "vcMb"
NODES = ("node-a", "node-b", "node-c", "node-d")
FIRST, JOINER = NODES[:3], NODES[3]
PHANTOMS = tuple(f"phantom-{i}" for i in range(4))
BACKENDS = ("native_vrrp", "keepalived", "netlink_static")
EVENTS = ("join", "flap", "drain", "endpoints", "kill")
ADVERT = 1.0
LOCAL_GROUPS = 14
#: After the VIPs are where placement says, the client keeps pinging this long.
QUIET = 1.0
SETTLE = 30.0
INTERFACE = "eth0"
NAMESPACE = "bench"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


# -- the cluster ----------------------------------------------------------------------


def _ranks_first(name: str, first: Iterable[str], rest: Iterable[str]) -> bool:
    """Whether every node of ``first`` ranks above every node of ``rest`` for Service ``name``'s group."""
    first = tuple(first)
    order = placement.rank(f"{INTERFACE}/{NAMESPACE}/{name}", (*first, *rest))
    return set(order[:len(first)]) == set(first)


def _name(prefix: str, accept: Callable[[str], bool]) -> str:
    """The first ``prefix-k`` that ``accept`` takes (deterministic)."""
    for k in range(100_000):
        name = f"{prefix}-{k}"
        if accept(name):
            return name
    raise LabError(f"no Service name with prefix {prefix!r} ranks running nodes first")


class Cluster:
    """The bench's manifests: Nodes (which exist, Ready, drained) and Services with pinned VIPs."""

    def __init__(self, lab: Lab, directory: Path, variant: int = 0) -> None:
        self.lab = lab
        self.directory = directory
        #: Each round names its Services differently: another placement, another holder layout.
        self.variant = variant
        self.present: list[str] = list(FIRST)
        self.not_ready: set[str] = set()
        self.drained: set[str] = set()
        self.web = _name(f"web{variant}", lambda n: _ranks_first(n, NODES, PHANTOMS))
        self.locals = [(self._local(i), self._subset(i)) for i in range(LOCAL_GROUPS)]
        self.mover = _name(f"mover{variant}", lambda n: True)
        order = placement.rank(f"{INTERFACE}/{NAMESPACE}/{self.mover}", FIRST)
        #: The mover's holder keeps its VIP while its other endpoint moves from one non-holder to another.
        self.mover_holder, self.mover_from, self.mover_to = order
        self.mover_nodes = [self.mover_holder, self.mover_from]

    def _local(self, index: int) -> str:
        phantoms = self._subset(index)
        return _name(f"local{self.variant}-{index:02d}", lambda n: _ranks_first(n, FIRST, phantoms))

    @staticmethod
    def _subset(index: int) -> tuple[str, ...]:
        return tuple(p for bit, p in enumerate(PHANTOMS) if index >> bit & 1)

    def vip(self, index: int) -> str:
        return f"198.51.100.{100 + index}"

    def write(self) -> None:
        """(Re)write both files atomically: agents watching the folder see whole changes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        nodes = []
        for node in self.present:
            doc = node_manifest(self.lab, node, ready=node not in self.not_ready)
            if node in self.drained:
                doc["metadata"]["labels"][DRAIN_LABEL] = "true"
            nodes.append(doc)
        nodes += [node_manifest(self.lab, p, host=60 + i) for i, p in enumerate(PHANTOMS)]
        docs: list[dict[str, Any]] = [{
            "apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": NAMESPACE},
            "spec": {"default": True, "interface": INTERFACE, "addresses": ["198.51.100.100-198.51.100.149"]},
        }]
        docs.append(self._service(self.web, "Cluster", 0))
        for index, (name, subset) in enumerate(self.locals, start=1):
            docs += [self._service(name, "Local", index), self._endpoints(name, [*FIRST, *subset])]
        docs += [self._service(self.mover, "Local", LOCAL_GROUPS + 1), self._endpoints(self.mover, self.mover_nodes)]
        for path, content in (("nodes.yaml", nodes), ("services.yaml", docs)):
            tmp = self.directory / f".{path}.tmp"
            tmp.write_text(yaml.safe_dump_all(content, sort_keys=False))
            tmp.replace(self.directory / path)

    def _service(self, name: str, policy: str, index: int) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {"vipcore.io/ip": self.vip(index)}},
                "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip",
                         "externalTrafficPolicy": policy, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}

    @staticmethod
    def _endpoints(name: str, nodes: list[str]) -> dict[str, Any]:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-1", "namespace": NAMESPACE,
                             "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": [f"10.244.{i}.1"], "nodeName": n, "conditions": {"ready": True}}
                              for i, n in enumerate(nodes)],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}

    @property
    def vips(self) -> list[str]:
        return [self.vip(i) for i in range(LOCAL_GROUPS + 2)]


# -- one round ------------------------------------------------------------------------


class RoundFailed(Exception):
    pass


class Round:
    """A fresh lab running one backend; plays every event once and measures each."""

    def __init__(self, backend: str, advert: float = ADVERT, variant: int = 0) -> None:
        self.backend = backend
        self.advert = advert
        self.lab = Lab(prefix=PREFIX, nodes=NODES)
        self.cluster = Cluster(self.lab, self.lab.run_dir / "manifests", variant)
        settings: dict[str, Any] = {"garp": {"count": 3, "interval": 0.05}} if backend == "netlink_static" else {}
        self.deployment = Deployment(backend=backend, manifests=self.cluster.directory, metrics=False,
                                     advert_interval=None if backend == "netlink_static" else advert,
                                     settings=settings)
        self.running: set[str] = set()
        self.probes: list[Probe] = []

    def expected(self) -> dict[IPAddress, str]:
        return self.deployment.expected_holders(self.running)

    def settle(self, what: str) -> dict[IPAddress, str]:
        expected = self.expected()
        if not wait_for_holders(self.lab, expected, timeout=SETTLE, quiet=0.3):
            raise RoundFailed(f"{what}: VIPs not where placement says within {SETTLE:.0f} s: {self.lab.holders()}")
        return expected

    def run(self) -> dict[str, list[dict[str, Any]]]:
        try:
            self.lab.up()
            self.cluster.write()
            for node in FIRST:
                self.deployment.start(self.lab, node)
                self.running.add(node)
            self.settle("start")
            return {event: self.measure(event) for event in EVENTS}
        finally:
            self._stop_probes()
            self.lab.down()

    def _start_probes(self) -> None:
        """One client probe per group for the event: the program counts every echo it sent unanswered."""
        self.probes = [Probe(self.lab.client, vip, interval=0.01).start() for vip in self.cluster.vips]
        for probe in self.probes:
            if not probe.wait_replies(20, timeout=10):
                raise RoundFailed(f"no replies from {probe.target} before the event")

    def _stop_probes(self) -> None:
        for probe in self.probes:
            probe.__exit__()
        self.probes = []

    def _holding(self) -> dict[str, int]:
        counts = {n: 0 for n in self.running}
        for node in self.expected().values():
            counts[node] = counts.get(node, 0) + 1
        return counts

    def measure(self, event: str) -> list[dict[str, Any]]:
        """Play ``event``; per group: lost echoes, longest gap, moves, double masters."""
        before = self.expected()
        counts = self._holding()
        busiest = max(sorted(counts), key=lambda n: counts[n])
        idlest = min(sorted(counts), key=lambda n: counts[n])
        if event == "join":
            self.deployment.start(self.lab, JOINER)
            self.running.add(JOINER)
            time.sleep(1.0)  # the agent is up, with no group yet
        self._start_probes()
        with AddressMonitor(self.lab) as monitor:
            started = time.time()
            if event == "join":
                self.cluster.present.append(JOINER)
                self.cluster.write()
                self.settle(event)
            elif event == "flap":
                for ready in (False, True):
                    (self.cluster.not_ready.add if not ready else self.cluster.not_ready.discard)(idlest)
                    self.cluster.write()
                    self.settle(f"{event} {idlest} ready={ready}")
                    time.sleep(QUIET)
            elif event == "drain":
                for drained in (True, False):
                    (self.cluster.drained.add if drained else self.cluster.drained.discard)(busiest)
                    self.cluster.write()
                    self.settle(f"{event} {busiest} drained={drained}")
                    time.sleep(QUIET)
            elif event == "endpoints":
                self.cluster.mover_nodes = [self.cluster.mover_holder, self.cluster.mover_to]
                self.cluster.write()
                self.settle(event)
            elif event == "kill":
                self.lab.kill(busiest)
                self.running.discard(busiest)
                if self.backend == "netlink_static":
                    self.cluster.not_ready.add(busiest)
                    self.cluster.write()
                self.settle(event)
            time.sleep(QUIET)
        after = self.expected()
        results = [(probe.target, probe.stop(after=started)) for probe in self.probes]
        self.probes = []
        rows: list[dict[str, Any]] = []
        for target, result in results:
            vip = next(v for v in before if str(v) == target)
            adds = [e.node for e in monitor.events if e.added and e.address == vip and e.time >= started]
            takers = set(adds) - {before[vip]}
            rows.append({"vip": target, "lost": result.lost, "gap_ms": result.longest_gap_ms,
                         "moved": bool(adds) or before[vip] != after.get(vip), "moves": len(adds),
                         "double_master": len(takers) >= 2, "adders": adds, "holder": before[vip], "new_holder": after.get(vip)})
        moved = sum(r["moved"] for r in rows)
        log(f"    {event}: {moved} of {len(rows)} groups moved; lost "
            f"{sum(r['lost'] for r in rows if not r['moved'])} echoes in unmoved groups, "
            f"{sum(r['lost'] for r in rows if r['moved'])} in moved ones; "
            f"{sum(r['double_master'] for r in rows)} double masters")
        return rows


# -- output -----------------------------------------------------------------------------


def _stat(values: list[float], fmt: str = "{:.0f}") -> str:
    if not values:
        return "-"
    return f"{fmt.format(statistics.median(values))} / {fmt.format(p95(values))} / {fmt.format(max(values))}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in [headers, *rows]]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def report(data: Mapping[str, list[dict[str, list[dict[str, Any]]]]], rounds: int, advert: float) -> str:
    rows = []
    for event in EVENTS:
        for backend in BACKENDS:
            runs = data.get(backend) or []
            samples = [r for run in runs for r in run.get(event, [])]
            if not samples:
                continue
            still = [r for r in samples if not r["moved"]]
            moved = [r for r in samples if r["moved"]]
            rows.append([
                event, backend,
                f"{sum(r['moved'] for r in samples) / max(1, len(runs)):.2f}",
                _stat([float(r["lost"]) for r in still]), _stat([r["gap_ms"] for r in still]),
                _stat([float(r["lost"]) for r in moved]), _stat([r["gap_ms"] for r in moved]),
                str(sum(r["double_master"] for r in samples)),
            ])
    return (f"Membership changes, {LOCAL_GROUPS + 2} groups, client pings one VIP per group every 10 ms, "
            f"{rounds} round(s) per backend, advert {advert:g} s (VRRP backends).\n"
            "Cells: median / p95 / max over groups x rounds. 'moved': the VIP was added on some node "
            "during the event.\n"
            + table(["event", "backend", "groups moved (mean of 16)", "unmoved: lost", "unmoved: gap ms",
                     "moved: lost", "moved: gap ms", "double masters"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per backend (default 5)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=", ".join(BACKENDS))
    parser.add_argument("--advert", type=float, default=ADVERT,
                        help=f"VRRP advert interval in seconds (default {ADVERT:g})")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    args = parser.parse_args()
    set_prefix(args.prefix)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)

    data: dict[str, list[dict[str, list[dict[str, Any]]]]] = {}
    status = 0
    try:
        require_root()
        for backend in args.backends.split(","):
            data[backend] = []
            for index in range(args.rounds):
                log(f"[{time.strftime('%H:%M:%S')}] {backend}: round {index + 1} of {args.rounds}")
                try:
                    data[backend].append(Round(backend, args.advert, variant=index).run())
                except (RoundFailed, LabError) as exc:
                    log(f"    round failed: {exc}")
    except KeyboardInterrupt:
        Lab(prefix=PREFIX, nodes=NODES).down()
        log("interrupted; lab torn down; what was measured so far:")
        status = 130
    except VipcoreError as exc:
        Lab(prefix=PREFIX, nodes=NODES).down()
        log(f"membership bench: error: {exc}")
        status = 2
    print(report(data, args.rounds, args.advert))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return status


def set_prefix(prefix: str) -> None:
    global PREFIX
    PREFIX = prefix


if __name__ == "__main__":
    sys.exit(main())
