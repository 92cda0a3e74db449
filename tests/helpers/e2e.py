"""The end-to-end environment: the lab, the test API server inside it, the controller and agents.

Layout (namespace prefix ``vcE``; nothing is added to the root namespace)::

    vcE-cl      client namespace: the test API server listens on 198.51.100.2
                (its socket is opened from a thread that entered the
                namespace; the test process reaches the store directly),
                and the controller runs here; the client pings VIPs from here
    vcE-node-*  one agent each (source: kubernetes, backend native_vrrp)

Every process runs under the lab, which ends them by PID at teardown.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vipcore.lab import Lab
from vipcore.lab.agents import vipcore_command
from vipcore.testing.apiserver import ApiServer
from tests.helpers.wait import wait_for

PREFIX = "vcE"
NODES = ("node-a", "node-b", "node-c")
ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
TEST_CRDS = ROOT / "tests" / "helpers" / "crds"
VIPCORE = Path(sys.executable).parent / "vipcore"
CLONE_NEWNET = 0x40000000
ADVERT = 0.1


def in_netns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread that entered network namespace ``ns`` (sockets it opens stay there)."""
    result: dict[str, Any] = {}

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            result["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=body, name=f"netns:{ns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")




class Environment:
    """Lab + API server + controller + agents; :meth:`close` removes everything."""

    def __init__(self, *, backend: str = "native_vrrp", heartbeat: float | None = None, prefix: str = PREFIX) -> None:
        self.lab = Lab(prefix=prefix, nodes=NODES)
        self.backend = backend
        #: Heartbeat Lease duration in seconds, or None for no heartbeats.
        self.heartbeat = heartbeat
        self.server: ApiServer | None = None
        self.kubeconfig: Path | None = None

    def up(self) -> "Environment":
        self.lab.up()
        host = str(self.lab.address(None, "eth0", 4))
        server = ApiServer(host=host, crds=[CRDS, TEST_CRDS], bookmark_interval=1.0)
        in_netns(self.lab.client, server.start)
        self.server = server
        self.kubeconfig = server.write_kubeconfig(self.lab.run_dir / "kubeconfig")
        for node in NODES:
            addresses = [{"type": "InternalIP", "address": str(self.lab.address(node, "eth0", v))} for v in (4, 6)]
            server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                           "status": {"conditions": [{"type": "Ready", "status": "True"}], "addresses": addresses}})
        server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
                       "spec": {"default": True, "interface": "eth0",
                                "addresses": ["198.51.100.100-198.51.100.149", "2001:db8:100::100-2001:db8:100::1ff"]}})
        return self

    def config(self, node: str | None) -> Path:
        assert self.kubeconfig is not None
        name = node or "controller"
        directory = self.lab.run_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        kube: dict[str, Any] = {"kubeconfig": str(self.kubeconfig), "namespace": "default"}
        if self.heartbeat is not None:
            kube["heartbeat"] = {"enabled": True, "duration": self.heartbeat}
        data: dict[str, Any] = {
            "backend": self.backend, "node_name": node or "controller", "source": "kubernetes",
            "state_dir": str(directory / "state"), "log_format": "json", "metrics": "",
            "kubernetes": kube,
            "controller": {"leader_election": {"duration": 4, "renew_deadline": 3, "retry_period": 0.5}},
            "native_vrrp": {"advert_interval": ADVERT, "preempt": True},
            "netlink_static": {"garp": {"count": 3, "interval": 0.1}},
        }
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start_controller(self) -> None:
        self.lab.spawn(None, "controller", [str(vipcore_command()), "controller", "--config",
                                            str(self.config(None)), "--metrics", ""],
                       log=self.lab.run_dir / "controller.log")

    def start_agent(self, node: str) -> None:
        self.lab.links_up(node)
        self.lab.spawn(node, "agent", [str(VIPCORE), "agent", "--config", str(self.config(node))],
                       log=self.lab.run_dir / f"{node}.log")

    def wait_started(self, node: str, timeout: float = 30.0) -> None:
        """Until the node's agent logged that it runs (its first state is dispatched)."""
        log = self.lab.run_dir / f"{node}.log"
        wait_for(lambda: log.exists() and '"event": "started"' in log.read_text(errors="replace"), timeout,
                 f"the agent on {node} to start")

    def close(self) -> None:
        try:
            if self.server is not None:
                self.server.stop()
        finally:
            self.lab.down()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.lab.run_dir.glob("*.log")):
            parts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(parts)
