"""netlink_static end to end: real agents in the lab, the manifest source, a pinging client.

Three nodes run ``vipcore agent`` with ``backend: netlink_static`` on the
example manifests. Marking the holder NotReady in ``nodes.yaml`` (what an
operator or a script would do) must move its VIPs to the next node in
placement order while the client keeps, or quickly regains, its replies.
Timings are printed (``pytest -s``) and kept as test properties; the
assertions are about behaviour, with generous bounds.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vipcore.lab.agents import Deployment, first_vips, wait_for_holders, wait_until, write_example_manifests, \
    write_nodes
from vipcore.lab.probe import Probe
from vipcore.lab.topology import Lab
from vipcore.core.model import Family

pytestmark = pytest.mark.lab

NODES = ("node-a", "node-b", "node-c")
SETTINGS = {"garp": {"count": 3, "interval": 0.05}, "verify_interval": 1.0}
#: Bounds for "the lab is slow today", not targets: measured values are printed.
SETTLE_TIMEOUT = 15.0
MAX_OUTAGE = 3.0


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(prefix=f"vcB{uuid.uuid4().hex[:6]}", nodes=NODES, run_root=tmp_path / "run")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def client_mac_for(lab: Lab, vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The MAC the client's neighbour cache has for ``vip``."""
    out = subprocess.run(["ip", "-n", lab.client, "neigh", "show", str(vip)], capture_output=True, text=True).stdout
    words = out.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def configured(lab: Lab, node: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Host-prefix addresses on the node's interfaces, up or down (``Lab.held`` counts up links only)."""
    return {a.ip for addrs in lab.addresses(node).values() for a in addrs if a.network.prefixlen == a.max_prefixlen
            and not a.ip.is_loopback}


def node_mac(lab: Lab, node: str, interface: str = "eth0") -> str:
    out = subprocess.run(["ip", "-n", lab.ns(node), "-br", "link", "show", "dev", interface],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[2]


def test_vip_follows_manifest_edit(lab: Lab, tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    manifests = write_example_manifests(lab, tmp_path / "manifests")
    deployment = Deployment(backend="netlink_static", manifests=manifests, settings=SETTINGS, metrics=False)
    expected = deployment.expected_holders(NODES)
    web = deployment.group_of(ipaddress.ip_address("198.51.100.120"))  # api's requested VIP: the lan group
    v4, v6 = (ipaddress.ip_address(str(v)) for v in first_vips(web))
    holder = expected[v4]
    assert expected[v6] == holder, "a group's families live together"

    # A killed predecessor left a pool VIP on a node that will not hold it.
    bystander = next(n for n in NODES if n != holder)
    lab.batch(lab.ns(bystander), [f"addr add {v4}/32 dev eth0"])

    deployment.start_all(lab)
    assert wait_for_holders(lab, expected, timeout=SETTLE_TIMEOUT, quiet=0.3), lab.holders()
    assert lab.holders_of(v4) == [holder], "the stale VIP was removed at start"

    with Probe(lab.client, str(v4)) as probe4, Probe(lab.client, str(v6)) as probe6:
        assert probe4.wait_replies(3) and probe6.wait_replies(3), "client cannot reach the VIPs"
        assert client_mac_for(lab, v4) == node_mac(lab, holder)

        edited = time.time()
        write_nodes(lab, manifests, not_ready=[holder])
        moved = deployment.expected_holders(NODES)
        successor = moved[v4]
        assert successor != holder and moved[v6] == successor
        assert wait_for_holders(lab, moved, timeout=SETTLE_TIMEOUT), lab.holders()
        held_after = time.time() - edited
        assert lab.held(holder) == set(), "the NotReady node still holds VIPs"

        # The client switched to the new holder (gratuitous ARP / unsolicited NA).
        new_mac = node_mac(lab, successor)
        assert wait_until(lambda: client_mac_for(lab, v4) == new_mac and client_mac_for(lab, v6) == new_mac, 5.0)
        switched = time.time() - edited
        assert probe4.wait_replies(5, after=time.time()) and probe6.wait_replies(5, after=time.time())
        results = {family: probe.stop(after=edited) for family, probe in ((Family.IPV4, probe4), (Family.IPV6, probe6))}

    for family, result in results.items():
        assert result.recovered, result.summary()
        assert result.longest_gap < MAX_OUTAGE, result.summary()
        record_property(f"{family.k8s_name}_longest_gap_ms", round(result.longest_gap_ms, 1))
        record_property(f"{family.k8s_name}_lost", result.lost)
    record_property("edit_to_new_holder_ms", round(held_after * 1000, 1))
    record_property("edit_to_client_switched_ms", round(switched * 1000, 1))
    print(f"\nnetlink_static manifest failover: new holder has the VIPs {held_after * 1000:.0f} ms after the edit, "
          f"client neighbour cache on the new MAC after {switched * 1000:.0f} ms; "
          + "; ".join(r.summary() for r in results.values()))

    # Graceful stop of the new holder: its VIPs go, and with the manifest
    # source nobody takes over (documented limit: nothing in the files changed).
    lab.stop(successor)
    assert lab.held(successor) == set()
    assert not any(v in lab.held(n) for n in NODES for v in (v4, v6))


def test_killed_holder_then_manifest_edit(lab: Lab, tmp_path: Path, record_property: pytest.RecordProperty) -> None:
    manifests = write_example_manifests(lab, tmp_path / "manifests")
    deployment = Deployment(backend="netlink_static", manifests=manifests, settings=SETTINGS, metrics=False)
    expected = deployment.expected_holders(NODES)
    v4 = ipaddress.ip_address(str(first_vips(deployment.group_of(ipaddress.ip_address("198.51.100.120")))[0]))
    holder = expected[v4]
    deployment.start_all(lab)
    assert wait_for_holders(lab, expected, timeout=SETTLE_TIMEOUT, quiet=0.3), lab.holders()

    with Probe(lab.client, str(v4)) as probe:
        assert probe.wait_replies(3)
        # Hard failure: no peer protocol, so nobody notices until the control plane says so.
        lab.kill(holder)
        time.sleep(0.3)
        assert not probe.wait_replies(1, after=time.time(), timeout=0.2), "replies without any holder?"
        edited = time.time()
        write_nodes(lab, manifests, not_ready=[holder])
        assert probe.wait_replies(1, after=edited, timeout=SETTLE_TIMEOUT), "the client never recovered"
        first_reply = (probe.last_reply() or edited) - edited
        successor = deployment.expected_holders(NODES)[v4]
        assert successor != holder and lab.holders_of(v4) == [successor]
        probe.stop()
    record_property("edit_to_first_reply_ms", round(first_reply * 1000, 1))
    print(f"\nnetlink_static after a killed holder: first reply {first_reply * 1000:.0f} ms after the manifest edit")
    assert first_reply < MAX_OUTAGE

    # The killed node comes back (still NotReady): the IPv4 VIP it left on
    # eth0 (IPv4 survives link down) is stale and goes at start.
    assert v4 in configured(lab, holder)
    deployment.start(lab, holder)
    assert wait_until(lambda: v4 not in configured(lab, holder), SETTLE_TIMEOUT), lab.addresses(holder)
    assert lab.holders_of(v4) == [successor]
