"""Contract tests: the test API server behaves as a real one does.

Driven with the official client over HTTP. The same tests run against a real
cluster when VIPCORE_TEST_KUBECONFIG points at a kubeconfig; tests that need
fault injection use the ``fake_only`` fixture and are skipped there.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import kubernetes.client as k8s
import pytest
from kubernetes import watch

from tests.helpers.apiserver import Cluster

GROUP, VERSION = "vipcore.io", "v1alpha1"


def status_body(exc: k8s.ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    return body


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], **spec}}


def vipgroup(name: str, vrid: int = 7, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VipGroup", "metadata": {"name": name},
            "spec": {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": vrid,
                     "vips": {"ipv4": ["198.51.100.10"]}, **extra}}


def create_group(c: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    obj = c.custom.create_cluster_custom_object(GROUP, VERSION, "vipgroups", body)
    name = body["metadata"]["name"]
    c.cleanup.append(lambda: c.custom.delete_cluster_custom_object(GROUP, VERSION, "vipgroups", name))
    return obj


def raw_watch(func: Any, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Every event of one watch request (bounded by timeout_seconds), as sent."""
    resp = func(*args, watch=True, _preload_content=False, **kwargs)
    events = []
    try:
        for line in resp.read().decode().splitlines():
            if line.strip():
                events.append(json.loads(line))
    finally:
        resp.release_conn()
    return events


def watch_in_background(func: Any, *args: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], threading.Thread]:
    events: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: events.extend(raw_watch(func, *args, **kwargs)), daemon=True)
    thread.start()
    return events, thread


# ---------------------------------------------------------------- discovery and basics

def test_discovery_serves_builtin_and_custom_kinds(cluster: Cluster) -> None:
    version = k8s.VersionApi(cluster.client).get_code()
    assert version.major == "1"
    groups = {g.name: g for g in k8s.ApisApi(cluster.client).get_api_versions().groups}
    for name in ("discovery.k8s.io", "coordination.k8s.io", "vipcore.io", "apiextensions.k8s.io"):
        assert name in groups
    core = {r.name: r for r in k8s.CoreV1Api(cluster.client).get_api_resources().resources}
    assert core["services"].namespaced and not core["nodes"].namespaced
    assert "services/status" in core and "svc" in core["services"].short_names
    custom = k8s.CustomObjectsApi(cluster.client).get_api_resources(GROUP, VERSION)
    names = {r.name for r in custom.resources}
    assert {"vipgroups", "vipgroups/status", "vippools"} <= names


def test_create_answers_201_with_server_fields_and_increasing_versions(cluster: Cluster) -> None:
    first, code, _ = cluster.core.create_namespaced_service_with_http_info(cluster.namespace, service(cluster.name()))
    assert code == 201
    assert first.metadata.uid and first.metadata.creation_timestamp
    second = cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name()))
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    listed = cluster.core.list_namespaced_service(cluster.namespace)
    assert int(listed.metadata.resource_version) >= int(second.metadata.resource_version)


def test_create_twice_is_409_already_exists(cluster: Cluster) -> None:
    body = service(cluster.name())
    cluster.core.create_namespaced_service(cluster.namespace, body)
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.create_namespaced_service(cluster.namespace, body)
    assert err.value.status == 409
    assert status_body(err.value)["reason"] == "AlreadyExists"


def test_get_missing_is_404_not_found(cluster: Cluster) -> None:
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.read_namespaced_service("vipcore-missing", cluster.namespace)
    assert err.value.status == 404
    body = status_body(err.value)
    assert body["reason"] == "NotFound" and body["code"] == 404


def test_create_in_missing_namespace_is_404(cluster: Cluster) -> None:
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.create_namespaced_service("vipcore-no-such-namespace", service("web"))
    assert err.value.status == 404


def test_generate_name_makes_a_unique_name(cluster: Cluster) -> None:
    body = service("")
    body["metadata"] = {"generateName": "vipcore-gen-"}
    a = cluster.core.create_namespaced_service(cluster.namespace, body)
    b = cluster.core.create_namespaced_service(cluster.namespace, body)
    assert a.metadata.name.startswith("vipcore-gen-") and len(a.metadata.name) == len("vipcore-gen-") + 5
    assert a.metadata.name != b.metadata.name


def test_invalid_name_is_422(cluster: Cluster) -> None:
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.create_namespaced_service(cluster.namespace, service("Not_Valid"))
    assert err.value.status == 422
    assert status_body(err.value)["reason"] == "Invalid"


# ---------------------------------------------------------------- writes

def test_stale_resource_version_is_409_conflict_on_put_and_patch(cluster: Cluster) -> None:
    name = cluster.name()
    svc = cluster.core.create_namespaced_service(cluster.namespace, service(name))
    stale = svc.metadata.resource_version
    cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"labels": {"x": "1"}}})
    svc.metadata.labels = {"x": "2"}
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.replace_namespaced_service(name, cluster.namespace, svc)
    assert err.value.status == 409 and status_body(err.value)["reason"] == "Conflict"
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.patch_namespaced_service(
            name, cluster.namespace, {"metadata": {"resourceVersion": stale, "labels": {"x": "3"}}},
            _content_type="application/merge-patch+json")
    assert err.value.status == 409
    current = cluster.core.read_namespaced_service(name, cluster.namespace)
    assert current.metadata.labels["x"] == "1"


def test_status_subresource_isolation(cluster: Cluster) -> None:
    name = cluster.name()
    body = service(name)
    body["status"] = {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}
    created = cluster.core.create_namespaced_service(cluster.namespace, body)
    assert not (created.status.load_balancer and created.status.load_balancer.ingress)
    # A main-resource write never changes status.
    cluster.core.patch_namespaced_service(name, cluster.namespace,
                                          {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}},
                                          _content_type="application/merge-patch+json")
    assert not cluster.core.read_namespaced_service(name, cluster.namespace).status.load_balancer.ingress
    # A status write changes only status.
    patched = cluster.core.patch_namespaced_service_status(
        name, cluster.namespace,
        {"metadata": {"labels": {"sneaky": "yes"}}, "spec": {"type": "ClusterIP"},
         "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.10"}]}}},
        _content_type="application/merge-patch+json")
    assert patched.status.load_balancer.ingress[0].ip == "198.51.100.10"
    assert patched.spec.type == "LoadBalancer"
    assert "sneaky" not in (patched.metadata.labels or {})


def test_custom_resource_status_isolation_and_generation(cluster: Cluster) -> None:
    name = cluster.name()
    created = create_group(cluster, vipgroup(name) | {"status": {"holders": {"ipv4": {"node": "node-a"}}}})
    assert "status" not in created and created["metadata"]["generation"] == 1
    after_status = cluster.custom.patch_cluster_custom_object_status(
        GROUP, VERSION, "vipgroups", name, {"status": {"holders": {"ipv4": {"node": "node-b"}}},
                                            "spec": {"vrid": 99}})
    assert after_status["status"]["holders"]["ipv4"]["node"] == "node-b"
    assert after_status["spec"]["vrid"] == 7 and after_status["metadata"]["generation"] == 1
    after_labels = cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, "vipgroups", name, {"metadata": {"labels": {"a": "b"}}})
    assert after_labels["metadata"]["generation"] == 1
    after_spec = cluster.custom.patch_cluster_custom_object(
        GROUP, VERSION, "vipgroups", name, {"spec": {"nodes": ["node-a"]}, "status": {"holders": {}}})
    assert after_spec["metadata"]["generation"] == 2
    assert after_spec["status"]["holders"]["ipv4"]["node"] == "node-b"


def test_custom_resource_put_needs_resource_version(cluster: Cluster) -> None:
    name = cluster.name()
    obj = create_group(cluster, vipgroup(name))
    obj["metadata"].pop("resourceVersion")
    with pytest.raises(k8s.ApiException) as err:
        cluster.custom.replace_cluster_custom_object(GROUP, VERSION, "vipgroups", name, obj)
    assert err.value.status == 422


def test_custom_resource_schema_validates_and_prunes(cluster: Cluster) -> None:
    with pytest.raises(k8s.ApiException) as err:
        create_group(cluster, vipgroup(cluster.name(), vrid=300))
    assert err.value.status == 422 and "vrid" in status_body(err.value)["message"]
    name = cluster.name()
    obj = create_group(cluster, vipgroup(name, surprise="dropped"))
    assert "surprise" not in obj["spec"]


def test_custom_resource_status_writes_are_validated_and_pruned_too(cluster: Cluster) -> None:
    name = cluster.name()
    create_group(cluster, vipgroup(name))
    written = cluster.custom.patch_cluster_custom_object_status(
        GROUP, VERSION, "vipgroups", name, {"status": {"holders": {"ipv4": {"node": "node-a", "surprise": 1}}}})
    assert written["status"]["holders"]["ipv4"] == {"node": "node-a"}
    with pytest.raises(k8s.ApiException) as err:
        cluster.custom.patch_cluster_custom_object_status(
            GROUP, VERSION, "vipgroups", name, {"status": {"holders": {"ipv4": {"node": 7}}}})
    assert err.value.status == 422 and "node" in status_body(err.value)["message"]


def test_merge_strategic_and_json_patches(cluster: Cluster) -> None:
    name = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(name, externalTrafficPolicy="Cluster"))
    merged = cluster.core.patch_namespaced_service(
        name, cluster.namespace, {"metadata": {"annotations": {"a": "1", "b": "2"}}},
        _content_type="application/merge-patch+json")
    assert merged.metadata.annotations == {"a": "1", "b": "2"}
    removed = cluster.core.patch_namespaced_service(
        name, cluster.namespace, {"metadata": {"annotations": {"a": None}}},
        _content_type="application/merge-patch+json")
    assert removed.metadata.annotations == {"b": "2"}
    strategic = cluster.core.patch_namespaced_service(name, cluster.namespace,
                                                      {"spec": {"externalTrafficPolicy": "Local"}})
    assert strategic.spec.external_traffic_policy == "Local"
    jsonp = cluster.core.patch_namespaced_service(
        name, cluster.namespace,
        [{"op": "test", "path": "/spec/externalTrafficPolicy", "value": "Local"},
         {"op": "add", "path": "/metadata/labels/tier", "value": "edge"},
         {"op": "remove", "path": "/metadata/annotations/b"}])
    assert jsonp.metadata.labels["tier"] == "edge" and not jsonp.metadata.annotations
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.patch_namespaced_service(
            name, cluster.namespace, [{"op": "test", "path": "/spec/type", "value": "ClusterIP"}])
    assert err.value.status == 422


def test_strategic_merge_patch_is_refused_for_custom_resources(cluster: Cluster) -> None:
    name = cluster.name()
    create_group(cluster, vipgroup(name))
    with pytest.raises(k8s.ApiException) as err:
        cluster.custom.patch_cluster_custom_object(
            GROUP, VERSION, "vipgroups", name, {"spec": {"vrid": 8}},
            _content_type="application/strategic-merge-patch+json")
    assert err.value.status == 415


def test_no_op_write_keeps_the_resource_version(cluster: Cluster) -> None:
    name = cluster.name()
    svc = cluster.core.create_namespaced_service(cluster.namespace, service(name))
    again = cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"labels": {"app": name}}},
                                                  _content_type="application/merge-patch+json")
    assert again.metadata.resource_version == svc.metadata.resource_version


# ---------------------------------------------------------------- finalizers

def test_finalizers_delay_deletion_until_the_last_one_is_removed(cluster: Cluster) -> None:
    name = cluster.name()
    body = service(name)
    body["metadata"]["finalizers"] = ["vipcore.io/ip", "vipcore.io/other"]
    created = cluster.core.create_namespaced_service(cluster.namespace, body)
    events, thread = watch_in_background(cluster.core.list_namespaced_service, cluster.namespace,
                                         field_selector=f"metadata.name={name}",
                                         resource_version=created.metadata.resource_version, timeout_seconds=3)
    cluster.core.delete_namespaced_service(name, cluster.namespace)
    pending = cluster.core.read_namespaced_service(name, cluster.namespace)
    assert pending.metadata.deletion_timestamp is not None
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.patch_namespaced_service(name, cluster.namespace,
                                              {"metadata": {"finalizers": ["vipcore.io/ip", "vipcore.io/other",
                                                                           "vipcore.io/new"]}},
                                              _content_type="application/merge-patch+json")
    assert err.value.status == 422
    cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"finalizers": ["vipcore.io/ip"]}},
                                          _content_type="application/merge-patch+json")
    assert cluster.core.read_namespaced_service(name, cluster.namespace).metadata.finalizers == ["vipcore.io/ip"]
    cluster.core.patch_namespaced_service(name, cluster.namespace, [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.read_namespaced_service(name, cluster.namespace)
    assert err.value.status == 404
    thread.join(10)
    assert [e["type"] for e in events if e["type"] != "BOOKMARK"] == ["MODIFIED", "MODIFIED", "DELETED"]


def test_delete_precondition_mismatch_is_409(cluster: Cluster) -> None:
    name = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(name))
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.delete_namespaced_service(name, cluster.namespace,
                                               body={"preconditions": {"resourceVersion": "1"}})
    assert err.value.status == 409


# ---------------------------------------------------------------- selectors

def test_label_selectors(cluster: Cluster) -> None:
    for name, labels in (("vipcore-ls-a", {"tier": "web", "env": "prod"}), ("vipcore-ls-b", {"tier": "db"}),
                         ("vipcore-ls-c", {"env": "dev"})):
        body = service(name)
        body["metadata"]["labels"] = labels
        cluster.core.create_namespaced_service(cluster.namespace, body)

    def names(selector: str) -> set[str]:
        items = cluster.core.list_namespaced_service(cluster.namespace, label_selector=selector).items
        return {s.metadata.name for s in items if s.metadata.name.startswith("vipcore-ls-")}

    assert names("tier=web") == {"vipcore-ls-a"}
    assert names("tier==db") == {"vipcore-ls-b"}
    assert names("tier!=web") == {"vipcore-ls-b", "vipcore-ls-c"}
    assert names("tier in (web,db)") == {"vipcore-ls-a", "vipcore-ls-b"}
    assert names("env notin (prod)") == {"vipcore-ls-b", "vipcore-ls-c"}
    assert names("env") == {"vipcore-ls-a", "vipcore-ls-c"}
    assert names("!env") == {"vipcore-ls-b"}
    assert names("tier,env=prod") == {"vipcore-ls-a"}


def test_field_selectors(cluster: Cluster) -> None:
    a = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(a))
    b = cluster.name()
    body = service(b)
    body["spec"] = {"type": "ClusterIP", "ports": [{"port": 80}]}
    cluster.core.create_namespaced_service(cluster.namespace, body)
    by_name = cluster.core.list_namespaced_service(cluster.namespace, field_selector=f"metadata.name={a}").items
    assert [s.metadata.name for s in by_name] == [a]
    lbs = cluster.core.list_service_for_all_namespaces(
        field_selector=f"spec.type=LoadBalancer,metadata.namespace={cluster.namespace}").items
    assert a in {s.metadata.name for s in lbs} and b not in {s.metadata.name for s in lbs}
    not_lb = cluster.core.list_namespaced_service(cluster.namespace, field_selector="spec.type!=LoadBalancer").items
    assert b in {s.metadata.name for s in not_lb}
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.list_namespaced_service(cluster.namespace, field_selector="spec.loadBalancerClass=x")
    assert err.value.status == 400


# ---------------------------------------------------------------- lists and watches

def test_watch_from_list_version_replays_changes_in_order(cluster: Cluster) -> None:
    listed = cluster.core.list_namespaced_service(cluster.namespace)
    name = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(name))
    cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"labels": {"x": "1"}}})
    cluster.core.delete_namespaced_service(name, cluster.namespace)
    events = raw_watch(cluster.core.list_namespaced_service, cluster.namespace,
                       resource_version=listed.metadata.resource_version, timeout_seconds=1)
    mine = [e for e in events if e["type"] != "BOOKMARK" and e["object"]["metadata"]["name"] == name]
    assert [e["type"] for e in mine] == ["ADDED", "MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in mine]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert mine[0]["object"]["kind"] == "Service"


def test_watch_without_version_starts_with_current_objects(cluster: Cluster) -> None:
    name = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(name))
    events = raw_watch(cluster.core.list_namespaced_service, cluster.namespace,
                       field_selector=f"metadata.name={name}", timeout_seconds=1)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"] == [
        ("ADDED", name)]


def test_watch_with_label_selector_sees_objects_leave_and_enter(cluster: Cluster) -> None:
    name = cluster.name()
    svc = cluster.core.create_namespaced_service(cluster.namespace, service(name))
    events, thread = watch_in_background(cluster.core.list_namespaced_service, cluster.namespace,
                                         label_selector=f"app={name}",
                                         resource_version=svc.metadata.resource_version, timeout_seconds=2)
    time.sleep(0.3)
    cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"labels": {"app": "other"}}})
    cluster.core.patch_namespaced_service(name, cluster.namespace, {"metadata": {"labels": {"app": name}}})
    thread.join(10)
    assert [e["type"] for e in events if e["type"] != "BOOKMARK"] == ["DELETED", "ADDED"]


def test_watch_closes_after_timeout_seconds(cluster: Cluster) -> None:
    started = time.monotonic()
    raw_watch(cluster.core.list_namespaced_service, cluster.namespace, resource_version=
              cluster.core.list_namespaced_service(cluster.namespace).metadata.resource_version, timeout_seconds=1)
    assert 0.8 <= time.monotonic() - started < 5


def test_bookmarks_on_request(cluster: Cluster) -> None:
    rv = cluster.core.list_namespaced_service(cluster.namespace).metadata.resource_version
    events = raw_watch(cluster.core.list_namespaced_service, cluster.namespace, resource_version=rv,
                       allow_watch_bookmarks=True, timeout_seconds=2)
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) >= int(rv)
    without = raw_watch(cluster.core.list_namespaced_service, cluster.namespace, resource_version=rv,
                        timeout_seconds=1)
    assert not [e for e in without if e["type"] == "BOOKMARK"]


def test_watch_from_a_compacted_version_gets_410(cluster: Cluster) -> None:
    if cluster.server is not None:
        old = cluster.core.list_namespaced_service(cluster.namespace).metadata.resource_version
        cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name()))
        cluster.server.compact()
    else:
        old = "1"  # a real cluster compacts every few minutes
    events = raw_watch(cluster.core.list_namespaced_service, cluster.namespace, resource_version=old,
                       timeout_seconds=2)
    assert events[-1]["type"] == "ERROR"
    assert events[-1]["object"]["code"] == 410 and events[-1]["object"]["reason"] == "Expired"
    with pytest.raises(k8s.ApiException) as err:
        for _ in watch.Watch().stream(cluster.core.list_namespaced_service, cluster.namespace,
                                      resource_version=old, timeout_seconds=2):
            pass
    assert err.value.status == 410


def test_paginated_list_is_a_consistent_snapshot(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name("page")))
    first = cluster.core.list_namespaced_service(cluster.namespace, limit=1)
    assert first.metadata._continue
    cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name("page")))
    seen = [s.metadata.name for s in first.items]
    token = first.metadata._continue
    while token:
        page = cluster.core.list_namespaced_service(cluster.namespace, limit=1, _continue=token)
        assert page.metadata.resource_version == first.metadata.resource_version
        seen.extend(s.metadata.name for s in page.items)
        token = page.metadata._continue
    assert len(seen) == len(set(seen))
    everything = cluster.core.list_namespaced_service(cluster.namespace).items
    assert len(everything) == len(seen) + 1


def test_continue_token_expires_after_compaction(fake_only: Any, cluster: Cluster) -> None:
    for _ in range(2):
        cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name("page")))
    first = cluster.core.list_namespaced_service(cluster.namespace, limit=1)
    # Named to sort after the first page: the inconsistent continuation below starts after its last key.
    cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name("zpage")))
    fake_only.compact()
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.list_namespaced_service(cluster.namespace, limit=1, _continue=first.metadata._continue)
    body = status_body(err.value)
    assert err.value.status == 410 and body["reason"] == "Expired"
    # As upstream (etcd3 store, handleCompactedErrorForPaging): the 410 carries a token that continues
    # the list at the latest resourceVersion, for a client that accepts an inconsistent list.
    token = body["metadata"]["continue"]
    rest = cluster.core.list_namespaced_service(cluster.namespace, limit=10, _continue=token)
    names = [s.metadata.name for s in first.items] + [s.metadata.name for s in rest.items]
    assert len(names) == len(set(names)) == 3
    assert int(rest.metadata.resource_version) > int(first.metadata.resource_version)


def test_a_paged_list_says_how_many_items_remain(cluster: Cluster) -> None:
    for _ in range(3):
        cluster.core.create_namespaced_service(cluster.namespace, service(cluster.name("page")))
    first = cluster.core.list_namespaced_service(cluster.namespace, limit=2)
    assert first.metadata.remaining_item_count == 1 and first.metadata._continue
    last = cluster.core.list_namespaced_service(cluster.namespace, limit=2, _continue=first.metadata._continue)
    assert last.metadata.remaining_item_count is None and not last.metadata._continue


# ---------------------------------------------------------------- other kinds

def test_nodes_keep_status_on_create_and_take_status_patches(cluster: Cluster) -> None:
    name = cluster.name("node")
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"role": "lb"}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "198.51.100.21"}]}}
    created = cluster.core.create_node(node)
    cluster.cleanup.append(lambda: cluster.core.delete_node(name))
    assert created.status.addresses[0].address == "198.51.100.21"
    patched = cluster.core.patch_node_status(name, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    assert patched.status.conditions[0].status == "False"
    assert [n.metadata.name for n in cluster.core.list_node(label_selector="role=lb").items if n.metadata.name == name]


def test_endpoint_slices_by_service_label(cluster: Cluster) -> None:
    svc = cluster.name()
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{svc}-abcde", "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.51.100.30"], "nodeName": "node-a", "conditions": {"ready": True}}]}
    cluster.discovery.create_namespaced_endpoint_slice(cluster.namespace, body)
    found = cluster.discovery.list_namespaced_endpoint_slice(
        cluster.namespace, label_selector=f"kubernetes.io/service-name={svc}").items
    assert [s.endpoints[0].node_name for s in found] == ["node-a"]


def test_leases_compare_and_swap(cluster: Cluster) -> None:
    name = cluster.name("lease")
    lease = cluster.coordination.create_namespaced_lease(cluster.namespace, {
        "metadata": {"name": name}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "b"
    taken = cluster.coordination.replace_namespaced_lease(name, cluster.namespace, lease)
    assert taken.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"
    with pytest.raises(k8s.ApiException) as err:
        cluster.coordination.replace_namespaced_lease(name, cluster.namespace, lease)
    assert err.value.status == 409


def test_events_can_be_created_and_selected(cluster: Cluster) -> None:
    name = cluster.name()
    cluster.core.create_namespaced_event(cluster.namespace, {
        "metadata": {"generateName": "vipcore-"}, "involvedObject": {"kind": "Service", "name": name,
                                                                     "namespace": cluster.namespace},
        "reason": "IPAllocated", "message": "198.51.100.10", "type": "Normal"})
    found = cluster.core.list_namespaced_event(cluster.namespace,
                                               field_selector=f"involvedObject.name={name}").items
    assert [e.reason for e in found] == ["IPAllocated"]


def test_strict_field_validation_refuses_unknown_fields(cluster: Cluster) -> None:
    with pytest.raises(k8s.ApiException) as err:
        cluster.custom.create_cluster_custom_object(GROUP, VERSION, "vipgroups",
                                                    vipgroup(cluster.name(), surprise=1), field_validation="Strict")
    assert err.value.status == 400 and 'unknown field "spec.surprise"' in status_body(err.value)["message"]


def test_load_balancer_class_cannot_change(cluster: Cluster) -> None:
    name = cluster.name()
    cluster.core.create_namespaced_service(cluster.namespace, service(name, loadBalancerClass="vipcore.io/vip"))
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.patch_namespaced_service(name, cluster.namespace, {"spec": {"loadBalancerClass": "example.com/x"}},
                                              _content_type="application/merge-patch+json")
    assert err.value.status == 422
    with pytest.raises(k8s.ApiException) as err:
        cluster.core.create_namespaced_service(cluster.namespace, {
            "metadata": {"name": cluster.name()},
            "spec": {"type": "ClusterIP", "loadBalancerClass": "vipcore.io/vip", "ports": [{"port": 80}]}})
    assert err.value.status == 422
