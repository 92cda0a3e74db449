"""A minimal network-namespace lab for the native_vrrp integration tests.

Topology (every name starts with ``vcV-``; nothing touches the host's own
interfaces): a switch namespace ``vcV-sw`` with bridge ``br0``; node
namespaces ``vcV-na``, ``vcV-nb``, ``vcV-nc`` and a client ``vcV-cl``, each
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

PREFIX = "vcV"
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

    def port(self, node: str) -> str:
        """The node's switch port (the other end of its eth0)."""
        return f"p{ns_of(node)[-2:]}"

    def carrier(self, node: str, up: bool) -> None:
        """Switch port down/up: the node's eth0 stays administratively up but loses carrier."""
        run("ip", "-n", SWITCH, "link", "set", self.port(node), "up" if up else "down")

    def delete_link(self, node: str) -> None:
        """Delete the node's eth0 (the veth pair goes with it)."""
        run("ip", "-n", ns_of(node), "link", "del", "eth0")

    def recreate_link(self, node: str) -> None:
        """A new eth0 (new ifindex, new MAC) with the node's addresses, plugged into the switch."""
        ns, last, port = ns_of(node), NODES[node], self.port(node)
        run("ip", "-n", SWITCH, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", SWITCH, "link", "set", port, "master", "br0", "up")
        run("ip", "-n", ns, "addr", "add", f"198.51.100.{last}/24", "dev", "eth0")
        run("ip", "-n", ns, "addr", "add", f"2001:db8:100::{last}/64", "dev", "eth0", "nodad")
        run("ip", "-n", ns, "link", "set", "eth0", "up")

    def link(self, node: str, state: str) -> None:
        run("ip", "-n", ns_of(node), "link", "set", "eth0", state)
        if state == "up":
            # Link down flushed the node's IPv6 address; a real node's network
            # configuration puts it back, so does the lab.
            run("ip", "-n", ns_of(node), "addr", "replace", f"2001:db8:100::{NODES[node]}/64", "dev", "eth0", "nodad")

    # -- agents ----------------------------------------------------------------

    def write_manifests(self) -> Path:
        path = self.tmp / "manifests" / "all.yaml"
        text = yaml.safe_dump_all(manifests(self.services))
        if not path.exists() or path.read_text() != text:
            # Atomically: agents watch the directory and must never read half a file
            # (an empty read makes them leave every group).
            partial = self.tmp / "all.yaml.partial"
            partial.write_text(text)
            partial.replace(path)
        return path

    def start(self, node: str, *, ns: str | None = None, as_node: str | None = None) -> None:
        """Start the agent of ``node`` (in its namespace, or ``ns`` under the name ``node``,
        claiming to be ``as_node``: a twin with another node's identity)."""
        assert node not in self.procs, f"{node} already runs"
        self.write_manifests()
        config = {
            "backend": "native_vrrp", "node_name": as_node or node, "source": "manifests",
            "manifests": [str(self.tmp / "manifests")], "state_dir": str(self.tmp / "state" / node),
            "log_format": "json", "metrics": {"address": ""}, "native_vrrp": dict(self.settings),
        }
        path = self.tmp / f"{node}.yaml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.tmp / f"{node}.log", "ab")  # noqa: SIM115 (closed with the process)
        self.procs[node] = subprocess.Popen(
            ["ip", "netns", "exec", ns or ns_of(node), str(VIPCORE), "agent", "--config", str(path)],
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

    def watch(self, vip: ipaddress.IPv4Address | ipaddress.IPv6Address, seconds: float,
              interval: float = 0.02) -> list[tuple[float, tuple[str, ...]]]:
        """Sample who holds ``vip`` for ``seconds``: (time offset, holders) pairs."""
        samples = []
        start = time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            samples.append((now - start, tuple(self.holders(vip))))
            time.sleep(interval)
        return samples

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


#: Forged VRRPv3 adverts with any IPv4 source (IP_HDRINCL), sent from inside a namespace.
FORGE = """
import ipaddress, socket, struct, sys, time
from vipcore_native_vrrp.protocol.packet import Advertisement, encode
vrid, prio, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
sources, destinations = sys.argv[5].split(","), sys.argv[6].split(",")
vips = [ipaddress.ip_address(v) for v in sys.argv[7:]]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"eth0")
packets = []
for src in sources:
    for dst in destinations:
        body = encode(Advertisement(vrid, prio, 5, vips), ipaddress.ip_address(src), ipaddress.ip_address(dst))
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 255, 112, 0,
                             socket.inet_aton(src), socket.inet_aton(dst))
        packets.append((header + body, dst))
end, i = time.monotonic() + seconds, 0
while time.monotonic() < end:
    data, dst = packets[i % len(packets)]
    sock.sendto(data, (dst, 0))
    i += 1
    time.sleep(1 / rate)
print(i)
"""


def forge(ns: str, vrid: int, priority: int, sources: list[str], *, rate: float, seconds: float,
          destinations: tuple[str, ...] = ("224.0.0.18",), vip: ipaddress.IPv4Address = WEB_V4,
          background: bool = False) -> subprocess.Popen[str]:
    """Send forged adverts from ``ns`` (TTL 255, any source address) for ``seconds``."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", FORGE, str(vrid), str(priority), str(rate), str(seconds),
         ",".join(sources), ",".join(destinations), str(vip)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    if not background:
        proc.communicate(timeout=seconds + COMMAND_TIMEOUT)
    return proc


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
