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
#: A silence shorter than this is ping jitter (one echo late), not an outage: the client pings every
#: 10 ms, and a hard failure costs it 40-60 ms since the liveness worker claims first.
QUIET_GAP = 0.025


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
    return (f"   {family} {result.target}: client outage {result.longest_gap_ms:.0f} ms{state}, "
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


def timeline(replies: list[float], event: float, *, before: float = 0.2, after: float = 0.2,
             until: float | None = None, width: int = 64, label: str = "kill") -> tuple[str, str, float]:
    """The client's replies around ``event``: a strip, its scale in milliseconds, and one slot's seconds.

    Each character is one time slot: ``•`` if at least one reply arrived in it,
    a blank if none did; ``|`` marks the event. The window runs from ``before``
    seconds ahead of the event to ``after`` seconds past the first reply after
    the longest gap that ends after the event (or ``until``, to align several
    strips). The gap is labelled with its length::

        ••••••••••|           312 ms           ••••••••••
        -200 ms   0 (kill)                     +312 ms
    """
    # The outage: the longest silence between two replies that ends after the event.
    times = sorted(replies)
    gaps = [(a, b) for a, b in zip(times, times[1:]) if b > event]
    gap_from, gap_to = max(gaps, key=lambda g: g[1] - g[0]) if gaps else (times[-1] if times else event, None)
    if gap_to is not None and gap_to - gap_from < QUIET_GAP:
        gap_to = None  # no outage worth the name (a graceful hand-over): show a fixed window
        gap_from = event
    start = event - before
    end = until if until is not None else (gap_to if gap_to is not None else event + after) + after
    # At least two echoes (10 ms apart) per slot: a loaded client's jitter must not look like loss.
    slot = max(0.02, (end - start) / width)
    cells = int((end - start) / slot) + 1
    strip = [" "] * cells
    for t in replies:
        if start <= t <= end:
            strip[int((t - start) / slot)] = "•"
    mark = int((event - start) / slot)
    strip[mark] = "|"
    if gap_to is not None:
        text = f" {(gap_to - gap_from) * 1000:.0f} ms "
        first, last = int((gap_from - start) / slot) + 1, int((gap_to - start) / slot) - 1
        blank = [i for i in range(max(first, mark + 1), last + 1) if strip[i] == " "]
        if len(blank) >= len(text) + 2:
            at = blank[0] + (len(blank) - len(text)) // 2
            strip[at:at + len(text)] = list(text)
    scale = [" "] * (cells + 12)

    def put(position: int, words: str) -> None:
        position = max(0, min(position, len(scale) - len(words)))
        if all(c == " " for c in scale[max(0, position - 1):position + len(words) + 1]):
            scale[position:position + len(words)] = list(words)

    # Most important first: a label that would overlap an earlier one is left out.
    put(mark, f"0 ({label})")
    if gap_to is not None:
        # A short gap (node-level liveness: a few slots) ends under the event's own label: say it just after.
        put(max(int((gap_to - start) / slot), mark + len(label) + 5), f"+{(gap_to - event) * 1000:.0f} ms")
    elif not times or times[-1] < event:
        put(mark + len(label) + 5, "no reply since")
    put(0, f"-{before * 1000:.0f} ms")
    return "".join(strip).rstrip(), "".join(scale).rstrip(), slot


def _print_timelines(vips: list[IPAddress], probes: list[Probe], results: list[ProbeResult], event: float,
                     label: str) -> None:
    """One strip per VIP on a common time axis, then the outage line of each."""
    ends = [r.gap_start + r.longest_gap for r in results if r.gap_start is not None and r.longest_gap >= QUIET_GAP]
    until = max(ends, default=event + 0.2) + 0.2
    for index, (vip, probe) in enumerate(zip(vips, probes)):
        strip, scale, slot = timeline(probe.replies(), event, until=until, label=label)
        if index == 0:
            print(f"   client replies around the {label} (• replies, blank: none; one slot = {slot * 1000:.0f} ms):")
        name = f"   IPv{vip.version} "
        print(f"{name}{strip}\n{' ' * len(name)}{scale}")
    for vip, result in zip(vips, results):
        print(outage_line(f"IPv{vip.version}", result))


def _probe_around(lab: Lab, vips: list[IPAddress], action: Any, settled: Any) -> tuple[float, list[ProbeResult],
                                                                                       list[Probe]]:
    """Ping ``vips`` from the client, run ``action()``, wait for ``settled()``; results from the action on."""
    probes = [Probe(lab.client, str(vip)).start() for vip in vips]
    try:
        for probe in probes:
            if not probe.wait_replies(20, timeout=5):
                raise LabError(f"the client gets no replies from {probe.target}")
        at = time.time()
        action()
        settled()
        for probe in probes:
            probe.wait_replies(30, after=time.time(), timeout=3)
        results = [probe.stop(after=at) for probe in probes]
    finally:
        for probe in probes:
            probe.__exit__()
    return at, results, probes


def _demo_failover(lab: Lab, deployment: Deployment) -> int:
    resolution, _ = deployment.state()
    group = max(resolution.groups, key=lambda g: (len(g.families), len(g.nodes), g.name))
    vips = first_vips(group)
    expected = deployment.expected_holders(lab.nodes)
    master = expected[vips[0]]
    survivors = [n for n in lab.nodes if n != master]
    after = deployment.expected_holders(survivors)
    wait = 10 + 5 * (deployment.advert_interval or 1)
    print(f"client pings {', '.join(str(v) for v in vips)} every 10 ms; all answered by {master}")

    # 1. Hard failure.
    print(f"\n1. killing {master}: links down, every process in {lab.ns(master)} frozen, then SIGKILLed")
    moved = False

    def kill() -> None:
        lab.kill(master)
        if deployment.backend == "netlink_static":
            deployment.set_ready(lab, master, False)

    def moved_away() -> None:
        nonlocal moved
        moved = wait_for_holders(lab, {v: after[v] for v in vips}, timeout=wait)

    killed_at, results, probes = _probe_around(lab, vips, kill, moved_away)
    if deployment.backend == "netlink_static":
        print(f"   (netlink_static has no peer protocol: {master} was marked NotReady in the manifests)")
    new = ",".join(lab.holders_of(vips[0])) or "nobody"
    print(f"   now held by {new}" + ("" if moved else " (not the expected node!)"))
    _print_timelines(vips, probes, results, killed_at, "kill")
    ok = moved and all(r.recovered for r in results)

    # 2. The node comes back and takes its groups back.
    print(f"\n2. starting {master} again")
    if deployment.backend == "netlink_static":
        deployment.set_ready(lab, master, True)
    deployment.start(lab, master)
    back = wait_for_holders(lab, {v: master for v in vips}, timeout=wait + SETTLE_TIMEOUT)
    print(f"   {master} holds {', '.join(str(v) for v in vips)} again" + ("" if back else " (it did not!)"))
    ok = ok and back

    # 3. Graceful hand-over (what a rolling update does).
    print(f"\n3. graceful stop of {master} (SIGTERM: it hands its groups over before removing its VIPs)")
    handed = False

    def stop() -> None:
        if deployment.backend == "netlink_static":
            deployment.set_ready(lab, master, False)
            wait_for_holders(lab, {v: after[v] for v in vips}, timeout=wait)
        lab.stop(master)

    def handed_over() -> None:
        nonlocal handed
        handed = wait_for_holders(lab, {v: after[v] for v in vips}, timeout=wait)

    stopped_at, results, probes = _probe_around(lab, vips, stop, handed_over)
    print(f"   now held by {','.join(lab.holders_of(vips[0])) or 'nobody'}")
    _print_timelines(vips, probes, results, stopped_at, "SIGTERM")
    return 0 if ok and handed and all(r.recovered for r in results) else 1


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
    for name, func, text in (("kill", cmd_kill, "hard failure: freeze the node's processes, set its links down, SIGKILL them"),
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
