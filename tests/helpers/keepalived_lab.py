"""The shared namespace lab (:mod:`vipcore.lab`) as the keepalived tests use it.

Each test gets its own ``vcK<5 hex>`` prefix, so runs never meet other
engineers' namespaces nor each other. The lab's nodes have ``eth0`` (lan)
and ``eth1`` (dmz), DAD off, multicast snooping off; teardown kills every
process in the prefix's namespaces by PID (a keepalived started by a failed
test cannot outlive it) and deletes them.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from vipcore.lab import Lab as SharedLab
from vipcore.lab.topology import RUN_ROOT, netns_pids
from vipcore.core.model import IPAddress, Node

LAN = "eth0"


@attrs.frozen
class Lab:
    shared: SharedLab

    @property
    def nodes(self) -> dict[str, str]:
        """node name -> namespace"""
        return {node: self.shared.ns(node) for node in self.shared.nodes}

    @property
    def client(self) -> str:
        return self.shared.client

    def node_objects(self) -> tuple[Node, ...]:
        return tuple(
            Node(node, (self.shared.address(node, LAN, 4), self.shared.address(node, LAN, 6)))
            for node in self.shared.nodes
        )

    def holding(self, node: str) -> set[IPAddress]:
        """VIPs (host-prefix addresses) on the node's interfaces that are up."""
        return self.shared.held(node)

    def holders(self, vips: Sequence[IPAddress], nodes: Sequence[str] | None = None) -> set[str]:
        """Nodes holding any of ``vips``."""
        return {n for n in (nodes or self.shared.nodes) if self.holding(n) & set(vips)}

    def unplug(self, node: str) -> None:
        """The node's links go down, as when its host dies."""
        self.shared.links_down(node)

    def pids(self, ns: str) -> list[int]:
        return netns_pids(ns)


@contextlib.contextmanager
def running_lab(node_names: Sequence[str] = ("node-a", "node-b", "node-c"),
                run_root: Path | None = None) -> Iterator[Lab]:
    prefix = f"vcK{uuid.uuid4().hex[:5]}"
    # No SIGTERM handler here: pyroute2 creates namespace sockets in forked children and ends
    # them with SIGTERM, relying on its default action; a Python-level handler inherited by
    # the child keeps it alive and hangs the parent in waitpid.
    with SharedLab(prefix=prefix, nodes=tuple(node_names), run_root=run_root or RUN_ROOT) as shared:
        yield Lab(shared)
