"""Real ``vipcore agent`` processes in the keepalived lab's node namespaces.

Each agent runs as ``ip netns exec NS vipcore agent --config FILE`` with
manifests in a shared folder, so a manifest change reaches every agent the
way a watch would. Agents are stopped by PID (SIGTERM = graceful); keepalived
processes they leave behind are killed by the lab's teardown.
"""

from __future__ import annotations

import ipaddress
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vipcore.core.resolve import membership, resolve
from vipcore.sources.manifests import load_manifests

from tests.helpers.keepalived_lab import Lab

VIPCORE = Path(sys.executable).parent / "vipcore"
WEB_V4 = ipaddress.ip_address("198.51.100.100")
WEB_V6 = ipaddress.ip_address("2001:db8:100::100")
ADVERT = 0.1


def manifests(lab: Lab, services: dict[str, str]) -> list[dict[str, Any]]:
    """Nodes, the ``lan`` pool and one Cluster-policy Service per name -> addresses."""
    docs: list[dict[str, Any]] = []
    for node in lab.node_objects():
        docs.append({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": str(a)} for a in node.addresses]},
        })
    docs.append({
        "apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
        "spec": {"default": True, "interface": "eth0",
                 "addresses": ["198.51.100.100-198.51.100.149", "2001:db8:100::100-2001:db8:100::1ff"]},
    })
    for name, ips in sorted(services.items()):
        docs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": {"vipcore.io/ip": ips}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip",
                     "externalTrafficPolicy": "Cluster", "ipFamilyPolicy": "PreferDualStack",
                     "ipFamilies": ["IPv4", "IPv6"] if "," in ips else ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
    return docs


class Agents:
    """One agent per node; each can be (re)started with either backend."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.backend: dict[str, str] = {}
        (tmp / "manifests").mkdir(exist_ok=True)

    def write_manifests(self, services: dict[str, str]) -> None:
        path = self.tmp / "manifests" / "all.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(manifests(self.lab, services)))
        tmp.replace(path)

    def ranking(self, group_of: str = "default/web") -> tuple[str, ...]:
        """The nodes of the Service's group, best holder first, as every agent computes them."""
        state = load_manifests([self.tmp / "manifests"])
        resolution = resolve(state)
        (group,) = [g for g in resolution.groups if group_of in g.services]
        return tuple(m.name for m in membership(group, group.nodes[0], state.nodes).members)

    def start(self, node: str, backend: str) -> None:
        assert node not in self.procs
        config = {
            "backend": backend, "node_name": node, "source": "manifests",
            "manifests": [str(self.tmp / "manifests")], "state_dir": str(self.tmp / "state" / node / backend),
            "log_format": "text", "metrics": {"address": ""},
            "keepalived": {"advert_interval": ADVERT}, "native_vrrp": {"advert_interval": ADVERT},
        }
        path = self.tmp / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        with open(self.tmp / f"{node}-{backend}.log", "ab") as log:
            self.procs[node] = subprocess.Popen(
                ["ip", "netns", "exec", self.lab.nodes[node], str(VIPCORE), "agent", "--config", str(path)],
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.backend[node] = backend

    def stop(self, node: str, timeout: float = 15.0) -> int:
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def stop_all(self) -> None:
        for node in list(self.procs):
            proc = self.procs.pop(node)
            proc.kill()
            proc.wait()

    def log(self, node: str, backend: str | None = None) -> str:
        """The agent's output (the backend it runs or last ran, unless given)."""
        path = self.tmp / f"{node}-{backend or self.backend[node]}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Pinger:
    """A client pinging one VIP every ``interval`` seconds; reports the longest gap."""

    def __init__(self, lab: Lab, vip: ipaddress.IPv4Address | ipaddress.IPv6Address, interval: float = 0.01) -> None:
        self.interval = interval
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.client, "ping", "-n", "-i", str(interval), "-W", "1", str(vip)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.output = ""

    def finish(self) -> tuple[int, int, float]:
        """Stop; return (sent, received, longest gap in seconds between two answered pings)."""
        self.proc.send_signal(signal.SIGINT)
        self.output = self.proc.communicate(timeout=10)[0]
        answered = sorted({int(m) for m in re.findall(r"icmp_seq=(\d+)", self.output)})
        summary = re.search(r"(\d+) packets transmitted, (\d+) received", self.output)
        assert summary, self.output[-500:]
        sent, received = int(summary.group(1)), int(summary.group(2))
        gaps = [b - a for a, b in zip(answered, answered[1:])]
        longest = (max(gaps, default=1) - 1) * self.interval
        # Unanswered pings at the end count too.
        if answered:
            longest = max(longest, (sent - answered[-1]) * self.interval)
        return sent, received, longest


__all__ = ["ADVERT", "Agents", "Pinger", "VIPCORE", "WEB_V4", "WEB_V6", "manifests"]
