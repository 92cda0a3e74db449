"""The holder-status observer against the test API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from tests.helpers.cluster import wait_for

from vipcore.kube import KubernetesWriter
from vipcore.sources.holders import HolderStatus
from vipcore.core.model import Family, State, StateChange
from vipcore.testing.apiserver import ApiServer

GROUP = "a" * 64 + "-eth0"


def change(node: str, old: State, new: State, family: Family = Family.IPV4) -> StateChange:
    return StateChange(group=GROUP, family=family, old=old, new=new, reason="test", at=time.time(), node=node,
                       backend="native_vrrp", vrid=7)


def vipgroup() -> dict[str, Any]:
    return {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": GROUP},
            "spec": {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": 7,
                     "vips": {"ipv4": ["203.0.113.10"], "ipv6": ["2001:db8::10"]}}}


def holders(server: ApiServer) -> dict[str, Any]:
    obj = server.get("vipcore.io/v1alpha1", "VipGroup", GROUP)
    return dict((obj.get("status") or {}).get("holders") or {})


@pytest.fixture
def observers(server: ApiServer) -> Iterator[dict[str, HolderStatus]]:
    client = server.client()
    made = {n: HolderStatus(KubernetesWriter(client), n, retry_max=0.2) for n in ("node-a", "node-b")}
    yield made
    for observer in made.values():
        observer.close()
    client.close()


def test_records_waits_for_the_group_and_clears_only_its_own(server: ApiServer,
                                                           observers: dict[str, HolderStatus]) -> None:
    a, b = observers["node-a"], observers["node-b"]
    a.vipcore_state_changed(change("node-a", State.BACKUP, State.MASTER))
    a.vipcore_state_changed(change("node-a", State.BACKUP, State.MASTER, Family.IPV6))
    time.sleep(0.3)  # the agent was faster than the controller: no VipGroup yet
    server.create(vipgroup())
    wait_for(lambda: {f: h["node"] for f, h in holders(server).items()} == {"ipv4": "node-a", "ipv6": "node-a"},
             what="node-a recorded for both families")
    record = holders(server)["ipv4"]
    assert record["backend"] == "native_vrrp" and record["since"].endswith("Z")
    # Failover: node-b records itself first, then node-a's late "no longer master" must not erase it.
    b.vipcore_state_changed(change("node-b", State.BACKUP, State.MASTER))
    wait_for(lambda: holders(server).get("ipv4", {}).get("node") == "node-b", what="node-b recorded")
    a.vipcore_state_changed(change("node-a", State.MASTER, State.BACKUP))
    assert a.flush()
    assert holders(server)["ipv4"]["node"] == "node-b"
    # node-a stopping while it still holds IPv6 clears that record.
    a.vipcore_state_changed(change("node-a", State.MASTER, State.STOPPED, Family.IPV6))
    assert a.flush()
    assert "ipv6" not in holders(server)


def test_a_failover_is_recorded_with_its_phases_and_shown_by_the_cluster_status(
        server: ApiServer, observers: dict[str, HolderStatus]) -> None:
    """``vipcore status --kubeconfig`` tells where a failover's time went without reaching the node."""
    from vipcore.core.model import FailoverPhases, TransitionCause
    from vipcore.ops.status import cluster_rows, cluster_table

    server.create(vipgroup())
    took = attrs.evolve(change("node-b", State.BACKUP, State.MASTER), cause=TransitionCause.PEER_LOST,
                        failover_seconds=0.0551,
                        failover_phases=FailoverPhases(detect=0.0515, elect=0.0, address=0.0031, announce=0.0001))
    observers["node-b"].vipcore_state_changed(took)
    wait_for(lambda: "lastFailover" in holders(server).get("ipv4", {}), what="node-b recorded with its failover")
    record = holders(server)["ipv4"]
    assert record["node"] == "node-b" and record["lastFailoverSeconds"] == 0.0551
    assert record["lastFailover"]["detectSeconds"] == 0.0515 and record["lastFailover"]["totalSeconds"] == 0.0547
    rows = cluster_rows([server.get("vipcore.io/v1alpha1", "VipGroup", GROUP)])
    table = cluster_table({"groups": rows}).splitlines()
    assert "55ms" in table[1]
    assert table[4].split()[:2] == ["LAST", "FAILOVER"] and "DETECT" in table[4]
    assert table[5].split() == ["aaaaaaaaaaaa-eth0", "IPv4", "52ms", "0.0ms", "3.1ms", "0.1ms", "55ms"]


def test_ignores_other_nodes_and_non_master_transitions(server: ApiServer,
                                                        observers: dict[str, HolderStatus]) -> None:
    server.create(vipgroup())
    a = observers["node-a"]
    a.vipcore_state_changed(change("node-b", State.BACKUP, State.MASTER))  # another node's report
    a.vipcore_state_changed(change("node-a", State.INIT, State.BACKUP))
    assert a.flush()
    assert holders(server) == {} and a.written == 0


def test_a_holder_whose_record_was_cleared_by_a_transient_peer_records_itself_again(
        server: ApiServer, observers: dict[str, HolderStatus]) -> None:
    """Both routers become MASTER for an instant; the loser wrote last and clears: the winner re-records."""
    server.create(vipgroup())
    a, b = observers["node-a"], observers["node-b"]
    a.vipcore_state_changed(change("node-a", State.BACKUP, State.MASTER))
    assert a.flush()
    b.vipcore_state_changed(change("node-b", State.BACKUP, State.MASTER))
    assert b.flush()
    b.vipcore_state_changed(change("node-b", State.MASTER, State.BACKUP))
    assert b.flush()
    assert "ipv4" not in holders(server)
    a.check(server.get("vipcore.io/v1alpha1", "VipGroup", GROUP))  # the agent's cache saw the change
    assert a.flush()
    assert holders(server)["ipv4"]["node"] == "node-a"
    b.check(server.get("vipcore.io/v1alpha1", "VipGroup", GROUP))  # node-b holds nothing: writes nothing
    assert b.flush() and holders(server)["ipv4"]["node"] == "node-a"


def test_a_check_that_comes_too_soon_looks_again_later(server: ApiServer,
                                                       observers: dict[str, HolderStatus]) -> None:
    """Three routers MASTER at once: the holder re-records once, is cleared again, and re-records a second later."""
    server.create(vipgroup())
    a, b = observers["node-a"], observers["node-b"]
    a.vipcore_state_changed(change("node-a", State.BACKUP, State.MASTER))
    b.vipcore_state_changed(change("node-b", State.BACKUP, State.MASTER))
    assert a.flush() and b.flush()
    a.check(server.get("vipcore.io/v1alpha1", "VipGroup", GROUP))  # re-records (b wrote last)
    assert a.flush()
    b.vipcore_state_changed(change("node-b", State.BACKUP, State.MASTER))  # a third router's write, then clear
    assert b.flush()
    b.vipcore_state_changed(change("node-b", State.MASTER, State.BACKUP))
    assert b.flush()
    assert "ipv4" not in holders(server)
    a.check(server.get("vipcore.io/v1alpha1", "VipGroup", GROUP))  # within the second: deferred, not dropped
    wait_for(lambda: holders(server).get("ipv4", {}).get("node") == "node-a", timeout=5, what="re-recorded")
