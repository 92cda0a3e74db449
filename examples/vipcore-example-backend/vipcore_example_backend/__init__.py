"""An out-of-tree vipcore backend, shipped the way a third party would.

It holds nothing on the network: it writes, for every group this node takes
part in, whether this node should hold it (the core's placement) to
``<state_dir>/example-backend.json``, and reports the matching state. The
docs' "writing a backend" page walks through this file.
"""

from __future__ import annotations

import json
import os
from typing import Any

from vipcore import Backend, BackendContext, BackendRegistry, Family, Membership, State, StateChange, hookimpl


class ExampleFileBackend(Backend):
    """Methods named like hooks are hook implementations: a ``vipcore.Backend`` needs no ``@hookimpl``."""

    name = "example_file"

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}

    def _write(self) -> None:
        path = self.context.state_dir / "example-backend.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.groups, indent=2, sort_keys=True))
        os.replace(tmp, path)

    def _report(self, name: str, families: tuple[Family, ...], vrid: int | None, old: State, new: State,
                reason: str) -> None:
        """One transition per family, only when the state changed (a renamed group keeps its state)."""
        if old is new:
            return
        for family in families:
            self.context.report(StateChange(
                group=name, family=family, old=old, new=new, reason=reason,
                at=self.context.clock(), node=self.context.node, backend=self.name, vrid=vrid,
            ))

    def _hold(self, membership: Membership, was: str | None = None) -> None:
        """Keep ``membership`` (named ``was`` before, when an update renamed it: the entry moves)."""
        previous = self.groups.pop(was, None) if was is not None and was != membership.name else None
        entry = self.groups.get(membership.name) or previous or {}
        old = State(entry.get("state", "init"))
        holds = membership.preferred_holder == membership.node
        state = State.MASTER if holds else State.BACKUP
        self._report(membership.name, membership.group.families, membership.group.vrid, old, state,
                     "preferred holder" if holds else "another node is preferred")
        self.groups[membership.name] = {
            "state": state.value,
            "interface": membership.group.interface,
            "families": [int(f) for f in membership.group.families],
            "vrid": membership.group.vrid,
            "vips": [str(ip) for f in Family for ip in membership.group.vips(f)],
            "priority": membership.priority,
        }
        self._write()

    def _set(self, group: str, state: State, reason: str) -> None:
        entry = self.groups.get(group)
        if entry is None:
            return
        families = tuple(Family(f) for f in entry["families"])
        self._report(group, families, entry["vrid"], State(entry["state"]), state, reason)
        entry["state"] = state.value
        self._write()

    async def vipcore_backend_start(self, context: BackendContext) -> None:
        await super().vipcore_backend_start(context)  # keeps it as self.context
        if context.config.get("fail_on_start"):
            raise RuntimeError("asked to fail by config")
        self._write()

    async def vipcore_backend_stop(self, graceful: bool) -> None:
        self.groups.clear()
        self._write()

    async def vipcore_group_join(self, membership: Membership) -> None:
        self._hold(membership)

    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        self._hold(new, was=old.name)  # a membership change renames the group

    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        self._set(membership.name, State.STOPPED, "left the group")
        self.groups.pop(membership.name, None)
        self._write()

    async def vipcore_group_release(self, group: str, reason: str) -> None:
        self._set(group, State.BACKUP, reason)

    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        self._set(group, State.MASTER, reason)


@hookimpl
def vipcore_register_backends(registry: BackendRegistry) -> None:
    registry.add(ExampleFileBackend)
