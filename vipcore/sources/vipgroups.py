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
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from vipcore.core import objects
from vipcore.core.errors import ManifestError
from vipcore.core.model import Family, GroupState, IPAddress, Membership, Node, Pool, VipGroup
from vipcore.core.resolve import membership
from vipcore.core.shards import complete, merge

log = logging.getLogger("vipcore.sources.vipgroups")

Obj = Mapping[str, Any]


_NO_TEXTS: tuple[frozenset[str], ...] = tuple(frozenset() for _ in Family)


def _texts_of(obj: Obj) -> tuple[frozenset[str], ...]:
    """A valid VipGroup object's VIPs as text, per family (in :class:`Family` order)."""
    vips = obj["spec"].get("vips") or {}
    return tuple(frozenset(vips.get(objects.family_key(f)) or ()) for f in Family)


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
        #: Group name -> its objects' names (one, or its shards).
        self._parts: dict[str, set[str]] = {}
        #: Groups whose objects changed since they were last merged.
        self._stale: set[str] = set()
        #: Object name -> resourceVersion (a group's version is its newest object's).
        self._versions: dict[str, int] = {}
        self._nodes: dict[str, Node] = {}
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
        name = (group or before).shard.group if (group or before).shard else key  # type: ignore[union-attr]
        if before is not None and before.shard is not None and before.shard.group != name:
            self._unpart(before.shard.group, key)  # an object does not move between groups, but be sure
        if group is None:
            self._objects.pop(key, None)
            self._versions.pop(key, None)
            self._texts.pop(key, None)
            self._unpart(name, key)
        else:
            self._objects[key] = group
            self._versions[key] = _version(obj)
            self._texts[key] = _texts_of(obj)
            self._parts.setdefault(name, set()).add(key)
        old = self._groups.get(name)
        # Merged in take(): a burst of shard changes (a renamed group's shards, one by one) merges once.
        self._stale.add(name)
        key = name
        held = sum(len(t) for texts in self._texts.values() for t in texts)
        if sum(map(len, self._parsed.values())) > 2 * held + 1024:  # forget addresses no group holds
            live = [frozenset().union(*(texts[i] for texts in self._texts.values())) for i in range(len(Family))]
            self._parsed = {f: {t: ip for t, ip in memo.items() if t in live[i]}
                            for i, (f, memo) in enumerate(self._parsed.items())}
        self._all = None
        self._changed = True  # the list of groups changed (status shows it), whether or not it is ours
        if (old is not None and self.node in old.nodes) or (group is not None and self.node in group.nodes) \
                or (before is not None and self.node in before.nodes):
            self._dirty.setdefault(key, False)

    def _unpart(self, name: str, key: str) -> None:
        parts = self._parts.get(name)
        if parts is not None:
            parts.discard(key)
            if not parts:
                del self._parts[name]

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
        complete_on: set[tuple[str, int | None]] = set()
        for names in self._parts.values():
            whole = [self._objects[k] for k in names]
            if complete(whole):
                complete_on.add((whole[0].interface, whole[0].vrid))
        for name in list(self._stale):
            keys = self._parts.get(name)
            if keys:
                parts = [self._objects[k] for k in keys]
                if not complete(parts) and (parts[0].interface, parts[0].vrid) in complete_on:
                    group = self._groups.get(name)
                    if group is None or (group.interface, group.vrid) == (parts[0].interface, parts[0].vrid):
                        continue  # a rename in flight: wait for the rest
            self._stale.discard(name)
            group = merge(name, (self._objects[k] for k in keys)) if keys else None
            if group is None:
                self._groups.pop(name, None)
            else:
                self._groups[name] = group

    def _refresh(self, name: str, members_changed: bool) -> None:
        group = self._groups.get(name)
        old = self._memberships.get(name)
        if (not members_changed and old is not None and group is not None and group.nodes == old.group.nodes
                and group.placement_key == old.group.placement_key):
            # Only VIPs or Services changed, not what placement reads: the same ranking, the new group.
            self._memberships[name] = attrs.evolve(old, group=group)
            return
        self._memberships.pop(name, None)
        if old is not None:
            for member in old.group.nodes:
                names = self._member_of.get(member)
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._member_of[member]
        if group is None or self.node not in group.nodes:
            return
        self._memberships[name] = membership(group, self.node, self._nodes)
        for member in group.nodes:
            self._member_of.setdefault(member, set()).add(name)

    def state(self) -> GroupState:
        """This node's groups now (call :meth:`take` first to bring in the latest changes)."""
        with self._lock:
            if self._all is None:
                self._all = tuple(self._groups[k] for k in sorted(self._groups))
            me = self._nodes.get(self.node)
            return GroupState(node=self.node, memberships=self._handed_on(), groups=self._all,
                              pools=self._pools, drained=bool(me and me.drained),
                              managed=self.managed)

    def _version_of(self, name: str) -> tuple[bool, int, str]:
        """Which of two groups on one router is handed on: a complete one (every shard here) over one
        still being written, then the newer."""
        parts = self._parts.get(name, ())
        return (complete(self._objects[k] for k in parts), max((self._versions.get(k, 0) for k in parts), default=0),
                name)

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
        return out

    @property
    def invalid(self) -> dict[str, str]:
        """Objects whose last version failed validation: ``kind/key`` -> message."""
        with self._lock:
            return {f"{k}/{key}": msg for (k, key), msg in self._invalid.items()}
