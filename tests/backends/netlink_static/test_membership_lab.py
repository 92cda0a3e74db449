"""netlink_static: a node that does not hold the VIP going NotReady and back costs the client nothing.

The group is renamed twice (its name hashes the node list); the holder's
router keeps its VRID and its VIPs (an update, not a leave and a join).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.membership_lab import flap_non_holder, membership_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def test_non_holder_not_ready_loses_no_ping(tmp_path: Path) -> None:
    with membership_lab(tmp_path) as lab:
        holder, flapped, result = flap_non_holder(lab, "netlink_static", settings={"garp": {"count": 3, "interval": 0.05}})
    print(f"\nnetlink_static: {flapped} NotReady and back while {holder} holds: {result.summary()}")
    assert result.lost == 0, result.summary()
