"""A small namespace lab for the keepalived tests (``vcK…`` names only).

One "switch" namespace holds a bridge; every node namespace and a client
namespace hang off it with an interface called ``eth0`` (the same name on
every node, as a pool's interface is). DAD is off on the lab links so IPv6
link-local addresses (the VRRP source) are usable at once, and multicast
snooping is off so 224.0.0.18 / ff02::12 flood from the first advert.

Teardown kills every process left in the lab's namespaces by PID
(``ip netns pids``), then deletes the namespaces: a keepalived started by a
failed test must not outlive it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence

import attrs

from vipcore.model import IPAddress, Node

LAN = "eth0"
CLIENT_V4 = "198.51.100.200"
CLIENT_V6 = "2001:db8:100::200"


def ip(*args: str, check: bool = True) -> str:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *argv: str, check: bool = True) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], check=check, capture_output=True, text=True).stdout


@attrs.frozen
class Lab:
    tag: str
    #: node name -> namespace
    nodes: dict[str, str]
    switch: str
    client: str

    def node_objects(self) -> tuple[Node, ...]:
        return tuple(
            Node(name, (ipaddress.ip_address(f"198.51.100.{11 + i}"), ipaddress.ip_address(f"2001:db8:100::{11 + i}")))
            for i, name in enumerate(sorted(self.nodes))
        )

    def holding(self, node: str, interface: str = LAN) -> set[IPAddress]:
        """Host-prefix addresses (/32, /128) on the node's interface."""
        out = ip("-n", self.nodes[node], "-o", "addr", "show", "dev", interface)
        found: set[IPAddress] = set()
        for line in out.splitlines():
            fields = line.split()
            if fields[2] in ("inet", "inet6") and fields[3].endswith(("/32", "/128")):
                found.add(ipaddress.ip_address(fields[3].split("/")[0]))
        return found

    def holders(self, vips: Sequence[IPAddress], nodes: Sequence[str] | None = None) -> set[str]:
        """Nodes holding any of ``vips``."""
        return {n for n in (nodes or sorted(self.nodes)) if self.holding(n) & set(vips)}

    def unplug(self, node: str) -> None:
        """The node's link goes down, as when its host dies."""
        ip("-n", self.switch, "link", "set", f"p{sorted(self.nodes).index(node)}", "down")
        ip("-n", self.nodes[node], "link", "set", LAN, "down")

    def pids(self, ns: str) -> list[int]:
        return [int(p) for p in ip("netns", "pids", ns, check=False).split()]


def _sysctl(ns: str, key: str, value: str) -> None:
    in_ns(ns, "sysctl", "-q", "-w", f"{key}={value}")


def build(node_names: Sequence[str] = ("node-a", "node-b", "node-c")) -> Lab:
    tag = uuid.uuid4().hex[:5]
    lab = Lab(tag=tag, nodes={n: f"vcK{tag}{n[-1]}" for n in node_names}, switch=f"vcK{tag}sw",
              client=f"vcK{tag}cl")
    ip("netns", "add", lab.switch)
    try:
        ip("-n", lab.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        ip("-n", lab.switch, "link", "set", "br0", "up")
        ends = [(ns, f"198.51.100.{11 + i}", f"2001:db8:100::{11 + i}", f"p{i}")
                for i, ns in enumerate(lab.nodes[n] for n in sorted(lab.nodes))]
        ends.append((lab.client, CLIENT_V4, CLIENT_V6, "pc"))
        for ns, v4, v6, port in ends:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", lab.switch, "link", "add", port, "type", "veth", "peer", "name", LAN, "netns", ns)
            ip("-n", lab.switch, "link", "set", port, "master", "br0", "up")
            _sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
            _sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
            _sysctl(ns, f"net.ipv6.conf.{LAN}.accept_dad", "0")
            ip("-n", ns, "addr", "add", f"{v4}/24", "dev", LAN)
            ip("-n", ns, "addr", "add", f"{v6}/64", "dev", LAN, "nodad")
            ip("-n", ns, "link", "set", LAN, "up")
    except BaseException:
        destroy(lab)
        raise
    return lab


def destroy(lab: Lab) -> None:
    """Kill what runs in the lab's namespaces (by PID), then delete them."""
    spaces = [*lab.nodes.values(), lab.client, lab.switch]
    for ns in spaces:
        for pid in lab.pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(lab.pids(ns) for ns in spaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    for ns in spaces:
        ip("netns", "del", ns, check=False)


@contextlib.contextmanager
def running_lab(node_names: Sequence[str] = ("node-a", "node-b", "node-c")) -> Iterator[Lab]:
    lab = build(node_names)
    try:
        yield lab
    finally:
        destroy(lab)
