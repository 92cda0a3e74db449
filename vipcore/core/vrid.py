"""VRID allocation: unique per L2 network (interface), stable, deterministic.

Persisted (or pinned) assignments are kept as long as they are valid, so
adding or removing a group never changes another group's VRID when the
caller passes the previous assignment back in. Without persisted state the
result depends only on the set of group names, so every node computes the
same map from the same input.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping

import attrs

from vipcore.core.model import VridPolicy


@attrs.frozen
class VridAssignment:
    vrids: Mapping[str, int]
    #: Group name -> why it got no VRID (names the group, interface and range).
    failed: Mapping[str, str]


@functools.lru_cache(maxsize=64)
def _usable(policy: VridPolicy) -> tuple[int, ...]:
    # Policies are frozen values and few; ``usable`` is rebuilt on every access otherwise.
    return policy.usable


def preferred_vrid(group: str, policy: VridPolicy) -> int:
    """Where probing starts for ``group`` (OpenELB's rule: first 4 hash bytes)."""
    usable = _usable(policy)
    digest = hashlib.sha256(group.encode()).digest()
    return usable[int.from_bytes(digest[:4], "big") % len(usable)]


def allocate_vrids(
    groups: Iterable[tuple[str, str]],
    *,
    policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
    persisted: Mapping[str, int] | None = None,
) -> VridAssignment:
    """Assign a VRID to each (group name, interface).

    Persisted VRIDs inside the interface's policy win (on a clash, the group
    whose name sorts first keeps it). New groups start at their hash position
    and probe upwards through the usable VRIDs. When none is free the group
    fails with a message; the others are untouched.
    """
    policy_of = policy if callable(policy) else (lambda _iface, p=policy: p)
    persisted = persisted or {}
    by_interface: dict[str, list[str]] = {}
    for name, interface in groups:
        by_interface.setdefault(interface, []).append(name)

    vrids: dict[str, int] = {}
    failed: dict[str, str] = {}
    for interface, names in sorted(by_interface.items()):
        pol = policy_of(interface)
        usable = _usable(pol)
        index = {v: i for i, v in enumerate(usable)}
        used: set[int] = set()
        fresh: list[str] = []
        for name in sorted(set(names)):
            vrid = persisted.get(name)
            if vrid is not None and vrid in index and vrid not in used:
                vrids[name] = vrid
                used.add(vrid)
            else:
                fresh.append(name)
        # Deterministic order: by preferred slot, then name.
        fresh.sort(key=lambda n: (index[preferred_vrid(n, pol)] if usable else 0, n))
        for name in fresh:
            if len(used) >= len(usable):
                failed[name] = (
                    f"no free VRID for group {name} on interface {interface!r}: "
                    f"all {len(usable)} VRIDs of range {pol.describe()} are in use"
                )
                continue
            start = index[preferred_vrid(name, pol)]
            for step in range(len(usable)):
                candidate = usable[(start + step) % len(usable)]
                if candidate not in used:
                    vrids[name] = candidate
                    used.add(candidate)
                    break
    return VridAssignment(vrids=vrids, failed=failed)
