"""Where a group should live: one deterministic ranking shared by every backend.

Rendezvous (highest-random-weight) hashing over (group name, node name):
groups spread evenly across member nodes, every node computes the same order
from the same input, and a node joining or leaving moves only the groups it
wins or held. VRRP backends turn the rank into priorities; netlink_static
takes the first eligible node as the holder; ``vipcore status`` uses the same
answer for "who should hold this".
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

#: Priority of the best-ranked node. 255 is reserved for address owners.
TOP_PRIORITY = 254
#: Priorities never go below this (0 means "resigning" on the wire).
BOTTOM_PRIORITY = 1
#: Priority distance between neighbouring ranks. VRRP backups wait
#: Skew_Time = (256 - priority) x interval / 256 beyond three missed adverts:
#: with priorities one apart (254/253/252) two backups time out 0.4 ms apart
#: at a 100 ms interval, less than advert delivery and timer jitter, so both
#: become master for a moment after a hard failure. 16 apart puts 6.25 ms
#: between them (62.5 ms at 1 s) for about 6 ms more failover time.
PRIORITY_STEP = 16


#: Scores remembered (a few MB at most): a Node flip re-ranks a 5,000-member group with one new score,
#: not 5,000 hashes, and agents' and the controller's repeated rankings of the same groups cost a lookup.
SCORE_CACHE = 1 << 16


@functools.lru_cache(maxsize=SCORE_CACHE)
def _score(group: str, node: str, weight: float) -> float:
    digest = hashlib.sha256(f"{group}\x00{node}".encode()).digest()
    # Uniform in (0, 1]; weighted rendezvous: -w / ln(u) keeps proportions.
    u = (int.from_bytes(digest[:8], "big") + 1) / 2**64
    return -weight / math.log(u) if u < 1.0 else math.inf


def rank(group: str, nodes: Iterable[str], weights: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """Order ``nodes`` for ``group``, best holder first. Ties break by name."""
    by_name = sorted(set(nodes))
    weight = (itertools.repeat(1.0) if not weights
              else [float(weights.get(n, 1.0)) for n in by_name])
    # All C for a cached score: a group of 5,000 nodes re-ranks in about a millisecond.
    scores = dict(zip(by_name, map(_score, itertools.repeat(group), by_name, weight)))
    by_name.sort(key=scores.__getitem__, reverse=True)  # stable, also reversed: ties stay by name
    return tuple(by_name)


def position(group: str, order: Sequence[str], node: str, lo: int = 0, hi: int | None = None) -> int:
    """Where ``node`` goes in ``order[lo:hi]`` (``rank(group, ...)`` of other nodes, unweighted): the
    index in ``order`` at which inserting it gives the rank of them all.

    Rendezvous order is a sort by each node's own score, so adding or removing one node moves no other
    node relative to the rest: a group that gains or loses a member is re-ranked by one bisection
    (a few cached scores), not by scoring and sorting every member.
    """
    mine = (-_score(group, node, 1.0), node)
    return bisect.bisect_left(order, mine, lo, len(order) if hi is None else hi,
                              key=lambda n: (-_score(group, n, 1.0), n))


def holder(group: str, nodes: Iterable[str], weights: Mapping[str, float] | None = None) -> str | None:
    """The node that should hold ``group``: the best-ranked one, or None if no node."""
    ordered = rank(group, nodes, weights)
    return ordered[0] if ordered else None


def rank_priority(index: int, count: int) -> int:
    """The VRRP priority of rank ``index`` (0 is best) among ``count`` ranked nodes.

    254 for the best, :data:`PRIORITY_STEP` less per rank; the step shrinks
    for large groups so every rank keeps a distinct priority down to 1 (beyond
    254 ranks the last ones share priority 1).
    """
    step = max(1, min(PRIORITY_STEP, (TOP_PRIORITY - BOTTOM_PRIORITY) // max(1, count - 1)))
    return max(BOTTOM_PRIORITY, TOP_PRIORITY - index * step)


def priorities(group: str, nodes: Iterable[str], weights: Mapping[str, float] | None = None) -> dict[str, int]:
    """VRRP priorities per node by rank (:func:`rank_priority`)."""
    ordered = rank(group, nodes, weights)
    return {node: rank_priority(index, len(ordered)) for index, node in enumerate(ordered)}
