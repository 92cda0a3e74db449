"""Leases validated as a real API server does, and the black hole: one client's requests accepted, never answered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import kubernetes.client as k8s
import pytest
import urllib3

from vipcore.testing.apiserver import ApiServer

LEASES = "coordination.k8s.io/v1"
GOOD = {"holderIdentity": "a", "leaseDurationSeconds": 15, "leaseTransitions": 0,
        "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z"}


def lease(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": LEASES, "kind": "Lease", "metadata": {"name": name, "namespace": "default"},
            "spec": {**GOOD, **spec}}


@pytest.fixture
def coordination(server: ApiServer) -> Iterator[Any]:
    client = server.client()
    yield client
    client.close()


def post(client: Any, body: dict[str, Any]) -> tuple[int, str]:
    """POST as JSON exactly as given (the typed client would re-serialise the MicroTimes)."""
    resp = client.rest_client.pool_manager.request(
        "POST", f"{client.configuration.host}/apis/{LEASES}/namespaces/default/leases", body=json.dumps(body),
        headers={"Content-Type": "application/json"}, retries=False)
    return resp.status, json.loads(resp.data).get("message", "")


@pytest.mark.parametrize(("field", "value", "words"), [
    ("leaseDurationSeconds", 0, "must be greater than 0"),
    ("leaseDurationSeconds", -5, "must be greater than 0"),
    ("leaseTransitions", -1, "greater than or equal to 0"),
    ("renewTime", "2026-01-01T00:00:00Z", "six fractional digits"),
    ("renewTime", "2026-01-01T00:00:00+00:00", "six fractional digits"),
    ("acquireTime", "2026-01-01T00:00:00.123Z", "six fractional digits"),
    ("renewTime", "yesterday", "six fractional digits"),
])
def test_invalid_leases_are_refused_with_422(coordination: Any, field: str, value: Any, words: str) -> None:
    code, message = post(coordination, lease("bad", **{field: value}))
    assert code == 422 and f"spec.{field}" in message and words in message


def test_valid_micro_times_are_stored_as_sent(server: ApiServer, coordination: Any) -> None:
    assert post(coordination, lease("utc"))[0] == 201
    assert post(coordination, lease("offset", renewTime="2026-01-01T02:00:00.000000+02:00"))[0] == 201
    assert server.get(LEASES, "Lease", "utc", "default")["spec"]["renewTime"] == GOOD["renewTime"]
    stored = server.get(LEASES, "Lease", "utc", "default")
    stored["spec"]["leaseDurationSeconds"] = -1
    with pytest.raises(Exception, match="must be greater than 0"):
        server.update(stored)  # updates are validated too


def test_black_hole_swallows_one_clients_requests_and_watches(server: ApiServer) -> None:
    victim, other = server.client(), server.client()
    victim.user_agent, other.user_agent = "victim/1", "other/1"
    watched: list[str] = []
    stream = k8s.CoreV1Api(victim).list_namespaced_service("default", watch=True, _preload_content=False,
                                                           timeout_seconds=30)

    def read() -> None:
        try:
            for line in stream.stream(decode_content=False):
                watched.append(line.decode())
        except Exception:  # noqa: BLE001 - the connection is dropped when the hole is lifted
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    server.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "seen", "namespace": "default"},
                   "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}})
    deadline = time.monotonic() + 5
    while not any("seen" in w for w in watched) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert any("seen" in w for w in watched)
    with server.black_hole("victim/"):
        seen = len(watched)
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.ReadTimeoutError):
            k8s.CoreV1Api(victim).create_namespaced_service(
                "default", {"metadata": {"name": "lost"}, "spec": {"ports": [{"port": 80}]}},
                _request_timeout=(1, 0.5))
        assert time.monotonic() - started >= 0.5
        k8s.CoreV1Api(other).create_namespaced_service(
            "default", {"metadata": {"name": "other"}, "spec": {"ports": [{"port": 80}]}})
        time.sleep(0.5)
        assert len(watched) == seen  # silent: the change is not delivered to the black-holed watch
    names = [s["metadata"]["name"] for s in server.objects("v1", "Service", "default")]
    assert "lost" not in names and "other" in names  # the swallowed request was never processed
    swallowed = [r for r in server.requests if r.code == 0]
    assert {r.client for r in swallowed} == {"victim/1"} and {r.method for r in swallowed} >= {"POST", "WATCH"}
    reader.join(5)
    assert not reader.is_alive()  # lifted: the held connection is dropped
    victim.close()
    other.close()
