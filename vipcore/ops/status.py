"""Who holds which VIP: reading and rendering the agent's status document and the cluster's VipGroups.

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
                  "last_failover": {"detect_seconds": 0.051, "elect_seconds": 0.0,
                                    "address_seconds": 0.0012, "announce_seconds": 0.0004,
                                    "total_seconds": 0.0526},
                  "priority": 200, "preferred_holder": "node-a"}],
     "skipped": [{"group": "...", "reason": "interface 'eth9' does not exist ..."}],
     "unresolved": [{"service": "default/lost", "reason": "..."}],
     "sections": {"native_vrrp": [{"title": "liveness", "columns": ["INTERFACE", "PEER", ...],
                                   "rows": [["eth0", "198.51.100.12", ...]], "note": "..."}]},
     "sections_skipped": [{"plugin": "acme", "error": "plugin 'acme': vipcore_status_sections ..."}]}

``last_failover`` is the breakdown of the router's last failover into MASTER
after its master failed (None when the backend does not measure it):
``detect`` (master last heard -> failure detected), ``elect`` (-> decision),
``address`` (-> VIPs in the kernel), ``announce`` (-> first gratuitous ARP /
NA). ``sections`` are the tables plugins add through the
``vipcore_status_sections`` hook, by plugin (docs/hooks.md).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from vipcore.ops.http import DEFAULT_ADDRESS
from vipcore.ops.tables import render_table
from vipcore.core.errors import VipcoreError
from vipcore.core.model import Family, State


STATUS_KEYS = ("node", "backend", "ready", "started_at", "now", "routers", "skipped", "unresolved", "sections",
               "sections_skipped")
ROUTER_KEYS = (
    "group", "short_name", "family", "interface", "vrid", "vips", "state", "since", "reason",
    "last_failover_seconds", "last_failover", "priority", "preferred_holder",
)
#: The phases of ``last_failover``, in order, with their column names.
PHASES = (("detect", "DETECT"), ("elect", "ELECT"), ("address", "ADDRESS ADDED"), ("announce", "FIRST ANNOUNCEMENT"))


class AgentUnreachableError(VipcoreError):
    """``vipcore status`` could not read the agent's endpoint."""

    exit_code = 2


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
    lines += breakdown_table(document.get("routers", []))
    if document.get("skipped"):
        lines += ["", render_table(["SKIPPED GROUP", "REASON"],
                                   [[_short(s["group"]), s["reason"]] for s in document["skipped"]])]
    if document.get("unresolved"):
        lines += ["", render_table(["UNRESOLVED SERVICE", "REASON"],
                                   [[u["service"], u["reason"]] for u in document["unresolved"]])]
    lines += sections_text(document)
    return "\n".join(lines)


def breakdown_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ``LAST FAILOVER OF`` table (a blank line, then the table) of the routers or groups whose last
    failover has a breakdown (``last_failover``: ``detect_seconds``, …, ``total_seconds``); ``[]`` if none."""
    breakdown = [r for r in rows if isinstance(r.get("last_failover"), Mapping)]
    if not breakdown:
        return []
    return ["", render_table(
        ["LAST FAILOVER OF", "FAMILY", *(title for _, title in PHASES), "TOTAL"],
        [[str(r.get("short_name") or r.get("group", "?")), str(r.get("family", "?")),
          *(phase_duration(r["last_failover"].get(f"{name}_seconds")) for name, _ in PHASES),
          phase_duration(r["last_failover"].get("total_seconds"))] for r in breakdown])]


def phase_duration(seconds: float | None) -> str:
    """A failover phase: ``"0.4ms"`` below 10 ms (address work takes about one), else as :func:`duration`."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.1f}ms" if seconds < 0.01 else duration(seconds)


def breakdown_text(phases: Any) -> str:
    """`` (detect 51ms, elect 0ms, address 1.2ms, announce 0.4ms)``, or ``""`` without a breakdown."""
    if not isinstance(phases, Mapping):
        return ""
    parts = [f"{name} {phase_duration(phases.get(f'{name}_seconds'))}" for name, _ in PHASES
             if phases.get(f"{name}_seconds") is not None]
    return f" ({', '.join(parts)})" if parts else ""


def sections_text(document: Mapping[str, Any]) -> list[str]:
    """The plugins' tables (``sections``), each under a ``plugin: title`` line, then the skipped ones."""
    lines: list[str] = []
    sections = document.get("sections")
    for plugin, tables in sorted(sections.items() if isinstance(sections, Mapping) else []):
        for table in tables if isinstance(tables, list) else []:
            columns = [str(c) for c in table.get("columns") or []]
            rows = [[_cell(c) for c in row] for row in table.get("rows") or []]
            lines += ["", f"{plugin}: {table.get('title', '')}"]
            lines.append(render_table(columns, rows) if rows else "(empty)")
            if table.get("note"):
                lines.append(f"  ({table['note']})")
    for skipped in document.get("sections_skipped") or []:
        lines += ["", f"section skipped: {skipped.get('error')}"]
    return lines


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(group: str) -> str:
    digest, sep, interface = group.partition("-")
    return f"{digest[:12]}-{interface}" if sep else group


# -- from the cluster (--kubeconfig) ------------------------------------------------


def cluster_rows(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (VipGroup, family) from raw objects; tolerant of missing fields.

    ``spec.vips`` is ``{ipv4: [...], ipv6: [...]}``; ``status.holders`` is
    ``{ipv4: {node, since, backend, lastFailoverSeconds, lastFailover}, ipv6: {...}}``
    (deploy/crds/vipcore.io_vipgroups.yaml).
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
                "last_failover": holder_phases(holder.get("lastFailover")),
                "backend": holder.get("backend"),
            })
    return rows


def holder_phases(recorded: Any) -> dict[str, float] | None:
    """A holder's ``lastFailover`` (``detectSeconds``, …, ``totalSeconds``) in the shape of a router's
    ``last_failover`` (``detect_seconds``, …); None when absent or not numbers."""
    if not isinstance(recorded, Mapping):
        return None
    out = {f"{name}_seconds": float(recorded[f"{name}Seconds"]) for name in (*(n for n, _ in PHASES), "total")
           if isinstance(recorded.get(f"{name}Seconds"), (int, float))
           and not isinstance(recorded.get(f"{name}Seconds"), bool)}
    return out or None


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
    table = render_table(["GROUP", "FAMILY", "INTERFACE", "VRID", "VIPS", "HOLDER", "SINCE", "LAST FAILOVER"], rows)
    return "\n".join([table, *breakdown_table(document.get("groups", []))])


# -- the live view (--watch) ------------------------------------------------------------

#: ANSI: cursor home, clear to the end of the line, clear to the end of the screen.
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"


def transitions(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """One line per router (or cluster holder) that changed between two documents, oldest first.

    Works on an agent's status document (``routers``: state, since, reason,
    last failover) and on the cluster document (``groups``: holder).
    """
    if previous is None:
        return []
    lines: list[tuple[float, str]] = []
    if "routers" in current:
        before = {(r.get("group"), r.get("family")): r for r in previous.get("routers", [])}
        for r in current.get("routers", []):
            old = before.get((r.get("group"), r.get("family")))
            if old is not None and old.get("state") == r.get("state") and old.get("since") == r.get("since"):
                continue
            at = float(r.get("since") or current.get("now") or time.time())
            failover = r.get("last_failover_seconds")
            took = ""
            if old is None:
                change = f"joined as {r.get('state')}"
            elif old.get("state") != r.get("state"):
                change = f"{old.get('state')} -> {r.get('state')}"
                if r.get("state") == State.MASTER.value and failover is not None:
                    took = f" in {duration(failover)}{breakdown_text(r.get('last_failover'))}"
            elif failover != old.get("last_failover_seconds") and r.get("state") != State.MASTER.value:
                # Several transitions between two polls: it was master in between.
                change = f"{old.get('state')} -> master -> {r.get('state')}"
                took = f" (master after {duration(failover)})"
            else:
                change = f"{r.get('state')} again"
            lines.append((at, f"{_clock(at)}  {r.get('short_name') or _short(str(r.get('group')))} "
                              f"{r.get('family')}  {change}{took}  {r.get('reason') or ''}".rstrip()))
        gone = set(before) - {(r.get("group"), r.get("family")) for r in current.get("routers", [])}
        now = float(current.get("now") or time.time())
        lines += [(now, f"{_clock(now)}  {_short(str(g))} {f}  left") for g, f in sorted(gone, key=str)]
    else:
        before = {(g.get("group"), g.get("family")): g for g in previous.get("groups", [])}
        for g in current.get("groups", []):
            old = before.get((g.get("group"), g.get("family")))
            if old is None or old.get("holder") == g.get("holder"):
                continue
            at = float(g.get("since") or current.get("now") or time.time())
            took = f" in {duration(g['last_failover_seconds'])}" if g.get("last_failover_seconds") is not None else ""
            lines.append((at, f"{_clock(at)}  {g.get('short_name')} {g.get('family')}  holder "
                              f"{old.get('holder') or 'none'} -> {g.get('holder') or 'none'}{took}"))
    return [text for _, text in sorted(lines)]


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def watch_frame(title: str, body: str, events: Sequence[str], *, error: str | None = None) -> str:
    """A full screen of the live view: a title line, the table, the latest transitions.

    Plain ANSI (cursor home, clear line, clear below) so it redraws in place over SSH
    without curses; every line is cleared to its end so a shorter frame leaves nothing behind.
    """
    lines = [title, ""]
    lines += [f"agent unreachable: {error} (retrying)"] if error else body.splitlines()
    lines += ["", "TRANSITIONS (newest last)" if events else "no transition seen yet"]
    lines += [f"  {event}" for event in events]
    return HOME + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW


# -- the command ---------------------------------------------------------------------


def default_address(environ: Mapping[str, str] | None = None) -> str:
    """Where the agent of this node listens: ``VIPCORE_METRICS`` (the agent's own override), else the default.

    In the DaemonSet the agent binds the host IP through that variable, so
    ``kubectl exec ... vipcore status`` finds it without ``--address``.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("VIPCORE_METRICS", "").strip()
    return value if value and ":" in value else DEFAULT_ADDRESS


__all__ = [
    "AgentUnreachableError", "DEFAULT_ADDRESS", "age", "breakdown_text", "cluster_rows", "cluster_table",
    "default_address", "duration", "fetch_status", "phase_duration", "sections_text", "status_table", "transitions", "watch_frame",
]
