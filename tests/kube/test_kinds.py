"""The kinds' listers: plain HTTP through the client, without the typed APIs' models (memory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import objects as o
from vipcore.kube.client import KubernetesError, list_objects, status_of
from vipcore.kube.kinds import ENDPOINT_SLICES, NODES, SERVICES, VIP_GROUPS, lease_kind
from vipcore.testing.apiserver import ApiServer

ROOT = Path(__file__).resolve().parents[2]

#: An agent that lists and watches Nodes, pools and VipGroups, in a fresh interpreter: which modules
#: of the client it imported, and what it listed.
AGENT = """
import json, sys
from vipcore.kube import api_client
from vipcore.kube.client import list_objects
from vipcore.kube.kinds import NODES, VIP_GROUPS, VIP_POOLS
client = api_client(sys.argv[1])
listed = {k.name: sorted(o["metadata"]["name"] for o in list_objects(client, k)) for k in (NODES, VIP_POOLS, VIP_GROUPS)}
print(json.dumps({"listed": listed, "modules": sorted(m for m in sys.modules if m.startswith("kubernetes.client.api."))}))
"""


def test_listing_imports_no_typed_api(server: ApiServer, tmp_path: Path) -> None:
    """``CoreV1Api`` alone imports ~250 pydantic models (about 20 MB of an agent's RSS) that a raw list
    never uses: an agent listing Nodes, pools and VipGroups imports no typed API module."""
    server.create(o.node("n1", "198.51.100.11"))
    server.create(o.node("n2", "198.51.100.12"))
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    out = subprocess.run([sys.executable, "-c", AGENT, str(kubeconfig)], capture_output=True, text=True,
                         cwd=ROOT, check=True, timeout=60).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["listed"] == {"nodes": ["n1", "n2"], "vippools": [], "vipgroups": []}
    assert result["modules"] == []


def test_listers_send_the_query_and_return_the_raw_response(server: ApiServer) -> None:
    server.create(o.service("web"))
    server.create(o.endpoint_slice("web", ["n1"]))
    server.create(o.endpoint_slice("web", ["n2"], suffix="x2"))
    server.create({**o.endpoint_slice("other", ["n2"]), "metadata": {"name": "unlabelled", "namespace": "default"}})
    client = server.client()
    services = list_objects(client, SERVICES)
    assert [s["metadata"]["name"] for s in services] == ["web"]
    # The label selector and paging reach the server; the response is the raw one (streamed, unparsed).
    resp = ENDPOINT_SLICES.lister(client)(label_selector=ENDPOINT_SLICES.label_selector, limit=1,
                                          _preload_content=False, _request_timeout=5)
    body = json.loads(resp.data)
    assert [s["metadata"]["name"] for s in body["items"]] == ["web-x1"]
    assert body["metadata"].get("continue")  # one of two labelled slices: a next page
    assert len(list_objects(client, ENDPOINT_SLICES)) == 3  # the plain list: no selector
    assert lease_kind("kube-system").lister(client)(_preload_content=False).status == 200


def test_lister_errors_carry_the_status(server: ApiServer) -> None:
    """A refused list is the client's ``ApiException`` with its status, as the typed API raised it
    (the informer's 410 restart and optional kinds' 404 read it)."""
    client = server.client()
    server.create(o.node("n1", "198.51.100.11"))
    server.create(o.node("n2", "198.51.100.12"))
    token = json.loads(NODES.lister(client)(limit=1, _preload_content=False).data)["metadata"]["continue"]
    server.expire()
    with pytest.raises(Exception) as raised:
        NODES.lister(client)(limit=1, _continue=token, _preload_content=False, _request_timeout=5)
    assert status_of(raised.value) == 410
    server.fail_next(1, code=503)
    with pytest.raises(KubernetesError) as listed:
        list_objects(client, VIP_GROUPS)
    assert listed.value.status == 503
    assert list_objects(client, VIP_GROUPS) == []
