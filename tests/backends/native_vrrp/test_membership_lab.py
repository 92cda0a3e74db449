"""native_vrrp: a node that does not hold the VIP going NotReady and back costs the client nothing;
a holder drained and undrained hands the VIP over and back without a lost echo.

The group is renamed twice (its name hashes the node list); the holder's
router keeps its VRID and its VIPs (an update, not a leave and a join).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.membership_lab import drain_holder, flap_non_holder, membership_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(120)]


def test_non_holder_not_ready_loses_no_ping(tmp_path: Path) -> None:
    with membership_lab(tmp_path) as lab:
        holder, flapped, result = flap_non_holder(lab, "native_vrrp", advert_interval=0.05)
    print(f"\nnative_vrrp: {flapped} NotReady and back while {holder} holds: {result.summary()}")
    assert result.lost == 0, result.summary()


def test_drain_and_undrain_lose_no_ping(tmp_path: Path) -> None:
    # Undrain rejoins the election: the holder takes back the group it ranks first for,
    # make-before-break (it adds and announces before the interim master lets go).
    with membership_lab(tmp_path) as lab:
        holder, deputy, result = drain_holder(lab, "native_vrrp", advert_interval=0.1)
    print(f"\nnative_vrrp: {holder} drained to {deputy} and back: {result.summary()}")
    assert result.lost == 0, result.summary()
