"""The controller against the test API server, with the real client over HTTP; no monkeypatching."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import (
    endpoint_slice,
    events,
    lb_ips,
    node,
    service,
    vipgroups,
    vippool,
    wait_for,
)

from vipcore.kube.leases import LeaseTiming
from vipcore.testing.apiserver import ApiServer

NET = ipaddress.ip_network("203.0.113.0/24")


def cluster(server: ApiServer, *pools: dict[str, Any], nodes: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> None:
    for name in nodes:
        server.create(node(name))
    for pool in pools or (vippool("lan", "203.0.113.10-203.0.113.19"),):
        server.create(pool)


def reasons(server: ApiServer, name: str) -> list[str]:
    return [r for _, r, _ in events(server, name)]


def test_allocation_status_group_and_events(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    server.create(service("web"))
    start()
    ips = wait_for(lambda: lb_ips(server, "web"), what="status.loadBalancer.ingress")
    assert len(ips) == 1 and ipaddress.ip_address(ips[0]) in NET
    svc = server.get("v1", "Service", "web", "default")
    assert not svc["metadata"].get("finalizers")  # an address is freed from what the controller holds
    (group,) = wait_for(lambda: vipgroups(server), what="a VipGroup")
    assert group["spec"]["vips"]["ipv4"] == ips
    assert group["spec"]["services"] == ["default/web"]
    assert group["spec"]["nodes"] == ["node-a", "node-b", "node-c"]
    assert 1 <= group["spec"]["vrid"] <= 255
    # Steady state: nothing more is written.
    time.sleep(0.5)
    rv = server.get("v1", "Service", "web", "default")["metadata"]["resourceVersion"]
    time.sleep(0.5)
    assert server.get("v1", "Service", "web", "default")["metadata"]["resourceVersion"] == rv
    # The steady path of a new Service is one write (its status) and no Event: its first
    # address and group are what its status says (logged, nothing a user can act on).
    assert events(server, "web") == []
    writes = [(r.method, r.path) for r in server.requests if r.method != "GET" and "/services/web" in r.path]
    assert writes == [("PATCH", "/api/v1/namespaces/default/services/web/status")]


def test_exhaustion_and_request_outside_every_pool(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("tiny", "203.0.113.10-203.0.113.11"))
    for name in ("a", "b"):
        server.create(service(name))
    server.create(service("outside", lb_ip="198.51.100.7"))
    start()
    wait_for(lambda: lb_ips(server, "a") and lb_ips(server, "b"), what="two allocations")
    server.create(service("c"))
    wait_for(lambda: "IPRefused" in reasons(server, "c"), what="refusal event for c")
    wait_for(lambda: "IPRefused" in reasons(server, "outside"), what="refusal event for outside")
    (_, _, message), = [e for e in events(server, "c") if e[1] == "IPRefused"]
    assert "no free IPv4 address" in message
    (_, _, message), = [e for e in events(server, "outside") if e[1] == "IPRefused"]
    assert "198.51.100.7" in message and "outside pool" in message
    assert lb_ips(server, "c") == [] and lb_ips(server, "outside") == []
    assert not server.get("v1", "Service", "c", "default")["metadata"].get("finalizers")
    # The others are unaffected and the group holds exactly their two addresses.
    held = sorted(lb_ips(server, "a") + lb_ips(server, "b"))
    assert held == ["203.0.113.10", "203.0.113.11"]
    (group,) = vipgroups(server)
    assert sorted(group["spec"]["vips"]["ipv4"]) == held
    # A refusal is reported once, not on every pass.
    time.sleep(0.6)
    assert reasons(server, "c").count("IPRefused") == 1
    # Freeing an address lets the refused Service have it.
    server.delete("v1", "Service", "a", "default")
    wait_for(lambda: lb_ips(server, "c"), what="c gets the freed address")


def test_delete_releases_at_once(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("one", "203.0.113.10"))
    server.create(service("first"))
    start()
    wait_for(lambda: lb_ips(server, "first") == ["203.0.113.10"], what="allocation")
    server.delete("v1", "Service", "first", "default")
    assert not server.objects("v1", "Service", "default")  # no finalizer holds it
    wait_for(lambda: not vipgroups(server), what="the group to be deleted")
    server.create(service("second"))
    wait_for(lambda: lb_ips(server, "second") == ["203.0.113.10"], what="the address to be reused")


def test_other_classes_untouched(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    server.create(service("foreign", cls="example.com/other-lb"))
    server.create(service("classless", cls=None))
    server.create(service("ours"))
    start()
    wait_for(lambda: lb_ips(server, "ours"), what="allocation of ours")
    time.sleep(0.3)
    for name in ("foreign", "classless"):
        obj = server.get("v1", "Service", name, "default")
        assert lb_ips(server, name) == []
        assert not obj["metadata"].get("finalizers")
        assert events(server, name) == []
        assert obj["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    mutated = [r for r in server.requests if r.method in ("PATCH", "PUT", "POST")
               and ("/services/foreign" in r.path or "/services/classless" in r.path)]
    assert mutated == []


def test_default_class_serves_classless(server: ApiServer, start: Callable[..., Any]) -> None:
    from vipcore.core.plan import Selection

    cluster(server)
    server.create(service("classless", cls=None))
    server.create(service("foreign", cls="example.com/other-lb"))
    start(selection=Selection(default_class=True))
    wait_for(lambda: lb_ips(server, "classless"), what="classless allocation")
    time.sleep(0.3)
    assert lb_ips(server, "foreign") == []


def test_openelb_annotations_and_eip(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    server.create({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                   "metadata": {"name": "eip-vip"},
                   "spec": {"address": "203.0.113.64/28", "protocol": "vip", "interface": "eth0"}})
    server.create({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                   "metadata": {"name": "eip-bgp"},
                   "spec": {"address": "203.0.113.128/28", "protocol": "bgp"}})
    server.create(service("legacy", cls=None, annotations={
        "lb.kubesphere.io/v1alpha1": "openelb",
        "eip.openelb.kubesphere.io/v1alpha2": "eip-vip",
        "eip.openelb.kubesphere.io/v1alpha1": "203.0.113.70",
    }))
    server.create(service("legacy-any", cls=None, annotations={
        "lb.kubesphere.io/v1alpha1": "openelb", "eip.openelb.kubesphere.io/v1alpha2": "eip-vip"}))
    start()
    assert wait_for(lambda: lb_ips(server, "legacy"), what="legacy allocation") == ["203.0.113.70"]
    other = wait_for(lambda: lb_ips(server, "legacy-any"), what="pool allocation")
    # A /28 CIDR: network (.64) and broadcast (.79) addresses are never handed out.
    assert ipaddress.ip_address(other[0]) in ipaddress.ip_network("203.0.113.64/28")
    assert other[0] not in ("203.0.113.64", "203.0.113.79")


def test_local_service_group_follows_endpoints(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    server.create(service("local", policy="Local"))
    start()
    ip = wait_for(lambda: lb_ips(server, "local"), what="allocation without endpoints")
    assert vipgroups(server) == []
    # No ready endpoint yet: every new Local Service is so for a moment, no Event (its EndpointSlices say it).
    time.sleep(0.3)
    assert "NoGroup" not in reasons(server, "local")
    server.create(endpoint_slice("local", ["node-b"]))
    (group,) = wait_for(lambda: vipgroups(server), what="group for node-b")
    assert group["spec"]["nodes"] == ["node-b"]
    slice_obj = server.get("discovery.k8s.io/v1", "EndpointSlice", "local-x1", "default")
    slice_obj["endpoints"] = [{"addresses": ["10.0.0.9"], "nodeName": "node-c", "conditions": {"ready": True}}]
    server.update(slice_obj)
    wait_for(lambda: [g["spec"]["nodes"] for g in vipgroups(server)] == [["node-c"]], what="group moves to node-c")
    assert lb_ips(server, "local") == ip


def test_conflict_is_retried(server: ApiServer) -> None:
    """A plan made from a stale read meets 409, re-reads, and writes again when the change is unrelated."""
    from tests.helpers.cluster import settings

    from vipcore.controller.runtime import Controller

    cluster(server)
    server.create(service("web"))
    client = server.client()
    controller = Controller(settings("c1"), client)  # not running: this test drives the passes
    controller.source.start()
    try:
        assert controller.source.wait_synced(10)
        inputs = controller.inputs()
        # Someone labels the Service after the controller read it.
        web = server.get("v1", "Service", "web", "default")
        web["metadata"].setdefault("labels", {})["team"] = "blue"
        server.update(web)
        before = time.monotonic()
        result = controller.reconcile(inputs)
        assert result.conflicts == 1 and result.clean
        assert [r.code for r in server.requests_since(before) if "/services/web" in r.path
                and r.method == "PATCH"] == [409, 200]  # the status write, retried once
        assert lb_ips(server, "web")
        assert server.get("v1", "Service", "web", "default")["metadata"]["labels"] == {"team": "blue"}
        # A change that matters (a requested address) is not overwritten: the pass gives up and re-plans.
        inputs = controller.inputs()
        server.create(service("other"))
        wait_for(lambda: len(controller.source.objects("services")) == 2, what="cache")
        inputs = controller.inputs()
        other = server.get("v1", "Service", "other", "default")
        other["spec"]["loadBalancerIP"] = "203.0.113.19"
        server.update(other)
        result = controller.reconcile(inputs)
        assert result.stale == ["default/other"] and lb_ips(server, "other") == []
        wait_for(lambda: controller.source.objects("services")["default/other"]["spec"].get("loadBalancerIP"),
                 what="cache")
        # VipGroup writes carry the resourceVersion the plan read: wait until the cache has the groups the
        # last pass wrote, or the next pass meets 409 and (rightly) plans again.
        wait_for(lambda: {k: o["metadata"]["resourceVersion"] for k, o in controller.source.objects("vipgroups").items()}
                 == {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in vipgroups(server)},
                 what="the cache to hold the VipGroups the last pass wrote")
        # The stale Service waits out its own short backoff (per object); then it is written.
        assert "default/other" in controller.backing_off() or lb_ips(server, "other") == []
        wait_for(lambda: not controller.backing_off(), what="default/other's backoff")
        assert controller.reconcile().clean
        assert lb_ips(server, "other") == ["203.0.113.19"]
    finally:
        controller.source.stop()
        client.close()


def test_vrids_stable_across_restart(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.19", default=True), vippool("dmz", "203.0.113.40-203.0.113.49",
                                                                          interface="eth1"))
    server.create(service("web"))
    server.create(service("local", policy="Local"))
    server.create(endpoint_slice("local", ["node-a"]))
    server.create(service("dmz", annotations={"vipcore.io/pool": "dmz"}))
    first = start("c1")
    wait_for(lambda: len(vipgroups(server)) == 3, what="three groups")
    before = {g["metadata"]["name"]: g["spec"]["vrid"] for g in vipgroups(server)}
    # Pin one group to a VRID the hash would not choose: persisted VRIDs win.
    name = sorted(before)[0]
    pinned = 250 if before[name] != 250 else 251
    server.patch("vipcore.io/v1alpha1", "VipGroup", name, {"spec": {"vrid": pinned}})
    first.stop()
    second = start("c2")
    wait_for(lambda: second.leading, what="c2 leads")
    server.create(service("more"))  # changes the Cluster group's VIPs, not its VRID
    wait_for(lambda: lb_ips(server, "more"), what="allocation after restart")
    time.sleep(0.3)
    after = {g["metadata"]["name"]: g["spec"]["vrid"] for g in vipgroups(server)}
    assert after == {**before, name: pinned}


def test_two_replicas_one_leader_and_takeover(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    server.create(service("web"))
    one = start("c1")
    two = start("c2")
    wait_for(lambda: one.leading or two.leading, what="a leader")
    time.sleep(1.0)
    assert one.leading != two.leading
    leader, standby = (one, two) if one.leading else (two, one)
    lease = server.get("coordination.k8s.io/v1", "Lease", "vipcore-controller", "default")
    assert lease["spec"]["holderIdentity"] == leader.controller.settings.identity
    wait_for(lambda: lb_ips(server, "web"), what="allocation by the leader")
    # The leader dies without releasing: from the API server's view it goes silent (a black hole
    # swallows even its release on the way out). Its loop is stopped properly, so no coroutine is
    # left pending on a closed loop (their cleanup would run at garbage collection, without a loop).
    with server.black_hole(f"vipcore-controller/{leader.controller.settings.identity}"):
        died = time.monotonic()
        leader.stop()
        wait_for(lambda: standby.leading, timeout=10, what="takeover")
        took = time.monotonic() - died
    # Lease duration 2 s + retry period, with room for a loaded machine.
    assert took < 2.0 + 3.0, f"takeover took {took:.2f}s"
    server.create(service("after"))
    wait_for(lambda: lb_ips(server, "after"), what="the new leader allocates")
    lease = server.get("coordination.k8s.io/v1", "Lease", "vipcore-controller", "default")
    assert lease["spec"]["holderIdentity"] == standby.controller.settings.identity
    assert lease["spec"]["leaseTransitions"] >= 1


def test_graceful_stop_releases_lease(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server)
    slow = LeaseTiming(duration=8.0, renew_deadline=6.0, retry_period=0.25)
    one = start("c1", timing=slow)
    wait_for(lambda: one.leading, what="c1 leads")
    two = start("c2", timing=slow)
    time.sleep(0.5)
    assert not two.leading
    one.stop()
    stopped = time.monotonic()
    wait_for(lambda: two.leading, timeout=10, what="takeover after release")
    assert time.monotonic() - stopped < 4.0  # released: well before the 8 s Lease could expire


def test_watch_drops_410_and_5xx_bursts_lose_and_repeat_nothing(server: ApiServer, start: Callable[..., Any]) -> None:
    cluster(server, vippool("lan", "203.0.113.10-203.0.113.40"))
    start()
    names = [f"svc{i}" for i in range(8)]
    for i, name in enumerate(names):
        server.create(service(name))
        if i == 1:
            server.close_watches()
        elif i == 3:
            server.expire()  # every resume now gets 410 Gone: re-list
        elif i == 5:
            server.fail_next(15)  # a burst of 503s
    wait_for(lambda: all(lb_ips(server, n) for n in names), timeout=30, what="every Service allocated")
    ips = [lb_ips(server, n)[0] for n in names]
    assert len(set(ips)) == len(ips)
    time.sleep(1.0)
    for name in names:
        statuses = [r for r in server.requests if r.method == "PATCH" and r.code == 200
                    and r.path == f"/api/v1/namespaces/default/services/{name}/status"]
        assert len(statuses) == 1, statuses  # allocated once, never again
        assert events(server, name) == []
    (group,) = vipgroups(server)
    assert sorted(group["spec"]["vips"]["ipv4"]) == sorted(ips)


def test_rate_limit_workers_and_backoff_settings_are_range_checked() -> None:
    import pytest

    from vipcore.controller.runtime import ControllerSettings
    from vipcore.core.errors import ConfigError
    from vipcore.core.settings import Config

    def read(section: dict[str, Any]) -> ControllerSettings:
        return ControllerSettings.from_config(Config(source="kubernetes", controller=section))

    s = read({"qps": 200, "burst": 400, "workers": 4, "backoff": {"initial": 0.5, "max": 30}})
    assert (s.qps, s.burst, s.workers, s.backoff_initial, s.backoff_max) == (200, 400, 4, 0.5, 30)
    assert read({"qps": 0}).qps == 0  # no client-side limit
    defaults = read({})
    assert (defaults.qps, defaults.burst, defaults.workers) == (50, 100, 8)
    for bad, field in [({"qps": -1}, "controller.qps"), ({"qps": True}, "controller.qps"),
                       ({"qps": "fast"}, "controller.qps"), ({"burst": 0}, "controller.burst"),
                       ({"burst": 1.5}, "controller.burst"), ({"workers": 100}, "controller.workers"),
                       ({"backoff": {"initial": 5, "max": 1}}, "controller.backoff.max"),
                       ({"backoff": {"initial": 0}}, "controller.backoff.initial"),
                       ({"backoff": {"x": 1}}, "controller.backoff"), ({"backoff": 3}, "controller.backoff")]:
        with pytest.raises(ConfigError) as err:
            read(bad)
        assert field in str(err.value), (bad, str(err.value))


def test_a_pass_planned_from_a_stale_cache_writes_nothing_twice(server: ApiServer) -> None:
    """A pass planned before the cache saw the last pass's writes meets 409, re-reads, finds them, and stops."""
    from tests.helpers.cluster import settings

    from vipcore.controller.runtime import Controller

    cluster(server)
    server.create(service("web"))
    client = server.client()
    controller = Controller(settings("c1"), client)  # not running: this test drives the passes
    controller.source.start()
    try:
        assert controller.source.wait_synced(10)
        stale = controller.inputs()
        assert controller.reconcile(stale).clean
        before = time.monotonic()
        result = controller.reconcile(stale)  # the same inputs: the cache "has not seen" the writes
        # The Service re-read after the 409 holds its address already (its meaning changed): given up and
        # re-planned after its own short backoff, not written again; the VipGroup exists (409) likewise.
        assert "default/web" in result.stale and result.written == 0
        applied = [r for r in server.requests_since(before) if r.method == "PATCH" and "/services/web" in r.path]
        assert [r.code for r in applied] == [409], applied
    finally:
        controller.source.stop()
        client.close()
