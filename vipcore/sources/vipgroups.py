"""The agent's VipGroup view: its groups as the controller wrote them, kept up to date change by change.

In ``source: kubernetes`` an agent does not re-derive the cluster from every
Service and EndpointSlice (what the controller already did): it watches the
VipGroups, which carry each group's nodes, VRID, VIPs per family and Services,
and the Nodes (for its members' addresses and drain labels). :class:`GroupView`
turns those watch changes into a :class:`~vipcore.core.model.GroupState`:

* one change costs what it reaches: a VipGroup change recomputes that group's
  membership, a Node change the memberships of this node's groups that have
  the Node as a member; nothing walks every group or Node;
* priorities come from :func:`vipcore.core.resolve.membership`, the function
  the full view uses, so both views give a backend the same memberships for
  the same groups;
* an invalid VipGroup or Node (one line in the log) leaves its last valid
  version in force: a bad edit never disturbs a group that was fine;
* two VipGroups of this node on one router (interface and VRID) are a group
  renamed by a membership change, briefly both present while the controller
  replaces one with the other: the newer one is handed on (once it has all
  its shards), so the agent updates its router instead of running two;
* a big group comes as shards (:mod:`vipcore.core.shards`), merged back into
  one group: a change to one shard parses what that shard holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from vipcore.core import objects
from vipcore.core.errors import ManifestError
from vipcore.core.model import Family, GroupState, IPAddress, Membership, Node, Pool, VipGroup
from vipcore.core.resolve import membership, node_changes
from vipcore.core.shards import Merged, complete

log = logging.getLogger("vipcore.sources.vipgroups")

Obj = Mapping[str, Any]


_NO_TEXTS: tuple[frozenset[str], ...] = tuple(frozenset() for _ in Family)


def _texts_of(obj: Obj) -> tuple[frozenset[str], ...]:
    """A valid VipGroup object's VIPs as text, per family (in :class:`Family` order)."""
    vips = obj["spec"].get("vips") or {}
    return tuple(frozenset(vips.get(objects.family_key(f)) or ()) for f in Family)


def _unit(group: VipGroup, key: str) -> str:
    """What a VipGroup object is part of: its shard set, or (a whole group) itself."""
    return group.shard.key if group.shard is not None else key


def _is_zero(group: VipGroup) -> bool:
    """A whole group or a shard 0: what names and places a group."""
    return group.shard is None or group.shard.index == 0


def _version(obj: Obj) -> int:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


class GroupView:
    """This node's groups from VipGroup and Node changes; thread-safe (changes arrive on watch threads).

    Feed it with :meth:`change` (kind ``vipgroups`` or ``nodes``); :meth:`take` says whether anything
    this node dispatches changed since the last call; :meth:`state` is the current
    :class:`GroupState`. ``pools`` returns the current pools (read when :meth:`pools_changed` was
    called).
    """

    def __init__(self, node: str, pools: Callable[[], tuple[Pool, ...]] = tuple) -> None:
        self.node = node
        self._read_pools = pools
        self._lock = threading.Lock()
        #: Each group (shards merged), by group name.
        self._groups: dict[str, VipGroup] = {}
        #: Each VipGroup object as parsed (a whole group or a shard), by object name.
        self._objects: dict[str, VipGroup] = {}
        #: Unit (a whole group's name, or a shard set's key) -> its objects' names. Groups, memberships
        #: and what is dirty are kept by unit: a renamed sharded group stays one unit.
        self._parts: dict[str, set[str]] = {}
        #: Unit -> its objects that are a shard 0 or a whole group (one, or two while a rename is
        #: written): the newest is found among these, not by walking a set of 256 shards.
        self._zeros: dict[str, set[str]] = {}
        #: Unit -> the shard 0 (or whole group) object its group is named and placed by: the newest.
        self._zero: dict[str, str] = {}
        #: Sharded units: their merged VIPs and Services, and the objects counted in them.
        self._merged: dict[str, Merged] = {}
        self._counted: dict[str, dict[str, VipGroup]] = {}
        #: Groups whose objects changed since they were last merged.
        self._stale: set[str] = set()
        #: Object name -> resourceVersion (a group's version is its newest object's).
        self._versions: dict[str, int] = {}
        self._nodes: dict[str, Node] = {}
        #: The drained Nodes' names (a membership reads its members' drain labels from here: a set
        #: intersection, not a look at each of 5,000 Nodes).
        self._drained: set[str] = set()
        self._invalid: dict[tuple[str, str], str] = {}
        #: This node's memberships, by group name, as last computed.
        self._memberships: dict[str, Membership] = {}
        #: Node name -> this node's groups that have it as a member (whose memberships it changes).
        self._member_of: dict[str, set[str]] = {}
        #: Groups whose membership must be recomputed -> whether a member Node changed (else only the
        #: VipGroup did, and placement is recomputed only if its nodes or placement key changed).
        self._dirty: dict[str, bool] = {}
        #: VIPs already parsed, per family, by text (see :func:`vipcore.core.objects.vipgroup_from_k8s`).
        self._parsed: dict[Family, dict[str, IPAddress]] = {f: {} for f in Family}
        #: Each object's VIPs as text: what changed is found by hashing strings (C), not addresses.
        self._texts: dict[str, tuple[frozenset[str], ...]] = {}
        #: How many VIP texts ``_texts`` holds (kept as it changes: summing it walks every object).
        self._held = 0
        self._pools: tuple[Pool, ...] = ()
        self._all: tuple[VipGroup, ...] | None = ()
        self._changed = True

    # -------------------------------------------------------------- input

    def change(self, kind: str, etype: str, key: str, obj: Obj) -> None:
        """Apply one watch change (``ADDED``, ``MODIFIED``, ``DELETED``) of a VipGroup or a Node."""
        with self._lock:
            if kind == "vipgroups":
                self._group_changed(etype, key, obj)
            elif kind == "nodes":
                self._node_changed(etype, key, obj)

    def pools_changed(self) -> None:
        """The pools changed: read them again (they are few)."""
        pools = self._read_pools()
        with self._lock:
            if pools != self._pools:
                self._pools = pools
                self._changed = True

    def _convert(self, kind: str, key: str, obj: Obj, fn: Callable[[Obj], Any]) -> Any:
        try:
            value = fn(obj)
        except ManifestError as exc:
            if self._invalid.get((kind, key)) != str(exc):
                log.error("%s %s invalid, %s: %s", kind, key,
                          "keeping its last valid version" if key in (self._objects if kind == "vipgroups"
                                                                      else self._nodes) else "skipped", exc)
            self._invalid[(kind, key)] = str(exc)
            return None
        self._invalid.pop((kind, key), None)
        return value

    def _group_changed(self, etype: str, key: str, obj: Obj) -> None:
        if etype == "DELETED":
            self._invalid.pop(("vipgroups", key), None)
            group = None
        else:
            group = self._convert("vipgroups", key, obj,
                                  lambda o: objects.vipgroup_from_k8s(o, self._parsed))
            if group is None:
                return
        before = self._objects.get(key)
        if group == before:
            return
        unit = _unit(group or before, key)  # type: ignore[arg-type]  # not both None: equal above
        if before is not None and _unit(before, key) != unit:  # a group became sharded, or whole again
            self._unpart(_unit(before, key), key)
            self._stale.add(_unit(before, key))
            self._dirty.setdefault(_unit(before, key), False)
        if group is None:
            self._objects.pop(key, None)
            self._versions.pop(key, None)
            self._held -= sum(map(len, self._texts.pop(key, ())))
            self._unpart(unit, key)
        else:
            self._objects[key] = group
            self._versions[key] = _version(obj)
            texts = _texts_of(obj)
            self._held += sum(map(len, texts)) - sum(map(len, self._texts.get(key, ())))
            self._texts[key] = texts
            self._parts.setdefault(unit, set()).add(key)
            if _is_zero(group):
                self._zeros.setdefault(unit, set()).add(key)
            elif key in self._zeros.get(unit, ()):  # (a key names one shard: never, in practice)
                self._unzero(unit, key)
        old = self._groups.get(unit)
        chosen = self._zero.get(unit)
        if (_is_zero(group or before) and chosen is not None and chosen != key  # type: ignore[arg-type]
                and chosen in self._objects and (group is None or self._versions[key] <= self._versions[chosen])):
            return  # an older shard 0 of a renamed group (written or deleted): the group is the newer one
        # Merged in take(): a burst of shard changes merges once.
        self._stale.add(unit)
        key = unit
        if sum(map(len, self._parsed.values())) > 2 * self._held + 1024:  # forget addresses no group holds
            live = [frozenset().union(*(texts[i] for texts in self._texts.values())) for i in range(len(Family))]
            self._parsed = {f: {t: ip for t, ip in memo.items() if t in live[i]}
                            for i, (f, memo) in enumerate(self._parsed.items())}
        self._all = None
        self._changed = True  # the list of groups changed (status shows it), whether or not it is ours
        if (old is not None and self.node in old.nodes) or (group is not None and self.node in group.nodes) \
                or (before is not None and self.node in before.nodes):
            self._dirty.setdefault(key, False)

    def _unpart(self, name: str, key: str) -> None:
        _discard(self._parts, name, key)
        self._unzero(name, key)

    def _unzero(self, unit: str, key: str) -> None:
        _discard(self._zeros, unit, key)

    def _node_changed(self, etype: str, key: str, obj: Obj) -> None:
        if etype == "DELETED":
            self._invalid.pop(("nodes", key), None)
            node = None
        else:
            node = self._convert("nodes", key, obj, objects.node_from_k8s)
            if node is None:
                return
        old = self._nodes.get(key)
        if node == old:
            return
        if node is None:
            self._nodes.pop(key, None)
        else:
            self._nodes[key] = node
        if node is not None and node.drained:
            self._drained.add(key)
        else:
            self._drained.discard(key)
        reaches = self._member_of.get(key, set())
        if old is not None and node is not None and old.addresses == node.addresses \
                and old.drained == node.drained:
            reaches = set()  # readiness and other labels are the controller's: they change no membership
        for name in reaches:
            self._dirty[name] = True
        if key == self.node and (old is None or node is None or old.drained != node.drained):
            self._changed = True

    def managed(self, address: IPAddress) -> bool:
        """Whether any group holds ``address`` (a backend's clean-up asks, rarely: O(groups), nothing
        is kept up to date per change). Compared as the controller writes addresses (``str``)."""
        text, index = str(address), list(Family).index(Family.of(address))
        with self._lock:
            return any(text in texts[index] for texts in self._texts.values())

    # -------------------------------------------------------------- output

    def take(self) -> bool:
        """Recompute what changes reached; True if the :meth:`state` differs from the last one taken."""
        with self._lock:
            self._merge_stale()
            for name, members in self._dirty.items():
                self._refresh(name, members)
            changed = self._changed or bool(self._dirty)
            self._dirty.clear()
            self._changed = False
            return changed

    def _merge_stale(self) -> None:
        """Merge the shards of the groups that changed, except a group still being written (not all its
        shards here, or some gone) while another group on its router is complete: that one is handed
        on meanwhile (:meth:`_handed_on`), and the group is merged when its last shard arrives."""
        if not self._stale:
            return
        complete_on: set[tuple[str, int | None]] | None = None  # routers with a complete group: rarely needed
        for unit in list(self._stale):
            zero_key = self._zero_of(unit)
            if zero_key is not None and not self._complete(unit):
                if complete_on is None:
                    complete_on = {(z.interface, z.vrid) for u in self._parts if self._complete(u)
                                   for z in (self._objects[self._zero_of(u) or ""],)}
                zero = self._objects[zero_key]
                if (zero.interface, zero.vrid) in complete_on:
                    continue  # a new set being written beside a complete one: wait for the rest
            self._stale.discard(unit)
            if zero_key is None:  # no shard 0 (yet, or any more): no group
                self._groups.pop(unit, None)
                self._zero.pop(unit, None)
                self._merged.pop(unit, None)
                self._counted.pop(unit, None)
                continue
            self._zero[unit] = zero_key
            zero = self._objects[zero_key]
            if zero.shard is None:  # a whole group
                self._groups[unit] = zero
                self._merged.pop(unit, None)
                self._counted.pop(unit, None)
                continue
            # Count in what changed since the last merge: the cost of the shards that changed.
            want = {k: g for k in self._parts[unit] if (g := self._objects[k]) is zero or (
                not _is_zero(g) and (g.interface, g.vrid) == (zero.interface, zero.vrid))}
            merged = self._merged.setdefault(unit, Merged())
            counted = self._counted.setdefault(unit, {})
            gone = [(k, g) for k, g in counted.items() if want.get(k) is not g]
            for k, g in want.items():
                if k in counted and counted[k] is g:
                    continue
                # A renamed shard 0 (a Node flip) holds what the old one held: nothing to count
                # out and in again (the addresses are the same parsed objects: compared by identity).
                same = next((i for i, (_, o) in enumerate(gone) if o.shard is not None and g.shard is not None
                             and o.shard.index == g.shard.index and o.vips_v4 == g.vips_v4
                             and o.vips_v6 == g.vips_v6 and o.services == g.services), None)
                if same is not None:
                    del counted[gone.pop(same)[0]]
                else:
                    merged.add(g)
                counted[k] = g
            for k, g in gone:
                merged.remove(g)
                if counted.get(k) is g:  # not replaced above by its new version
                    del counted[k]
            self._groups[unit] = merged.group(zero)

    def _zero_of(self, unit: str) -> str | None:
        """The newest shard 0 (or whole group) object of ``unit``."""
        zeros = self._zeros.get(unit)
        return max(zeros, key=lambda k: (self._versions.get(k, 0), k)) if zeros else None

    def _complete(self, unit: str) -> bool:
        zero = self._zero_of(unit)
        return zero is not None and complete(self._objects[zero], (self._objects[k] for k in self._parts[unit]))

    def _refresh(self, name: str, members_changed: bool) -> None:
        group = self._groups.get(name)
        old = self._memberships.get(name)
        if (not members_changed and old is not None and group is not None and group.nodes == old.group.nodes
                and group.placement_key == old.group.placement_key):
            # Only VIPs or Services changed, not what placement reads: the same ranking, the new group.
            self._memberships[name] = attrs.evolve(old, group=group)
            return
        if (not members_changed and old is not None and group is not None and self.node in group.nodes
                and group.placement_key == old.group.placement_key):
            # Only the VipGroup changed (a Node flip renames the group): no member's Node did, so the
            # last membership is edited for the members that came and went, and so is ``_member_of``.
            removed, added = moved = node_changes(old.group.nodes, group.nodes)
            self._memberships[name] = membership(group, self.node, self._nodes, previous=old,
                                                 drained=self._drained, moved=moved)
            self._unmember(name, removed)
            for member in added:
                self._member_of.setdefault(member, set()).add(name)
            return
        self._memberships.pop(name, None)
        if old is not None:
            self._unmember(name, old.group.nodes)
        if group is None or self.node not in group.nodes:
            return
        self._memberships[name] = membership(group, self.node, self._nodes, drained=self._drained)
        for member in group.nodes:
            self._member_of.setdefault(member, set()).add(name)

    def _unmember(self, name: str, members: Iterable[str]) -> None:
        for member in members:
            names = self._member_of.get(member)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._member_of[member]

    def state(self) -> GroupState:
        """This node's groups now (call :meth:`take` first to bring in the latest changes)."""
        with self._lock:
            if self._all is None:
                self._all = tuple(self._groups[k] for k in sorted(self._groups))
            me = self._nodes.get(self.node)
            return GroupState(node=self.node, memberships=self._handed_on(), groups=self._all,
                              pools=self._pools, drained=bool(me and me.drained),
                              managed=self.managed)

    def _version_of(self, unit: str) -> tuple[bool, int, str]:
        """Which of two groups on one router is handed on: a complete one (every shard here) over one
        still being written, then the newer."""
        parts = self._parts.get(unit, ())
        return self._complete(unit), max((self._versions.get(k, 0) for k in parts), default=0), unit

    def _handed_on(self) -> dict[str, Membership]:
        """This node's memberships, the newer one only where two share a router (a rename in flight)."""
        by_router: dict[tuple[str, int | None], str] = {}
        out = dict(self._memberships)
        for name, m in self._memberships.items():
            router = (m.group.interface, m.group.vrid)
            other = by_router.get(router)
            if other is None:
                by_router[router] = name
                continue
            older, newer = sorted((other, name), key=self._version_of)
            out.pop(older, None)
            by_router[router] = newer
        return {m.group.name: m for m in out.values()}

    @property
    def invalid(self) -> dict[str, str]:
        """Objects whose last version failed validation: ``kind/key`` -> message."""
        with self._lock:
            return {f"{k}/{key}": msg for (k, key), msg in self._invalid.items()}


def _discard(index: dict[str, set[str]], unit: str, key: str) -> None:
    """``key`` out of ``unit``'s set in ``index``, and the unit out of it once its set is empty."""
    keys = index.get(unit)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[unit]
