"""``vipcore status``: who holds which VIP, from this node's agent or (``--kubeconfig``) the cluster."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from typing import Any

from vipcore.core.errors import MissingExtraError
from vipcore.core.settings import load_config
from vipcore.ops.http import DEFAULT_ADDRESS
from vipcore.ops.status import (
    AgentUnreachableError,
    cluster_rows,
    cluster_table,
    default_address,
    fetch_status,
    status_table,
    transitions,
    watch_frame,
)


def cluster_status(kubeconfig: str, *, context: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """VipGroups of the cluster as ``{"now": ..., "groups": [...]}``; one row per (group, family).

    Reads ``vipcore.io/v1alpha1`` VipGroups (cluster-scoped): ``spec`` for the
    interface, VRID and VIPs, ``status.holders`` (family -> {node, since,
    backend}, and ``lastFailoverSeconds`` when the writer provides it) for who
    holds them. The client comes from :mod:`vipcore.kube`.
    """
    try:
        from vipcore.kube import VIP_GROUPS, KubernetesError, api_client, list_objects
    except ImportError as exc:  # a node with the ``agent`` extra alone reads its own agent, not the cluster
        missing = MissingExtraError.of("vipcore status --kubeconfig", exc, "kubernetes")
        if missing is None:
            raise
        raise missing from None
    try:
        client = api_client(kubeconfig, context=context)
    except KubernetesError as exc:
        raise AgentUnreachableError(str(exc)) from None
    try:
        items = list_objects(client, VIP_GROUPS, timeout=timeout)
    except KubernetesError as exc:
        if exc.status is None:
            raise AgentUnreachableError(f"cannot reach the API server of {kubeconfig}: {exc}") from None
        raise AgentUnreachableError(f"cannot list VipGroups with {kubeconfig}: {exc}") from None
    finally:
        client.close()
    return {"now": time.time(), "groups": cluster_rows(items)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def agent_address(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address)
    if args.config:
        address = load_config(args.config).metrics
        if not address:
            raise AgentUnreachableError(f"{args.config} disables the agent's endpoint (metrics: ''): "
                                        "vipcore status needs it")
        return address
    return default_address()


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return watch(args)
    if args.kubeconfig:
        document = cluster_status(args.kubeconfig, context=args.context, timeout=args.timeout)
        print(json.dumps(document, indent=2) if args.output == "json" else cluster_table(document))
        return 0
    document = fetch_status(agent_address(args), timeout=args.timeout)
    print(json.dumps(document, indent=2) if args.output == "json" else status_table(document))
    return 0


def watch(args: argparse.Namespace) -> int:
    """Redraw the status in place whenever it changes, with the transitions seen meanwhile; until Ctrl-C.

    Polls every ``--interval`` seconds; an unreachable agent is shown and retried
    (an agent restart is exactly when one watches).
    """
    out = sys.stdout
    address = None if args.kubeconfig else agent_address(args)
    source = f"cluster {args.kubeconfig}" if args.kubeconfig else f"agent {address}"
    events: deque[str] = deque(maxlen=args.events)
    previous: dict[str, Any] | None = None
    shown = ""
    try:
        while True:
            error = None
            try:
                if args.kubeconfig:
                    document = cluster_status(args.kubeconfig, context=args.context, timeout=args.timeout)
                    body = cluster_table(document)
                else:
                    assert address is not None
                    document = fetch_status(address, timeout=args.timeout)
                    body = status_table(document)
                events.extend(transitions(previous, document))
                previous = document
            except AgentUnreachableError as exc:
                error, body = str(exc), ""
            title = f"vipcore status --watch: {source}, every {args.interval:g}s  (Ctrl-C to quit)"
            frame = watch_frame(title, body, list(events), error=error)
            if frame != shown:
                out.write(frame)
                out.flush()
                shown = frame
            time.sleep(args.interval)
    except KeyboardInterrupt:
        out.write("\n")
    return 0


def register(subparsers: Any) -> None:
    """Add ``vipcore status`` to the CLI."""
    p = subparsers.add_parser(
        "status", help="who holds which VIP: this node's agent, or the cluster with --kubeconfig",
        description="Read the local agent's /status endpoint (or the cluster's VipGroups) and print "
                    "each group's interface, VRID, VIPs, state, since when and the last failover time.",
    )
    p.add_argument("--address", metavar="HOST:PORT",
                   help=f"the agent's endpoint (default: $VIPCORE_METRICS, else {DEFAULT_ADDRESS})")
    p.add_argument("--config", metavar="FILE", help="take the address from the agent's config file (metrics.address)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the agent (default 3)")
    p.add_argument("--kubeconfig", metavar="FILE", help="read VipGroups from the cluster instead of the local agent")
    p.add_argument("--context", help="kubeconfig context (with --kubeconfig)")
    p.add_argument("-w", "--watch", action="store_true",
                   help="live view: redraw in place on every change, list transitions as they happen (Ctrl-C quits)")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="--watch poll interval (default 1)")
    p.add_argument("--events", type=int, default=10, metavar="N", help="--watch: transitions to keep (default 10)")
    p.set_defaults(func=cmd_status)
