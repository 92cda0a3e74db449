"""Fixtures: the test API server, or a real cluster when VIPCORE_TEST_KUBECONFIG names one."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client as k8s
import kubernetes.config
import pytest
import yaml

from vipcore.testing.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
#: CRDs of other projects that tests need (OpenELB's Eip): never under deploy/, where they would be applied.
TEST_CRDS = ROOT / "tests" / "helpers" / "crds"
REAL = os.environ.get("VIPCORE_TEST_KUBECONFIG")


class Cluster:
    """What a contract test talks to: an ApiClient, a namespace, and (fake only) the server."""

    def __init__(self, client: Any, namespace: str, server: ApiServer | None) -> None:
        self.client = client
        self.namespace = namespace
        self.server = server
        self.core = k8s.CoreV1Api(client)
        self.custom = k8s.CustomObjectsApi(client)
        self.discovery = k8s.DiscoveryV1Api(client)
        self.coordination = k8s.CoordinationV1Api(client)
        self.cleanup: list[Any] = []

    @property
    def fake(self) -> bool:
        return self.server is not None

    def name(self, prefix: str = "contract") -> str:
        return f"vipcore-{prefix}-{uuid.uuid4().hex[:8]}"


def _install_crds(client: Any) -> None:
    ext = k8s.ApiextensionsV1Api(client)
    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        try:
            ext.create_custom_resource_definition(doc)
        except k8s.ApiException as exc:
            if exc.status != 409:
                raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        crds = ext.list_custom_resource_definition().items
        established = {c.metadata.name for c in crds
                       if any(cond.type == "Established" and cond.status == "True"
                              for cond in (c.status.conditions or []))}
        if {"vipgroups.vipcore.io", "vippools.vipcore.io"} <= established:
            return
        time.sleep(0.5)
    raise RuntimeError("CRDs did not become established")


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with ApiServer(crds=[CRDS, TEST_CRDS], bookmark_interval=0.5) as srv:
        yield srv


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if REAL:
        client = kubernetes.config.new_client_from_config(config_file=REAL)
        _install_crds(client)
        namespace = f"vipcore-contract-{uuid.uuid4().hex[:6]}"
        k8s.CoreV1Api(client).create_namespace({"metadata": {"name": namespace}})
        c = Cluster(client, namespace, None)
        try:
            yield c
        finally:
            for undo in reversed(c.cleanup):
                try:
                    undo()
                except k8s.ApiException:
                    pass
            k8s.CoreV1Api(client).delete_namespace(namespace)
        return
    with ApiServer(crds=[CRDS, TEST_CRDS], bookmark_interval=0.5) as srv:
        client = srv.client()
        try:
            yield Cluster(client, "default", srv)
        finally:
            client.close()


@pytest.fixture
def fake_only(cluster: Cluster) -> ApiServer:
    if cluster.server is None:
        pytest.skip("needs the test API server's fault injection")
    return cluster.server
