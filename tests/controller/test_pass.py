"""One reconcile pass does each piece of work once: a Service is converted once per resourceVersion, IPAM runs once."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers.cluster import lb_ips, node, service, settings, vippool, wait_for
from vipcore.controller import writer as controller_writer
from vipcore.controller.runtime import Controller
from vipcore.core import ipam, objects
from vipcore.testing.apiserver import ApiServer


@pytest.fixture
def controller(server: ApiServer) -> Iterator[Controller]:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))
    server.create(service("web"))
    server.create(service("api"))
    server.create(service("local", policy="Local"))  # no endpoints: an address, no group
    client = server.client()
    made = Controller(settings("c1"), client)  # not running: the test drives the passes
    made.source.start()
    try:
        assert made.source.wait_synced(10)
        yield made
    finally:
        made.source.stop()
        client.close()


def counting(monkeypatch: pytest.MonkeyPatch, calls: collections.Counter[str], module: Any, name: str,
             key: Callable[..., str]) -> None:
    real = getattr(module, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls[key(*args, **kwargs)] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_a_pass_converts_each_service_once_and_allocates_once(server: ApiServer, controller: Controller,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    conversions: collections.Counter[str] = collections.Counter()
    allocations: collections.Counter[str] = collections.Counter()
    for module in (objects, controller_writer):
        counting(monkeypatch, conversions, module, "service_from_k8s", lambda obj: obj["metadata"]["name"])
    counting(monkeypatch, allocations, ipam, "allocate", lambda *a, **k: "allocate")
    assert controller.reconcile().clean
    assert conversions == {"web": 1, "api": 1, "local": 1}
    assert allocations == {"allocate": 1}
    assert lb_ips(server, "local")  # kept without a group: IPAM's one answer covers it
    # The pass's own writes changed the Services: the next pass converts each once more, then never again.
    def versions() -> set[str]:
        return {o["metadata"]["resourceVersion"] for o in server.objects("v1", "Service", "default")}

    wait_for(lambda: {o["metadata"]["resourceVersion"] for o in controller.source.objects("services").values()}
             == versions(), what="the cache catches up with the pass's writes")
    assert controller.reconcile().clean
    conversions.clear()
    allocations.clear()
    assert controller.reconcile().clean
    assert conversions == {} and allocations == {"allocate": 1}
