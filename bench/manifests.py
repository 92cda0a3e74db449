"""How long manifests take to read: `vipcore resolve -f` on 1k / 5k / 20k objects, and its parts.

Run: .venv/bin/python bench/manifests.py [--runs N] [--sizes 1000,5000,20000]
Prints median and p95 wall time per size for:

- ``resolve -f``: the whole command in a fresh process (interpreter start, YAML, conversion, resolve);
- ``load``: :func:`vipcore.sources.manifests.load_manifests` in-process (read, decode, YAML, conversion);
- ``yaml (vipcore)``: :func:`vipcore.core.yamldocs.load_all` alone;
- ``yaml C safe_load``: ``yaml.load_all(Loader=yaml.CSafeLoader)``, PyYAML's C loader as is;
- ``yaml Python safe_load``: ``yaml.safe_load_all``, the pure-Python loader main used before;
- with ``--bad``, ``resolve -f`` on the same file with its last Service (three quarters of the objects
  in) made bad (``bad object``: a port out of range; ``bad YAML``: an unclosed flow sequence): the time to
  the error message, which the command must word as the serial read does.

``--compiled`` byte-compiles the vipcore package on the path first, as
installing it does: where ``PYTHONDONTWRITEBYTECODE=1`` is set (this
sandbox) and no ``.pyc`` exists, every fresh ``resolve -f`` otherwise
compiles vipcore's modules from source (about 40 ms). The first line says
which.

Wall time and CPU time (user + system, the child's for ``resolve -f``): on a
shared machine the wall time includes waiting for a CPU, the CPU time does not.

A manifest of N objects holds N/4 Nodes, N/2 Services and N/4 EndpointSlices
(three endpoints each) and one pool, written by ``yaml.safe_dump_all``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipcore.core import yamldocs  # noqa: E402
from vipcore.ops.tables import render_table  # noqa: E402
from vipcore.sources.manifests import load_manifests  # noqa: E402

#: The command as the console script runs it (``vipcore.cli.main:run``; ``main`` in trees older than
#: ``run``), started so that a tree on ``PYTHONPATH`` (an export of another branch, for a side-by-side
#: run) is measured by its own code, not by the entry point the virtualenv's script was made for.
VIPCORE = [sys.executable, "-c", "import importlib, sys; m = importlib.import_module('vipcore.cli.main'); "
           "m.run() if hasattr(m, 'run') else sys.exit(m.main())"]


def write_manifest(path: Path, objects: int) -> Path:
    nodes, services = objects // 4, objects // 2
    slices = objects - nodes - services
    docs: list[Any] = []
    for i in range(nodes):
        docs.append({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": f"node-{i}", "labels": {"kubernetes.io/hostname": f"node-{i}"}},
                     "status": {"conditions": [{"type": "Ready", "status": "True"}],
                                "addresses": [{"type": "InternalIP",
                                               "address": f"2001:db8:1::{i // 65536:x}:{i % 65536:x}"}]}})
    for i in range(services):
        docs.append({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": f"s{i}", "namespace": f"ns{i % 50}", "annotations": {"team": "web"}},
                     "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Cluster" if i % 5 else "Local",
                              "ports": [{"port": 80, "protocol": "TCP"}]}})
    for i in range(slices):
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                     "metadata": {"name": f"s{i}-x", "namespace": f"ns{i % 50}",
                                  "labels": {"kubernetes.io/service-name": f"s{i}"}},
                     "endpoints": [{"nodeName": f"node-{(i + k) % max(1, nodes)}", "conditions": {"ready": True}}
                                   for k in range(3)]})
    docs.append({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                 "spec": {"interface": "eth0", "addresses": ["2001:db8:2::/100"]}})
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump_all(docs, Dumper=dumper))
    return path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _cpu() -> float:
    """CPU seconds of this process and its finished children (on a shared machine, wall time includes waiting)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each run."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), _cpu()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(_cpu() - start_cpu)
    return wall, cpu


def resolve_cli(path: Path, fails: bool = False) -> None:
    result = subprocess.run([*VIPCORE, "resolve", "-f", str(path), "-o", "json"], capture_output=True, text=True)
    if (result.returncode != 0) != fails or (fails and "Traceback" in result.stderr):
        raise SystemExit(f"vipcore resolve {'succeeded' if not result.returncode else 'failed'}: "
                         f"{result.stderr.strip()}")


def write_bad(path: Path, good: Path, bad: str) -> Path:
    """``good`` with its last Service (three quarters of the objects in) made invalid: ``port: 80`` -> ``bad``."""
    text = good.read_text()
    at = text.rindex("port: 80")
    path.write_text(text[:at] + bad + text[at + len("port: 80"):])
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--no-python", action="store_true", help="skip the slow pure-Python loader")
    parser.add_argument("--bad", action="store_true",
                        help="also resolve -f the file with a bad object, and with bad YAML, 3/4 of the objects in")
    parser.add_argument("--compiled", action="store_true",
                        help="byte-compile the vipcore package first, as installing it does (with "
                             "PYTHONDONTWRITEBYTECODE=1 each fresh process otherwise compiles vipcore's "
                             "modules from source)")
    args = parser.parse_args()
    if args.compiled:
        import compileall

        import vipcore

        compileall.compile_dir(str(Path(vipcore.__file__).parent), quiet=1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in (int(s) for s in args.sizes.split(",")):
            path = write_manifest(Path(folder) / f"m{size}.yaml", size)
            text = path.read_text()
            cases: list[tuple[str, Callable[[], object]]] = [
                ("resolve -f", lambda: resolve_cli(path)),
                ("load", lambda: load_manifests([path])),
                ("load, 2 processes", lambda: load_manifests([path], jobs=2)),
                ("yaml (vipcore)", lambda: yamldocs.load_all(text, source=str(path))),
                ("yaml C safe_load", lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader))),
            ]
            if not args.no_python:
                cases.append(("yaml Python safe_load", lambda: list(yaml.safe_load_all(text))))
            if args.bad:
                bad_object = write_bad(Path(folder) / f"m{size}-object.yaml", path, "port: 99999")
                bad_yaml = write_bad(Path(folder) / f"m{size}-yaml.yaml", path, "port: [80")
                cases.append(("resolve -f, bad object", lambda: resolve_cli(bad_object, fails=True)))
                cases.append(("resolve -f, bad YAML", lambda: resolve_cli(bad_yaml, fails=True)))
            for name, fn in cases:
                runs = args.runs if name != "yaml Python safe_load" else max(1, min(args.runs, 3))
                times, cpu = timed(fn, runs)
                rows.append([str(size), f"{path.stat().st_size / 1e6:.1f}", name, str(runs),
                             f"{statistics.median(times):.3f}", f"{percentile(times, 0.95):.3f}",
                             f"{statistics.median(cpu):.3f}", f"{percentile(cpu, 0.95):.3f}"])
                print(f"  {size} {name}: median {statistics.median(times):.3f} s", file=sys.stderr)
    print(f"C loader: {'yes' if yamldocs.C_LOADER else 'no (PyYAML without libyaml)'}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"bytecode {'compiled first' if args.compiled else 'as found'}"
          f"{' (PYTHONDONTWRITEBYTECODE set)' if os.environ.get('PYTHONDONTWRITEBYTECODE') else ''}")
    print(render_table(["OBJECTS", "MB", "WHAT", "RUNS", "MEDIAN S", "P95 S", "CPU MEDIAN S", "CPU P95 S"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
