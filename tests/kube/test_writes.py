"""The one writer against the test API server, with the real client over HTTP: the calls production makes."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import objects as o
from vipcore.core.model import FINALIZER, FailoverPhases, Family, VipGroup
from vipcore.kube import (
    EventRecorder,
    KubernetesError,
    KubernetesWriter,
    NotLeaderError,
    RateLimit,
    RetryPolicy,
    status_of,
)
from vipcore.testing.apiserver import ApiServer

GROUP_V = "vipcore.io/v1alpha1"


@pytest.fixture
def client(server: ApiServer) -> Iterator[Any]:
    client = server.client()
    client.user_agent = "writer-test"
    yield client
    client.close()


@pytest.fixture
def writer(client: Any) -> KubernetesWriter:
    return KubernetesWriter(client, component="vipcore-controller", instance="test")


def group(nodes: tuple[str, ...] = ("node-a", "node-b"), services: tuple[str, ...] = ("default/web",)) -> VipGroup:
    return VipGroup(name="abc-eth0", interface="eth0", nodes=nodes, vrid=12,
                    vips_v4=(ipaddress.IPv4Address("198.51.100.10"),), services=services)


def test_service_status_through_the_status_subresource_with_compare_and_swap(server: ApiServer,
                                                                             writer: KubernetesWriter) -> None:
    svc = server.create(o.service("web"))
    ips = [ipaddress.ip_address("198.51.100.100"), ipaddress.ip_address("2001:db8::100")]
    written = writer.set_service_ingress(svc, ips)
    # ipMode VIP is the server's default (1.30+).
    assert written["status"]["loadBalancer"]["ingress"] == [{"ip": "198.51.100.100", "ipMode": "VIP"},
                                                            {"ip": "2001:db8::100", "ipMode": "VIP"}]
    assert [r.path for r in server.requests if r.method == "PATCH"] == [
        "/api/v1/namespaces/default/services/web/status"]
    # Written from a stale read: refused, nothing changes.
    with pytest.raises(KubernetesError) as err:
        writer.set_service_ingress(svc, [])
    assert err.value.status == 409 and "modified" in str(err.value)
    cleared = writer.set_service_ingress(written, [])
    assert not cleared["status"]["loadBalancer"].get("ingress")


def test_finalizer_compare_and_swap_and_no_request_when_already_so(server: ApiServer,
                                                                   writer: KubernetesWriter) -> None:
    svc = server.create(o.service("web"))
    added = writer.set_service_finalizer(svc, True)
    assert added["metadata"]["finalizers"] == [FINALIZER]
    before = len(server.requests)
    assert writer.set_service_finalizer(added, True) == added
    assert len(server.requests) == before  # already so: nothing sent
    with pytest.raises(KubernetesError) as err:
        writer.set_service_finalizer(svc, True)  # stale: the finalizer write changed it
    assert err.value.status == 409
    server.delete("v1", "Service", "web", namespace="default")
    deleting = server.get("v1", "Service", "web", "default")
    writer.set_service_finalizer(deleting, False)
    with pytest.raises(Exception, match="not found"):
        server.get("v1", "Service", "web", "default")


def test_vipgroup_create_update_delete_with_resource_version_preconditions(server: ApiServer,
                                                                          writer: KubernetesWriter) -> None:
    created = writer.create_vipgroup(group(), labels={"app.kubernetes.io/managed-by": "vipcore-controller"})
    assert created["spec"] == {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": 12,
                               "vips": {"ipv4": ["198.51.100.10"], "ipv6": []}, "services": ["default/web"]}
    with pytest.raises(KubernetesError) as err:
        writer.create_vipgroup(group())
    assert err.value.status == 409
    holder = writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-a", since=0.0, backend="native_vrrp")
    assert holder is not None
    assert holder["status"]["holders"]["ipv4"] == {"node": "node-a", "since": "1970-01-01T00:00:00Z",
                                                   "backend": "native_vrrp"}
    # The spec update carries the version the decision was made from: the holder write changed it.
    with pytest.raises(KubernetesError) as err:
        writer.update_vipgroup(group(nodes=("node-a",), services=()), created["metadata"]["resourceVersion"])
    assert err.value.status == 409
    updated = writer.update_vipgroup(group(nodes=("node-a",), services=()), holder["metadata"]["resourceVersion"])
    assert updated["spec"]["nodes"] == ["node-a"] and updated["spec"]["services"] == []
    assert updated["status"]["holders"]["ipv4"]["node"] == "node-a"  # spec writes never touch status
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(KubernetesError) as err:
        writer.delete_vipgroup("abc-eth0", created["metadata"]["resourceVersion"])
    assert err.value.status == 409 and server.get(GROUP_V, "VipGroup", "abc-eth0")
    assert writer.delete_vipgroup("abc-eth0", updated["metadata"]["resourceVersion"]) is True
    assert writer.delete_vipgroup("abc-eth0") is False
    assert writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-a") is None


def test_holder_records_the_failover_and_its_phases_and_a_later_holder_without_them_clears_them(
        server: ApiServer, writer: KubernetesWriter) -> None:
    # The CRD's schema keeps them (the test server prunes unknown fields as upstream does).
    writer.create_vipgroup(group())
    phases = FailoverPhases(detect=0.0512, elect=0.0, address=0.0031, announce=0.00004)
    held = writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-b", since=0.0, backend="native_vrrp",
                                      failover_seconds=0.0544, phases=phases)
    assert held is not None
    record = held["status"]["holders"]["ipv4"]
    assert record["lastFailoverSeconds"] == 0.0544
    assert record["lastFailover"] == {"detectSeconds": 0.0512, "electSeconds": 0.0, "addressSeconds": 0.0031,
                                      "announceSeconds": 0.00004, "totalSeconds": 0.05434}
    # Held again without a measured failover (a control-plane decision): the old figures do not stay.
    again = writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-a", since=0.0, backend="native_vrrp")
    assert again is not None
    assert again["status"]["holders"]["ipv4"] == {"node": "node-a", "since": "1970-01-01T00:00:00Z",
                                                  "backend": "native_vrrp"}


def test_holder_clear_is_compare_and_swap(server: ApiServer, writer: KubernetesWriter) -> None:
    writer.create_vipgroup(group())
    mine = writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-a")
    assert mine is not None
    writer.set_vipgroup_holder("abc-eth0", Family.IPV4, "node-b")  # the new holder records itself
    with pytest.raises(KubernetesError) as err:
        writer.set_vipgroup_holder("abc-eth0", Family.IPV4, None, resource_version=mine["metadata"]["resourceVersion"])
    assert err.value.status == 409
    assert server.get(GROUP_V, "VipGroup", "abc-eth0")["status"]["holders"]["ipv4"]["node"] == "node-b"


def test_transient_failures_are_retried_within_the_policy(server: ApiServer, client: Any) -> None:
    writer = KubernetesWriter(client, retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.05))
    svc = server.create(o.service("web"))
    server.fail_next(2)
    written = writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
    codes = [r.code for r in server.requests if r.path.endswith("/services/web/status")]
    assert codes == [503, 503, 200]
    server.fail_next(50)
    with pytest.raises(KubernetesError) as err:
        writer.set_service_ingress(written, [])
    assert err.value.status == 503 and "injected failure" in str(err.value)
    assert [r.code for r in server.requests if r.path.endswith("/services/web/status")][3:] == [503] * 3
    server.clear_failures()


def test_connection_failures_are_retried(server: ApiServer, client: Any) -> None:
    writer = KubernetesWriter(client, retry=RetryPolicy(attempts=8, initial=0.05, maximum=0.2))
    svc = server.create(o.service("web"))
    server.refuse_connections(0.4)
    started = time.monotonic()
    writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
    assert time.monotonic() - started >= 0.3


def test_every_request_has_a_timeout(server: ApiServer, client: Any) -> None:
    """A server that accepts and never answers: the write fails after its timeout, and is not retried by urllib3."""
    writer = KubernetesWriter(client, timeout=0.3, retry=RetryPolicy(attempts=2, initial=0.01, maximum=0.01))
    svc = server.create(o.service("web"))
    with server.black_hole("writer-test"):
        started = time.monotonic()
        with pytest.raises(Exception) as err:
            writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
        took = time.monotonic() - started
    assert status_of(err.value) is None  # a timeout, not an answer
    assert 0.5 <= took < 2.0, took  # two tries of 0.3 s
    swallowed = [r for r in server.requests if r.code == 0]
    assert len(swallowed) == 2 and all(r.client == "writer-test" for r in swallowed)
    assert server.get("v1", "Service", "web", "default")["status"]["loadBalancer"] == {}


def test_fenced_writer_sends_nothing_without_leadership(server: ApiServer, client: Any) -> None:
    left = [0.0]
    writer = KubernetesWriter(client, fence=lambda: left[0])
    svc = server.create(o.service("web"))
    before = len(server.requests)
    with pytest.raises(NotLeaderError):
        writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
    with pytest.raises(NotLeaderError):
        writer.create_event(svc, "IPAllocated", "x")
    assert len(server.requests) == before
    assert writer.read_service("default", "web") is not None  # reads are not fenced
    left[0] = 30.0
    writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])


def test_fence_bounds_each_request_by_the_leadership_left(server: ApiServer, client: Any) -> None:
    """A write started just before the deadline cannot outlive it, even against a server that never answers."""
    deadline = time.monotonic() + 0.4
    writer = KubernetesWriter(client, timeout=10.0, fence=lambda: deadline - time.monotonic())
    svc = server.create(o.service("web"))
    with server.black_hole("writer-test", path="/services/"):
        with pytest.raises(Exception) as err:
            writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
        ended = time.monotonic()
    assert isinstance(err.value, NotLeaderError) or status_of(err.value) is None
    assert ended < deadline + 0.3


def test_events_reference_the_object(server: ApiServer, writer: KubernetesWriter) -> None:
    svc = server.create(o.service("web"))
    event = writer.create_event(svc, "IPAllocated", "allocated 198.51.100.100 from pool lan")
    assert event["involvedObject"]["uid"] == svc["metadata"]["uid"]
    assert event["involvedObject"]["kind"] == "Service"
    assert event["source"] == {"component": "vipcore-controller"}
    assert event["reportingInstance"] == "test"
    assert event["metadata"]["name"].startswith("web.")
    warning = writer.create_event(svc, "IPRefused", "no pool", type="Warning")
    assert warning["type"] == "Warning"


def test_lease_micro_times_are_sent_as_written(server: ApiServer, writer: KubernetesWriter, client: Any) -> None:
    """The typed client (v37) re-serialises ``...00.000000Z`` as ``...00+00:00``; a real server refuses that."""
    import kubernetes.client

    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": "2026-01-01T00:00:00.000000Z",
            "renewTime": "2026-01-01T00:00:00.000000Z", "leaseTransitions": 0}
    typed = kubernetes.client.CoordinationV1Api(client)
    with pytest.raises(kubernetes.client.ApiException) as err:
        typed.create_namespaced_lease("default", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                                  "metadata": {"name": "typed"}, "spec": spec})
    assert err.value.status == 422 and "+00:00" in str(err.value.body)
    lease = writer.create_lease("default", "ours", spec)
    assert lease["spec"]["renewTime"] == "2026-01-01T00:00:00.000000Z"
    renewed = writer.replace_lease(lease, {**spec, "renewTime": "2026-01-01T00:00:10.000000Z"})
    assert renewed["spec"]["renewTime"] == "2026-01-01T00:00:10.000000Z"
    with pytest.raises(KubernetesError) as conflict:
        writer.replace_lease(lease, spec)  # stale resourceVersion
    assert conflict.value.status == 409
    assert writer.read_lease("default", "ours") == renewed
    assert writer.read_lease("default", "missing") is None


def test_black_holed_request_is_never_processed(server: ApiServer, client: Any) -> None:
    writer = KubernetesWriter(client, timeout=5.0, retry=RetryPolicy(attempts=1))
    svc = server.create(o.service("web"))
    errors: list[BaseException] = []

    def write() -> None:
        try:
            writer.set_service_ingress(svc, [ipaddress.ip_address("198.51.100.100")])
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)

    with server.black_hole("writer-test"):
        thread = threading.Thread(target=write)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()
    thread.join(5)
    assert errors and server.get("v1", "Service", "web", "default")["status"]["loadBalancer"] == {}


def test_what_heals_is_retried_and_what_does_not_is_not() -> None:
    from urllib3.exceptions import NewConnectionError, ReadTimeoutError

    from vipcore.kube import describe, transient

    for status in (500, 503, 429):
        assert transient(KubernetesError("x", status=status))
    for status in (400, 403, 404, 409, 422):
        assert not transient(KubernetesError("x", status=status))
    assert transient(ReadTimeoutError(None, "/", "read timed out"))  # type: ignore[arg-type]
    assert transient(NewConnectionError(None, "refused"))  # type: ignore[arg-type]
    assert not transient(NotLeaderError("not the leader"))
    assert describe(KubernetesError("HTTP 409: the object has been modified", status=409)) == \
        "HTTP 409: the object has been modified"
    assert describe(ValueError("bad\nsecond line")) == "ValueError: bad"


def test_rate_limit_bucket_arithmetic() -> None:
    now = [0.0]
    bucket = RateLimit(10.0, 3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    assert bucket.reserve() == pytest.approx(0.1)  # then one every 1/qps s
    assert bucket.reserve() == pytest.approx(0.2)
    now[0] = 10.0  # a long pause refills only up to the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert RateLimit(0, 1).reserve() == 0.0  # qps 0: no limit
    with pytest.raises(ValueError):
        RateLimit(1.0, 0)


def test_every_write_takes_a_token_but_lease_requests_do_not(server: ApiServer, client: Any) -> None:
    """Writes through a limited writer are spaced by the bucket (lower bounds only); Leases are exempt so
    a busy writer never starves its leadership."""
    writer = KubernetesWriter(client, limit=RateLimit(20.0, 5))
    svc = server.create(o.service("web"))
    start = time.monotonic()
    for i in range(15):
        writer.create_event(svc, "Test", f"event {i}")
    posts = [r.at for r in server.requests_since(start, "POST")]
    assert len(posts) == 15
    # 5 at once, then 10 more at 20 a second: the last no earlier than 0.5 s after the start.
    assert posts[-1] - start >= 10 / 20 * 0.95
    # The bucket is empty now; a Lease request does not wait for it.
    waited = writer.limit.waited if writer.limit else 0.0
    writer.create_lease("default", "l", {"holderIdentity": "a", "leaseDurationSeconds": 15})
    assert writer.read_lease("default", "l") is not None
    assert writer.limit is not None and writer.limit.waited == waited


def test_event_recorder_aggregates_repeats_into_one_event_with_a_count(server: ApiServer,
                                                                      writer: KubernetesWriter) -> None:
    svc = server.create(o.service("web"))
    recorder = EventRecorder()
    for _ in range(3):
        recorder.record(writer, svc, "IPRefused", "no free IPv4 address in pool lan", type="Warning")
    recorder.record(writer, svc, "IPRefused", "another reason", type="Warning")
    events = sorted(server.objects("v1", "Event", "default"), key=lambda e: e["count"])
    assert [(e["message"], e["count"]) for e in events] == [("another reason", 1),
                                                           ("no free IPv4 address in pool lan", 3)]
    assert [r.method for r in server.requests if "/events" in r.path] == ["POST", "PATCH", "PATCH", "POST"]
    # An Event that expired (the API server's TTL) is created again.
    server.delete("v1", "Event", events[0]["metadata"]["name"], "default")
    again = recorder.record(writer, svc, "IPRefused", "another reason", type="Warning")
    assert again["count"] == 1 and again["metadata"]["name"] != events[0]["metadata"]["name"]
    # The memory is bounded: the least recently used is forgotten (its repeat is a new Event).
    small = EventRecorder(size=1)
    small.record(writer, svc, "A", "a")
    small.record(writer, svc, "B", "b")
    assert small.record(writer, svc, "A", "a")["count"] == 1
