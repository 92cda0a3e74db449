"""VipGroup status written by the controller: observedGeneration and the Held condition."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import lb_ips, node, service, vipgroups, vippool, wait_for

from vipcore.testing.apiserver import ApiServer


def held(group: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in (group.get("status") or {}).get("conditions") or [] if c["type"] == "Held"), None)


def test_observed_generation_and_held_condition(server: ApiServer, start: Callable[..., Any]) -> None:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19", default=True))
    server.create(service("web"))
    start()
    wait_for(lambda: lb_ips(server, "web"), what="allocation")
    (group,) = wait_for(lambda: [g for g in vipgroups(server) if held(g)], what="a group with a Held condition")
    assert group["status"]["observedGeneration"] == group["metadata"]["generation"]
    cond = held(group)
    assert cond is not None and cond["status"] == "False" and cond["reason"] == "NoHolder"
    name = group["metadata"]["name"]
    # An agent records itself as the holder (as sources/holders.py does).
    server.patch("vipcore.io/v1alpha1", "VipGroup", name,
                 {"status": {"holders": {"ipv4": {"node": "node-b", "since": "2026-01-01T00:00:00Z"}}}},
                 subresource="status")
    wait_for(lambda: (held(server.get("vipcore.io/v1alpha1", "VipGroup", name)) or {}).get("status") == "True",
             what="Held=True")
    # A second Service changes the spec: the generation moves and is observed.
    server.create(service("api"))
    wait_for(lambda: lb_ips(server, "api"), what="second allocation")

    def observed() -> bool:
        obj = server.get("vipcore.io/v1alpha1", "VipGroup", name)
        return obj["metadata"]["generation"] > 1 and \
            obj["status"].get("observedGeneration") == obj["metadata"]["generation"]
    wait_for(observed, what="the new generation observed")
    assert server.get("vipcore.io/v1alpha1", "VipGroup", name)["status"]["holders"]["ipv4"]["node"] == "node-b"
