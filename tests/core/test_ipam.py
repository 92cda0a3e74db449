"""Allocation rules: held addresses stay, pools found by address, disabled pools, sharing, quarantine."""

from __future__ import annotations

import ipaddress
from typing import Any

from vipcore.core import ipam
from vipcore.core.model import Family, Pool, Service, TrafficPolicy
from vipcore.core.objects import pool_from_k8s, service_from_k8s

ip = ipaddress.ip_address


def pool(name: str, *addresses: str, **spec: Any) -> Pool:
    return pool_from_k8s({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": name},
                          "spec": {"addresses": list(addresses), "interface": "eth0", **spec}})


def svc(name: str, *, held: tuple[str, ...] = (), requested: tuple[str, ...] = (), pool_name: str | None = None,
        key: str | None = None, ports: tuple[tuple[str, int], ...] = (("TCP", 80),),
        policy: TrafficPolicy = TrafficPolicy.CLUSTER, ns: str = "default", dual: bool = False) -> Service:
    return Service(namespace=ns, name=name, vips=tuple(ip(a) for a in held),
                   requested_ips=tuple(ip(a) for a in requested), pool=pool_name, sharing_key=key, ports=ports,
                   traffic_policy=policy, require_dual_stack=dual)


def run(services: list[Service], pools: list[Pool], **kwargs: Any) -> ipam.Allocation:
    by_name = {p.name: p for p in pools}
    pairs = []
    refused = {}
    for service in services:
        chosen = ipam.choose_pool(service, by_name)
        if isinstance(chosen, str):
            refused[service.key] = chosen
        else:
            pairs.append((service, chosen))
    result = ipam.allocate(pairs, **kwargs)
    return ipam.Allocation(addresses=result.addresses, refused={**refused, **result.refused})


def test_disabled_pool_keeps_held_addresses_and_allocates_nothing_new() -> None:
    lan = pool("lan", "203.0.113.10-203.0.113.12", default=True, disabled=True)
    result = run([svc("held", held=("203.0.113.11",)), svc("new")], [lan])
    assert result.addresses["default/held"] == (ip("203.0.113.11"),)
    assert "default/new" not in result.addresses
    assert "disabled" in result.refused["default/new"]
    # A requested address from a disabled pool is refused unless the Service already holds it.
    result = run([svc("asks", requested=("203.0.113.12",), pool_name="lan")], [lan])
    assert "disabled" in result.refused["default/asks"]


def test_deleting_pool_keeps_held_addresses() -> None:
    lan = pool_from_k8s({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool",
                         "metadata": {"name": "lan", "deletionTimestamp": "2026-01-01T00:00:00Z"},
                         "spec": {"addresses": ["203.0.113.10-203.0.113.12"], "interface": "eth0",
                                  "default": True}})
    assert lan.deleting
    result = run([svc("held", held=("203.0.113.10",)), svc("new")], [lan])
    assert result.addresses["default/held"] == (ip("203.0.113.10"),)
    assert "being deleted" in result.refused["default/new"]


def test_new_default_pool_does_not_renumber_held_addresses() -> None:
    old = pool("old", "203.0.113.10-203.0.113.12", default=True)
    new = pool("aaa-new", "198.51.100.10-198.51.100.12", default=True)  # sorts first by name
    result = run([svc("web", held=("203.0.113.11",)), svc("fresh")], [old, new])
    assert result.addresses["default/web"] == (ip("203.0.113.11"),)
    assert ip("198.51.100.10") <= result.addresses["default/fresh"][0] <= ip("198.51.100.12")


def test_held_address_stays_while_any_pool_contains_it() -> None:
    other = pool("other", "203.0.113.10-203.0.113.12")
    default = pool("main", "198.51.100.10-198.51.100.12", default=True)
    result = run([svc("web", held=("203.0.113.12",))], [other, default])
    assert result.addresses["default/web"] == (ip("203.0.113.12"),)


def test_requested_ip_without_annotation_picks_the_pool_containing_it() -> None:
    other = pool("other", "203.0.113.10-203.0.113.12")
    default = pool("main", "198.51.100.10-198.51.100.12", default=True)
    result = run([svc("web", requested=("203.0.113.10",))], [other, default])
    assert result.addresses["default/web"] == (ip("203.0.113.10"),)
    result = run([svc("web", requested=("192.0.2.1",))], [other, default])
    assert "outside pool 'main'" in result.refused["default/web"]


def test_require_dual_stack_with_ipv4_only_pool_is_refused_with_a_reason() -> None:
    v4 = pool("v4", "203.0.113.10-203.0.113.12", default=True)
    result = run([svc("web", dual=True)], [v4])
    assert "RequireDualStack" in result.refused["default/web"] and "IPv6" in result.refused["default/web"]
    both = pool("both", "203.0.113.10-203.0.113.12", "2001:db8::10-2001:db8::12", default=True)
    result = run([svc("web", dual=True)], [both])
    assert {Family.of(a) for a in result.addresses["default/web"]} == {Family.IPV4, Family.IPV6}


def test_sharing_same_key_no_port_clash() -> None:
    lan = pool("lan", "203.0.113.10-203.0.113.12", default=True)
    dns_udp = svc("dns-udp", key="dns", ports=(("UDP", 53),))
    dns_tcp = svc("dns-tcp", key="dns", ports=(("TCP", 53),))
    result = run([dns_udp, dns_tcp], [lan])
    assert result.addresses["default/dns-udp"] == result.addresses["default/dns-tcp"]


def test_sharing_refused_on_port_clash_other_key_or_local_policy() -> None:
    lan = pool("lan", "203.0.113.10", default=True)
    first = svc("a", key="k", held=("203.0.113.10",))
    for second, why in ((svc("b", key="k", requested=("203.0.113.10",)), "same port"),
                        (svc("b", key="other", requested=("203.0.113.10",), ports=(("TCP", 81),)), "sharing key"),
                        (svc("b", requested=("203.0.113.10",), ports=(("TCP", 81),)), "already used"),
                        (svc("b", key="k", requested=("203.0.113.10",), ports=(("TCP", 81),),
                             policy=TrafficPolicy.LOCAL), "Cluster")):
        result = run([first, second], [lan])
        assert result.addresses["default/a"] == (ip("203.0.113.10"),)
        assert why in result.refused["default/b"], result.refused
    ok = svc("b", key="k", requested=("203.0.113.10",), ports=(("TCP", 81),))
    assert run([first, ok], [lan]).addresses["default/b"] == (ip("203.0.113.10"),)


def test_openelb_services_requesting_the_same_address_share_it() -> None:
    def openelb(name: str, port: int) -> Service:
        return service_from_k8s({"metadata": {"name": name, "namespace": "default", "annotations": {
            "lb.kubesphere.io/v1alpha1": "openelb", "eip.openelb.kubesphere.io/v1alpha1": "203.0.113.10"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": port, "protocol": "TCP"}]}})
    lan = pool("lan", "203.0.113.10-203.0.113.11")
    result = run([openelb("a", 80), openelb("b", 443)], [lan])
    assert result.addresses["default/a"] == result.addresses["default/b"] == (ip("203.0.113.10"),)
    result = run([openelb("a", 80), openelb("b", 80)], [lan])
    assert "same port" in result.refused["default/b"]


def test_metallb_annotation_parsed() -> None:
    service = service_from_k8s({"metadata": {"name": "a", "namespace": "default",
                                             "annotations": {"metallb.universe.tf/allow-shared-ip": "key1"}},
                                "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack",
                                         "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]}})
    assert service.sharing_key == "key1" and service.require_dual_stack


def test_quarantined_address_is_not_given_out_fresh() -> None:
    lan = pool("lan", "203.0.113.10", default=True)
    result = run([svc("next")], [lan], quarantined={ip("203.0.113.10")})
    assert "quarantine" in result.refused["default/next"]
    # ... but a Service that holds it keeps it, and one that asks for it by name gets it.
    assert run([svc("held", held=("203.0.113.10",))], [lan], quarantined={ip("203.0.113.10")}).addresses
    assert run([svc("asks", requested=("203.0.113.10",))], [lan], quarantined={ip("203.0.113.10")}).addresses
    bigger = pool("lan", "203.0.113.10-203.0.113.11", default=True)
    result = run([svc("next")], [bigger], quarantined={ip("203.0.113.10")})
    assert result.addresses["default/next"] == (ip("203.0.113.11"),)


def test_namespaces_restrict_new_allocations_only() -> None:
    lan = pool("lan", "203.0.113.10-203.0.113.11", default=True, namespaces=["prod"])
    result = run([svc("held", ns="dev", held=("203.0.113.10",)), svc("new", ns="dev")], [lan])
    assert result.addresses["dev/held"] == (ip("203.0.113.10"),)
    assert "does not serve namespace" in result.refused["dev/new"]


def test_openelb_eip_namespaces_choose_the_eip_without_restricting() -> None:
    def eip(name: str, address: str, **spec: Any) -> Pool:
        return pool_from_k8s({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                              "metadata": {"name": name, "annotations": spec.pop("annotations", {})},
                              "spec": {"address": address, "protocol": "vip", "interface": "eth0", **spec}})
    default = eip("default-eip", "203.0.113.10-203.0.113.11",
                  annotations={"eip.openelb.kubesphere.io/is-default-eip": "true"})
    team = eip("team", "198.51.100.10-198.51.100.11", namespaces=["team"])
    result = run([svc("a", ns="team"), svc("b", ns="other"), svc("c", ns="other", pool_name="team")],
                 [default, team])
    assert team.contains(result.addresses["team/a"][0])
    assert default.contains(result.addresses["other/b"][0])
    assert team.contains(result.addresses["other/c"][0])  # named explicitly: not restricted


def test_one_chooser_for_many_services_answers_as_choose_pool_for_each() -> None:
    """resolve() chooses with one :class:`ipam.PoolChooser` (the usual pool made once per namespace):
    every Service gets what a fresh ``choose_pool`` gives it, whatever the Services before it."""
    def eip(name: str, address: str, namespaces: list[str], **annotations: str) -> Pool:
        return pool_from_k8s({"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip",
                              "metadata": {"name": name, "annotations": annotations},
                              "spec": {"address": address, "protocol": "vip", "interface": "eth0",
                                       "namespaces": namespaces}})
    pools_sets = [
        [],
        [pool("only", "203.0.113.10-203.0.113.11")],
        [pool("only", "203.0.113.10-203.0.113.11", disabled=True)],
        [pool("a", "203.0.113.10-203.0.113.11"), pool("b", "203.0.113.20-203.0.113.21")],
        [pool("lan", "203.0.113.10-203.0.113.11", default=True, namespaces=["prod"]),
         pool("dark", "203.0.113.20-203.0.113.21", default=True, disabled=True),
         eip("team-b", "198.51.100.20-198.51.100.21", ["team", "ops"]),
         eip("team-a", "198.51.100.10-198.51.100.11", ["team"]),
         eip("shut", "198.51.100.30-198.51.100.31", ["ops", "dev"],
             **{"eip.openelb.kubesphere.io/is-default-eip": "true"})],
    ]
    services = [svc(f"s{i}", ns=ns, held=held, requested=requested, pool_name=named)
                for i, (ns, held, requested, named) in enumerate(
                    (ns, held, requested, named)
                    for ns in ("team", "ops", "dev", "prod", "other")
                    for held in ((), ("203.0.113.11",), ("198.51.100.31",))
                    for requested in ((), ("198.51.100.10",), ("192.0.2.1",))
                    for named in (None, "team-b", "missing"))]
    for pools in pools_sets:
        by_name = {p.name: p for p in pools}
        chooser = ipam.PoolChooser(by_name)
        for service in services + services[::-1]:
            assert chooser(service) == ipam.choose_pool(service, by_name), (service, pools)
    assert isinstance(ipam.PoolChooser({p.name: p for p in pools_sets[-1]})(svc("x", ns="ops")), Pool)


def test_a_fresh_address_starts_where_the_documented_hash_of_its_key_says() -> None:
    """Every node and every vipcore version must give a Service the same fresh address: the probe starts at
    ``sha256("<namespace>/<name>/<version>")[:8] % size`` (big-endian), for each family."""
    import hashlib

    lan = pool("lan", "198.51.100.10-198.51.100.209", "2001:db8:5::10-2001:db8:5::d7", default=True)  # 200 each
    services = [svc(f"s{i}", ns=f"ns{i % 3}", dual=True) for i in range(5)]
    result = run(services, [lan])
    for service in services:  # five starts in 200 addresses: none taken by another (no probing here)
        expected = []
        for version, base in ((4, int(ip("198.51.100.10"))), (6, int(ip("2001:db8:5::10")))):
            digest = hashlib.sha256(f"{service.key}/{version}".encode()).digest()
            expected.append(base + int.from_bytes(digest[:8], "big") % 200)
        assert [int(a) for a in result.addresses[service.key]] == expected, service.key
