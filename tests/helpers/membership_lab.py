"""Membership changes in the lab: a node that does not hold a VIP flaps NotReady.

Shared by ``tests/backends/<name>/test_membership_lab.py``: three agents on
the example manifests (manifest mode), a client pinging one VIP of the lan
group every 10 ms, a node that is not that group's holder marked NotReady in
``nodes.yaml`` and Ready again. Every such change renames the group (its
name hashes the node list); nothing a client sees may change.
"""

from __future__ import annotations

import ipaddress
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from vipcore.core.model import DRAIN_LABEL
from vipcore.lab.agents import Deployment, wait_for_holders, wait_until, write_example_manifests
from vipcore.lab.probe import Probe, ProbeResult
from vipcore.lab.topology import Lab

NODES = ("node-a", "node-b", "node-c")
#: The lan group's VIP the client pings (Service default/api asks for it).
VIP = ipaddress.ip_address("198.51.100.120")
SETTLE_TIMEOUT = 20.0
#: How long the client keeps pinging after each change has been applied.
OBSERVE = 1.0


@contextmanager
def membership_lab(tmp_path: Path) -> Iterator[Lab]:
    """Three nodes in namespaces prefixed ``vcM``; always torn down."""
    lab = Lab(prefix=f"vcM{uuid.uuid4().hex[:6]}", nodes=NODES, run_root=tmp_path / "run")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _transitions(lab: Lab, node: str, needle: str) -> int:
    log = lab.run_dir / node / "agent.log"
    return log.read_text(errors="replace").count(needle) if log.exists() else 0


def flap_non_holder(lab: Lab, backend: str, *, advert_interval: float | None = None,
                    settings: Mapping[str, Any] | None = None, flaps: int = 2) -> tuple[str, str, ProbeResult]:
    """Start every agent, flap a non-holder NotReady and back ``flaps`` times; (holder, flapped node, what
    the client saw). Several flaps: the loss this guards against was intermittent (3 runs in 7)."""
    manifests = write_example_manifests(lab, lab.run_dir / "manifests")
    deployment = Deployment(backend=backend, manifests=manifests, advert_interval=advert_interval,
                            settings=dict(settings or {}), metrics=False)
    expected = deployment.expected_holders(NODES)
    holder = expected[VIP]
    flapped = next(n for n in sorted(NODES, reverse=True) if n != holder)
    deployment.start_all(lab)
    assert wait_for_holders(lab, expected, timeout=SETTLE_TIMEOUT, quiet=0.5), f"not settled: {lab.holders()}"

    with Probe(lab.client, str(VIP), interval=0.01) as probe:
        assert probe.wait_replies(5), "the client cannot reach the VIP"
        started = time.time()
        for ready in (False, True) * flaps:
            # The flapped node's agent reports its routers stopped on leaving and
            # back up on joining: then every agent has seen the edit.
            needle = "new=stopped" if not ready else "new=backup"
            before = _transitions(lab, flapped, needle)
            deployment.set_ready(lab, flapped, ready)
            assert wait_until(lambda: _transitions(lab, flapped, needle) > before, SETTLE_TIMEOUT), \
                f"{flapped} did not apply Ready={ready}"
            time.sleep(OBSERVE)
        assert lab.holders_of(VIP) == [holder], f"the VIP moved: {lab.holders()}"
        result = probe.stop(after=started)
    return holder, flapped, result


def set_drained(deployment: Deployment, node: str, drained: bool) -> None:
    """Label ``node`` ``vipcore.io/drain=true`` in the lab's ``nodes.yaml`` (or remove the label), atomically."""
    path = deployment.manifests / "nodes.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Node" and doc["metadata"]["name"] == node:
            labels = doc["metadata"].setdefault("labels", {})
            if drained:
                labels[DRAIN_LABEL] = "true"
            else:
                labels.pop(DRAIN_LABEL, None)
    tmp = path.with_name(".nodes.yaml.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)


def drain_holder(lab: Lab, backend: str, *, advert_interval: float | None = None,
                 settings: Mapping[str, Any] | None = None) -> tuple[str, str, ProbeResult]:
    """Start every agent, drain the VIP's holder until the VIP moved, undrain it until it is back;
    (holder, the node that held meanwhile, what the client saw)."""
    manifests = write_example_manifests(lab, lab.run_dir / "manifests")
    deployment = Deployment(backend=backend, manifests=manifests, advert_interval=advert_interval,
                            settings=dict(settings or {}), metrics=False)
    expected = deployment.expected_holders(NODES)
    holder = expected[VIP]
    deployment.start_all(lab)
    assert wait_for_holders(lab, expected, timeout=SETTLE_TIMEOUT, quiet=0.5), f"not settled: {lab.holders()}"
    with Probe(lab.client, str(VIP), interval=0.01) as probe:
        assert probe.wait_replies(5), "the client cannot reach the VIP"
        started = time.time()
        set_drained(deployment, holder, True)
        deputy = deployment.expected_holders(NODES)[VIP]
        assert deputy != holder
        assert wait_for_holders(lab, {VIP: deputy}, timeout=SETTLE_TIMEOUT), f"drain: {lab.holders()}"
        time.sleep(OBSERVE)
        set_drained(deployment, holder, False)
        assert wait_for_holders(lab, {VIP: holder}, timeout=SETTLE_TIMEOUT), f"undrain: {lab.holders()}"
        time.sleep(OBSERVE)
        result = probe.stop(after=started)
    return holder, deputy, result
