"""The out-of-tree example backend (``examples/vipcore-example-backend``), driven hook by hook in process:
what it keeps in its file and what it reports must follow the groups, renames included."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from vipcore import BackendContext, Membership, PeerNode, State, StateChange, VipGroup
from vipcore.core.resolve import group_name

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "vipcore-example-backend"))
from vipcore_example_backend import ExampleFileBackend  # noqa: E402


def membership(nodes: tuple[str, ...], *, first: str) -> Membership:
    group = VipGroup(group_name(nodes, "eth0"), "eth0", nodes, vrid=7,
                     vips_v4=(ipaddress.IPv4Address("198.51.100.20"),))
    order = (first, *sorted(n for n in nodes if n != first))
    return Membership(group, "node-a", 100 if first == "node-a" else 90,
                      tuple(PeerNode(n, 100 - 10 * i) for i, n in enumerate(order)))


def test_the_example_follows_a_renamed_group_and_reports_only_real_transitions(tmp_path: Path) -> None:
    reports: list[StateChange] = []
    backend = ExampleFileBackend()

    def held() -> dict[str, Any]:
        return dict(json.loads((tmp_path / "example-backend.json").read_text()))

    async def scenario() -> None:
        await backend.vipcore_backend_start(BackendContext(node="node-a", report=reports.append, state_dir=tmp_path,
                                                           backend_name="example_file"))
        two = membership(("node-a", "node-b"), first="node-a")
        await backend.vipcore_group_join(two)
        assert [(r.old, r.new) for r in reports] == [(State.INIT, State.MASTER)]
        # node-c joins: the group is renamed (its name is its node list's hash); this node still holds it.
        three = membership(("node-a", "node-b", "node-c"), first="node-a")
        await backend.vipcore_group_update(two, three)
        assert set(held()) == {three.name}  # the old name is gone, not kept as a stale entry
        assert len(reports) == 1  # still master: no transition to report
        # node-b is now preferred: a real transition, reported from the state it had under the old name.
        moved = membership(("node-a", "node-b", "node-c"), first="node-b")
        await backend.vipcore_group_update(three, moved)
        assert [(r.old, r.new) for r in reports[1:]] == [(State.MASTER, State.BACKUP)]
        assert held()[moved.name]["state"] == "backup"
        await backend.vipcore_group_takeover(moved.name, "drain of node-b")
        assert [(r.old, r.new, r.reason) for r in reports[2:]] == [(State.BACKUP, State.MASTER, "drain of node-b")]
        await backend.vipcore_group_release(moved.name, "node-b is back")
        assert [(r.old, r.new) for r in reports[3:]] == [(State.MASTER, State.BACKUP)]
        await backend.vipcore_group_leave(moved, graceful=True)
        assert held() == {} and (reports[-1].old, reports[-1].new) == (State.BACKUP, State.STOPPED)

    asyncio.run(scenario())
