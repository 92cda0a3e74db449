"""A leader dies mid-way through 500 new Services; the standby finishes with the same answer.

The controller against the test API server, with the real client over HTTP.
The leader "dies" by going silent (a black hole swallows its requests, even
those under way: they are never processed), as a killed pod would.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import lb_ips, node, service, vipgroups, vippool, wait_for

from vipcore.testing.apiserver import ApiServer

COUNT = 500


def addresses(server: ApiServer) -> dict[str, tuple[str, ...]]:
    """Service name -> the addresses in its status (Services with some)."""
    found = {}
    for obj in server.objects("v1", "Service", "default"):
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if ingress:
            found[obj["metadata"]["name"]] = tuple(i["ip"] for i in ingress)
    return found


def test_leader_killed_midway_the_next_one_finishes_with_the_same_answer(
    server: ApiServer, start: Callable[..., Any]
) -> None:
    for name in ("node-a", "node-b", "node-c"):
        server.create(node(name))
    server.create(vippool("lan", "198.51.100.1-198.51.100.254", "203.0.113.1-203.0.113.254"))
    names = [f"svc-{i:03}" for i in range(COUNT)]
    mark = time.monotonic()
    for name in names:
        server.create(service(name))
    # A rate limit slow enough to catch the first leader mid-way.
    first = start("c1", qps=200, burst=20)
    wait_for(lambda: first.leading, what="c1 leads")
    second = start("c2", qps=200, burst=20)
    wait_for(lambda: len(addresses(server)) >= 100, timeout=60, what="c1 half-way")
    with server.black_hole("vipcore-controller/c1"):
        time.sleep(0.2)  # what was under way is swallowed
        before = addresses(server)
        first.stop()
        wait_for(lambda: second.leading, timeout=15, what="c2 takes over")
        assert len(before) < COUNT, "c1 finished before it was killed: nothing left to check"
        wait_for(lambda: len(addresses(server)) == COUNT, timeout=60, what="c2 finishes")
    time.sleep(0.5)  # nothing more should follow
    after = addresses(server)
    # Every address c1 gave stays; no address twice.
    assert {k: after[k] for k in before} == before
    every = [ip for ips in after.values() for ip in ips]
    assert len(every) == len(set(every)) == COUNT
    # One group holds them all, as c1 would have written it: 500 VIPs are more than one VipGroup takes
    # (vipcore.core.shards.SHARD_VIPS), so its shards, one set, together.
    groups = vipgroups(server)
    assert len({(g["spec"].get("shard") or {}).get("set", g["metadata"]["name"]) for g in groups}) == 1
    assert sorted(ip for g in groups for ip in g["spec"]["vips"]["ipv4"]) == sorted(every)
    # The steady path, across both leaders: per Service one status patch that the server applied,
    # and no Event at all.
    applied = collections.Counter(
        (r.method, r.path.split("?")[0]) for r in server.requests_since(mark)
        if r.method in ("POST", "PUT", "PATCH", "DELETE") and 200 <= r.code < 300 and "/leases" not in r.path)
    per_service = collections.Counter(path.split("/")[6] for (method, path) in applied
                                      if "/services/" in path)
    assert set(per_service) == set(names)
    assert max(per_service.values()) == 1, [k for k, v in per_service.items() if v > 1]
    assert not [k for k in applied if "/events" in k[1]], [k for k in applied if "/events" in k[1]]
    # The standby had its cache warm and wrote nothing while it was not leading.
    assert all(lb_ips(server, n) for n in names)
