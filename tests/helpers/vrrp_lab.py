"""A minimal network-namespace lab for the native_vrrp integration tests.

Topology (every name starts with ``vcA-``; nothing touches the host's own
interfaces): a switch namespace ``vcA-sw`` with bridge ``br0``; node
namespaces ``vcA-na``, ``vcA-nb``, ``vcA-nc`` and a client ``vcA-cl``, each
with ``eth0`` on the bridge, addresses from 198.51.100.0/24 and
2001:db8:100::/64. Nodes run the real agent (``vipcore agent --config``)
or keepalived; every process is ended by its PID and every namespace is
deleted at teardown, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

PREFIX = "vcA"
SWITCH = f"{PREFIX}-sw"
CLIENT = f"{PREFIX}-cl"
ROOT = Path(__file__).resolve().parents[2]
VIPCORE = Path(sys.executable).parent / "vipcore"

#: Seconds any one command may take before the test gives up on it.
COMMAND_TIMEOUT = 30.0
NODES = {"node-a": 11, "node-b": 12, "node-c": 13}
WEB_V4 = ipaddress.ip_address("198.51.100.100")
WEB_V6 = ipaddress.ip_address("2001:db8:100::100")
SHOP_V4 = ipaddress.ip_address("198.51.100.110")


def ns_of(node: str) -> str:
    return f"{PREFIX}-n{node[-1]}"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; ``ip`` commands that fail with 255 (seen transiently while
    other labs add and delete namespaces at the same moment) are tried again."""
    for attempt in range(3):
        result = subprocess.run(args, check=False, text=True, capture_output=True, timeout=COMMAND_TIMEOUT)
        if result.returncode != 255 or args[:3] == ("ip", "netns", "add") or args[0] != "ip":
            break
        time.sleep(0.1 * (attempt + 1))
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, args, result.stdout, result.stderr)
    return result


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until truthy; return its value, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def manifests(services: str = "web+shop") -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name, last in NODES.items():
        docs.append({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": [
                {"type": "InternalIP", "address": f"198.51.100.{last}"},
                {"type": "InternalIP", "address": f"2001:db8:100::{last}"},
            ]},
        })
    docs.append({
        "apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
        "spec": {"default": True, "interface": "eth0",
                 "addresses": ["198.51.100.100-198.51.100.149", "2001:db8:100::100-2001:db8:100::1ff"]},
    })
    docs.append({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "annotations": {"vipcore.io/ip": f"{WEB_V4},{WEB_V6}"}},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "externalTrafficPolicy": "Cluster",
                 "ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    })
    if "shop" in services:
        docs.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "shop", "namespace": "store", "annotations": {"vipcore.io/ip": str(SHOP_V4)}},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        })
        docs.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "shop-x1", "namespace": "store", "labels": {"kubernetes.io/service-name": "shop"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.2.7"], "nodeName": "node-b", "conditions": {"ready": True}},
                {"addresses": ["10.244.3.9"], "nodeName": "node-c", "conditions": {"ready": True}},
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    return docs


class Lab:
    """Namespaces, agents and keepalived instances of one test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.namespaces: list[str] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.keepalived: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self.settings: dict[str, Any] = {"advert_interval": 0.05}
        self.services = "web+shop"

    # -- topology ------------------------------------------------------------

    def _netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        # No DAD: link-local sources are usable as soon as the link is up.
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")

    def up(self) -> None:
        remove_leftovers()
        self._netns(SWITCH)
        run("ip", "-n", SWITCH, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        run("ip", "-n", SWITCH, "link", "set", "br0", "up")
        for ns, last in [(ns_of(n), last) for n, last in NODES.items()] + [(CLIENT, 2)]:
            self._netns(ns)
            port = f"p{ns[-2:]}"
            run("ip", "-n", SWITCH, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "-n", SWITCH, "link", "set", port, "master", "br0", "up")
            run("ip", "-n", ns, "addr", "add", f"198.51.100.{last}/24", "dev", "eth0")
            run("ip", "-n", ns, "addr", "add", f"2001:db8:100::{last}/64", "dev", "eth0", "nodad")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
        (self.tmp / "manifests").mkdir(exist_ok=True)

    def down(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        for name in list(self.keepalived):
            self.stop_keepalived(name, sig=signal.SIGKILL)
        for ns in reversed(self.namespaces):
            run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()

    def link(self, node: str, state: str) -> None:
        run("ip", "-n", ns_of(node), "link", "set", "eth0", state)
        if state == "up":
            # Link down flushed the node's IPv6 address; a real node's network
            # configuration puts it back, so does the lab.
            run("ip", "-n", ns_of(node), "addr", "replace", f"2001:db8:100::{NODES[node]}/64", "dev", "eth0", "nodad")

    # -- agents ----------------------------------------------------------------

    def write_manifests(self) -> Path:
        path = self.tmp / "manifests" / "all.yaml"
        path.write_text(yaml.safe_dump_all(manifests(self.services)))
        return path

    def start(self, node: str) -> None:
        assert node not in self.procs, f"{node} already runs"
        self.write_manifests()
        config = {
            "backend": "native_vrrp", "node_name": node, "source": "manifests",
            "manifests": [str(self.tmp / "manifests")], "state_dir": str(self.tmp / "state" / node),
            "log_format": "json", "metrics": {"address": ""}, "native_vrrp": dict(self.settings),
        }
        path = self.tmp / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.tmp / f"{node}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.procs[node] = subprocess.Popen(
            ["ip", "netns", "exec", ns_of(node), str(VIPCORE), "agent", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        log.close()

    def stop(self, node: str, timeout: float = 10.0) -> int:
        """SIGTERM (graceful) and wait; returns the exit code."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node)
        proc.kill()
        proc.wait(COMMAND_TIMEOUT)

    def log(self, node: str) -> list[dict[str, Any]]:
        lines = []
        for line in (self.tmp / f"{node}.log").read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                lines.append({"message": line})
        return lines

    def log_text(self, node: str) -> str:
        path = self.tmp / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def placement(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, ...]:
        """The members of ``vip``'s group, best first, exactly as the agents see them."""
        from vipcore.core.resolve import membership, resolve
        from vipcore.sources.manifests import ManifestSource

        source = ManifestSource([self.write_manifests().parent])
        state = asyncio.run(source.initial())
        resolution = resolve(state, allocate=source.allocates)
        group = next(g for g in resolution.groups if vip in g.vips_v4 or vip in g.vips_v6)
        return tuple(m.name for m in membership(group, group.nodes[0], state.nodes).members)

    def group_of(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
        from vipcore.core.resolve import resolve
        from vipcore.sources.manifests import ManifestSource

        source = ManifestSource([self.write_manifests().parent])
        resolution = resolve(asyncio.run(source.initial()), allocate=source.allocates)
        return next(g.name for g in resolution.groups if vip in g.vips_v4 or vip in g.vips_v6)

    def vrid(self, node: str, group: str) -> int | None:
        """The VRID of ``group`` as the node's agent logged it in a transition."""
        for line in self.log(node):
            if line.get("group") == group and line.get("vrid"):
                return int(line["vrid"])
        return None

    # -- keepalived --------------------------------------------------------------

    def start_keepalived(self, node: str, conf: str) -> None:
        base = self.tmp / f"keepalived-{node}"
        base.mkdir(exist_ok=True)
        (base / "keepalived.conf").write_text(conf)
        log = open(base / "out.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns_of(node), "keepalived", "-n", "-l", "-D", "-f", str(base / "keepalived.conf"),
             "-p", str(base / "keepalived.pid"), "-r", str(base / "vrrp.pid")],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        self.keepalived[node] = (proc, base)

    def stop_keepalived(self, node: str, sig: int = signal.SIGTERM) -> None:
        proc, base = self.keepalived.pop(node)
        if sig == signal.SIGKILL:
            # The VRRP child first (its PID from its own pid file), then the parent.
            try:
                child = int((base / "vrrp.pid").read_text().strip())
            except (OSError, ValueError):
                child = None
            if child is not None and _is_child_of(child, proc.pid):
                os.kill(child, signal.SIGKILL)
            proc.kill()
        else:
            proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    # -- observation ---------------------------------------------------------------

    def holders(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
        found = []
        for node in NODES:
            out = run("ip", "-n", ns_of(node), "-o", "addr", "show", "dev", "eth0", check=False).stdout
            if f" {vip}/" in out:
                found.append(node)
        return found

    def one_holder(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        holders = self.holders(vip)
        return holders[0] if len(holders) == 1 else None

    def ping(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address, count: int = 3) -> bool:
        result = run("ip", "netns", "exec", CLIENT, "ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1", "-w", "5", str(vip),
                     check=False)
        return result.returncode == 0

    def start_ping(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address, count: int,
                   interval: float = 0.01) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", CLIENT, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", str(vip)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )


def ping_loss(output: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match, output
    return int(match.group(1)), int(match.group(2))


def _is_child_of(pid: int, parent: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return int(stat.rsplit(")", 1)[1].split()[1]) == parent


def remove_leftovers() -> None:
    """Delete namespaces of ours left by an interrupted run (our prefix only)."""
    listing = run("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name in {SWITCH, CLIENT, *(ns_of(n) for n in NODES)}:
            run("ip", "netns", "del", name, check=False)


@contextlib.contextmanager
def running_lab(tmp_path: Path) -> Iterator[Lab]:
    """A lab that is torn down whatever happens (failure, Ctrl-C)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("lab tests need root and iproute2")
    if not VIPCORE.exists():
        pytest.skip(f"{VIPCORE} is not installed")
    the_lab = Lab(tmp_path)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
