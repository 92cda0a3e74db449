"""Kubernetes objects to model values: the fast paths give the answers and the errors they always gave."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from vipcore.core.errors import ManifestError
from vipcore.core.model import TrafficPolicy
from vipcore.core.objects import endpoint_slice_from_k8s, node_from_k8s, service_from_k8s


def _node(address: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
            "status": {"addresses": [{"type": "InternalIP", "address": address}]}}


@pytest.mark.parametrize("text", ["198.51.100.7", " 2001:db8::7 ", "::ffff:198.51.100.7", "fe80::1%eth0",
                                  "2001:DB8:0:0:0:0:0:7"])
def test_node_addresses_are_what_ip_address_reads(text: str) -> None:
    assert node_from_k8s(_node(text)).addresses == (ipaddress.ip_address(text.strip()),)


@pytest.mark.parametrize("text", ["1.2.3", "2001:db8::zz", "1.2.3.4:80", ":", "", "198.51.100.300", "2001:db8:::1"])
def test_a_bad_node_address_is_named(text: str) -> None:
    with pytest.raises(ManifestError, match=r"status\.addresses\[0\]\.address.*is not an IP address"):
        node_from_k8s(_node(text))


def _service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "ns"},
            "spec": {"type": "LoadBalancer", **spec}}


@pytest.mark.parametrize(("policy", "expected"), [(None, TrafficPolicy.CLUSTER), ("", TrafficPolicy.CLUSTER),
                                                  ("Cluster", TrafficPolicy.CLUSTER), ("Local", TrafficPolicy.LOCAL)])
def test_the_traffic_policy(policy: Any, expected: TrafficPolicy) -> None:
    assert service_from_k8s(_service(externalTrafficPolicy=policy)).traffic_policy is expected


@pytest.mark.parametrize("policy", ["local", "Nearby", ["Local"], {"a": 1}, 1, True])
def test_a_bad_traffic_policy_is_named_whatever_its_type(policy: Any) -> None:
    with pytest.raises(ManifestError, match=r"spec\.externalTrafficPolicy.*must be Cluster or Local"):
        service_from_k8s(_service(externalTrafficPolicy=policy))


def test_requested_addresses_name_their_field() -> None:
    obj = _service()
    obj["metadata"]["annotations"] = {"vipcore.io/ip": "198.51.100.7,2001:db8::7"}
    assert [str(ip) for ip in service_from_k8s(obj).requested_ips] == ["198.51.100.7", "2001:db8::7"]
    obj["metadata"]["annotations"] = {"eip.openelb.kubesphere.io/v1alpha1": "198.51.100.x"}
    with pytest.raises(ManifestError, match=r"metadata\.annotations\[eip\.openelb\.kubesphere\.io/v1alpha1\]"):
        service_from_k8s(obj)


@pytest.mark.parametrize(("conditions", "ready"), [(None, True), ({}, True), ({"ready": True}, True),
                                                   ({"ready": False}, False), ({"ready": None}, True)])
def test_endpoint_conditions(conditions: Any, ready: bool) -> None:
    obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "s-x", "namespace": "ns", "labels": {"kubernetes.io/service-name": "s"}},
           "endpoints": [{"nodeName": "n1", "conditions": conditions}]}
    assert endpoint_slice_from_k8s(obj).ready_nodes == (frozenset({"n1"}) if ready else frozenset())
    obj["endpoints"][0]["conditions"] = ["ready"]
    with pytest.raises(ManifestError, match=r"endpoints\[0\]\.conditions.*expected a mapping"):
        endpoint_slice_from_k8s(obj)


def test_builders_merged_in_order_hold_what_one_builder_given_every_value_holds() -> None:
    """A manifest read in pieces: each piece's builder, merged in the pieces' order, is the builder that
    was given every value one by one (a later Node of a name wins, in the first one's place)."""
    from vipcore.core.objects import StateBuilder, convert

    def node(name: str, ready: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}}

    def service(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
                "spec": {"type": "LoadBalancer"}}

    pool = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
            "spec": {"interface": "eth0", "addresses": ["198.51.100.0/24"]}}
    group = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": "g"}, "spec": {"vrid": 7}}
    again = dict(group, spec={"vrid": 9})
    slice_ = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
              "metadata": {"name": "a-x", "namespace": "ns", "labels": {"kubernetes.io/service-name": "a"}},
              "endpoints": [{"nodeName": "n1"}]}
    pieces = [[node("n1", "True"), service("a"), group], [node("n2", "True"), slice_, pool],
              [node("n1", "False"), service("b"), again, slice_]]
    whole = StateBuilder()
    merged = StateBuilder()
    for piece in pieces:
        part = StateBuilder()
        for obj in piece:
            converted = convert(obj)
            assert converted is not None
            whole.add(converted)
            part.add(converted)
        merged.merge(part)
    assert merged.state() == whole.state()
    assert [n.name for n in merged.state().nodes] == ["n1", "n2"] and not merged.state().nodes[0].ready
    assert merged.vrids == {"g": 9} and len(merged.slices) == 2
    for twice in (service("a"), pool):
        part = StateBuilder()
        converted = convert(twice)
        assert converted is not None
        part.add(converted)
        with pytest.raises(ManifestError, match="defined twice"):
            merged.merge(part)
