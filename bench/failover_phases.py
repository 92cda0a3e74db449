"""Where a hard failover's time goes: detect, elect, address added, first announcement (native_vrrp).

Run (root): .venv/bin/python bench/failover_phases.py [--trials N] [--variants native_vrrp,native_vrrp-timers]
[--prefix vcOb] [--json FILE] [--groups N]

A three-node lab per variant (prefix ``vcOb`` or ``--prefix``) with the example
manifests; each trial kills the holder of the "web" group (every process
SIGKILLed, links down), waits for the survivors to take its VIPs, and reads the
new holder's ``/status`` (``vipcore status -o json`` in its namespace): the
router's ``last_failover``, the phases the backend measured (docs/native-vrrp.md,
"Seeing the detector and where a failover's time went"). The killed node is
started again and the lab settles before the next trial. The table gives, per
variant and family, the median and p95 (nearest rank) of each phase and of
their total, in milliseconds. Variants: ``native_vrrp`` (as shipped: node-level
liveness on) and ``native_vrrp-timers`` (liveness off: VRRP's Master_Down_Interval
detects). The client's view of the same failures is ``bench/failover.py``'s.

``--groups N`` measures the many-groups case instead (``bench/failover.py
--sections many``'s lab: N dual-stack groups on 3 nodes plus phantom members
that never run): each trial kills the node holding most VIPs, and every
router that took over on a survivor is a sample, so the table shows what the
last of them waited for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from failover import LABELS, TIMERS, TrialFailed, deployment_for, fast_path, log, p95, wait_liveness_fast  # noqa: E402
from vipcore.core.errors import LabError  # noqa: E402
from vipcore.lab.agents import (  # noqa: E402
    first_vips,
    wait_for_holders,
    write_example_manifests,
    write_scenario_manifests,
)
from vipcore.lab.topology import Lab, require_root  # noqa: E402
from vipcore.ops.status import PHASES  # noqa: E402

PREFIX = "vcOb"
VIPCORE = str(Path(sys.executable).parent / "vipcore")
VARIANTS = ("native_vrrp", TIMERS)


def run_variant(variant: str, trials: int, prefix: str) -> list[dict[str, Any]]:
    """``trials`` hard failures of the web group's holder; per trial and family, the phases (seconds)."""
    samples: list[dict[str, Any]] = []
    with Lab(prefix=prefix) as lab:
        deployment = deployment_for(variant, manifests=write_example_manifests(lab, lab.run_dir / "manifests"))
        deployment.start_all(lab)
        for index in range(trials):
            expected = deployment.expected_holders(lab.nodes)
            if not wait_for_holders(lab, expected, timeout=60, quiet=1.0):
                raise TrialFailed(f"{variant}: VIPs did not settle: {lab.holders()}")
            time.sleep(2.5)  # liveness sessions come up at the slow rate (1 s) first
            resolution, _ = deployment.state()
            web = max(resolution.groups, key=lambda g: (len(g.families), len(g.nodes)))
            vips = first_vips(web)
            holder = expected[vips[0]]
            survivors = [n for n in lab.nodes if n != holder]
            after = deployment.expected_holders(survivors)
            lab.kill(holder)
            if not wait_for_holders(lab, {v: after[v] for v in vips}, timeout=20):
                raise TrialFailed(f"{variant}: VIPs did not move off {holder}: {lab.holders()}")
            new = after[vips[0]]
            time.sleep(0.2)  # the other family's router may still be finishing its own takeover
            document = json.loads(lab.exec(new, [VIPCORE, "status", "-o", "json"]).stdout)
            for router in document["routers"]:
                if router["group"] != web.name or router["state"] != "master":
                    continue
                phases = router.get("last_failover")
                if phases is None:
                    log(f"    trial {index + 1} {router['family']}: no breakdown ({router['reason']})")
                    continue
                samples.append({"family": router["family"], "reason": router["reason"], **phases})
                log(f"    trial {index + 1} {router['family']}: " + ", ".join(
                    f"{name} {phases[f'{name}_seconds'] * 1000:.1f}" for name, _ in PHASES
                    if phases.get(f"{name}_seconds") is not None) + f" ms, total {phases['total_seconds'] * 1000:.1f}")
            deployment.start(lab, holder)
    return samples


def masters(lab: Lab, nodes: list[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Every master router on ``nodes``, by (node, group, family), as ``/status`` shows it."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for node in nodes:
        for router in json.loads(lab.exec(node, [VIPCORE, "status", "-o", "json"]).stdout)["routers"]:
            if router["state"] == "master":
                found[node, router["group"], router["family"]] = router
    return found


def run_many(variant: str, trials: int, prefix: str, groups: int) -> list[dict[str, Any]]:
    """``trials`` hard failures of the node holding most of ``groups`` groups; every takeover's phases."""
    samples: list[dict[str, Any]] = []
    with Lab(prefix=prefix) as lab:
        deployment = deployment_for(variant, manifests=write_scenario_manifests(lab, lab.run_dir / "manifests", groups))
        deployment.start_all(lab)
        for index in range(trials):
            expected = deployment.expected_holders(lab.nodes)
            if not wait_for_holders(lab, expected, timeout=60, quiet=1.0):
                raise TrialFailed(f"{variant}: VIPs did not settle")
            counts: dict[str, int] = {}
            for node in expected.values():
                counts[node] = counts.get(node, 0) + 1
            victim = max(counts, key=lambda n: counts[n])
            survivors = [n for n in lab.nodes if n != victim]
            if not fast_path(variant):
                time.sleep(2.5)  # VRRP's timers alone: a steady state
            elif not wait_liveness_fast(lab, survivors, victim):
                raise TrialFailed(f"{variant}: liveness sessions to {victim} not Up at the fast rate within 15 s")
            before = masters(lab, survivors)
            lab.kill(victim)
            if not wait_for_holders(lab, deployment.expected_holders(survivors), timeout=20):
                raise TrialFailed(f"{variant}: VIPs did not move off {victim}")
            time.sleep(0.5)
            taken = {key: router for key, router in masters(lab, survivors).items() if key not in before}
            totals = []
            for router in taken.values():
                phases = router.get("last_failover")
                if phases is not None:
                    samples.append({"family": router["family"], "reason": router["reason"], **phases})
                    totals.append(phases["total_seconds"] * 1000)
            log(f"    trial {index + 1}: {victim} died, {len(taken)} routers took over; total ms min "
                f"{min(totals, default=0):.0f}, median {statistics.median(totals) if totals else 0:.0f}, "
                f"max {max(totals, default=0):.0f}")
            deployment.start(lab, victim)
    return samples


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * 1000:.1f} / {p95(values) * 1000:.1f}"


def report(data: dict[str, list[dict[str, Any]]]) -> str:
    headers = ["VARIANT", "FAMILY", "N", *(title.lower() for _, title in PHASES), "total"]
    rows = []
    for variant, samples in data.items():
        for family in sorted({s["family"] for s in samples}):
            mine = [s for s in samples if s["family"] == family]
            rows.append([LABELS.get(variant, variant), family, str(len(mine)),
                         *(cell([s[f"{name}_seconds"] for s in mine if s.get(f"{name}_seconds") is not None])
                           for name, _ in PHASES),
                         cell([s["total_seconds"] for s in mine if s.get("total_seconds") is not None])])
    lines = ["Failover phases after a hard failure, ms (median / p95)", "",
             "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="hard failures per variant (default 10)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--prefix", default=PREFIX, help=f"lab namespace prefix (default {PREFIX})")
    parser.add_argument("--json", type=Path, help="also write every sample to this file")
    parser.add_argument("--groups", type=int, help="the many-groups lab with this many groups (e.g. 64)")
    args = parser.parse_args()
    require_root()
    data: dict[str, list[dict[str, Any]]] = {}
    for variant in args.variants.split(","):
        log(f"{variant}: {args.trials} hard failures")
        try:
            data[variant] = (run_many(variant, args.trials, args.prefix, args.groups) if args.groups
                             else run_variant(variant, args.trials, args.prefix))
        except (TrialFailed, LabError) as exc:
            log(f"  {variant}: FAILED ({exc})")
            data[variant] = []
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
