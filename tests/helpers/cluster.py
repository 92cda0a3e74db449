"""Helpers for controller tests: objects for the test API server, and controllers running in threads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from vipcore.core.settings import Config
from vipcore.controller.runtime import Controller, ControllerSettings
from vipcore.kube.leases import LeaseTiming
from vipcore.core.plan import Selection
from vipcore.kube.heartbeat import HeartbeatConfig
from vipcore.testing.apiserver import ApiServer
from tests.helpers.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
FAST = LeaseTiming(duration=2.0, renew_deadline=1.5, retry_period=0.25)


def node(name: str, ready: bool = True, labels: dict[str, str] | None = None, ip: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "addresses": [{"type": "InternalIP", "address": ip}] if ip else []}}


def vippool(name: str, *addresses: str, interface: str = "eth0", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": name},
            "spec": {"addresses": list(addresses), "interface": interface, **spec}}


def service(name: str, *, namespace: str = "default", cls: str | None = "vipcore.io/vip", policy: str = "Cluster",
            annotations: dict[str, str] | None = None, lb_ip: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
                            "selector": {"app": name}}
    if cls:
        spec["loadBalancerClass"] = cls
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}}, "spec": spec}


def endpoint_slice(service_name: str, nodes: list[str], *, namespace: str = "default",
                   suffix: str = "x1") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-{suffix}", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": [{"addresses": [f"10.0.0.{i + 1}"], "nodeName": n, "conditions": {"ready": True}}
                          for i, n in enumerate(nodes)],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}




class Running:
    """A Controller running on its own event loop in a thread."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.loop = asyncio.new_event_loop()
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True, name=f"controller:{controller.settings.identity}")
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(self.controller.run(timeout=10))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            self.loop.close()

    @property
    def leading(self) -> bool:
        return self.controller.elector.leading

    def stop(self) -> None:
        """Cancel (the Lease is released on the way out)."""
        if self.thread.is_alive():
            wait_for(lambda: self.task is not None, what="task creation")
            assert self.task is not None
            self.loop.call_soon_threadsafe(self.task.cancel)
            self.thread.join(10)
        assert not self.thread.is_alive(), "controller did not stop"


def settings(identity: str = "c1", **kwargs: Any) -> ControllerSettings:
    values: dict[str, Any] = {"identity": identity, "namespace": "default", "timing": FAST, "resync": 5.0,
                              "quarantine": 0.0,
                              "selection": Selection()}
    values.update(kwargs)
    return ControllerSettings(**values)


def lb_ips(server: ApiServer, name: str, namespace: str = "default") -> list[str]:
    obj = server.get("v1", "Service", name, namespace)
    return [i["ip"] for i in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []]


def events(server: ApiServer, name: str, namespace: str = "default") -> list[tuple[str, str, str]]:
    return [(e["type"], e["reason"], e["message"]) for e in server.objects("v1", "Event", namespace)
            if e["involvedObject"]["name"] == name]


def vipgroups(server: ApiServer) -> list[dict[str, Any]]:
    return server.objects("vipcore.io/v1alpha1", "VipGroup")


@pytest.fixture
def start(server: ApiServer) -> Iterator[Callable[..., Running]]:
    """``start(identity="c1", **settings)`` runs a controller against ``server``; all stopped at the end."""
    running: list[Running] = []
    clients: list[Any] = []

    def _start(identity: str = "c1", config: Config | None = None, **kwargs: Any) -> Running:
        client = server.client()
        clients.append(client)
        r = Running(Controller(settings(identity, **kwargs), client, config=config))
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()
        # A replica "killed" by stopping its loop never stopped its watch
        # threads; stop them so none outlives the test.
        r.controller.source.stop(2.0)
    for client in clients:
        client.close()


