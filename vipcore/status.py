"""Who holds which VIP: the agent's status document and ``vipcore status``.

The agent serves :func:`agent_status` as JSON on ``/status`` of its metrics
endpoint; ``vipcore status`` fetches it (``--address``, default
``127.0.0.1:9641``; in the lab ``ip netns exec NS vipcore status``) and
prints a table or the JSON. With ``--kubeconfig`` it reads the VipGroup
objects of the cluster instead (their ``status.holders`` per family).

The document (``-o json``)::

    {"node": "node-a", "backend": "native_vrrp", "ready": true,
     "started_at": 1764170000.1, "now": 1764170042.5,
     "routers": [{"group": "<64 hex>-eth0", "short_name": "3f2a1b4c5d6e-eth0",
                  "family": "IPv4", "interface": "eth0", "vrid": 7,
                  "vips": ["198.51.100.120"], "state": "master",
                  "since": 1764170001.2, "reason": "master down: ...",
                  "last_failover_seconds": 0.312,
                  "priority": 200, "preferred_holder": "node-a"}],
     "skipped": [{"group": "...", "reason": "interface 'eth9' does not exist ..."}],
     "unresolved": [{"service": "default/lost", "reason": "..."}]}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from vipcore.cli import render_table
from vipcore.errors import VipcoreError
from vipcore.model import Family, State

if TYPE_CHECKING:
    from vipcore.agent import Agent

DEFAULT_ADDRESS = "127.0.0.1:9641"
STATUS_KEYS = ("node", "backend", "ready", "started_at", "now", "routers", "skipped", "unresolved")
ROUTER_KEYS = (
    "group", "short_name", "family", "interface", "vrid", "vips", "state", "since", "reason",
    "last_failover_seconds", "priority", "preferred_holder",
)


class AgentUnreachableError(VipcoreError):
    """``vipcore status`` could not read the agent's endpoint."""

    exit_code = 2


# -- the document (agent side) -------------------------------------------------------


def agent_status(agent: Agent) -> dict[str, Any]:
    """The ``/status`` document of a running agent (see the module docstring).

    A router the backend has not reported yet appears with state ``init``.
    """
    routers: list[dict[str, Any]] = []
    for name in sorted(agent.memberships):
        membership = agent.memberships[name]
        group = membership.group
        for family in group.families:
            router = agent.routers.get((name, family))
            routers.append({
                "group": name,
                "short_name": group.short_name,
                "family": family.k8s_name,
                "interface": group.interface,
                "vrid": router.vrid if router is not None and router.vrid is not None else group.vrid,
                "vips": [str(ip) for ip in group.vips(family)],
                "state": router.state.value if router is not None else State.INIT.value,
                "since": router.since if router is not None else None,
                "reason": router.reason if router is not None else "not reported by the backend yet",
                "last_failover_seconds": router.last_failover_seconds if router is not None else None,
                "priority": membership.priority,
                "preferred_holder": membership.preferred_holder,
            })
    unresolved = agent.resolution.unresolved if agent.resolution is not None else ()
    return {
        "node": agent.node,
        "backend": agent.config.backend,
        "ready": agent.ready,
        "started_at": agent.started_at,
        "now": time.time(),
        "routers": routers,
        "skipped": [{"group": g, "reason": r} for g, r in sorted(agent.skipped.items())],
        "unresolved": [{"service": u.service, "reason": u.reason} for u in unresolved],
    }


# -- reading it (client side) --------------------------------------------------------


def fetch_status(address: str = DEFAULT_ADDRESS, *, timeout: float = 3.0) -> dict[str, Any]:
    """GET ``/status`` from the agent at ``address``; AgentUnreachableError on any failure."""
    host = address if not address.startswith("http") else address.split("://", 1)[1]
    url = f"http://{host.rstrip('/')}/status"
    hint = "is the agent running here (same network namespace) with metrics enabled?"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise AgentUnreachableError(f"agent at {address} answered {exc.code} {exc.reason} for /status") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise AgentUnreachableError(f"cannot reach the vipcore agent at {address} ({reason}): {hint}") from None
    except (socket.timeout, TimeoutError):
        raise AgentUnreachableError(f"the vipcore agent at {address} did not answer within {timeout:g}s") from None
    except (OSError, ValueError) as exc:
        raise AgentUnreachableError(f"cannot reach the vipcore agent at {address} ({exc}): {hint}") from None
    try:
        document = json.loads(body)
    except ValueError:
        raise AgentUnreachableError(f"{url} did not return JSON: is that a vipcore agent?") from None
    if not isinstance(document, dict) or "routers" not in document:
        raise AgentUnreachableError(f"{url} did not return a vipcore status document")
    return document


def age(seconds: float | None) -> str:
    """``"4s"``, ``"3m12s"``, ``"2h05m"``, ``"3d04h"``; ``"-"`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def duration(seconds: float | None) -> str:
    """A failover duration: ``"42ms"`` below 10 s, ``"12.3s"`` above; ``"-"`` when unknown."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def status_table(document: Mapping[str, Any]) -> str:
    """The agent's status document as text: a header line, routers, then problems."""
    now = float(document.get("now") or time.time())
    ready = "ready" if document.get("ready") else "NOT READY"
    lines = [f"node {document.get('node', '?')}  backend {document.get('backend', '?')}  {ready}"]
    rows = []
    for r in document.get("routers", []):
        state = str(r.get("state", "?"))
        if state != State.MASTER.value and r.get("preferred_holder") and r.get("preferred_holder") != document.get("node"):
            state += f" (preferred: {r['preferred_holder']})"
        since = r.get("since")
        rows.append([
            str(r.get("short_name") or r.get("group", "?")), str(r.get("family", "?")), str(r.get("interface", "?")),
            str(r.get("vrid") if r.get("vrid") is not None else "-"), ",".join(r.get("vips") or []) or "-",
            state, age(now - since if since is not None else None), duration(r.get("last_failover_seconds")),
            str(r.get("reason") or ""),
        ])
    if rows:
        lines.append(render_table(
            ["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "STATE", "SINCE", "LAST FAILOVER", "REASON"], rows))
    else:
        lines.append("no VIP groups on this node")
    if document.get("skipped"):
        lines += ["", render_table(["SKIPPED GROUP", "REASON"],
                                   [[_short(s["group"]), s["reason"]] for s in document["skipped"]])]
    if document.get("unresolved"):
        lines += ["", render_table(["UNRESOLVED SERVICE", "REASON"],
                                   [[u["service"], u["reason"]] for u in document["unresolved"]])]
    return "\n".join(lines)


def _short(group: str) -> str:
    digest, sep, interface = group.partition("-")
    return f"{digest[:12]}-{interface}" if sep else group


# -- from the cluster (--kubeconfig) ------------------------------------------------


def cluster_status(kubeconfig: str, *, context: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """VipGroups of the cluster as ``{"now": ..., "groups": [...]}``; one row per (group, family).

    Reads ``vipcore.io/v1alpha1`` VipGroups (cluster-scoped): ``spec`` for the
    interface, VRID and VIPs, ``status.holders`` (family -> {node, since,
    backend}, and ``lastFailoverSeconds`` when the writer provides it) for who
    holds them. The client comes from :mod:`vipcore.sources.kubernetes`.
    """
    from vipcore.sources.kubernetes import GROUP, VERSION, KubernetesError, api_client

    try:
        client = api_client(kubeconfig, context=context)
    except KubernetesError as exc:
        raise AgentUnreachableError(str(exc)) from None
    try:
        import kubernetes.client

        api = kubernetes.client.CustomObjectsApi(client)
        listing: Any = api.list_cluster_custom_object(GROUP, VERSION, "vipgroups", _request_timeout=timeout)
    except kubernetes.client.ApiException as exc:
        raise AgentUnreachableError(f"cannot list VipGroups with {kubeconfig}: HTTP {exc.status} {exc.reason}") from None
    except Exception as exc:  # urllib3's connection errors have many types
        raise AgentUnreachableError(
            f"cannot reach the API server of {kubeconfig}: {type(exc).__name__}: {_first_line(exc)}") from None
    finally:
        client.close()
    return {"now": time.time(), "groups": cluster_rows(listing.get("items") or [])}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def cluster_rows(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (VipGroup, family) from raw objects; tolerant of missing fields.

    ``spec.vips`` is ``{ipv4: [...], ipv6: [...]}``; ``status.holders`` is
    ``{ipv4: {node, since, backend}, ipv6: {...}}`` (deploy/crds/vipcore.io_vipgroups.yaml).
    """
    rows: list[dict[str, Any]] = []
    for item in items:
        name = str((item.get("metadata") or {}).get("name", "?"))
        spec = item.get("spec") or {}
        holders = (item.get("status") or {}).get("holders") or {}
        vips = spec.get("vips") or {}
        for family in Family:
            key = family.k8s_name.lower()
            if isinstance(vips, Mapping):
                mine = [str(v) for v in vips.get(key) or []]
            else:  # a flat list: split by family
                mine = [str(v) for v in vips if (":" in str(v)) == (family is Family.IPV6)]
            holder = holders.get(key) or holders.get(family.k8s_name) or {}
            if isinstance(holder, str):
                holder = {"node": holder}
            if not mine and not holder:
                continue
            rows.append({
                "group": name, "short_name": _short(name), "family": family.k8s_name,
                "interface": spec.get("interface") or name.partition("-")[2] or "?",
                "vrid": spec.get("vrid"), "vips": mine, "holder": holder.get("node"),
                "since": _timestamp(holder.get("since")),
                "last_failover_seconds": holder.get("lastFailoverSeconds"),
                "backend": holder.get("backend"),
            })
    return rows


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def cluster_table(document: Mapping[str, Any]) -> str:
    now = float(document.get("now") or time.time())
    rows = [
        [r["short_name"], r["family"], str(r["interface"]), str(r["vrid"] if r["vrid"] is not None else "-"),
         ",".join(r["vips"]) or "-", r["holder"] or "none", age(now - r["since"] if r["since"] is not None else None),
         duration(r["last_failover_seconds"])]
        for r in document.get("groups", [])
    ]
    if not rows:
        return "no VipGroups in the cluster"
    return render_table(["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "HOLDER", "SINCE", "LAST FAILOVER"], rows)


# -- the command ---------------------------------------------------------------------


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """Where the agent of this node listens: ``VIPCORE_METRICS`` (the agent's own override), else the default.

    In the DaemonSet the agent binds the host IP through that variable, so
    ``kubectl exec ... vipcore status`` finds it without ``--address``.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("VIPCORE_METRICS", "").strip()
    return value if value and ":" in value else DEFAULT_ADDRESS


def agent_address(args: argparse.Namespace) -> str:
    if args.address:
        return str(args.address)
    if args.config:
        from vipcore.config import load_config

        address = load_config(args.config).metrics
        if not address:
            raise AgentUnreachableError(f"{args.config} disables the agent's endpoint (metrics: ''): "
                                        "vipcore status needs it")
        return address
    return default_address()


def cmd_status(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        document = cluster_status(args.kubeconfig, context=args.context, timeout=args.timeout)
        print(json.dumps(document, indent=2) if args.output == "json" else cluster_table(document))
        return 0
    document = fetch_status(agent_address(args), timeout=args.timeout)
    print(json.dumps(document, indent=2) if args.output == "json" else status_table(document))
    return 0


def register(subparsers: Any) -> None:
    """Add ``vipcore status`` to the CLI (called by :mod:`vipcore.cli`)."""
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
    p.set_defaults(func=cmd_status)


__all__ = [
    "AgentUnreachableError", "DEFAULT_ADDRESS", "agent_status", "age", "cluster_rows", "cluster_status", "default_address",
    "duration", "fetch_status", "register", "status_table",
]
