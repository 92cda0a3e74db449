"""``kubectl vipcore``: the kubectl plugin (an executable named ``kubectl-vipcore``).

Three read-only questions an operator asks of a cluster::

    kubectl vipcore status                  # groups, holders, VIPs; per-node health
    kubectl vipcore explain [-n NS] SERVICE # pool, group, VRID, who should hold it and who does, and why
    kubectl vipcore why-not NODE [--service SVC]   # why a node is not in a group

Everything is computed from one snapshot of the cluster (Nodes, Services,
EndpointSlices, VipPools/Eips, VipGroups and heartbeat Leases, listed once
through :class:`vipcore.kube.KubernetesSource`) with the same core functions
the agents and the controller run: :func:`vipcore.core.resolve.resolve`,
``choose_pool``, ``node_eligible``, ``membership`` (placement). Nothing is
written. kubectl passes no flags of its own to a plugin, so ``--kubeconfig``
and ``--context`` are the plugin's (``$KUBECONFIG`` works as for kubectl).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

from vipcore.core.errors import VipcoreError
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, Family, Node, Resolution, Service, TrafficPolicy, VipGroup
from vipcore.core.resolve import choose_pool, membership, node_eligible, resolve
from vipcore.core.settings import Config, load_config
from vipcore.kube import ALL_KINDS, ApiUnavailableError, KubernetesSource, api_client, lease_kind
from vipcore.kube.heartbeat import DEFAULT_NAMESPACE, HeartbeatConfig, lease_name, with_heartbeats
from vipcore.ops.status import age, breakdown_text, cluster_rows, duration, holder_phases
from vipcore.ops.tables import render_table

Obj = Mapping[str, Any]


class NotFoundError(VipcoreError):
    """The Service or Node named on the command line does not exist."""

    exit_code = 3


# -- the snapshot -----------------------------------------------------------------------


@attrs.frozen
class Heartbeat:
    """What a node's heartbeat Lease says, judged on this machine's clock."""

    renewed: float | None
    duration: float

    @property
    def alive(self) -> bool:
        return self.renewed is not None and time.time() - self.renewed < self.duration


@attrs.frozen
class Snapshot:
    """One consistent read of the cluster and what the core makes of it."""

    state: DesiredState  # heartbeat verdicts applied (as agents and the controller see it)
    raw_nodes: tuple[Node, ...]  # before heartbeat verdicts
    resolution: Resolution
    services: Mapping[str, Obj]  # every Service, by namespace/name
    vipgroups: Mapping[str, Obj]
    heartbeats: Mapping[str, Heartbeat] | None  # None: heartbeats not in use
    config: Config

    def node(self, name: str) -> Node | None:
        return next((n for n in self.state.nodes if n.name == name), None)

    def holders(self, group: str) -> dict[str, dict[str, Any]]:
        """family key ("ipv4"/"ipv6") -> holder record, from the VipGroup's status."""
        obj = self.vipgroups.get(group) or {}
        return {k: v for k, v in ((obj.get("status") or {}).get("holders") or {}).items() if isinstance(v, dict)}


def _timestamp(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp() if text else None
    except ValueError:
        return None


def read_cluster(config: Config, *, kubeconfig: str | None, context: str | None, timeout: float) -> Snapshot:
    """List everything once and resolve it; a VipcoreError if the API cannot be read."""
    heartbeat = HeartbeatConfig.from_config(config.kubernetes)
    namespace = heartbeat.namespace if heartbeat.enabled else str(config.kubernetes.get("namespace")
                                                                 or DEFAULT_NAMESPACE)
    section = config.controller
    classes = section.get("classes") or [LOAD_BALANCER_CLASS]
    client = api_client(kubeconfig, context=context)
    source = KubernetesSource(client, kinds=ALL_KINDS + (lease_kind(namespace),),
                              classes=frozenset([classes] if isinstance(classes, str) else classes),
                              default_class=bool(section.get("default_class", False)),
                              openelb=bool(section.get("openelb", True)), request_timeout=timeout)
    source.start()
    try:
        # Every kind is listed in its own thread; allow for a loaded machine beyond one request's timeout.
        if not source.wait_synced(3 * timeout):
            last = (source.connection().last_error or "no answer").splitlines()[0][:160]
            raise ApiUnavailableError(f"could not list vipcore's objects within {3 * timeout:g}s ({last})")
        state = source.state()
        services = source.objects("services")
        vipgroups = source.objects("vipgroups")
        leases = [lease for lease in source.objects("leases").values()
                  if str(lease["metadata"].get("name", "")).startswith(lease_name(""))]
    finally:
        source.stop(2.0)
        client.close()
    heartbeats: dict[str, Heartbeat] | None = None
    # The config is shared by agents and controller: heartbeats are in use when
    # it says so, or (no --config given) when agents renew Leases.
    if heartbeat.enabled or leases:
        heartbeats = {}
        for lease in leases:
            spec = lease.get("spec") or {}
            node = str(lease["metadata"]["name"])[len(lease_name("")):]
            renewed = _timestamp(spec.get("renewTime")) if spec.get("holderIdentity") == node else None
            heartbeats[node] = Heartbeat(renewed, float(spec.get("leaseDurationSeconds") or heartbeat.duration))
        alive = frozenset(n for n, hb in heartbeats.items() if hb.alive)
        judged = with_heartbeats(state, alive)
    else:
        judged = state
    resolution = resolve(judged, vrid_policy=config.vrid_policy, allocate=False)
    return Snapshot(state=judged, raw_nodes=state.nodes, resolution=resolution, services=services,
                    vipgroups=vipgroups, heartbeats=heartbeats, config=config)


# -- why a node is not eligible -------------------------------------------------------


def node_problems(snapshot: Snapshot, name: str) -> list[str]:
    """Why ``name`` can hold no VIP at all (empty if it can)."""
    raw = next((n for n in snapshot.raw_nodes if n.name == name), None)
    if raw is None:
        return [f"there is no Node {name!r} (or it failed validation)"]
    problems = []
    if not raw.ready:
        problems.append("the Node is NotReady (condition Ready is not True)")
    if snapshot.heartbeats is not None:
        hb = snapshot.heartbeats.get(name)
        if hb is None:
            problems.append(f"no heartbeat: no Lease {lease_name(name)} (is the vipcore agent running there?)")
        elif hb.renewed is None:
            problems.append(f"no heartbeat: Lease {lease_name(name)} was released (the agent stopped)")
        elif not hb.alive:
            problems.append(f"no heartbeat: Lease {lease_name(name)} last renewed {age(time.time() - hb.renewed)} "
                            f"ago (expires after {hb.duration:g}s)")
    if raw.excluded:
        problems.append("labelled node.kubernetes.io/exclude-from-external-load-balancers")
    return problems


def pool_problems(node: Node, pool: Any) -> list[str]:
    """Why ``node`` is not eligible for ``pool`` beyond node-wide problems (the selector)."""
    return [f"does not match pool {pool.name!r}'s nodeSelector {k}={v}"
            for k, v in sorted(pool.node_selector.items()) if node.labels.get(k) != v]


def why_not(snapshot: Snapshot, name: str, service_key: str | None = None) -> list[str]:
    """Lines that explain the node's part in every group (or in the Service's group)."""
    state = snapshot.state
    node = snapshot.node(name)
    general = node_problems(snapshot, name)
    services = [s for s in state.services if service_key in (None, s.key)]
    if service_key is not None and not services:
        raise NotFoundError(f"Service {service_key} is not a LoadBalancer Service vipcore serves")
    lines = [f"node {name}: " + ("; ".join(general) if general else "Ready, not excluded"
                                 + (", heartbeat alive" if snapshot.heartbeats is not None else ""))]
    if node is not None and node.drained:
        lines.append(f"node {name}: drained (label vipcore.io/drain=true): stays a member, ranks last, holds nothing")
    pools = {p.name: p for p in state.pools}
    unresolved = {u.service: u.reason for u in snapshot.resolution.unresolved}
    for service in services:
        group = next((g for g in snapshot.resolution.groups if service.key in g.services), None)
        if group is not None and name in group.nodes:
            part = membership(group, name, state.nodes)
            rank = [m.name for m in part.members].index(name) + 1
            lines.append(f"{service.key}: member of {group.short_name} (VRID {group.vrid}), priority "
                         f"{part.priority}, rank {rank} of {len(part.members)}"
                         + (", the preferred holder" if rank == 1 and not (node and node.drained) else ""))
            continue
        pool = choose_pool(service, pools)
        if isinstance(pool, str):
            lines.append(f"{service.key}: no pool ({pool})")
            continue
        if service.key in unresolved and group is None:
            lines.append(f"{service.key}: has no group at all: {unresolved[service.key]}")
            continue
        if general:
            lines.append(f"{service.key}: not a member (the node is not eligible: above)")
            continue
        reasons = []
        if node is not None:
            reasons += pool_problems(node, pool)
            if not reasons and not node_eligible(node, pool):
                reasons.append(f"not eligible for pool {pool.name!r}")
        if not reasons and service.traffic_policy is TrafficPolicy.LOCAL:
            reasons.append("externalTrafficPolicy Local and no ready endpoint of the Service on this node")
        lines.append(f"{service.key}: not a member" + (": " + "; ".join(reasons) if reasons else ""))
    return lines


# -- explain -------------------------------------------------------------------------


def _service_key(text: str, namespace: str) -> str:
    return text if "/" in text else f"{namespace}/{text}"


def explain(snapshot: Snapshot, key: str) -> list[str]:
    """Lines that say how vipcore serves the Service, or why it does not."""
    obj = snapshot.services.get(key)
    if obj is None:
        raise NotFoundError(f"there is no Service {key}")
    spec = obj.get("spec") or {}
    lines = [f"Service {key}"]
    if spec.get("type") != "LoadBalancer":
        return lines + [f"  not served: type {spec.get('type', 'ClusterIP')}, not LoadBalancer"]
    service: Service | None = next((s for s in snapshot.state.services if s.key == key), None)
    if service is None:
        cls = spec.get("loadBalancerClass")
        return lines + [f"  not served by vipcore: loadBalancerClass {cls!r}" if cls else
                        "  not served by vipcore: no loadBalancerClass, and vipcore is not the default "
                        "implementation (controller.default_class)"]
    ingress = [i.get("ip") for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]
    pool = choose_pool(service, {p.name: p for p in snapshot.state.pools})
    if isinstance(pool, str):
        lines.append(f"  pool:    none: {pool}")
    else:
        how = "annotation vipcore.io/pool" if service.pool else ("the default pool" if pool.default
                                                                  else "the only pool")
        lines.append(f"  pool:    {pool.name} ({how}), interface {pool.interface}")
    lines.append(f"  address: {', '.join(str(i) for i in ingress) or 'none yet'} (status.loadBalancer.ingress)")
    group = next((g for g in snapshot.resolution.groups if key in g.services), None)
    reason = next((u.reason for u in snapshot.resolution.unresolved if u.service == key), None)
    if group is None:
        lines.append(f"  group:   none: {reason or 'no address allocated yet (is the controller running?)'}")
        return lines
    lines += _group_lines(snapshot, group)
    if not isinstance(pool, str):
        outside = sorted(n.name for n in snapshot.state.nodes if n.name not in group.nodes)
        if outside:
            lines.append("  not members:")
            for name in outside:
                node = snapshot.node(name)
                reasons = node_problems(snapshot, name) or (pool_problems(node, pool) if node else [])
                if not reasons and service.traffic_policy is TrafficPolicy.LOCAL:
                    reasons = ["externalTrafficPolicy Local: no ready endpoint on this node"]
                lines.append(f"    {name}: {'; '.join(reasons) or 'not eligible'}")
    return lines


def _group_lines(snapshot: Snapshot, group: VipGroup) -> list[str]:
    order = membership(group, group.nodes[0], snapshot.state.nodes).members
    drained = {m.name for m in order if (node := snapshot.node(m.name)) is not None and node.drained}
    should = next((m.name for m in order if m.name not in drained), None)
    lines = [f"  group:   {group.name}",
             f"           interface {group.interface}, VRID {group.vrid}, VIPs "
             + ", ".join(str(ip) for f in Family for ip in group.vips(f)),
             f"           members in placement order: "
             + ", ".join(f"{m.name} ({m.priority})" for m in order),
             f"  should hold: {should or 'nobody (every member is drained)'} (first in placement order"
             + (", drained nodes last)" if drained else ")")]
    holders = snapshot.holders(group.name)
    if group.name not in snapshot.vipgroups:
        lines.append("  holds now: unknown (no VipGroup object yet: the controller has not written it)")
    for family in group.families:
        record = holders.get(family.k8s_name.lower())
        if record is None:
            lines.append(f"  holds now ({family.k8s_name}): nobody recorded (no agent reported MASTER)")
            continue
        since = _timestamp(record.get("since"))
        note = "" if record.get("node") == should else (
            f" — not the preferred holder: {should} may be down or not yet preempting" if should else "")
        lines.append(f"  holds now ({family.k8s_name}): {record.get('node')} since "
                     f"{age(time.time() - since) if since else '?'} (backend {record.get('backend', '?')})"
                     + (f", last failover {duration(record['lastFailoverSeconds'])}"
                        + breakdown_text(holder_phases(record.get("lastFailover")))
                        if record.get("lastFailoverSeconds") is not None else "") + note)
    return lines


# -- status --------------------------------------------------------------------------


def status_document(snapshot: Snapshot) -> dict[str, Any]:
    """``kubectl vipcore status -o json``."""
    rows = cluster_rows(list(snapshot.vipgroups.values()))
    members: dict[str, int] = {}
    held: dict[str, int] = {}
    for group in snapshot.resolution.groups:
        for name in group.nodes:
            members[name] = members.get(name, 0) + 1
    for row in rows:
        if row["holder"]:
            held[row["holder"]] = held.get(row["holder"], 0) + 1
    nodes = []
    for raw in snapshot.raw_nodes:
        hb = snapshot.heartbeats.get(raw.name) if snapshot.heartbeats is not None else None
        nodes.append({
            "node": raw.name, "ready": raw.ready, "excluded": raw.excluded, "drained": raw.drained,
            "heartbeat": None if snapshot.heartbeats is None else (
                "missing" if hb is None else "released" if hb.renewed is None else
                ("alive" if hb.alive else "expired")),
            "heartbeat_age": None if hb is None or hb.renewed is None else round(time.time() - hb.renewed, 1),
            "groups": members.get(raw.name, 0), "holds": held.get(raw.name, 0),
            "problems": node_problems(snapshot, raw.name),
        })
    return {"now": time.time(), "groups": rows, "nodes": nodes,
            "unresolved": [{"service": u.service, "reason": u.reason} for u in snapshot.resolution.unresolved]}


def status_text(document: Mapping[str, Any]) -> str:
    from vipcore.ops.status import cluster_table

    parts = [cluster_table(document)]
    rows = []
    for n in document["nodes"]:
        heartbeat = n["heartbeat"] or "-"
        if n["heartbeat_age"] is not None:
            heartbeat += f" ({age(n['heartbeat_age'])} ago)"
        flags = [flag for flag in ("excluded", "drained") if n[flag]]
        rows.append([n["node"], "Ready" if n["ready"] else "NotReady", heartbeat, ",".join(flags) or "-",
                     str(n["groups"]), str(n["holds"])])
    parts.append(render_table(["NODE", "STATUS", "HEARTBEAT", "FLAGS", "GROUPS", "HOLDS"], rows))
    if document["unresolved"]:
        parts.append(render_table(["UNRESOLVED SERVICE", "REASON"],
                                  [[u["service"], u["reason"]] for u in document["unresolved"]]))
    return "\n\n".join(parts)


# -- the command ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl vipcore", description="Inspect vipcore in a cluster: who holds which VIP, and why.")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument("--config", metavar="FILE",
                        help="vipcore's config (VRID ranges, classes, heartbeat); default: the built-in defaults")
    parser.add_argument("--request-timeout", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("-v", "--verbose", action="store_true", help="log the API client's retries to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("status", help="groups, holders and VIPs; per-node health")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p = sub.add_parser("explain", help="how vipcore serves a Service, or why it does not")
    p.add_argument("service", metavar="SERVICE", help="NAME or NAMESPACE/NAME")
    p.add_argument("-n", "--namespace", default="default")
    p = sub.add_parser("why-not", help="why a node is not in a Service's group (or in any)")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--service", metavar="SERVICE", help="only this Service (NAME or NAMESPACE/NAME)")
    p.add_argument("-n", "--namespace", default="default")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``kubectl-vipcore`` console script."""
    args = build_parser().parse_args(argv)
    # The watch threads log every retry; a one-shot read reports only its outcome.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(message)s")
    try:
        config = load_config(args.config, overrides={"source": "kubernetes"}) if args.config \
            else Config(source="kubernetes")
        snapshot = read_cluster(config, kubeconfig=args.kubeconfig, context=args.context,
                                timeout=args.request_timeout)
        if args.command == "status":
            document = status_document(snapshot)
            print(json.dumps(document, indent=2) if args.output == "json" else status_text(document))
        elif args.command == "explain":
            print("\n".join(explain(snapshot, _service_key(args.service, args.namespace))))
        else:
            key = _service_key(args.service, args.namespace) if args.service else None
            print("\n".join(why_not(snapshot, args.node, key)))
    except VipcoreError as exc:
        print(f"kubectl-vipcore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
