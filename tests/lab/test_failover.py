"""Failover in the lab with real processes: plain keepalived, and a vipcore agent (marked ``lab``).

Assertions have wide margins (a shared 2-core machine); the precise figures
are ``bench/failover.py``'s job.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from vipcore.lab.agents import (
    PLAIN_KEEPALIVED,
    Deployment,
    first_vips,
    wait_for_holders,
    write_example_manifests,
)
from vipcore.lab.probe import Probe
from vipcore.lab.topology import IPAddress, Lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]

ADVERT = 0.1
#: Master_Down_Interval at 0.1 s is about 0.3 s; the rest is scheduling slack.
FAILOVER_BOUND = 1.5


def installed(backend: str) -> bool:
    if backend == PLAIN_KEEPALIVED:
        return shutil.which("keepalived") is not None
    from vipcore.backend.host import load_hooks
    return backend in load_hooks().backends()


@pytest.fixture(params=[PLAIN_KEEPALIVED, "native_vrrp"])
def deployed(request: pytest.FixtureRequest) -> Iterator[tuple[Lab, Deployment]]:
    if not installed(request.param):
        pytest.skip(f"{request.param} is not installed")
    with Lab(prefix="vcLf") as lab:
        deployment = Deployment(backend=request.param, advert_interval=ADVERT,
                                manifests=write_example_manifests(lab, lab.run_dir / "manifests"))
        deployment.start_all(lab)
        assert wait_for_holders(lab, deployment.expected_holders(lab.nodes), timeout=30, quiet=0.3), lab.holders()
        yield lab, deployment


def web(deployment: Deployment) -> list[IPAddress]:
    resolution, _ = deployment.state()
    group = max(resolution.groups, key=lambda g: len(g.nodes))
    return first_vips(group)


def test_every_vip_has_one_holder_and_answers_the_client(deployed: tuple[Lab, Deployment]) -> None:
    lab, deployment = deployed
    holders = lab.holders()
    assert set(holders) == set(deployment.expected_holders(lab.nodes))
    assert all(len(nodes) == 1 for nodes in holders.values()), holders
    for vip in web(deployment):
        assert lab.exec(None, ["ping", "-c", "1", "-W", "2", str(vip)], check=False).returncode == 0, vip


def test_hard_failure_moves_the_vips_to_the_next_node(deployed: tuple[Lab, Deployment]) -> None:
    lab, deployment = deployed
    vips = web(deployment)
    master = deployment.expected_holders(lab.nodes)[vips[0]]
    after = deployment.expected_holders([n for n in lab.nodes if n != master])
    probes = [Probe(lab.client, str(v)).start() for v in vips]
    try:
        assert all(p.wait_replies(10) for p in probes)
        killed = time.time()
        lab.kill(master)
        assert wait_for_holders(lab, {v: after[v] for v in vips}, timeout=FAILOVER_BOUND + 2)
        assert all(p.wait_replies(10, after=time.time()) for p in probes)
        results = [p.stop(after=killed) for p in probes]
    finally:
        for p in probes:
            p.__exit__()
    for result in results:
        # An outage happened (a gap of more than two 10 ms probe intervals) and ended within the bound.
        # (Not "longer than 50 ms": with liveness the gap is the 50 ms detection less the failure's
        # phase against the last packet, plus ~2 ms of takeover: 49 ms was seen.)
        assert result.recovered and 0.02 < result.longest_gap < FAILOVER_BOUND, result
    # The node comes back: links up, started again, and takes its VIPs back (preempt).
    deployment.start(lab, master)
    assert wait_for_holders(lab, deployment.expected_holders(lab.nodes), timeout=15, quiet=0.2), lab.holders()


def test_graceful_stop_hands_over(deployed: tuple[Lab, Deployment]) -> None:
    lab, deployment = deployed
    vips = web(deployment)
    master = deployment.expected_holders(lab.nodes)[vips[0]]
    after = deployment.expected_holders([n for n in lab.nodes if n != master])
    with Probe(lab.client, str(vips[0])) as probe:
        assert probe.wait_replies(10)
        stopped = time.time()
        lab.stop(master)
        assert wait_for_holders(lab, {v: after[v] for v in vips}, timeout=FAILOVER_BOUND + 2)
        assert probe.wait_replies(10, after=time.time())
        result = probe.stop(after=stopped)
    assert result.recovered, result
    if deployment.backend == PLAIN_KEEPALIVED:
        # keepalived 2.2.7: on a priority-0 resignation both backups often
        # become master for a moment and both send gratuitous ARPs; when the
        # loser's reaches the client last, the client is stranded until the
        # winner's 5 s GARP repeat (bench/README.md). That is keepalived's
        # behaviour, measured in bench/failover.py, not asserted here.
        return
    # Priority 0 on the way out: faster than Master_Down_Interval.
    assert result.longest_gap < 0.3, result
    assert lab.link_up(master)


def test_netlink_static_moves_when_the_manifests_mark_the_holder_not_ready() -> None:
    if not installed("netlink_static"):
        pytest.skip("netlink_static is not installed")
    with Lab(prefix="vcLn") as lab:
        deployment = Deployment(backend="netlink_static",
                                manifests=write_example_manifests(lab, lab.run_dir / "manifests"))
        deployment.start_all(lab)
        assert wait_for_holders(lab, deployment.expected_holders(lab.nodes), timeout=30, quiet=0.3), lab.holders()
        vips = web(deployment)
        holder = deployment.expected_holders(lab.nodes)[vips[0]]
        lab.kill(holder)
        deployment.set_ready(lab, holder, False)
        survivors = [n for n in lab.nodes if n != holder]
        assert wait_for_holders(lab, {v: deployment.expected_holders(survivors)[v] for v in vips}, timeout=10)
        for vip in vips:
            assert lab.exec(None, ["ping", "-c", "1", "-W", "2", str(vip)], check=False).returncode == 0, vip
