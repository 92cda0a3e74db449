"""Membership changes through the controller: a renamed group keeps its VRID, and is no Event.

The test API server and the real client over HTTP, as the other controller tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import events, lb_ips, node, service, vipgroups, vippool, wait_for

from vipcore.core import placement
from vipcore.testing.apiserver import ApiServer

NODES = ("node-a", "node-b", "node-c")


def set_ready(server: ApiServer, name: str, ready: bool) -> None:
    conditions = node(name, ready=ready)["status"]["conditions"]
    server.patch("v1", "Node", name, {"status": {"conditions": conditions}}, subresource="status")


def only(server: ApiServer, nodes: list[str]) -> list[dict[str, Any]]:
    """The VipGroups once the only one left is the group of ``nodes`` (else nothing)."""
    groups = vipgroups(server)
    return groups if len(groups) == 1 and groups[0]["spec"]["nodes"] == nodes else []


def group_assigned(server: ApiServer) -> int:
    return sum(1 for _, reason, _ in events(server, "web") if reason == "GroupAssigned")


def test_a_node_flapping_renames_the_group_but_keeps_its_vrid_and_writes_no_event(
    server: ApiServer, start: Callable[..., Any]
) -> None:
    for name in NODES:
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.19"))
    server.create(service("web"))
    start()
    (first,) = wait_for(lambda: vipgroups(server), what="a VipGroup")
    wait_for(lambda: lb_ips(server, "web"), what="the address")
    assert group_assigned(server) == 0  # the first group of a new Service is no Event (logged)
    # A VRID persisted by an older release (not what the core would derive now).
    legacy = 190 if first["spec"]["vrid"] != 190 else 191
    server.patch("vipcore.io/v1alpha1", "VipGroup", first["metadata"]["name"], {"spec": {"vrid": legacy}})
    # The agents record the holder: placement's first node. Another node flaps.
    holder = placement.rank("eth0/default/web", NODES)[0]
    flapped = next(n for n in NODES if n != holder)
    server.patch("vipcore.io/v1alpha1", "VipGroup", first["metadata"]["name"],
                 {"status": {"holders": {"ipv4": {"node": holder}}}}, subresource="status")

    set_ready(server, flapped, False)
    rest = [n for n in NODES if n != flapped]
    (renamed,) = wait_for(lambda: only(server, rest), what="the renamed VipGroup, alone")
    assert renamed["metadata"]["name"] != first["metadata"]["name"]
    assert renamed["spec"]["vrid"] == legacy

    set_ready(server, flapped, True)
    (back,) = wait_for(lambda: only(server, list(NODES)), what="the group of three nodes again, alone")
    assert back["metadata"]["name"] == first["metadata"]["name"] and back["spec"]["vrid"] == legacy
    assert group_assigned(server) == 0, events(server, "web")
