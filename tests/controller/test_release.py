"""Addresses are freed without a finalizer on the Service: from what the controller already holds.

The controller against the test API server, with the real client over HTTP.
A new Service costs one write (its status); a Service deleted while no
controller runs frees its address when the next one starts (after the reuse
quarantine), from the VipGroups it persisted; Services that still carry the
finalizer older releases added lose it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import lb_ips, node, service, vipgroups, vippool, wait_for

from vipcore.core.model import FINALIZER
from vipcore.testing.apiserver import ApiServer

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def cluster(server: ApiServer, *addresses: str) -> None:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    server.create(vippool("lan", *addresses))


def service_writes(server: ApiServer, name: str) -> list[tuple[str, str]]:
    return [(r.method, r.path.split("?")[0]) for r in server.requests
            if r.method in WRITES and f"/services/{name}" in r.path]


def held(server: ApiServer) -> dict[str, list[str]]:
    out = {}
    for obj in server.objects("v1", "Service", "default"):
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            out[obj["metadata"]["name"]] = [i["ip"] for i in ingress]
    return out


class DoubleWatch:
    """Samples every Service's status on a thread and remembers any address two Services held at once."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.doubles: list[dict[str, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = held(self.server)
            every = [ip for ips in now.values() for ip in ips]
            if len(every) != len(set(every)):
                self.doubles.append(now)
            time.sleep(0.005)

    def stop(self) -> list[dict[str, list[str]]]:
        self._stop.set()
        self._thread.join(2)
        return self.doubles


def test_a_new_service_costs_one_write_its_status(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, "203.0.113.10-203.0.113.19")
    start()
    for name in ("a", "b", "c"):
        server.create(service(name))
    wait_for(lambda: all(lb_ips(server, n) for n in ("a", "b", "c")), what="three addresses")
    wait_for(lambda: sorted(s for g in vipgroups(server) for s in g["spec"]["services"])
             == ["default/a", "default/b", "default/c"], what="the group")
    time.sleep(0.3)  # nothing more follows
    for name in ("a", "b", "c"):
        assert service_writes(server, name) == [("PATCH", f"/api/v1/namespaces/default/services/{name}/status")]
        assert not server.get("v1", "Service", name, "default")["metadata"].get("finalizers")


def test_deleted_at_once_and_its_address_rests_before_reuse(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, "203.0.113.10")
    server.create(service("first"))
    running = start(quarantine=0.8)
    wait_for(lambda: lb_ips(server, "first") == ["203.0.113.10"], what="allocation")
    deleted = time.monotonic()  # the quarantine starts after this, at the end of the pass the DELETE wakes
    server.delete("v1", "Service", "first", "default")
    # No finalizer: the Service is gone at once (a DELETE event), and its address is freed from it.
    assert not server.objects("v1", "Service", "default")
    server.create(service("second"))
    wait_for(lambda: running.controller.quarantined(), what="the address in quarantine")
    wait_for(lambda: lb_ips(server, "second") == ["203.0.113.10"], what="the address to be reused")
    assert time.monotonic() - deleted >= 0.75, "reused before its quarantine was over"


def test_deleted_while_no_controller_runs_freed_after_restart_never_twice(
    server: ApiServer, start: Callable[..., Any]
) -> None:
    cluster(server, "203.0.113.10-203.0.113.11")
    for name in ("kept", "gone"):
        server.create(service(name))
    doubles = DoubleWatch(server)
    try:
        first = start("c1")
        wait_for(lambda: len(held(server)) == 2, what="two allocations")
        wait_for(lambda: sorted(s for g in vipgroups(server) for s in g["spec"]["services"])
                 == ["default/gone", "default/kept"], what="the group")
        answer = held(server)
        first.stop()
        # While no controller runs: one Service goes, and another wants an address at once.
        server.delete("v1", "Service", "gone", "default")
        server.create(service("next"))
        mark = time.monotonic()
        second = start("c2", quarantine=1.0)
        wait_for(lambda: second.leading, what="c2 leads")
        # The address "gone" held rests first (clients' ARP caches), then "next" has it.
        wait_for(lambda: lb_ips(server, "next"), timeout=10, what="next gets the freed address")
        assert time.monotonic() - mark >= 0.9, "the freed address was given out before its quarantine ended"
        assert lb_ips(server, "next") == answer["gone"]
        # The restarted controller gives the same answer for the Service that stayed.
        assert lb_ips(server, "kept") == answer["kept"]
        wait_for(lambda: sorted(s for g in vipgroups(server) for s in g["spec"]["services"])
                 == ["default/kept", "default/next"], what="the group follows")
    finally:
        assert doubles.stop() == []


def test_the_legacy_finalizer_is_removed_once_and_never_holds_a_deletion(
    server: ApiServer, start: Callable[..., Any]
) -> None:
    cluster(server, "203.0.113.10-203.0.113.19")
    # Services as an older release left them: the finalizer and an address.
    for name, ip in (("old", "203.0.113.12"), ("leaving", "203.0.113.13")):
        obj = service(name)
        obj["metadata"]["finalizers"] = [FINALIZER, "example.com/keep"] if name == "leaving" else [FINALIZER]
        server.create(obj)
        server.patch("v1", "Service", name, {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
                     namespace="default", subresource="status")
    # One being deleted while no controller ran: it waits for its finalizers.
    server.delete("v1", "Service", "leaving", "default")
    assert server.get("v1", "Service", "leaving", "default")["metadata"].get("deletionTimestamp")
    start()
    wait_for(lambda: not server.get("v1", "Service", "old", "default")["metadata"].get("finalizers"),
             what="the legacy finalizer to go")
    wait_for(lambda: server.get("v1", "Service", "leaving", "default")["metadata"].get("finalizers")
             == ["example.com/keep"], what="only vipcore's finalizer to go from the deleted Service")
    assert lb_ips(server, "old") == ["203.0.113.12"]  # it keeps its address
    time.sleep(0.3)
    # Removed once: one metadata patch each, and no status write for the Service that kept its address.
    assert service_writes(server, "old") == [("PATCH", "/api/v1/namespaces/default/services/old")]
    assert service_writes(server, "leaving") == [("PATCH", "/api/v1/namespaces/default/services/leaving")]
