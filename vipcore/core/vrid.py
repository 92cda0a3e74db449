"""VRID allocation: unique per L2 network (interface), stable, deterministic.

A group's VRID is its identity on the wire: a router keeps it across a
rename. Group names hash the node list, so every membership change (a node
joining, leaving, going NotReady, a Local Service's endpoints moving) renames
groups; the VRID must not follow the name. In order of precedence:

1. **Persisted** (or pinned) VRIDs are kept while the group of that name exists.
2. **Inherited**: a group with a new name takes the VRID of the persisted
   group it replaces, the one it shares the most Services with (the
   controller persists VRIDs and Services in its VipGroups).
3. **Derived**: with no state at all (manifest mode: every node must compute
   the same map from the same input) a group takes the VRID *slot* of its
   first Service. Slots are dealt to every Service that may form a group on
   the interface (whatever its nodes), so they depend only on the set of
   Services: membership changes never move them, and two groups never share a
   first Service, so never a slot.

Groups passed without Services fall back to their name's hash position
(OpenELB's rule), probing upwards for a free VRID.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import attrs

from vipcore.core.model import VridPolicy

#: A group name is 64 hex digits, "-", the interface.
_DIGEST_LENGTH = 64


@attrs.frozen
class VridAssignment:
    vrids: Mapping[str, int]
    #: Group name -> why it got no VRID (names the group, interface and range).
    failed: Mapping[str, str]
    #: New group name -> the persisted group whose VRID it inherited.
    inherited: Mapping[str, str] = attrs.field(factory=dict)


@functools.lru_cache(maxsize=64)
def _usable(policy: VridPolicy) -> tuple[int, ...]:
    # Policies are frozen values and few; ``usable`` is rebuilt on every access otherwise.
    return policy.usable


def preferred_vrid(group: str, policy: VridPolicy) -> int:
    """Where probing starts for ``group`` (OpenELB's rule: first 4 hash bytes)."""
    usable = _usable(policy)
    digest = hashlib.sha256(group.encode()).digest()
    return usable[int.from_bytes(digest[:4], "big") % len(usable)]


def interface_of(group: str) -> str | None:
    """The interface part of an OpenELB-style group name, or None for other names."""
    digest, dash, interface = group[:_DIGEST_LENGTH], group[_DIGEST_LENGTH:_DIGEST_LENGTH + 1], \
        group[_DIGEST_LENGTH + 1:]
    if dash == "-" and interface and all(c in "0123456789abcdef" for c in digest):
        return interface
    return None


def service_slots(interface: str, services: Iterable[str], policy: VridPolicy) -> dict[str, int]:
    """A distinct VRID per Service on ``interface``, from the set of Services alone.

    Each Service starts at the hash position of ``interface/service`` and
    probes upwards. Empty when there are more Services than usable VRIDs
    (then groups probe on their own, still deterministically).
    """
    usable = policy.usable
    unique = set(services)
    if not usable or len(unique) > len(usable):
        return {}  # told before sorting: a cluster's Services usually far outnumber its VRIDs
    keys = sorted(unique)
    index = {v: i for i, v in enumerate(usable)}
    start = {k: index[preferred_vrid(f"{interface}/{k}", policy)] for k in keys}
    taken: set[int] = set()
    slots: dict[str, int] = {}
    for key in sorted(keys, key=lambda k: (start[k], k)):
        for step in range(len(usable)):
            candidate = usable[(start[key] + step) % len(usable)]
            if candidate not in taken:
                slots[key] = candidate
                taken.add(candidate)
                break
    return slots


def allocate_vrids(
    groups: Iterable[tuple[str, str]],
    *,
    policy: Callable[[str], VridPolicy] | VridPolicy = VridPolicy(),
    persisted: Mapping[str, int] | None = None,
    services: Mapping[str, Sequence[str]] | None = None,
    lineage: Mapping[str, Sequence[str]] | None = None,
    anchors: Mapping[str, Iterable[str]] | None = None,
) -> VridAssignment:
    """Assign a VRID to each (group name, interface).

    ``persisted``: group name -> VRID kept from before (on a clash, the group
    whose name sorts first keeps it). ``services``: group name -> its Service
    keys. ``lineage``: persisted group name -> the Services it had; a new
    group inherits the VRID of the persisted group it shares the most
    Services with, unless that group still exists. ``anchors``: interface ->
    every Service key that may form a group there, for derived slots. When no
    VRID is free the group fails with a message; the others are untouched.
    """
    policy_of = policy if callable(policy) else (lambda _iface, p=policy: p)
    persisted = persisted or {}
    services = services or {}
    lineage = lineage or {}
    anchors = anchors or {}
    by_interface: dict[str, list[str]] = {}
    for name, interface in groups:
        by_interface.setdefault(interface, []).append(name)
    present = {name for names in by_interface.values() for name in names}

    vrids: dict[str, int] = {}
    failed: dict[str, str] = {}
    inherited: dict[str, str] = {}
    for interface, names in sorted(by_interface.items()):
        pol = policy_of(interface)
        usable = _usable(pol)
        index = {v: i for i, v in enumerate(usable)}
        used: set[int] = set()
        pending: list[str] = []
        for name in sorted(set(names)):
            vrid = persisted.get(name)
            if vrid is not None and vrid in index and vrid not in used:
                vrids[name] = vrid
                used.add(vrid)
            else:
                pending.append(name)

        # A renamed group inherits: most shared Services first, then by name.
        gone = [p for p in lineage if p not in present and interface_of(p) in (interface, None)]
        pairs = []
        for name in pending:
            mine = set(services.get(name, ()))
            for predecessor in gone:
                shared = len(mine & set(lineage[predecessor]))
                if shared:
                    pairs.append((-shared, name, predecessor))
        taken_from: set[str] = set()
        for _, name, predecessor in sorted(pairs):
            vrid = persisted.get(predecessor)
            if name in vrids or predecessor in taken_from or vrid is None or vrid not in index or vrid in used:
                continue
            vrids[name] = vrid
            used.add(vrid)
            inherited[name] = predecessor
            taken_from.add(predecessor)
        pending = [n for n in pending if n not in vrids]

        slots = service_slots(
            interface, [*anchors.get(interface, ()), *(s for n in names for s in services.get(n, ()))], pol
        )

        def start(name: str) -> int:
            """Where probing starts: the first Service's slot, else its (or the name's) hash position."""
            if not usable:
                return 0
            own = sorted(services.get(name, ()))
            if not own:
                return index[preferred_vrid(name, pol)]
            if own[0] in slots:
                return index[slots[own[0]]]
            return index[preferred_vrid(f"{interface}/{own[0]}", pol)]

        # Deterministic order: by starting slot, then name.
        pending.sort(key=lambda n: (start(n), n))
        for name in pending:
            if len(used) >= len(usable):
                failed[name] = (
                    f"no free VRID for group {name} on interface {interface!r}: "
                    f"all {len(usable)} VRIDs of range {pol.describe()} are in use"
                )
                continue
            first = start(name)
            for step in range(len(usable)):
                candidate = usable[(first + step) % len(usable)]
                if candidate not in used:
                    vrids[name] = candidate
                    used.add(candidate)
                    break
    return VridAssignment(vrids=vrids, failed=failed, inherited=inherited)
