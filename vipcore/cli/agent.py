"""``vipcore agent``: run the node agent, with its metrics and status endpoint; or ``--dry-run`` it.

The dry run loads the config and the desired state exactly as the agent does,
resolves with the same core functions, and prints what this node would join,
hold and announce. It touches nothing: no backend is activated, no netlink,
no VRRP or ARP socket, no state directory, no root needed (with
``source: kubernetes`` it reads the API once and writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from vipcore.agent.runtime import Agent
from vipcore.agent.telemetry import serve_agent
from vipcore.backend.host import load_hooks
from vipcore.core.errors import UnknownBackendError
from vipcore.core.model import DesiredState, Family, GroupState, Resolution
from vipcore.core.resolve import membership, resolve
from vipcore.core.settings import Config, load_config
from vipcore.ops import logs
from vipcore.ops.tables import render_table
from vipcore.sources.manifests import ManifestSource
from vipcore.ops.statedir import StateDirLock


def cmd_agent(args: argparse.Namespace) -> int:
    overrides = {"node_name": args.node_name, "backend": args.backend, "log_format": args.log_format}
    config = load_config(args.config, overrides=overrides)
    if args.dry_run:
        plan = dry_run(config, desired_state(config))
        print(json.dumps(plan.to_json(), indent=2) if args.output == "json" else plan.text())
        return 0
    logs.configure(config.log_format, config.log_level)
    # Before anything writes there: a second agent on the same state_dir stops here, with one line.
    with StateDirLock(config.state_dir):
        agent = Agent(config)
        asyncio.run(run_agent(agent))
    return 0


async def run_agent(agent: Agent) -> None:
    """The endpoint first (``/readyz`` answers 503 while the agent starts; the metrics observer sees the
    first transitions), then the agent until SIGTERM/SIGINT."""
    endpoint = await serve_agent(agent) if agent.config.metrics else None
    try:
        await agent.run()
    finally:
        if endpoint is not None:
            await endpoint.close()


# -- the dry run ----------------------------------------------------------------------


def interface_present(name: str) -> bool:
    """Whether the interface exists here, read from sysfs (no socket, no netlink)."""
    return Path("/sys/class/net", name).exists()


def desired_state(config: Config) -> DesiredState | GroupState:
    """The agent's first desired state, read without side effects.

    Manifests are read from disk (no event loop: not even its self-pipe); a
    cluster is listed once through the Kubernetes source's read-only cache (no
    heartbeat Lease, no holder records). Heartbeat verdicts are not applied:
    every Ready node counts as alive (``kubectl vipcore why-not`` judges Leases).
    """
    if config.source == "manifests":
        return ManifestSource(config.manifests).load()
    from vipcore.agent.runtime import kubernetes_source

    source = kubernetes_source()(config, record_holders=False)
    cache = source.cache
    cache.start()
    try:
        if not cache.wait_synced(30.0):
            from vipcore.kube import ApiUnavailableError  # the source imported it: installed

            raise ApiUnavailableError("no complete state from the Kubernetes API within 30s "
                                      f"(last error: {cache.connection().last_error or 'none'})")
        if source.groups is not None:  # the VipGroup view: the groups the controller wrote
            source.groups.pools_changed()
            return source.state()
        return cache.state()
    finally:
        cache.stop()


@attrs.frozen
class PlannedGroup:
    """One group of this node as the agent would run it."""

    name: str
    short_name: str
    interface: str
    vrid: int | None
    families: tuple[str, ...]
    priority: int
    rank: int
    members: tuple[str, ...]
    preferred_holder: str
    vips: tuple[str, ...]
    services: tuple[str, ...]


@attrs.frozen
class DryRun:
    """What ``vipcore agent --dry-run`` found: joins, holds, announcements and problems."""

    node: str
    backend: str
    source: str
    drained: bool
    groups: tuple[PlannedGroup, ...]
    skipped: tuple[tuple[str, str], ...]
    unresolved: tuple[tuple[str, str], ...]

    @property
    def held(self) -> tuple[PlannedGroup, ...]:
        """Groups this node would hold while every member is up (it is the preferred holder, not drained)."""
        return tuple(g for g in self.groups if g.preferred_holder == self.node and not self.drained)

    def to_json(self) -> dict[str, Any]:
        held = {g.name for g in self.held}
        return {
            "node": self.node, "backend": self.backend, "source": self.source, "drained": self.drained,
            "join": [attrs.asdict(g) | {"hold": g.name in held} for g in self.groups],
            "announce": [{"interface": g.interface, "vips": list(g.vips)} for g in self.held],
            "skipped": [{"group": name, "reason": reason} for name, reason in self.skipped],
            "unresolved": [{"service": key, "reason": reason} for key, reason in self.unresolved],
        }

    def text(self) -> str:
        lines = [f"dry run: node {self.node}, backend {self.backend}, source {self.source}"
                 + (" (drained: ranks last everywhere, holds nothing)" if self.drained else "")
                 + "; nothing was changed"]
        if self.groups:
            rows = [[g.short_name, g.interface, str(g.vrid if g.vrid is not None else "-"), "/".join(g.families),
                     f"{g.priority} ({g.rank} of {len(g.members)})",
                     "HOLD" if g in self.held else f"backup of {g.preferred_holder}",
                     ",".join(g.vips), ",".join(g.services)] for g in self.groups]
            lines += ["", render_table(["JOIN GROUP", "INTERFACE", "VRID", "FAMILIES", "PRIORITY", "ROLE",
                                        "VIPS", "SERVICES"], rows)]
        else:
            lines += ["", f"no VIP groups for node {self.node}"]
        if self.held:
            lines += ["", "would announce (gratuitous ARP / unsolicited NA):"]
            lines += [f"  {g.interface}: {' '.join(g.vips)}" for g in self.held]
        if self.skipped:
            lines += ["", render_table(["SKIPPED GROUP", "REASON"], [[n[:12] + "-" + n.partition("-")[2], r]
                                                                       for n, r in self.skipped])]
        if self.unresolved:
            lines += ["", render_table(["UNRESOLVED SERVICE", "REASON"], [list(u) for u in self.unresolved])]
        return "\n".join(lines)


def dry_run(config: Config, state: DesiredState | GroupState, *,
            interface_check: Callable[[str], bool] = interface_present) -> DryRun:
    """Resolve ``state`` as the agent would (a :class:`GroupState`'s groups are taken as they are) and say
    what this node would do; the backend must be installed."""
    hooks = load_hooks()
    installed = hooks.backends()
    if config.backend not in installed:
        raise UnknownBackendError(config.backend, list(installed), [f.name for f in hooks.failures])
    unresolved: tuple[tuple[str, str], ...] = ()
    if isinstance(state, GroupState):
        parts = [state.memberships[name] for name in sorted(state.memberships)]
        drained = state.drained
    else:
        source_allocates = config.source == "manifests"
        resolution: Resolution = resolve(state, vrid_policy=config.vrid_policy, allocate=source_allocates)
        me = next((n for n in state.nodes if n.name == config.node_name), None)
        parts = [membership(group, config.node_name, state.nodes) for group in resolution.groups_of(config.node_name)]
        drained = bool(me and me.drained)
        unresolved = tuple((u.service, u.reason) for u in resolution.unresolved)
    groups: list[PlannedGroup] = []
    skipped: list[tuple[str, str]] = []
    for part in parts:
        group = part.group
        if not interface_check(group.interface):
            skipped.append((group.name, f"interface {group.interface!r} does not exist on this host"))
            continue
        names = tuple(m.name for m in part.members)
        groups.append(PlannedGroup(
            name=group.name, short_name=group.short_name, interface=group.interface, vrid=group.vrid,
            families=tuple(f.k8s_name for f in group.families), priority=part.priority,
            rank=names.index(config.node_name) + 1, members=names, preferred_holder=part.preferred_holder,
            vips=tuple(str(ip) for f in Family for ip in group.vips(f)), services=group.services,
        ))
    return DryRun(node=config.node_name, backend=config.backend, source=config.source,
                  drained=drained, groups=tuple(groups), skipped=tuple(skipped), unresolved=unresolved)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("agent", help="run the node agent (or --dry-run: what it would do)")
    p.add_argument("--config", required=True, help="config file (YAML)")
    p.add_argument("--node-name", help="override node_name")
    p.add_argument("--backend", help="override backend")
    p.add_argument("--log-format", choices=("text", "json"), help="override log_format")
    p.add_argument("--dry-run", action="store_true",
                   help="print what this node would join, hold and announce; touch nothing (no root needed)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="with --dry-run")
    p.set_defaults(func=cmd_agent)
