"""What runs on the lab's nodes: vipcore agents, or plain keepalived for comparison.

A :class:`Deployment` says which backend the nodes run, with which advert
interval, on which manifests. For a vipcore backend it writes one agent
config per node (``<run_dir>/<node>/agent.yaml``) and runs ``vipcore agent``
in the node's namespace. For :data:`PLAIN_KEEPALIVED` it renders a
keepalived configuration equivalent to what the agents would do — the same
groups, VRIDs, VIPs and priorities, resolved by the same core code — and runs
keepalived directly: the baseline the benchmark compares against.
"""

from __future__ import annotations

import ipaddress
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from vipcore.core.errors import LabError
from vipcore.lab.topology import NETWORKS, IPAddress, Lab, ProcessRecord
from vipcore.core.model import Family, Resolution, VipGroup, VridPolicy
from vipcore.core.resolve import membership, resolve
from vipcore.sources.manifests import load_manifests

#: The lab-only "backend" that runs keepalived without vipcore.
PLAIN_KEEPALIVED = "plain-keepalived"
#: Backends whose config section takes ``advert_interval``.
ADVERTISING = ("native_vrrp", "keepalived", PLAIN_KEEPALIVED)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "manifests"
#: The bench's pool: room for 150 IPv4 and 256 IPv6 VIPs on eth0.
SCENARIO_POOL_V4 = "198.51.100.100-198.51.100.249"
SCENARIO_POOL_V6 = "2001:db8:100::100-2001:db8:100::1ff"
#: More IPv4 VIPs for scenarios beyond 150 groups (up to 255, every VRID of the interface): held on eth0
#: as /32s, not in its subnet (the CPU bench needs no replies from them).
SCENARIO_POOL_V4_MORE = "203.0.113.100-203.0.113.249"
#: The most groups a scenario can have: one VRID per group on one interface.
SCENARIO_MAX_GROUPS = 255


def vipcore_command() -> Path:
    """The ``vipcore`` script of the running interpreter's environment."""
    path = Path(sys.executable).parent / "vipcore"
    if not path.exists():
        raise LabError(f"{path} does not exist: install vipcore into this environment (make setup)")
    return path


def keepalived_command() -> str:
    path = shutil.which("keepalived")
    if path is None:
        raise LabError("keepalived is not installed: apt-get install keepalived")
    return path


# -- manifests --------------------------------------------------------------------


def node_manifest(lab: Lab, node: str, *, host: int | None = None, ready: bool = True) -> dict[str, Any]:
    """A Node object with the node's lab addresses (``host`` overrides, for nodes outside the lab)."""
    addresses = []
    for _, interface, v4, v6 in NETWORKS:
        part = host if host is not None else lab.addressing(node).host
        addresses += [{"type": "InternalIP", "address": f"{v4}{part}"},
                      {"type": "InternalIP", "address": f"{v6}{part}"}]
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "addresses": [*addresses, {"type": "Hostname", "address": node}]},
    }


def write_example_manifests(lab: Lab, directory: Path, *, not_ready: Iterable[str] = ()) -> Path:
    """The example pools and Services with Node objects for the lab's nodes.

    For the default nodes ``nodes.yaml`` says what ``examples/manifests/nodes.yaml``
    says; ``not_ready`` marks nodes NotReady (a control-plane failover).
    """
    if not EXAMPLES.is_dir():
        raise LabError(f"example manifests not found at {EXAMPLES}; pass a manifests folder")
    directory.mkdir(parents=True, exist_ok=True)
    for source in sorted(EXAMPLES.glob("*.yaml")):
        if source.name != "nodes.yaml":
            shutil.copyfile(source, directory / source.name)
    write_nodes(lab, directory, not_ready=not_ready)
    return directory


def write_nodes(lab: Lab, directory: Path, *, not_ready: Iterable[str] = (),
                phantoms: Iterable[str] = ()) -> None:
    """(Re)write ``nodes.yaml`` atomically: agents watching the folder see one change."""
    down = set(not_ready)
    docs = [node_manifest(lab, n, ready=n not in down) for n in lab.nodes]
    docs += [node_manifest(lab, n, host=60 + i, ready=n not in down) for i, n in enumerate(phantoms)]
    tmp = directory / ".nodes.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(directory / "nodes.yaml")


def write_scenario_manifests(lab: Lab, directory: Path, groups: int, *, dual_stack: bool = True) -> Path:
    """``groups`` VIP groups on eth0 that every lab node belongs to.

    A group is a set of nodes, so each group adds a different subset of
    "phantom" nodes (in the manifests, never running) to the lab's nodes:
    one Local-policy Service per group, its endpoints on those nodes.
    """
    phantom_count = max(0, (groups - 1).bit_length())
    phantoms = [f"phantom-{i}" for i in range(phantom_count)]
    if groups > SCENARIO_MAX_GROUPS:
        raise LabError(f"one interface has room for {SCENARIO_MAX_GROUPS} groups (VRIDs)")
    directory.mkdir(parents=True, exist_ok=True)
    write_nodes(lab, directory, phantoms=phantoms)
    docs: list[dict[str, Any]] = [{
        "apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "bench"},
        "spec": {"default": True, "interface": "eth0",
                 "addresses": [SCENARIO_POOL_V4, *([SCENARIO_POOL_V4_MORE] if groups > 150 else []),
                               *([SCENARIO_POOL_V6] if dual_stack else [])]},
    }]
    for index in range(groups):
        extra = [p for bit, p in enumerate(phantoms) if index >> bit & 1]
        name = f"svc-{index:03d}"
        docs.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "externalTrafficPolicy": "Local",
                     "ipFamilyPolicy": "PreferDualStack" if dual_stack else "SingleStack",
                     "ipFamilies": ["IPv4", "IPv6"] if dual_stack else ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": "bench", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [f"10.244.{i}.{index % 250 + 1}"], "nodeName": n, "conditions": {"ready": True}}
                          for i, n in enumerate([*lab.nodes, *extra])],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        })
    (directory / "services.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return directory


# -- plain keepalived -------------------------------------------------------------------


def _interval(seconds: float) -> str:
    return f"{seconds:.2f}".rstrip("0").rstrip(".")


def render_plain_keepalived(resolution: Resolution, nodes: Mapping[str, Any], node: str, *,
                            advert_interval: float, preempt: bool = True,
                            bfd: Mapping[str, Any] | None = None) -> str:
    """keepalived.conf for ``node``: one instance per (group, family), as vipcore would run it.

    VRRPv3, the core's VRIDs and priorities, the same VIPs, a sync group per
    dual-stack group (the vipcore backends keep a group's families together),
    keepalived's default GARP behaviour, never ``vrrp_strict``.

    ``bfd`` (keepalived's own fast detection, RFC 5880): one ``bfd_instance``
    per other node (``min_rx``/``min_tx`` ms, ``multiplier``; keepalived's
    defaults 10/10/5) and a ``track_bfd`` on each in every instance with
    ``weight`` (keepalived: a negative weight is subtracted while the session
    is down; ``reverse`` adds it instead).
    """
    lines = ["# Rendered by the vipcore lab: plain keepalived, equivalent to the agents' groups.",
             "global_defs {", f"    router_id {node}", "    vrrp_version 3", "}", ""]
    sessions: list[str] = []
    if bfd is not None:
        own = next(a for a in nodes[node].addresses if a.version == 4)
        for peer in sorted(nodes):
            addresses = [a for a in nodes[peer].addresses if a.version == 4]
            if peer == node or not addresses or not any(peer in g.nodes for g in resolution.groups_of(node)):
                continue
            name = f"bfd_{peer}".replace("-", "_")
            sessions.append(name)
            lines += [f"bfd_instance {name} {{", f"    neighbor_ip {addresses[0]}", f"    source_ip {own}",
                      f"    min_rx {bfd.get('min_rx', 10)}", f"    min_tx {bfd.get('min_tx', 10)}",
                      f"    multiplier {bfd.get('multiplier', 5)}", "}", ""]
    for group in resolution.groups_of(node):
        member = membership(group, node, nodes)
        instances = []
        for family in group.families:
            name = f"{group.short_name}_{family.value}"
            instances.append(name)
            lines += [f"# {group.name}", f"vrrp_instance {name} {{", "    state BACKUP",
                      f"    interface {group.interface}", f"    virtual_router_id {group.vrid}",
                      f"    priority {member.priority}", f"    advert_int {_interval(advert_interval)}"]
            if not preempt:
                lines.append("    nopreempt")
            if sessions and bfd is not None:
                weight = f"weight {bfd.get('weight', -100)}" + (" reverse" if bfd.get("reverse") else "")
                lines += ["    track_bfd {", *[f"        {name} {weight}" for name in sessions
                                                if name != f"bfd_{node}".replace("-", "_")], "    }"]
            lines.append("    virtual_ipaddress {")
            lines += [f"        {vip}/{vip.max_prefixlen} dev {group.interface}" for vip in group.vips(family)]
            lines += ["    }", "}", ""]
        if len(instances) > 1:
            lines += [f"vrrp_sync_group {group.short_name} {{", "    group {",
                      *[f"        {i}" for i in instances], "    }", "}", ""]
    return "\n".join(lines)


# -- the deployment ---------------------------------------------------------------------


@attrs.frozen
class Deployment:
    """Which backend the lab's nodes run, how, and on which manifests."""

    backend: str
    manifests: Path
    #: Seconds between VRRP adverts (None: the backend's default).
    advert_interval: float | None = None
    #: Extra keys for the backend's config section.
    settings: Mapping[str, Any] = attrs.field(factory=dict)
    metrics: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "manifests": str(self.manifests), "advert_interval": self.advert_interval,
                "settings": dict(self.settings), "metrics": self.metrics}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Deployment":
        return cls(backend=str(data["backend"]), manifests=Path(data["manifests"]),
                   advert_interval=data.get("advert_interval"), settings=dict(data.get("settings") or {}),
                   metrics=bool(data.get("metrics", True)))

    # -- what the nodes should do -------------------------------------------------

    def state(self) -> tuple[Resolution, dict[str, Any]]:
        """The resolution every node computes from the manifests, and the Node objects."""
        desired = load_manifests([self.manifests])
        return resolve(desired, vrid_policy=VridPolicy()), {n.name: n for n in desired.nodes}

    def expected_holders(self, up: Iterable[str]) -> dict[IPAddress, str]:
        """Each VIP and the node that should hold it when only ``up`` nodes run: the best-ranked one."""
        running = set(up)
        resolution, nodes = self.state()
        expected: dict[IPAddress, str] = {}
        for group in resolution.groups:
            order = [m.name for m in membership(group, group.nodes[0], nodes).members if m.name in running]
            if order:
                for family in Family:
                    for vip in group.vips(family):
                        expected[vip] = order[0]
        return expected

    def group_of(self, vip: IPAddress) -> VipGroup:
        resolution, _ = self.state()
        for group in resolution.groups:
            if vip in group.vips(Family.of(vip)):
                return group
        raise LabError(f"no group holds {vip}")

    def set_ready(self, lab: Lab, node: str, ready: bool) -> None:
        """Mark ``node`` Ready or NotReady in the lab's ``nodes.yaml`` (what a control plane would notice).

        netlink_static has no peer protocol: this is how its VIPs move.
        """
        path = self.manifests / "nodes.yaml"
        if not path.exists() or not self.manifests.is_relative_to(lab.run_dir):
            raise LabError(f"{path} is not a manifest file the lab wrote; edit your manifests yourself")
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "Node" and doc.get("metadata", {}).get("name") == node:
                doc.setdefault("status", {})["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
        tmp = path.with_name(".nodes.yaml.tmp")
        tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        tmp.replace(path)

    # -- running ------------------------------------------------------------------

    def node_dir(self, lab: Lab, node: str) -> Path:
        return lab.run_dir / node

    def start(self, lab: Lab, node: str) -> ProcessRecord:
        """Start the node's agent (or keepalived); its links come up first (after a ``kill``)."""
        if lab.alive(node):
            raise LabError(f"{node} is already running; stop or kill it first")
        lab.links_up(node)
        if self.backend == PLAIN_KEEPALIVED:
            return self._start_keepalived(lab, node)
        return self._start_agent(lab, node)

    def start_all(self, lab: Lab) -> None:
        for node in lab.nodes:
            self.start(lab, node)

    def agent_config(self, lab: Lab, node: str) -> dict[str, Any]:
        section = dict(self.settings)
        if self.advert_interval is not None and self.backend in ADVERTISING:
            section.setdefault("advert_interval", self.advert_interval)
        return {
            "backend": self.backend, "node_name": node, "source": "manifests",
            "manifests": [str(self.manifests)], "state_dir": str(self.node_dir(lab, node) / "state"),
            "log_format": "text", "metrics": {"address": "127.0.0.1:9641" if self.metrics else ""},
            self.backend: section,
        }

    def _start_agent(self, lab: Lab, node: str) -> ProcessRecord:
        directory = self.node_dir(lab, node)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "agent.yaml"
        config.write_text(yaml.safe_dump(self.agent_config(lab, node), sort_keys=False))
        return lab.spawn(node, "agent", [str(vipcore_command()), "agent", "--config", str(config)],
                         log=directory / "agent.log", cwd=directory)

    def _start_keepalived(self, lab: Lab, node: str) -> ProcessRecord:
        directory = self.node_dir(lab, node)
        directory.mkdir(parents=True, exist_ok=True)
        resolution, nodes = self.state()
        conf = directory / "keepalived.conf"
        conf.write_text(render_plain_keepalived(resolution, nodes, node,
                                                advert_interval=self.advert_interval or 1.0,
                                                preempt=bool(self.settings.get("preempt", True)),
                                                bfd=self.settings.get("bfd")))
        # Own pid files: a second keepalived on the machine would otherwise exit 0 at once. Nothing
        # runs in the node's namespace now, so old ones are stale (a killed VRRP child may still be
        # an unreaped zombie, which keepalived takes for a running daemon).
        for stale in ("keepalived.pid", "vrrp.pid", "bfd.pid", "checkers.pid"):
            (directory / stale).unlink(missing_ok=True)
        argv = [keepalived_command(), "-n", "-l", "-D", "-f", str(conf),
                "-p", str(directory / "keepalived.pid"), "-r", str(directory / "vrrp.pid")]
        if self.settings.get("bfd") is not None:
            # The BFD child runs next to the VRRP one (-P would leave it out), with its own pid files.
            argv += ["-b", str(directory / "bfd.pid"), "-c", str(directory / "checkers.pid")]
        else:
            argv.append("-P")
        return lab.spawn(node, "keepalived", argv, log=directory / "keepalived.log", cwd=directory)


def wait_for_holders(lab: Lab, expected: Mapping[IPAddress, str], *, timeout: float, quiet: float = 0.0,
                     interval: float = 0.02) -> bool:
    """Wait until each VIP is held by its expected node and by no other, for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while True:
        ok = _holders_match(lab, expected)
        now = time.monotonic()
        if ok:
            since = since if since is not None else now
            if now - since >= quiet:
                return True
        else:
            since = None
        if now >= deadline:
            return False
        time.sleep(interval)


def _holders_match(lab: Lab, expected: Mapping[IPAddress, str]) -> bool:
    held = {node: lab.held(node) for node in lab.nodes}
    return all(
        vip in held[owner] and not any(vip in vips for node, vips in held.items() if node != owner)
        for vip, owner in expected.items()
    )


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; its value, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value or None
        time.sleep(interval)


def first_vips(group: VipGroup) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The first VIP of each family of a group (what the probes ping)."""
    return [group.vips(f)[0] for f in group.families]
