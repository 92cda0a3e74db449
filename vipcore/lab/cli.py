"""``vipcore lab``: bring the namespace lab up, break it, watch the VIPs move, tear it down.

Every subcommand is a separate invocation: the lab's state (prefix, nodes,
backend, PIDs) lives in ``/run/vipcore-lab/<prefix>/lab.json``. ``down``
needs none of it: it removes whatever carries the prefix.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from vipcore.core.errors import LabError, VipcoreError
from vipcore.lab.agents import ADVERTISING, Deployment, first_vips, wait_for_holders, wait_until
from vipcore.lab.probe import Probe, ProbeResult
from vipcore.lab.topology import DEFAULT_NODES, DEFAULT_PREFIX, IPAddress, Lab, require_root

DEFAULT_BACKEND = "native_vrrp"
SETTLE_TIMEOUT = 30.0


def node_names(count: int) -> tuple[str, ...]:
    """``node-a``, ``node-b``, ... (the example manifests' names for the first three)."""
    if not 1 <= count <= 26:
        raise LabError(f"--nodes must be 1-26, got {count}")
    return tuple(f"node-{chr(ord('a') + i)}" for i in range(count))


@contextmanager
def teardown_on_signal() -> Iterator[None]:
    """SIGTERM (like Ctrl-C) unwinds the stack, so ``finally`` blocks tear the lab down."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _deployment(lab: Lab) -> Deployment:
    data = lab.meta.get("deployment")
    if not data:
        raise LabError(f"lab {lab.prefix!r} has no deployment recorded; run 'vipcore lab up' again")
    return Deployment.from_json(data)


def bring_up(prefix: str, backend: str, nodes: tuple[str, ...], *, advert: float | None,
             manifests: Path | None) -> tuple[Lab, Deployment]:
    """Create the topology, write manifests, start every node. Torn down if anything fails."""
    from vipcore.lab.agents import PLAIN_KEEPALIVED, write_example_manifests

    _check_backend(backend)
    lab = Lab(prefix=prefix, nodes=nodes)
    lab.up()
    try:
        directory = manifests.resolve() if manifests else write_example_manifests(lab, lab.run_dir / "manifests")
        if advert is None and backend == PLAIN_KEEPALIVED:
            advert = 0.1
        deployment = Deployment(backend=backend, manifests=directory, advert_interval=advert)
        deployment.state()  # invalid manifests fail here, with the manifest's own message
        lab.meta["deployment"] = deployment.to_json()
        lab.save()
        deployment.start_all(lab)
    except BaseException:
        lab.down()
        raise
    return lab, deployment


def _check_backend(backend: str) -> None:
    from vipcore.lab.agents import PLAIN_KEEPALIVED, keepalived_command

    if backend == PLAIN_KEEPALIVED:
        keepalived_command()
        return
    from vipcore.core.errors import UnknownBackendError
    from vipcore.backend.host import load_hooks

    hooks = load_hooks()
    installed = hooks.backends()
    if backend not in installed:
        raise UnknownBackendError(backend, [*installed, PLAIN_KEEPALIVED], [f.name for f in hooks.failures])


def settle(lab: Lab, deployment: Deployment, timeout: float = SETTLE_TIMEOUT) -> bool:
    up = [n for n in lab.nodes if lab.alive(n)]
    return wait_for_holders(lab, deployment.expected_holders(up), timeout=timeout, quiet=0.3)


# -- output ---------------------------------------------------------------------------


def status_text(lab: Lab, deployment: Deployment) -> str:
    from vipcore.ops.tables import render_table

    rows = []
    for node in lab.nodes:
        records = lab.records(node)
        running = [r for r in records if r.alive()]
        process = ", ".join(f"{r.name} {r.pid}" for r in running) or ("exited" if records else "stopped")
        held = sorted(lab.held(node), key=lambda ip: (ip.version, int(ip)))
        rows.append([node, lab.ns(node), process, "up" if lab.link_up(node) else "down",
                     " ".join(str(ip) for ip in held) or "-"])
    text = f"lab {lab.prefix}: backend {deployment.backend}" + (
        f", advert interval {deployment.advert_interval} s" if deployment.advert_interval else "") + "\n"
    text += render_table(["NODE", "NAMESPACE", "PROCESS", "LINKS", "HOLDS"], rows) + "\n\n"
    holders = lab.holders()
    expected = deployment.expected_holders([n for n in lab.nodes if lab.alive(n)])
    vip_rows = []
    for vip in sorted(set(holders) | set(expected), key=lambda ip: (ip.version, int(ip))):
        group = deployment.group_of(vip)
        now = holders.get(vip, [])
        note = "SPLIT BRAIN" if len(now) > 1 else ("unheld" if not now else "")
        vip_rows.append([str(vip), group.short_name, ",".join(now) or "-", expected.get(vip, "-"), note])
    text += render_table(["VIP", "GROUP", "HELD BY", "EXPECTED", ""], vip_rows)
    return text


def outage_line(family: str, result: ProbeResult) -> str:
    state = "" if result.recovered else " (no reply since)"
    return (f"  {family} {result.target}: client outage {result.longest_gap_ms:.0f} ms{state}, "
            f"{result.lost} of {result.sent} echoes lost")


# -- subcommands ------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    require_root()
    with teardown_on_signal():
        lab, deployment = bring_up(args.prefix, args.backend, node_names(args.nodes), advert=args.advert,
                                   manifests=args.manifests)
        ok = settle(lab, deployment)
    print(status_text(lab, deployment))
    if not ok:
        print(f"warning: the VIPs did not settle on their expected holders within {SETTLE_TIMEOUT:.0f} s; "
              f"logs in {lab.run_dir}", file=sys.stderr)
        return 1
    print(f"\nlogs and configs: {lab.run_dir}; tear down with: vipcore lab down"
          + (f" --prefix {lab.prefix}" if lab.prefix != DEFAULT_PREFIX else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    require_root()
    lab = Lab.load(args.prefix)
    print(status_text(lab, _deployment(lab)))
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    require_root()
    lab = Lab.load(args.prefix)
    deployment = _deployment(lab)
    lab.kill(args.node)
    note = ""
    if deployment.backend == "netlink_static" and deployment.manifests.is_relative_to(lab.run_dir):
        deployment.set_ready(lab, args.node, False)
        note = " and marked NotReady in the manifests (netlink_static fails over on the node list)"
    print(f"{args.node}: every process SIGKILLed, links down{note}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    require_root()
    lab = Lab.load(args.prefix)
    lab.stop(args.node)
    print(f"{args.node}: stopped (SIGTERM)")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    require_root()
    lab = Lab.load(args.prefix)
    deployment = _deployment(lab)
    if deployment.backend == "netlink_static" and deployment.manifests.is_relative_to(lab.run_dir):
        deployment.set_ready(lab, args.node, True)
    record = deployment.start(lab, args.node)
    print(f"{args.node}: started {record.name} (pid {record.pid}), log {record.log}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    require_root()
    Lab(prefix=args.prefix).down()
    print(f"lab {args.prefix}: down (namespaces {args.prefix}-* and {Lab(prefix=args.prefix).run_dir} removed)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    require_root()
    lab: Lab | None = None
    with teardown_on_signal():
        try:
            print(f"bringing the lab up ({len(DEFAULT_NODES)} nodes, backend {args.backend}) ...")
            lab, deployment = bring_up(args.prefix, args.backend, DEFAULT_NODES, advert=args.advert, manifests=None)
            if not settle(lab, deployment):
                raise LabError(f"the VIPs did not settle within {SETTLE_TIMEOUT:.0f} s; see the logs in {lab.run_dir}")
            print(status_text(lab, deployment), "\n")
            return _demo_failover(lab, deployment)
        finally:
            if lab is not None:
                lab.down()
                print(f"lab {lab.prefix} torn down")


def _demo_failover(lab: Lab, deployment: Deployment) -> int:
    resolution, _ = deployment.state()
    group = max(resolution.groups, key=lambda g: (len(g.families), len(g.nodes), g.name))
    vips = first_vips(group)
    expected = deployment.expected_holders(lab.nodes)
    master = expected[vips[0]]
    probes = [Probe(lab.client, str(vip)).start() for vip in vips]
    try:
        for probe in probes:
            if not probe.wait_replies(20, timeout=5):
                raise LabError(f"the client gets no replies from {probe.target}")
        print(f"client pings {', '.join(str(v) for v in vips)} every 10 ms; all answered by {master}")
        print(f"killing {master}: SIGKILL to every process in {lab.ns(master)}, links down")
        killed_at = time.time()
        lab.kill(master)
        if deployment.backend == "netlink_static":
            deployment.set_ready(lab, master, False)
            print(f"netlink_static has no peer protocol: marking {master} NotReady in the manifests")
        survivors = [n for n in lab.nodes if n != master]
        after = deployment.expected_holders(survivors)
        moved = wait_for_holders(lab, {v: after[v] for v in vips}, timeout=10 + 5 * (deployment.advert_interval or 1))
        for probe in probes:
            probe.wait_replies(30, after=time.time(), timeout=3)
        results = [probe.stop(after=killed_at) for probe in probes]
    finally:
        for probe in probes:
            probe.__exit__()
    new = ",".join(lab.holders_of(vips[0])) or "nobody"
    print(f"now held by {new}" + ("" if moved else " (not the expected node!)"))
    for vip, result in zip(vips, results):
        print(outage_line(f"IPv{vip.version}", result))
    return 0 if moved and all(r.recovered for r in results) else 1


def register(subparsers: Any) -> None:
    """Add ``vipcore lab`` and its subcommands (called by :mod:`vipcore.cli.main`)."""
    lab = subparsers.add_parser(
        "lab", help="a throw-away namespace lab: nodes, a client, agents; break it and watch (root)",
        description="Network namespaces on this machine (documentation addresses only) with one agent per node.")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, metavar="SUBCOMMAND")

    def add(name: str, func: Any, help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = lab_sub.add_parser(name, help=help, description=help)
        p.add_argument("--prefix", default=DEFAULT_PREFIX,
                       help=f"namespace name prefix; several labs can coexist (default {DEFAULT_PREFIX})")
        p.set_defaults(func=func)
        return p

    def backend_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", default=DEFAULT_BACKEND,
                       help=f"any installed backend, or plain-keepalived (default {DEFAULT_BACKEND})")
        p.add_argument("--advert", type=float, metavar="SECONDS",
                       help=f"VRRP advert interval for {', '.join(ADVERTISING)} (default: the backend's)")

    p = add("up", cmd_up, "create the namespaces and start one agent per node (recreates an existing lab)")
    backend_options(p)
    p.add_argument("--nodes", type=int, default=len(DEFAULT_NODES), help="number of nodes (default 3)")
    p.add_argument("--manifests", type=Path, help="manifest folder (default: the examples, for the lab's nodes)")
    add("status", cmd_status, "show each node's process and links, and who holds which VIP")
    for name, func, text in (("kill", cmd_kill, "hard failure: SIGKILL the node's processes and set its links down"),
                             ("stop", cmd_stop, "graceful stop: SIGTERM the node's agent and wait"),
                             ("start", cmd_start, "bring the node's links up and start its agent again")):
        add(name, func, text).add_argument("node")
    add("down", cmd_down, "stop everything and delete the lab's namespaces (safe to run any time)")
    p = add("demo", cmd_demo, "up, ping the VIPs from the client, kill their holder, print the outage, down")
    backend_options(p)


def main(argv: list[str] | None = None) -> int:
    """``python -m vipcore.lab.cli``: the same subcommands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="vipcore")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except VipcoreError as exc:
        print(f"vipcore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
