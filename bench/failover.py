"""Failover as a client sees it: vipcore's backends against plain keepalived, in one run.

Run (root): .venv/bin/python bench/failover.py [--trials N] [--quick] [--sections ...] [--soak SECONDS]
[--json FILE] [--png DIR]

Everything happens in the namespace lab (prefix ``vcLb`` or ``--prefix``, three nodes, a
client pinging every 10 ms); each configuration gets a fresh lab that is
torn down afterwards, also on Ctrl-C or an error. Sections:

1. **Failover**: the client's longest gap in replies when the holder of the
   example "web" group dies (every process SIGKILLed, links down) and when it
   is stopped (SIGTERM), at advert intervals 1 s and 0.1 s, for native_vrrp
   (vipcore agents), plain keepalived configured equivalently (same VRIDs,
   VIPs, priorities, interval; VRRPv3, no vrrp_strict), keepalived driven by
   vipcore, and netlink_static (its failover is a manifest change: the holder
   marked NotReady). Median and p95 (nearest rank) per cell, and the median
   number of lost echoes.
2. **Stability**: 16 dual-stack groups on three nodes; for shrinking advert
   intervals, the number of VIP moves (kernel address events) in a quiet
   window. The smallest interval with none is reported.
3. **Many groups**: the node holding most of 64 dual-stack groups dies; the
   client's gap for up to 8 of its VIPs, pooled over the trials (median, p95).
   native_vrrp runs as shipped (node-level liveness on) and without liveness (column "native_vrrp (VRRP timers)").
4. **CPU**: one node holding 64 dual-stack groups (128 VRRP routers): native_vrrp
   with its default configuration (and at 0.1 s) against plain keepalived at 0.1 s
   adverts; and 255 groups (every VRID of one interface) at 1 s adverts, native_vrrp
   against plain keepalived. utime+stime of everything in the node's namespace per
   minute, and the ratio to plain keepalived (``--cpu-groups`` picks the tables).
5. **Soak** (false failovers): 3 nodes, 16 groups, every node dropping 2 % of
   the BFD / liveness packets it receives (nftables ``numgen random``; this
   kernel has no netem) for ``--soak`` seconds (default 600): session expiries
   and VIP moves, all of them false since every node lives. For the backends
   with a fast path: native_vrrp (liveness on, its default) and keepalived (plain, BFD).
6. **Nodes** (``--sections nodes --nodes 3,16``, not in the default set): N agents
   sharing ``--nodes-groups`` dual-stack groups (default 64) as the placement spreads
   them; per node: groups held, liveness sessions (Up, watched fast, sent fast, from
   its metrics), CPU of its liveness worker and of the rest of its namespace (the agent);
   next to it, same run, plain keepalived at 0.1 s adverts on the same N nodes and
   groups (CPU of everything in each node's namespace: a backup receives every
   master's adverts) and the ratio per node.

"keepalived (plain, BFD)" is plain keepalived with one ``bfd_instance`` per
other node (keepalived's defaults: 10 ms x 5) and ``track_bfd`` in every
instance, weight -10 reversed (a backup gains 10 while its session to a peer
is down): the strongest keepalived configuration at hand.

Backends that are not installed are skipped with a note. ``--png DIR`` also
draws the client's replies around the failure per backend and the failover
times side by side (``bench/plots.py``; needs matplotlib, the ``bench`` extra);
``--from-json FILE --png DIR`` draws them again from a saved run.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core.errors import LabError, VipcoreError  # noqa: E402
from vipcore.lab.agents import (  # noqa: E402
    PLAIN_KEEPALIVED,
    Deployment,
    first_vips,
    keepalived_command,
    wait_for_holders,
    write_example_manifests,
    write_scenario_manifests,
)
from vipcore.lab.monitor import AddressMonitor  # noqa: E402
from vipcore.lab.probe import Probe  # noqa: E402
from vipcore.lab.topology import Lab, cpu_seconds, netns_pids, require_root  # noqa: E402

PREFIX = "vcLb"
#: native_vrrp without its node-level liveness (BFD) sessions: VRRP's timers alone detect failures.
TIMERS = "native_vrrp-timers"
#: Plain keepalived with its own BFD (RFC 5880) sessions to every other node, tracked by every instance.
KEEPALIVED_BFD = "plain-keepalived-bfd"
#: keepalived's BFD as issue 14 describes it: keepalived's default timers (10 ms x 5) and a track_bfd whose
#: weight raises a backup's priority while its session to a peer is down (negative weight, reversed).
BFD_SETTINGS = {"min_rx": 10, "min_tx": 10, "multiplier": 5, "weight": -10, "reverse": True}
VRRP_BACKENDS = ("native_vrrp", TIMERS, PLAIN_KEEPALIVED, KEEPALIVED_BFD, "keepalived")
LABELS = {"native_vrrp": "native_vrrp", TIMERS: "native_vrrp (VRRP timers)", PLAIN_KEEPALIVED: "keepalived (plain)",
          KEEPALIVED_BFD: "keepalived (plain, BFD)", "keepalived": "keepalived (vipcore)",
          "netlink_static": "netlink_static"}
#: Variants: (backend, extra settings of its config section).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    TIMERS: ("native_vrrp", {"liveness": False}),
    KEEPALIVED_BFD: (PLAIN_KEEPALIVED, {"bfd": BFD_SETTINGS}),
}
#: The backends whose fast path (liveness / BFD sessions, UDP 3784) the soak section drops packets of.
FAST_PATH = ("native_vrrp", KEEPALIVED_BFD)
#: BFD control packets (RFC 5881), keepalived's and native_vrrp's liveness alike.
FAST_PATH_PORT = 3784


def deployment_for(variant: str, **kwargs: Any) -> Deployment:
    backend, settings = VARIANTS.get(variant, (variant, {}))
    return Deployment(backend=backend, settings=settings, **kwargs)
STABILITY_LADDER = (0.1, 0.05, 0.03, 0.02, 0.01)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def p95(values: list[float]) -> float:
    """Nearest-rank 95th percentile (the maximum for fewer than 20 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def installed_backends() -> set[str]:
    from vipcore.backend.host import load_hooks

    found = set(load_hooks().backends())
    try:
        keepalived_command()
        found.add(PLAIN_KEEPALIVED)
    except LabError:
        pass
    found |= {variant for variant, (backend, _) in VARIANTS.items() if backend in found}
    return found


def native_default() -> str:
    """native_vrrp's default configuration, as the CPU table names it (it follows the code's defaults)."""
    from vipcore_native_vrrp.config import NativeVrrpConfig

    config = NativeVrrpConfig.from_mapping({})
    return f"adverts {config.advert_interval:g} s, liveness {'on' if config.liveness.enabled else 'off'}"


@contextmanager
def lab_for(nodes: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> Iterator[Lab]:
    with Lab(prefix=PREFIX, nodes=nodes) as lab:
        yield lab


class TrialFailed(Exception):
    pass


# -- failover trials ---------------------------------------------------------------


class FailoverRig:
    """One lab running one backend at one interval; runs trials and restores after each."""

    def __init__(self, backend: str, advert: float | None) -> None:
        self.backend = backend
        self.advert = advert
        self.lab: Lab | None = None
        self.deployment: Deployment | None = None

    @property
    def mdi(self) -> float:
        return 3.1 * (self.advert or 0.1)

    def build(self) -> None:
        self.teardown()
        lab = Lab(prefix=PREFIX).up()
        self.lab = lab
        deployment = deployment_for(self.backend, advert_interval=self.advert,
                                    manifests=write_example_manifests(lab, lab.run_dir / "manifests"))
        self.deployment = deployment
        deployment.start_all(lab)
        self.settle()

    def settle(self) -> None:
        assert self.lab and self.deployment
        quiet = max(0.3, 2 * (self.advert or 0.1))
        if not wait_for_holders(self.lab, self.deployment.expected_holders(self.lab.nodes),
                                timeout=30 + 5 * self.mdi, quiet=quiet):
            raise TrialFailed(f"VIPs did not settle on their holders: {self.lab.holders()}")
        if self.backend == "native_vrrp":
            # Steady state: liveness sessions come up at the slow rate (1 s) and are then sped up by a
            # Poll; until then VRRP's timers detect (at 0.1 s adverts a trial right after the holders
            # settled measured 300 ms). (The many-groups sections wait until the survivors' sessions to
            # the victim are fast, as `vipcore status` shows: wait_liveness_fast.)
            time.sleep(2.5)

    def teardown(self) -> None:
        if self.lab is not None:
            self.lab.down()
        self.lab = None

    def trial(self, event: str) -> dict[str, Any]:
        """One failure of the web group's holder; returns gaps (ms) and losses per family."""
        assert self.lab and self.deployment
        lab, deployment = self.lab, self.deployment
        resolution, _ = deployment.state()
        web = max(resolution.groups, key=lambda g: (len(g.families), len(g.nodes)))
        vips = first_vips(web)
        expected = deployment.expected_holders(lab.nodes)
        holder = expected[vips[0]]
        survivors = [n for n in lab.nodes if n != holder]
        after = deployment.expected_holders(survivors) if self.backend != "netlink_static" else None
        probes = [Probe(lab.client, str(v)).start() for v in vips]
        try:
            for probe in probes:
                if not probe.wait_replies(20, timeout=5):
                    raise TrialFailed(f"no replies from {probe.target} before the failure")
            # A random phase against the advert timer, as a real failure would have.
            time.sleep(random.uniform(0, self.advert or 0.1))
            started = time.time()
            self._fail(event, holder)
            if after is None:
                after = {v: n for v, n in deployment.expected_holders(survivors).items()}
            # A new holder with the survivors' priorities; bounded by many Master_Down_Intervals.
            if not wait_for_holders(lab, {v: after[v] for v in vips}, timeout=5 + 5 * self.mdi):
                raise TrialFailed(f"{event}: VIPs did not move off {holder}: {lab.holders()}")
            for probe in probes:
                if not probe.wait_replies(30, after=time.time(), timeout=5):
                    raise TrialFailed(f"{event}: client gets no replies from {probe.target} after the move")
            results = [probe.stop(after=started) for probe in probes]
        finally:
            for probe in probes:
                probe.__exit__()
        self._restore(holder)
        return {f"IPv{v.version}": {"gap_ms": r.longest_gap_ms, "lost": r.lost,
                                    "replies_ms": around(probe.replies(), started, r)}
                for v, r, probe in zip(vips, results, probes)}

    def _fail(self, event: str, holder: str) -> None:
        assert self.lab and self.deployment
        if self.backend == "netlink_static":
            # No peer protocol: the control plane marks the node NotReady (at once, here).
            if event == "hard":
                self.lab.kill(holder)
                self.deployment.set_ready(self.lab, holder, False)
            else:
                # Drain first, then stop: the next holder takes over while the old one still answers.
                self.deployment.set_ready(self.lab, holder, False)
                survivors = [n for n in self.lab.nodes if n != holder]
                wait_for_holders(self.lab, {v: n for v, n in self.deployment.expected_holders(survivors).items()},
                                 timeout=10)
                self.lab.stop(holder)
        elif event == "hard":
            self.lab.kill(holder)
        else:
            self.lab.stop(holder)

    def _restore(self, holder: str) -> None:
        assert self.lab and self.deployment
        if self.backend == "netlink_static":
            self.deployment.set_ready(self.lab, holder, True)
        self.deployment.start(self.lab, holder)
        self.settle()


def around(replies: list[float], started: float, result: Any, margin: float = 0.3) -> list[float]:
    """Reply times in ms from the failure, from ``margin`` before it to ``margin`` after the gap (for pictures)."""
    end = (result.gap_start or started) + result.longest_gap + margin
    return [round((rx - started) * 1000, 1) for rx in replies if started - margin <= rx <= end]


def run_failover(backend: str, advert: float | None, trials: int) -> dict[str, list[dict[str, Any]]]:
    rig = FailoverRig(backend, advert)
    results: dict[str, list[dict[str, Any]]] = {"hard": [], "graceful": []}
    failures = 0
    try:
        rig.build()
        for index in range(trials):
            for event in ("hard", "graceful"):
                try:
                    outcome = rig.trial(event)
                except (TrialFailed, LabError) as exc:
                    failures += 1
                    log(f"    trial {index + 1} {event}: FAILED ({exc}); rebuilding the lab")
                    results[event].append({"error": str(exc)})
                    if failures > max(3, trials // 2):
                        raise TrialFailed(f"too many failed trials for {backend}") from None
                    rig.build()
                    continue
                results[event].append(outcome)
                log(f"    trial {index + 1} {event}: " + ", ".join(
                    f"{fam} {r['gap_ms']:.0f} ms ({r['lost']} lost)" for fam, r in outcome.items()))
    finally:
        rig.teardown()
    return results


# -- many groups: one node's failure ---------------------------------------------------


def run_many(backend: str, trials: int, groups: int = 64, sample: int = 8, advert: float | None = None,
             ping: float = 0.01) -> list[float]:
    """Kill the node holding most of ``groups`` dual-stack groups on 3 nodes; the client's gap (ms) for up to
    ``sample`` of its IPv4 VIPs per trial, pinged every ``ping`` seconds, pooled over ``trials``.

    The gap runs from the last reply before the failure to the first after the move, so it is the
    outage plus two parts of a ping interval (where the failure and the move fall between two echoes):
    about one ``ping`` on average, up to two. A shorter ``ping`` measures the outage more closely."""
    gaps: list[float] = []
    with lab_for() as lab:
        # The status endpoint (metrics on) says when the survivors' sessions to the victim are fast.
        deployment = deployment_for(backend, metrics=fast_path(backend), advert_interval=advert,
                                    manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        for index in range(trials):
            expected = deployment.expected_holders(lab.nodes)
            if not wait_for_holders(lab, expected, timeout=60, quiet=1.0):
                raise TrialFailed(f"{backend}: VIPs did not settle")
            counts: dict[str, int] = {}
            for holder in expected.values():
                counts[holder] = counts.get(holder, 0) + 1
            victim = max(counts, key=lambda n: counts[n])
            if not fast_path(backend):
                time.sleep(2.5)  # a steady state for the other backends (keepalived's own BFD sessions)
            elif not wait_liveness_fast(lab, [n for n in lab.nodes if n != victim], victim):
                raise TrialFailed(f"liveness sessions to {victim} not Up at the fast rate within 15 s")
            vips = [v for v, n in expected.items() if n == victim and v.version == 4][:sample]
            logs = {node: log_size(deployment.node_dir(lab, node) / "agent.log") for node in lab.nodes}
            probes = [Probe(lab.client, str(v), interval=ping).start() for v in vips]
            try:
                for probe in probes:
                    if not probe.wait_replies(10, timeout=5):
                        raise TrialFailed(f"no replies from {probe.target}")
                time.sleep(random.uniform(0, 0.1))
                started = time.time()
                lab.kill(victim)
                survivors = [n for n in lab.nodes if n != victim]
                after = deployment.expected_holders(survivors)
                if not wait_for_holders(lab, {v: after[v] for v in vips}, timeout=10):
                    raise TrialFailed(f"VIPs did not move off {victim}")
                for probe in probes:
                    probe.wait_replies(20, after=time.time(), timeout=5)
                results = [probe.stop(after=started) for probe in probes]
            finally:
                for probe in probes:
                    probe.__exit__()
            trial = [r.longest_gap_ms for r in results]
            gaps += trial
            log(f"    trial {index + 1}: {victim} held {counts[victim]} VIPs; gaps ms "
                + ", ".join(f"{g:.0f}" for g in trial))
            if fast_path(backend) and trial and max(trial) > SLOW_TRIAL_MS:
                slow_trial_evidence(lab, deployment, victim, started, logs, f"trial{index + 1}")
            deployment.start(lab, victim)
    return gaps


# -- stability -----------------------------------------------------------------------


def run_stability(backend: str, advert: float, window: float, groups: int = 16) -> dict[str, Any]:
    with lab_for() as lab:
        deployment = Deployment(backend=backend, advert_interval=advert, metrics=False,
                                manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        expected = deployment.expected_holders(lab.nodes)
        settled = wait_for_holders(lab, expected, timeout=40, quiet=max(1.0, 20 * advert))
        # Counted even when the groups never settled: how much they flap is the finding then.
        with AddressMonitor(lab) as monitor:
            deadline = time.monotonic() + window
            while time.monotonic() < deadline and all(lab.alive(n) for n in lab.nodes):
                time.sleep(0.2)
        events = monitor.events
        alive = all(lab.alive(n) for n in lab.nodes)
        final_ok = wait_for_holders(lab, expected, timeout=0.1)
        return {"advert": advert, "settled": settled, "moves": len(events), "window": window, "alive": alive,
                "still_expected": final_ok, "vips": len(expected)}


#: A many-groups trial of the fast path whose longest gap is above this (ms) did not fail over by liveness
#: (the VRRP timers took it: 2-4 s at 1 s adverts); its evidence is kept (:func:`slow_trial_evidence`).
SLOW_TRIAL_MS = 1000.0
#: Where the evidence of slow trials goes (the lab's run directory is removed with the lab).
EVIDENCE_DIR = Path("/tmp/vipcore-bench-evidence")


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def slow_trial_evidence(lab: Lab, deployment: Deployment, victim: str, killed: float, logs: dict[str, int],
                        label: str) -> Path:
    """A trial the fast path did not take: say per survivor how its routers took over (the reasons of the
    transitions since ``killed``) and what its liveness table says now, and keep every node's agent log
    since before the kill (``logs``: the sizes then) and the survivors' ``vipcore status -o json`` under
    :data:`EVIDENCE_DIR` (bench/README.md, "Session 8: gap8": what to look for)."""
    where = EVIDENCE_DIR / f"{lab.prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    where.mkdir(parents=True, exist_ok=True)
    for node in lab.nodes:
        path = deployment.node_dir(lab, node) / "agent.log"
        try:
            with open(path, "rb") as source:
                source.seek(max(0, logs.get(node, 0) - 20000))  # a little before the kill too
                (where / f"{node}-agent.log").write_bytes(source.read())
        except OSError:
            pass
    for node in (n for n in lab.nodes if n != victim):
        done = lab.exec(node, [str(Path(sys.executable).parent / "vipcore"), "status", "-o", "json"], check=False)
        (where / f"{node}-status.json").write_text(done.stdout)
        try:
            document = json.loads(done.stdout)
        except ValueError:
            log(f"      {node}: no status document ({done.stderr.strip()[:120]})")
            continue
        reasons: dict[str, int] = {}
        for router in document.get("routers", []):
            if router.get("state") == "master" and (router.get("since") or 0) > killed:
                reason = re.sub(r"[0-9.]+ ?m?s\b|fe80::[0-9a-f:]+|[0-9]+(\.[0-9]+){3}", "#", router.get("reason") or "")
                reasons[reason] = reasons.get(reason, 0) + 1
        sessions = [f"{row[2]} {row[3]} detect {row[4]} ms flaps {row[5]}"
                    for table in document.get("sections", {}).get("native_vrrp", [])
                    if table.get("title") == "liveness" for row in table.get("rows", []) if row[2] in lab.nodes]
        log(f"      {node}: took over {sum(reasons.values())} router(s): "
            + "; ".join(f"{count} x {reason}" for reason, count in sorted(reasons.items()))
            + f" | liveness now: {', '.join(sessions)}")
    log(f"      slow trial: agent logs and status kept in {where}")
    return where


def fast_path(variant: str) -> bool:
    """Whether ``variant`` runs native_vrrp with its node-level liveness sessions."""
    backend, settings = VARIANTS.get(variant, (variant, {}))
    return backend == "native_vrrp" and settings.get("liveness", True) is not False


def liveness_fast(lab: Lab, node: str, peer: str) -> bool:
    """Whether ``node``'s liveness session to ``peer`` is Up and detects at the fast rate (``vipcore status``)."""
    done = lab.exec(node, [str(Path(sys.executable).parent / "vipcore"), "status", "-o", "json"], check=False)
    try:
        tables = json.loads(done.stdout).get("sections", {}).get("native_vrrp", [])
    except (ValueError, AttributeError):
        return False
    for table in tables:
        if table.get("title") != "liveness":
            continue
        columns = table["columns"]
        for row in table["rows"]:
            entry = dict(zip(columns, row))
            if entry.get("NODE") == peer and entry.get("SESSION") == "up" and (entry.get("DETECT MS") or 1e9) < 500:
                return True
    return False


def wait_liveness_fast(lab: Lab, nodes: list[str], peer: str, timeout: float = 15.0) -> bool:
    """Wait until every one of ``nodes`` detects the loss of ``peer`` fast. A hard failure measured before
    that measures VRRP's timers (sessions start at the slow rate, 1 s, and are sped up by a Poll; on a
    loaded machine that took longer than the fixed pause the sections used to wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(liveness_fast(lab, node, peer) for node in nodes):
            return True
        time.sleep(0.2)
    return False


# -- cpu --------------------------------------------------------------------------------


def run_cpu(backend: str, window: float, groups: int = 64, advert: float | None = 0.1) -> dict[str, Any]:
    """CPU of one node holding ``groups`` dual-stack groups on eth0 (``advert`` None: the backend's default)."""
    with lab_for(("node-a",)) as lab:
        deployment = deployment_for(backend, advert_interval=advert, metrics=False,
                                    manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        expected = deployment.expected_holders(lab.nodes)
        if not wait_for_holders(lab, expected, timeout=60 + groups / 4, quiet=1.0):
            raise TrialFailed(f"{backend}: {len(expected)} VIPs not all held within {60 + groups / 4:.0f} s")
        # Past the start-up burst: every router's GARP schedule (1 s) and the split-brain probes after the
        # transitions; with 510 routers they outlast 2 s and tripled native_vrrp's number. On a loaded
        # machine the start-up work of 255 groups (10-20 CPU-s) went on for 20-40 s after the VIPs were
        # held, and the window measured it: wait until the node is quiet too.
        time.sleep(6.0)
        settle = wait_cpu_quiet(lab, "node-a")
        before, t0 = lab.cpu_seconds("node-a"), time.monotonic()
        time.sleep(window)
        used, elapsed = lab.cpu_seconds("node-a") - before, time.monotonic() - t0
        held = wait_for_holders(lab, expected, timeout=0.1)
        return {"cpu_s_per_min": used / elapsed * 60, "window": elapsed, "routers": len(expected), "held": held,
                "groups": groups, "advert": advert, "settle": settle}


#: A node is past its start-up once a window of this many seconds used less than QUIET_CORE of a core.
QUIET_WINDOW = 3.0
QUIET_CORE = 0.1


def wait_cpu_quiet(lab: Lab, node: str, timeout: float = 120.0) -> float:
    """Seconds waited until ``node``'s processes used under QUIET_CORE of a core over QUIET_WINDOW (or timeout)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = lab.cpu_seconds(node)
        time.sleep(QUIET_WINDOW)
        if lab.cpu_seconds(node) - before < QUIET_CORE * QUIET_WINDOW:
            break
    return time.monotonic() - began


#: The CPU cases: (backend, advert interval or None for the backend's default, groups on one interface).
#: 64 groups: native_vrrp as shipped against plain keepalived at 0.1 s (issue 14's comparison); 255 groups
#: (every VRID of one interface) at 1 s adverts.
CPU_CASES = (
    ("native_vrrp", None, 64), ("native_vrrp", 0.1, 64), (TIMERS, 0.1, 64), ("keepalived", 0.1, 64),
    (PLAIN_KEEPALIVED, 0.1, 64),
    ("native_vrrp", 1.0, 255), (PLAIN_KEEPALIVED, 1.0, 255),
)


def cpu_key(backend: str, advert: float | None, groups: int) -> str:
    return f"{backend}@{'default' if advert is None else f'{advert:g}'}#{groups}"


# -- nodes: per-node cost at 3 and 16 nodes ----------------------------------------------------


def node_names(count: int) -> tuple[str, ...]:
    return tuple(f"node-{chr(ord('a') + i)}" for i in range(count))


def worker_pids(lab: Lab, node: str) -> list[int]:
    """The liveness worker processes in a node's namespace."""
    found = []
    for pid in netns_pids(lab.ns(node)):
        try:
            if b"liveness.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def task_cpu(pid: int) -> float:
    """Time on a CPU of every thread of a process so far, seconds (/proc/PID/task/*/schedstat, nanoseconds):
    utime + stime move in 10 ms ticks, 0.06 CPU-s/min over a 10 s window."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def namespace_cpu(lab: Lab, node: str) -> tuple[float, float]:
    """CPU seconds so far of every process in the node's namespace, and of its liveness workers among them."""
    workers = set(worker_pids(lab, node))
    used = {pid: task_cpu(pid) for pid in netns_pids(lab.ns(node))}
    return sum(used.values()), sum(v for pid, v in used.items() if pid in workers)


def liveness_sessions(lab: Lab, node: str) -> dict[str, Any]:
    """A node's liveness sessions from its metrics: all, watched fast (we ask the peer for the fast rate),
    sent fast (the peer asks us for it), Up; and each peer's liveness metrics (for the --json file)."""
    text = lab.exec(node, ["curl", "-s", "--max-time", "5", "http://127.0.0.1:9641/metrics"], check=False).stdout
    counts: dict[str, Any] = {"sessions": 0, "watched_fast": 0, "sent_fast": 0, "up": 0, "peers": {}}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.startswith("vipcore_liveness_"):
            peer = re.search(r'peer="([^"]+)"', name)
            if peer:
                counts["peers"].setdefault(peer.group(1), {})[name.split("{")[0][len("vipcore_liveness_"):]] = value
        if name.startswith("vipcore_liveness_required_min_rx_seconds{"):
            counts["sessions"] += 1
            counts["watched_fast"] += float(value) < 0.5
        elif name.startswith("vipcore_liveness_transmit_interval_seconds{"):
            counts["sent_fast"] += float(value) < 0.5
        elif name.startswith("vipcore_liveness_session_up{"):
            counts["up"] += float(value) == 1.0
    return counts


#: The nodes section's reference: plain keepalived at the interval the CPU section compares against.
NODES_REFERENCE = (PLAIN_KEEPALIVED, 0.1)


def run_nodes(backend: str, nodes: int, groups: int, window: float, advert: float | None = None) -> dict[str, Any]:
    """``nodes`` agents sharing ``groups`` dual-stack groups as the placement spreads them (every group has
    every node; the scenario's phantom members never run); per node, what it holds, its liveness sessions
    and the CPU of its liveness worker and of the rest of its namespace (the agent). For plain keepalived
    (no metrics, no worker) only what it holds and the CPU of its namespace (``agent_cpu``)."""
    agent = backend != PLAIN_KEEPALIVED
    with lab_for(node_names(nodes)) as lab:
        deployment = deployment_for(backend, metrics=agent, advert_interval=advert,
                                    manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        expected = deployment.expected_holders(lab.nodes)
        settled = wait_for_holders(lab, expected, timeout=60 + groups / 2 + 5 * nodes, quiet=1.0)
        if not settled and agent:
            raise TrialFailed(f"{backend}: {len(expected)} VIPs not all held at {nodes} nodes")
        # keepalived at 0.1 s adverts on a loaded machine may never settle (masters starved past
        # Master_Down flip, both nodes hold the VIP a while): measured anyway, the VIPs out of place
        # before and after the window reported next to its CPU (flapping costs it more than steady state).
        time.sleep(6.0)  # past the start-up burst; liveness sessions Up and their rates settled
        misplaced = [misplaced_vips(lab, expected)]
        before = {n: namespace_cpu(lab, n) for n in lab.nodes}
        t0 = time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        rows: dict[str, Any] = {}
        for n in lab.nodes:
            after = namespace_cpu(lab, n)
            total, worker = after[0] - before[n][0], after[1] - before[n][1]
            rows[n] = {"holds": sum(1 for v, h in expected.items() if h == n and v.version == 4),
                       **(liveness_sessions(lab, n) if agent else {}), "worker_cpu": worker / elapsed * 60,
                       "agent_cpu": (total - worker) / elapsed * 60}
        held = wait_for_holders(lab, expected, timeout=0.1)
        misplaced.append(misplaced_vips(lab, expected))
        return {"nodes": nodes, "groups": groups, "window": elapsed, "held": held, "per_node": rows,
                "backend": backend, "advert": advert, "misplaced": misplaced, "vips": len(expected)}


def misplaced_vips(lab: Lab, expected: dict[Any, str]) -> int:
    """VIPs not held by exactly their expected node right now; -1 if the lab could not say (a node's
    ``ip addr`` timed out: a node busy flapping, on a loaded machine)."""
    try:
        holders = lab.holders()
    except LabError:
        return -1
    return sum(1 for vip, node in expected.items() if list(holders.get(vip, [])) != [node])


# -- soak: false failovers under packet loss -----------------------------------------------


def drop_fast_path(lab: Lab, node: str, percent: float) -> None:
    """nftables in the node's namespace: drop ``percent`` % of the BFD packets it receives (no netem here)."""
    ns = lab.ns(node)
    rules = (f"table inet vcsoak {{\n chain input {{\n  type filter hook input priority 0;\n"
             f"  udp dport {FAST_PATH_PORT} numgen random mod 1000 < {round(percent * 10)} counter drop\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True,
                   capture_output=True)


def dropped_fast_path(lab: Lab, node: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", lab.ns(node), "nft", "list", "table", "inet", "vcsoak"],
                         text=True, capture_output=True, check=False).stdout
    match = re.search(r"counter packets (\d+)", out)
    return int(match.group(1)) if match else 0


def run_soak(backend: str, duration: float, loss: float = 2.0, groups: int = 16) -> dict[str, Any]:
    """3 nodes, ``groups`` dual-stack groups, ``loss`` % of fast-path packets dropped on every node for
    ``duration`` s: VIP moves (kernel address events) and session expiries logged (false: every node lives)."""
    with lab_for() as lab:
        deployment = deployment_for(backend, metrics=False,
                                    manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        expected = deployment.expected_holders(lab.nodes)
        if not wait_for_holders(lab, expected, timeout=60, quiet=1.0):
            raise TrialFailed(f"{backend}: VIPs did not settle")
        time.sleep(3.0)  # sessions up (liveness starts at the slow rate)
        logs = [Path(r.log) for n in lab.nodes for r in lab.records(n)]
        expired_before = sum(_expiries(p) for p in logs)
        for node in lab.nodes:
            drop_fast_path(lab, node, loss)
        with AddressMonitor(lab) as monitor:
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline and all(lab.alive(n) for n in lab.nodes):
                time.sleep(0.5)
        dropped = sum(dropped_fast_path(lab, n) for n in lab.nodes)
        return {"duration": duration, "loss": loss, "moves": len(monitor.events),
                "expiries": sum(_expiries(p) for p in logs) - expired_before, "dropped": dropped,
                "alive": all(lab.alive(n) for n in lab.nodes), "still_expected": wait_for_holders(lab, expected,
                                                                                                  timeout=0.1)}


def _expiries(log_file: Path) -> int:
    """Session expiries a node logged: keepalived's "Expired after" and native_vrrp's "expired after"."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return 0
    return len(re.findall(r"(?i)expired after", text))


# -- output -----------------------------------------------------------------------------


def cell(samples: list[dict[str, Any]], family: str) -> str:
    gaps = [s[family]["gap_ms"] for s in samples if "error" not in s and family in s]
    lost = [s[family]["lost"] for s in samples if "error" not in s and family in s]
    failed = sum(1 for s in samples if "error" in s)
    if not gaps:
        return "n/a" if not failed else f"{failed} failed"
    text = f"{statistics.median(gaps):.0f} / {p95(gaps):.0f} ({statistics.median(lost):.0f})"
    return text + (f" {failed}!" if failed else "")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows])


def report(data: dict[str, Any], trials: int) -> str:
    out = []
    failover = data["failover"]
    backends = [b for b in VRRP_BACKENDS if any(k.startswith(b + "@") for k in failover)]
    if backends:
        rows = []
        for event in ("hard", "graceful"):
            for advert in (1.0, 0.1):
                for family in ("IPv4", "IPv6"):
                    rows.append([{"hard": "hard failure", "graceful": "graceful stop"}[event], f"{advert:g} s", family]
                                + [cell(failover.get(f"{b}@{advert:g}", {}).get(event, []), family) for b in backends])
        out.append(f"Failover, 3 nodes, client pings every 10 ms, {trials} trials per cell.\n"
                   "Cell: longest reply gap median / p95 in ms (median echoes lost); 'N!' = N failed trials.\n"
                   "hard failure = every process of the holder SIGKILLed and its links set down; "
                   "graceful stop = SIGTERM.")
        out.append(table(["event", "advert", "family", *[LABELS[b] for b in backends]], rows))
    if "netlink_static@-" in failover:
        ns = failover["netlink_static@-"]
        rows = [[name, fam, cell(ns.get(event, []), fam)]
                for event, name in (("hard", "kill + NotReady in manifests"), ("graceful", "NotReady, then SIGTERM"))
                for fam in ("IPv4", "IPv6")]
        out.append("netlink_static (no peer protocol: fails over when the manifests change; "
                   "the agent polls them every 0.25 s):\n" + table(["event", "family", "gap ms median / p95 (lost)"], rows))
    for note in data.get("notes", []):
        out.append(f"note: {note}")
    if data.get("many"):
        rows = [[LABELS[b], str(len(g)), f"{statistics.median(g):.0f}", f"{p95(g):.0f}", f"{max(g):.0f}"]
                for b, g in data["many"].items() if g]
        many_advert = data.get("many_advert")
        setting = "default configuration" if many_advert is None else f"adverts every {many_advert:g} s"
        out.append(f"Hard failure of the node holding most of 64 dual-stack groups (3 nodes, {setting}; "
                   f"the client pings up to 8 of its IPv4 VIPs every {data.get('many_ping', 10):g} ms): "
                   "longest gap per group, ms\n"
                   + table(["backend", "groups x trials", "median", "p95", "max"], rows))
    if data.get("stability"):
        rows = []
        for backend, runs in data["stability"].items():
            for run in runs:
                verdict = ("stable" if run["settled"] and run["moves"] == 0 and run["alive"] else
                           f"{run['moves']} VIP moves" + ("" if run["settled"] else ", never settled in 40 s")
                           + ("" if run["alive"] else ", a process died"))
                rows.append([LABELS[backend], f"{run['advert']:g} s", f"{run['window']:.0f} s", verdict])
        smallest = {b: min((r["advert"] for r in runs if r["settled"] and r["moves"] == 0 and r["alive"]), default=None)
                    for b, runs in data["stability"].items()}
        out.append("Stability, 16 dual-stack groups (32 routers per node) on 3 nodes: VIP moves in a quiet window\n"
                   + table(["backend", "advert", "window", "result"], rows) + "\n"
                   + "\n".join(f"smallest stable interval, {LABELS[b]}: {'none' if s is None else f'{s:g} s'}"
                               for b, s in smallest.items()))
    if data.get("cpu"):
        out.append(cpu_report(data["cpu"], data.get("native_default", "")))
    if data.get("soak"):
        rows = [[LABELS[b], f"{r['duration']:.0f} s", f"{r['loss']:g} %", str(r["dropped"]), str(r["expiries"]),
                 str(r["moves"]), "yes" if r["alive"] and r["still_expected"] else "NO"]
                for b, r in data["soak"].items()]
        out.append("False failovers: 3 nodes, 16 dual-stack groups, every node drops the given share of the BFD / "
                   "liveness packets it receives (nftables numgen random); every node stays alive, so every "
                   "session expiry and VIP move is false\n"
                   + table(["backend", "duration", "loss", "packets dropped", "session expiries", "VIP moves",
                            "VIPs where placed"], rows))
    for count in sorted({*data.get("nodes", {}), *data.get("nodes_reference", {})}, key=int):
        out.append(nodes_report(count, data.get("nodes", {}).get(count), data.get("nodes_reference", {}).get(count)))
    return "\n\n".join(out)


def nodes_report(count: str, run: dict[str, Any] | None, reference: dict[str, Any] | None) -> str:
    """Per node: native_vrrp's sessions and CPU (worker, agent, total) next to plain keepalived's on the same
    node in the same run (its namespace's CPU), and the ratio; a median row."""
    one = run or reference
    assert one is not None
    names = list(one["per_node"])
    rows = []
    for node in names:
        row = run["per_node"].get(node) if run else None
        ref = reference["per_node"].get(node) if reference else None
        native = [f"{row['up']} / {row['sessions']}", str(row["watched_fast"]), str(row["sent_fast"]),
                  f"{row['worker_cpu']:.2f}", f"{row['agent_cpu']:.2f}",
                  f"{row['worker_cpu'] + row['agent_cpu']:.2f}"] if row else ["-"] * 6
        keepalived = f"{ref['agent_cpu']:.2f}" if ref else "-"
        ratio = f"{(row['worker_cpu'] + row['agent_cpu']) / ref['agent_cpu']:.2f}" if row and ref and \
            ref["agent_cpu"] > 0 else "-"
        rows.append([node, str((row or ref or {}).get("holds", "-")), *native, keepalived, ratio])
    medians = ["median", "", "", "", ""]
    if run:
        values = list(run["per_node"].values())
        medians += [f"{statistics.median(r[k] for r in values):.2f}" for k in ("worker_cpu", "agent_cpu")]
        medians.append(f"{statistics.median(r['worker_cpu'] + r['agent_cpu'] for r in values):.2f}")
    else:
        medians += ["-"] * 3
    medians.append(f"{statistics.median(r['agent_cpu'] for r in reference['per_node'].values()):.2f}"
                   if reference else "-")
    ratios = [float(r[-1]) for r in rows if r[-1] != "-"]
    medians.append(f"{statistics.median(ratios):.2f}" if ratios else "-")
    rows.append(medians)
    held = all(r["held"] for r in (run, reference) if r)
    advert = reference.get("advert", 0.1) if reference else 0.1
    notes = [f"{label}: {' and '.join(str(n) for n in r['misplaced'])} of {r['vips']} VIPs not on their node "
             "before and after the window" for label, r in (("native_vrrp", run), ("keepalived", reference))
             if r and any(r.get("misplaced", []))]
    return (f"Per node: {count} nodes, {one['groups']} dual-stack groups spread by the placement, "
            f"{one['window']:.0f} s window{'' if held else ' (VIPs NOT where placed)'}; native_vrrp as shipped: "
            "sessions Up / kept, watched fast = peers asked for the fast rate (masters of groups the node "
            "backs up), sent fast = peers that ask it for the fast rate; CPU s / min of its liveness worker, "
            f"the rest of its namespace (the agent) and both; keepalived (plain, {advert:g} s adverts): its "
            "namespace; ratio = native_vrrp / keepalived\n"
            + table(["node", "groups held", "sessions up", "watched fast", "sent fast", "worker CPU", "agent CPU",
                     "native_vrrp", f"keepalived {advert:g} s", "ratio"], rows)
            + "".join(f"\n{note}" for note in notes))


def cpu_report(cpu: dict[str, Any], default: str) -> str:
    """One table per group count; ratio against plain keepalived at 0.1 s (64 groups) or 1 s (255 groups)."""
    tables = []
    for groups in sorted({r.get("groups", 64) for r in cpu.values()}):
        reference_advert = 0.1 if groups <= 64 else 1.0
        reference = cpu.get(cpu_key(PLAIN_KEEPALIVED, reference_advert, groups))
        rows = []
        for key, r in cpu.items():
            if r.get("groups", 64) != groups:
                continue
            backend = key.split("@", 1)[0]
            advert = "default" + (f" ({default})" if default and backend in ("native_vrrp", TIMERS) else "") \
                if r.get("advert", 0.1) is None else f"{r.get('advert', 0.1):g} s"
            ratio = f"{r['cpu_s_per_min'] / reference['cpu_s_per_min']:.2f}" if reference and \
                reference["cpu_s_per_min"] > 0 else "n/a"
            rows.append([LABELS[backend], advert, f"{r['cpu_s_per_min']:.2f}", ratio, f"{r['window']:.0f} s",
                         str(r["routers"]), "yes" if r["held"] else "NO"])
        tables.append(f"CPU, one node holding {groups} dual-stack groups on one interface (utime+stime of "
                      f"everything in its namespace); ratio against plain keepalived at {reference_advert:g} s\n"
                      + table(["backend", "adverts", "CPU s / min", "ratio", "measured", "VIPs", "all held"], rows))
    return "\n\n".join(tables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10, help="trials per cell (default 10)")
    parser.add_argument("--quick", action="store_true",
                        help="3 trials, short stability and CPU windows (a smoke run, not for numbers)")
    parser.add_argument("--backends", help="comma-separated subset of "
                        + ", ".join([*VRRP_BACKENDS, "netlink_static"]))
    parser.add_argument("--sections", default="failover,many,stability,cpu,soak",
                        help="failover,many,stability,cpu,soak,nodes (nodes: not run by default)")
    parser.add_argument("--nodes", default="3,16",
                        help="node counts of the nodes section (default 3,16)")
    parser.add_argument("--nodes-groups", type=int, default=64,
                        help="dual-stack groups of the nodes section (default 64)")
    parser.add_argument("--cpu-groups", default="64,255",
                        help="group counts of the CPU section (default 64,255; 64 runs the 0.1 s comparison)")
    parser.add_argument("--soak", type=float, default=600.0,
                        help="seconds of the false-failover soak (default 600; 30 for a smoke run)")
    parser.add_argument("--soak-loss", type=float, default=2.0, help="percent of fast-path packets dropped")
    parser.add_argument("--many-advert", type=float, default=None,
                        help="advert interval of the many-groups section (default: each backend's default)")
    parser.add_argument("--many-ping", type=float, default=10.0,
                        help="the many section's client ping interval in ms (default 10; the gap is the outage "
                             "plus about one interval)")
    parser.add_argument("--json", type=Path, help="also write every measurement to this file")
    parser.add_argument("--png", type=Path, metavar="DIR",
                        help="also draw failover-replies.png and failover-times.png into DIR (needs matplotlib)")
    parser.add_argument("--from-json", type=Path, metavar="FILE",
                        help="measure nothing: print the tables and draw the pictures of a saved --json run")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    args = parser.parse_args()
    set_prefix(args.prefix)
    if args.from_json:
        data = json.loads(args.from_json.read_text())
        print(report(data, int(data.get("trials", 0))))
        return draw(data, args.png) if args.png else 0
    trials = 3 if args.quick and args.trials == 10 else args.trials
    window = 8.0 if args.quick else 20.0
    cpu_window = 10.0 if args.quick else 30.0
    sections = set(args.sections.split(","))

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)

    data: dict[str, Any] = {"failover": {}, "many": {}, "stability": {}, "cpu": {}, "soak": {}, "nodes": {},
                            "nodes_reference": {}, "notes": [],
                            "trials": trials, "many_advert": args.many_advert,
                            "many_ping": args.many_ping}
    try:
        require_root()
        available = installed_backends()
        wanted = args.backends.split(",") if args.backends else [*VRRP_BACKENDS, "netlink_static"]
        for backend in wanted:
            if backend not in available:
                data["notes"].append(f"{LABELS.get(backend, backend)} skipped: not installed "
                                     f"(installed: {', '.join(sorted(available))})")
        backends = [b for b in wanted if b in available]
        step: Callable[[str], None] = lambda text: log(f"[{time.strftime('%H:%M:%S')}] {text}")  # noqa: E731
        if "failover" in sections:
            for backend in backends:
                for advert in ((None,) if backend == "netlink_static" else (1.0, 0.1)):
                    key = f"{backend}@{'-' if advert is None else f'{advert:g}'}"
                    step(f"failover {LABELS[backend]} advert {advert or '-'}: {trials} trials x 2 events")
                    try:
                        data["failover"][key] = run_failover(backend, advert, trials)
                    except (TrialFailed, VipcoreError) as exc:
                        data["notes"].append(f"{LABELS[backend]} at {advert}: {exc}")
        if "many" in sections:
            for backend in [b for b in VRRP_BACKENDS if b in backends]:
                step(f"many groups {LABELS[backend]}: {trials} hard failures")
                try:
                    data["many"][backend] = run_many(backend, trials, advert=args.many_advert,
                                                     ping=args.many_ping / 1000)
                except (TrialFailed, VipcoreError) as exc:
                    data["notes"].append(f"many groups {LABELS[backend]}: {exc}")
        if "stability" in sections:
            for backend in [b for b in ("native_vrrp", PLAIN_KEEPALIVED) if b in backends]:
                runs = data["stability"][backend] = []
                for advert in STABILITY_LADDER:
                    step(f"stability {LABELS[backend]} at {advert:g} s, {window:.0f} s window")
                    try:
                        run = run_stability(backend, advert, window)
                    except VipcoreError as exc:
                        data["notes"].append(f"stability {LABELS[backend]} at {advert:g} s: {exc}")
                        break
                    runs.append(run)
                    log(f"    {run}")
                    if not (run["settled"] and run["moves"] == 0 and run["alive"]):
                        break
        if "cpu" in sections:
            if "native_vrrp" in backends:
                data["native_default"] = native_default()
            counts = {int(n) for n in args.cpu_groups.split(",") if n}
            for backend, advert, groups in CPU_CASES:
                if backend not in backends or groups not in counts:
                    continue
                step(f"cpu {LABELS[backend]} adverts {advert or 'default'}, {groups} groups, {cpu_window:.0f} s")
                key = cpu_key(backend, advert, groups)
                try:
                    data["cpu"][key] = run_cpu(backend, cpu_window, groups=groups, advert=advert)
                    log(f"    {data['cpu'][key]}")
                except (TrialFailed, VipcoreError) as exc:
                    data["notes"].append(f"cpu {LABELS[backend]} ({groups} groups): {exc}")
        if "soak" in sections:
            for backend in [b for b in FAST_PATH if b in backends]:
                step(f"soak {LABELS[backend]}: {args.soak:.0f} s at {args.soak_loss:g} % fast-path loss")
                try:
                    data["soak"][backend] = run_soak(backend, args.soak, args.soak_loss)
                    log(f"    {data['soak'][backend]}")
                except (TrialFailed, VipcoreError, subprocess.CalledProcessError) as exc:
                    data["notes"].append(f"soak {LABELS[backend]}: {exc}")
        if "nodes" in sections:
            reference, reference_advert = NODES_REFERENCE
            for count in (int(n) for n in args.nodes.split(",") if n):
                for backend, advert, into in (("native_vrrp", None, "nodes"),
                                              (reference, reference_advert, "nodes_reference")):
                    if backend not in backends:
                        continue
                    step(f"nodes {LABELS[backend]}: {count} nodes, {args.nodes_groups} groups, {cpu_window:.0f} s")
                    try:
                        data[into][str(count)] = run_nodes(backend, count, args.nodes_groups, cpu_window, advert)
                        log(f"    {data[into][str(count)]}")
                    except (TrialFailed, VipcoreError) as exc:
                        data["notes"].append(f"nodes {LABELS[backend]} ({count}): {exc}")
    except KeyboardInterrupt:
        Lab(prefix=PREFIX).down()
        log("interrupted; lab torn down; what was measured so far:")
        status = 130
    except VipcoreError as exc:
        Lab(prefix=PREFIX).down()
        log(f"failover bench: error: {exc}")
        status = 2
    else:
        status = 0
    print(report(data, trials))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    if args.png:
        status = draw(data, args.png) or status
    return status


def set_prefix(prefix: str) -> None:
    global PREFIX
    PREFIX = prefix


def draw(data: dict[str, Any], folder: Path) -> int:
    """The pictures of ``data`` into ``folder``; 1 (with one line) if matplotlib is missing."""
    try:
        from plots import failover_figures
    except ImportError as exc:  # matplotlib: the optional 'bench' extra
        log(f"no pictures: {exc} (pip install -e '.[bench]')")
        return 1
    for path in failover_figures(data, folder, LABELS):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
