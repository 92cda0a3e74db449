"""The controller's pure planner: statuses, finalizers, VipGroups and Events from raw objects."""

from __future__ import annotations

import ipaddress
from typing import Any

from vipcore.core.plan import (
    FINALIZER,
    GROUP_ASSIGNED,
    HOLDER_CHANGED,
    IP_ALLOCATED,
    IP_REFUSED,
    IP_RELEASED,
    NO_GROUP,
    Selection,
    holder_notes,
    plan,
)
from vipcore.core.objects import pool_from_k8s, vipgroup_spec
from vipcore.core.model import EndpointSlice, Node

NODES = (Node("node-a"), Node("node-b"), Node("node-c"))


def pool(name: str = "lan", addresses: tuple[str, ...] = ("203.0.113.10-203.0.113.12",), **spec: Any) -> Any:
    return pool_from_k8s({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": name},
                          "spec": {"addresses": list(addresses), "interface": "eth0", **spec}})


def svc(name: str, *, ns: str = "default", cls: str | None = "vipcore.io/vip", ips: tuple[str, ...] = (),
        finalizers: tuple[str, ...] = (), annotations: dict[str, str] | None = None, policy: str = "Cluster",
        deleting: bool = False, lb_ip: str | None = None, rv: str = "7") -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "LoadBalancer", "externalTrafficPolicy": policy,
                            "ports": [{"port": 80, "protocol": "TCP"}]}
    if cls:
        spec["loadBalancerClass"] = cls
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": rv,
                            "finalizers": list(finalizers), "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}}


def run(services: list[dict[str, Any]], *, pools: tuple[Any, ...] = (), vipgroups: tuple[dict[str, Any], ...] = (),
        slices: tuple[EndpointSlice, ...] = (), selection: Selection = Selection()) -> Any:
    return plan(services, nodes=NODES, endpoint_slices=slices, pools=pools or (pool(),), vipgroups=vipgroups,
                selection=selection)


def vipgroup_obj(group: Any, rv: str = "3") -> dict[str, Any]:
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
            "metadata": {"name": group.name, "resourceVersion": rv}, "spec": vipgroup_spec(group)}


def test_new_service_gets_address_group_and_events_and_no_finalizer() -> None:
    result = run([svc("web")])
    (write,) = result.services
    assert write.drop_finalizer is False  # one write, the status
    assert write.ingress is not None and len(write.ingress) == 1
    assert write.ingress[0] in ipaddress.ip_network("203.0.113.8/29")
    (group,) = result.groups
    assert group.create and group.spec["services"] == ["default/web"]
    assert group.spec["nodes"] == ["node-a", "node-b", "node-c"]
    assert [n.reason for n in result.notes] == [IP_ALLOCATED, GROUP_ASSIGNED]
    # A new Service's first address and group: the steady path, logged and not written as Events.
    assert all(n.routine for n in result.notes)
    assert result.allocated == {"default/web": write.ingress}


def test_a_service_whose_address_changes_gets_a_note_that_is_not_routine() -> None:
    first = run([svc("web")])
    ip = str(first.services[0].ingress[0])  # type: ignore[index]
    group = first.resolution.groups[0]
    # Another address requested: a change its owner made, reported as an Event.
    other = "203.0.113.12" if ip != "203.0.113.12" else "203.0.113.11"
    again = run([svc("web", ips=(ip,), lb_ip=other)], vipgroups=(vipgroup_obj(group),))
    assert [(n.reason, n.routine) for n in again.notes] == [(IP_ALLOCATED, False)]


def test_steady_state_writes_nothing() -> None:
    first = run([svc("web")])
    ip = str(first.services[0].ingress[0])  # type: ignore[index]
    group = first.resolution.groups[0]
    again = run([svc("web", ips=(ip,))], vipgroups=(vipgroup_obj(group),))
    assert again.empty and again.notes == ()


def test_held_address_is_kept_even_when_another_would_be_chosen() -> None:
    result = run([svc("web", ips=("203.0.113.12",))])
    assert result.services == ()
    assert result.groups[0].spec["vips"]["ipv4"] == ["203.0.113.12"]


def test_exhaustion_and_outside_request_refused_others_unaffected() -> None:
    small = pool(addresses=("203.0.113.10",))
    result = run([svc("a"), svc("b"), svc("c", lb_ip="198.51.100.7")], pools=(small,))
    by_key = {w.key: w for w in result.services}
    assert by_key["default/a"].ingress == (ipaddress.ip_address("203.0.113.10"),)
    assert "default/b" not in by_key and "default/c" not in by_key
    assert "no free IPv4 address" in result.refused["default/b"]
    assert "outside pool" in result.refused["default/c"]
    warnings = {(n.name, n.reason) for n in result.notes if n.type == "Warning"}
    assert warnings == {("b", IP_REFUSED), ("c", IP_REFUSED)}


def test_other_classes_untouched_and_default_class_opt_in() -> None:
    other = svc("other", cls="example.com/lb")
    classless = svc("plain", cls=None)
    result = run([other, classless])
    assert result.services == () and result.groups == ()
    result = run([other, classless], selection=Selection(default_class=True))
    assert [w.key for w in result.services] == ["default/plain"]


def test_openelb_annotations_and_eip() -> None:
    eip = pool_from_k8s({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                         "metadata": {"name": "eip-vip"},
                         "spec": {"address": "203.0.113.32/29", "protocol": "vip", "interface": "eth0"}})
    legacy = svc("legacy", cls=None, annotations={
        "lb.kubesphere.io/v1alpha1": "openelb",
        "eip.openelb.kubesphere.io/v1alpha2": "eip-vip",
        "eip.openelb.kubesphere.io/v1alpha1": "203.0.113.34",
    })
    result = run([legacy], pools=(pool(), eip))
    (write,) = result.services
    assert write.ingress == (ipaddress.ip_address("203.0.113.34"),)


def test_deleting_service_loses_the_legacy_finalizer_and_its_address_is_free() -> None:
    small = pool(addresses=("203.0.113.10",))
    gone = svc("gone", ips=("203.0.113.10",), finalizers=(FINALIZER,), deleting=True)
    result = run([gone, svc("next")], pools=(small,))
    by_key = {w.key: w for w in result.services}
    assert by_key["default/gone"].drop_finalizer and by_key["default/gone"].ingress is None
    assert by_key["default/next"].ingress == (ipaddress.ip_address("203.0.113.10"),)
    # With the quarantine on, what this pass frees is not handed out in it.
    rested = plan([gone, svc("next")], nodes=NODES, endpoint_slices=(), pools=(small,), vipgroups=(),
                  rest_released=True)
    assert "default/next" in rested.refused and rested.released == frozenset({ipaddress.ip_address("203.0.113.10")})


def test_a_served_service_with_the_legacy_finalizer_loses_it_with_its_status_write() -> None:
    kept = run([svc("kept", ips=("203.0.113.11",), finalizers=(FINALIZER,))])
    (write,) = kept.services
    assert write.drop_finalizer and write.ingress is None  # it keeps its address: only the finalizer goes
    moved = run([svc("moved", ips=("203.0.113.11",), finalizers=(FINALIZER,), lb_ip="203.0.113.12")])
    (write,) = moved.services
    assert write.drop_finalizer and write.ingress == (ipaddress.ip_address("203.0.113.12"),)


def test_service_no_longer_served_is_released() -> None:
    # Served before: the legacy finalizer says so, or a persisted VipGroup, or the previous pass.
    was = svc("was", ips=("203.0.113.10",), finalizers=(FINALIZER,))
    was["spec"]["type"] = "ClusterIP"
    result = run([was])
    (write,) = result.services
    assert write.drop_finalizer and write.ingress == ()
    assert [n.reason for n in result.notes] == [IP_RELEASED]
    first = run([svc("was")])
    ip = first.services[0].ingress[0]  # type: ignore[index]
    gone_class = svc("was", ips=(str(ip),), cls="example.com/other")
    for groups, previous in (((vipgroup_obj(first.resolution.groups[0]),), None), ((), first.addresses)):
        result = plan([gone_class], nodes=NODES, endpoint_slices=(), pools=(pool(),), vipgroups=groups,
                      previous=previous)
        (write,) = result.services
        assert write.ingress == () and not write.drop_finalizer
        assert result.released == frozenset({ip})
    # Never served: another implementation's status is left alone.
    assert plan([gone_class], nodes=NODES, endpoint_slices=(), pools=(pool(),), vipgroups=()).services == ()


def test_a_pass_before_the_status_write_is_seen_gives_the_same_address() -> None:
    # The previous pass gave "web" an address; its status write is not in the cache yet.
    first = run([svc("web")])
    (ip,) = first.addresses["default/web"]
    again = plan([svc("web")], nodes=NODES, endpoint_slices=(), pools=(pool(),),
                 vipgroups=(vipgroup_obj(first.resolution.groups[0]),), previous=first.addresses,
                 rest_released=True)
    assert again.addresses["default/web"] == (ip,) and again.released == frozenset()


def test_an_address_whose_service_is_gone_is_released_from_what_was_persisted() -> None:
    first = run([svc("a"), svc("b")])
    group = vipgroup_obj(first.resolution.groups[0])
    ips = {w.key: w.ingress[0] for w in first.services}  # type: ignore[index]
    # "b" was deleted (while no controller ran): only the VipGroup still lists its address.
    result = run([svc("a", ips=(str(ips["default/a"]),))], vipgroups=(group,))
    assert result.released == frozenset({ips["default/b"]})
    assert result.groups[0].spec["services"] == ["default/a"]
    # ... or, in a running controller, its previous pass.
    result = plan([svc("a", ips=(str(ips["default/a"]),))], nodes=NODES, endpoint_slices=(), pools=(pool(),),
                  vipgroups=(), previous=first.addresses)
    assert result.released == frozenset({ips["default/b"]})


def test_local_service_without_endpoints_keeps_its_address() -> None:
    local = svc("local", policy="Local", ips=("203.0.113.11",))
    result = run([local])
    assert result.services == () and result.groups == ()
    assert [(n.reason, n.routine) for n in result.notes] == [(NO_GROUP, True)]  # its EndpointSlices say why


def test_persisted_vrid_kept_and_vanished_group_deleted() -> None:
    first = run([svc("web")])
    group = first.resolution.groups[0]
    pinned = vipgroup_obj(group)
    pinned["spec"]["vrid"] = 200 if group.vrid != 200 else 201
    stale = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
             "metadata": {"name": "0" * 64 + "-eth0", "resourceVersion": "1"},
             "spec": {"interface": "eth0", "nodes": ["node-x"], "vrid": 9}}
    ip = str(first.services[0].ingress[0])  # type: ignore[index]
    result = run([svc("web", ips=(ip,))], vipgroups=(pinned, stale))
    assert result.resolution.groups[0].vrid == pinned["spec"]["vrid"]
    assert result.groups == ()  # spec already matches
    assert result.deletes == ("0" * 64 + "-eth0",)


def test_local_group_follows_endpoints() -> None:
    slices = (EndpointSlice("default", "local-abc", "local", frozenset({"node-b"})),)
    result = run([svc("local", policy="Local")], slices=slices)
    assert result.groups[0].spec["nodes"] == ["node-b"]


def test_a_node_flip_writes_the_group_that_reaches_the_most_agents_first() -> None:
    """Every agent waits for the write that carries its group: the controller writes the groups with the
    most members (the agents a write reaches) first, so a Node flip's renamed ``Cluster`` group goes
    before the ``Local`` groups of a few nodes, whatever their names."""
    slices = (EndpointSlice("default", "local-abc", "local", frozenset({"node-a", "node-c"})),)
    services = [svc("web"), svc("local", policy="Local")]
    first = run(services, slices=slices)
    ips = {w.key: str(w.ingress[0]) for w in first.services}  # type: ignore[index]
    written = tuple(vipgroup_obj(g) for g in first.resolution.groups)
    served = [svc("web", ips=(ips["default/web"],)), svc("local", policy="Local", ips=(ips["default/local"],))]
    flipped = (Node("node-a"), Node("node-b"), Node("node-c", ready=False))
    result = plan(served, nodes=flipped, endpoint_slices=slices, pools=(pool(),), vipgroups=written)
    members = [len(w.spec["nodes"]) for w in result.groups]
    assert members == [2, 1] and all(w.create for w in result.groups)  # renamed: both created anew
    # What the order was before: by name, which put the one-node group first here.
    assert sorted(w.name for w in result.groups) != [w.name for w in result.groups]
    assert len(result.deletes) == 2


def test_holder_notes_only_on_change() -> None:
    group = {"metadata": {"name": "g-eth0"},
             "spec": {"services": ["default/web"], "vips": {"ipv4": ["203.0.113.10"]}},
             "status": {"holders": {"ipv4": {"node": "node-a"}}}}
    holders, notes = holder_notes({}, [group])
    assert holders == {"default/web": {"ipv4": "node-a"}}
    assert [(n.name, n.reason, n.routine) for n in notes] == [("web", HOLDER_CHANGED, True)]  # the first holder
    assert holder_notes(holders, [group])[1] == []
    group["status"]["holders"]["ipv4"]["node"] = "node-b"
    _, notes = holder_notes(holders, [group])
    assert "node node-b holds 203.0.113.10 (IPv4) (was node-a)" == notes[0].message
    assert not notes[0].routine  # a move: an Event


def test_vrid_exhaustion_reported_on_the_services_that_got_none() -> None:
    from vipcore.core.model import VridPolicy

    slices = (EndpointSlice("default", "local-abc", "local", frozenset({"node-b"})),)
    result = plan([svc("web"), svc("local", policy="Local")], nodes=NODES, endpoint_slices=slices,
                  pools=(pool(),), vipgroups=(), vrid_policy=VridPolicy(first=7, last=7))
    assert len(result.groups) == 1 and result.groups[0].spec["vrid"] == 7
    # Both keep their addresses; the one without a VRID is told why.
    assert {w.key for w in result.services if w.ingress} == {"default/web", "default/local"}
    no_group = [n for n in result.notes if n.reason == NO_GROUP]
    assert len(no_group) == 1 and "no free VRID" in no_group[0].message and "7-7" in no_group[0].message
    assert not no_group[0].routine  # vipcore's own failure: an Event


def test_released_addresses_are_reported_for_quarantine() -> None:
    gone = svc("gone", ips=("203.0.113.10",), finalizers=(FINALIZER,), deleting=True)
    kept = svc("kept", ips=("203.0.113.11",))
    foreign = svc("foreign", cls="example.com/other", ips=("198.51.100.1",))
    result = run([gone, kept, foreign])
    assert result.released == frozenset({ipaddress.ip_address("203.0.113.10")})
    # A quarantined address is not handed out fresh in the same pass.
    fresh = plan([svc("next")], nodes=NODES, endpoint_slices=(), pools=(pool(addresses=("203.0.113.10",)),),
                 vipgroups=(), quarantined={ipaddress.ip_address("203.0.113.10")})
    assert "quarantine" in fresh.refused["default/next"]


def test_openelb_service_of_a_bgp_eip_loses_only_our_finalizer() -> None:
    eips = [{"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip", "metadata": {"name": "bgp"},
             "spec": {"address": "198.51.100.0/28", "protocol": "bgp"}}]
    obj = svc("old", cls=None, ips=("198.51.100.3",), finalizers=(FINALIZER,),
              annotations={"lb.kubesphere.io/v1alpha1": "openelb", "eip.openelb.kubesphere.io/v1alpha2": "bgp"})
    result = plan([obj], nodes=NODES, endpoint_slices=(), pools=(pool(),), vipgroups=(), eips=eips)
    (write,) = result.services
    assert write.drop_finalizer and write.ingress is None
    assert result.notes == () and result.released == frozenset()


def test_pool_status_counts_and_keeps_the_transition_time() -> None:
    from vipcore.core.plan import pool_status

    lan = pool(addresses=("203.0.113.10-203.0.113.12", "2001:db8::1"))
    addresses = {"default/a": (ipaddress.ip_address("203.0.113.10"), ipaddress.ip_address("2001:db8::1"))}
    status = pool_status(lan, addresses, generation=3, now="T1")
    assert status["ipv4"] == {"allocated": 1, "free": 2} and status["ipv6"] == {"allocated": 1, "free": 0}
    assert status["conditions"][0]["status"] == "True" and status["observedGeneration"] == 3
    again = pool_status(lan, addresses, generation=3, previous=status, now="T2")
    assert again == status
    bad = pool_status(lan, addresses, invalid="spec.addresses[0]: reversed", previous=status, now="T3")
    assert bad["conditions"][0]["status"] == "False" and bad["conditions"][0]["lastTransitionTime"] == "T3"
    assert "last valid spec stays in force" in bad["conditions"][0]["message"]


def test_group_status_held_condition() -> None:
    from vipcore.core.plan import group_status

    obj: dict[str, Any] = {"metadata": {"name": "g", "generation": 2},
                           "spec": {"vips": {"ipv4": ["203.0.113.10"], "ipv6": ["2001:db8::1"]}},
                           "status": {"holders": {"ipv4": {"node": "node-a"}}}}
    status = group_status(obj, now="T1")
    assert status is not None and status["observedGeneration"] == 2
    assert status["conditions"][0]["status"] == "False" and "IPv6" in status["conditions"][0]["message"]
    obj["status"].update(status)
    assert group_status(obj, now="T2") is None
    obj["status"]["holders"]["ipv6"] = {"node": "node-b"}
    held = group_status(obj, now="T3")
    assert held is not None and held["conditions"][0]["status"] == "True"
