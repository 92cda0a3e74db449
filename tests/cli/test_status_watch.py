"""``vipcore status --watch``: a live view in a terminal (a pty), redrawn in place as the agent's routers move."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.helpers.agents import backend_of, make_agent, running
from tests.helpers.cli import VIPCORE
from vipcore.core.model import Family
from vipcore.ops.status import CLEAR_BELOW, HOME, transitions
from vipcore.testing.apiserver import ApiServer

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Terminal:
    """``vipcore status --watch`` on a pseudo-terminal, as over SSH."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([VIPCORE, "status", "--watch", *args], stdin=slave, stdout=slave,
                                     stderr=slave, close_fds=True, env=dict(os.environ, TERM="xterm"))
        os.close(slave)
        self.raw = ""

    def read_until(self, pattern: str, timeout: float = 30.0) -> str:
        """Everything read so far once the latest frame contains ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.raw += os.read(self.master, 65536).decode(errors="replace")
                except OSError:
                    break
            if re.search(pattern, self.screen()):
                return self.raw
        raise AssertionError(f"{pattern!r} not on screen; last frame:\n{self.screen()}")

    def screen(self) -> str:
        """The latest frame, escape sequences removed."""
        return ANSI.sub("", self.raw.rsplit(HOME, 1)[-1])

    def quit(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(15)
        finally:
            os.close(self.master)


def test_watch_redraws_on_a_failover_and_lists_the_transition(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            eth0 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth0")
            short = agent.memberships[eth0].group.short_name
            term = Terminal("--address", url.removeprefix("http://"), "--interval", "0.1")
            try:
                first = await asyncio.to_thread(term.read_until, rf"{short}\s+IPv4\s+eth0.*backup")
                assert first.startswith(HOME) and CLEAR_BELOW in first
                assert "no transition seen yet" in term.screen()
                frames_before = first.count(HOME)
                backend_of(agent).fail_over(eth0, Family.IPV4, 0.125)
                await asyncio.to_thread(term.read_until, rf"{short} IPv4  backup -> master in 125ms  master down")
                screen = term.screen()
                assert re.search(rf"{short}\s+IPv4\s+eth0\s+\d+\s+\S+\s+master\s+\d+s\s+125ms", screen), screen
                assert term.raw.count(HOME) > frames_before
                assert "\x1b[2J" not in term.raw  # redrawn in place, never a full clear (no flicker)
            finally:
                code = await asyncio.to_thread(term.quit)
            assert code == 0
        # The agent is gone: the view says so and keeps trying.
        term = Terminal("--address", url.removeprefix("http://"), "--interval", "0.1", "--timeout", "0.5")
        try:
            await asyncio.to_thread(term.read_until, r"agent unreachable: cannot reach the vipcore agent.*\(retrying\)")
        finally:
            assert await asyncio.to_thread(term.quit) == 0

    asyncio.run(scenario())


def test_transitions_of_the_cluster_document_name_old_and_new_holder() -> None:
    before = {"now": 100.0, "groups": [{"group": "g", "short_name": "abc-eth0", "family": "IPv4", "holder": "node-a",
                                        "since": 50.0, "last_failover_seconds": None}]}
    after = {"now": 101.0, "groups": [{"group": "g", "short_name": "abc-eth0", "family": "IPv4", "holder": "node-b",
                                       "since": 100.5, "last_failover_seconds": 0.3}]}
    (line,) = transitions(before, after)
    assert line.endswith("abc-eth0 IPv4  holder node-a -> node-b in 300ms")
    assert transitions(after, after) == [] and transitions(None, after) == []


def test_transitions_between_two_polls_are_not_hidden() -> None:
    def doc(state: str, since: float, failover: float | None) -> dict[str, object]:
        return {"now": since + 1, "routers": [{"group": "g" * 64 + "-eth0", "short_name": "gggggggggggg-eth0",
                                               "family": "IPv4", "state": state, "since": since,
                                               "last_failover_seconds": failover, "reason": "why"}]}
    (line,) = transitions(doc("backup", 10.0, None), doc("backup", 20.0, 0.393))
    assert "gggggggggggg-eth0 IPv4  backup -> master -> backup (master after 393ms)  why" in line
    (line,) = transitions(doc("backup", 10.0, None), doc("master", 20.0, 0.2))
    assert "backup -> master in 200ms  why" in line
    (line,) = transitions(doc("backup", 10.0, None), doc("backup", 20.0, None))
    assert "backup again  why" in line


def test_watch_the_cluster_lists_holder_changes(server: ApiServer, tmp_path: Path) -> None:
    name = "a" * 64 + "-eth0"
    server.create({"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": name},
                   "spec": {"interface": "eth0", "nodes": ["node-a", "node-b"], "vrid": 7,
                            "vips": {"ipv4": ["203.0.113.10"], "ipv6": []}, "services": ["default/web"]}})

    def hold(node: str, failover: float | None = None) -> None:
        record: dict[str, object] = {"node": node, "since": "2026-01-01T00:00:00Z", "backend": "native_vrrp"}
        if failover is not None:
            record["lastFailoverSeconds"] = failover
        server.patch("vipcore.io/v1alpha1", "VipGroup", name, {"status": {"holders": {"ipv4": record}}},
                     subresource="status")

    hold("node-a")
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    term = Terminal("--kubeconfig", str(kubeconfig), "--interval", "0.2")
    try:
        term.read_until(r"aaaaaaaaaaaa-eth0\s+IPv4\s+eth0\s+7\s+203\.0\.113\.10\s+node-a")
        hold("node-b", 0.25)
        term.read_until(r"aaaaaaaaaaaa-eth0 IPv4  holder node-a -> node-b in 250ms")
        assert re.search(r"aaaaaaaaaaaa-eth0\s+IPv4\s+eth0\s+7\s+203\.0\.113\.10\s+node-b", term.screen())
    finally:
        assert term.quit() == 0


def test_a_failover_line_carries_its_breakdown() -> None:
    def doc(state: str, since: float, breakdown: dict[str, float | None] | None) -> dict[str, object]:
        return {"now": since + 1, "routers": [{"group": "g" * 64 + "-eth0", "short_name": "gggggggggggg-eth0",
                                               "family": "IPv4", "state": state, "since": since, "reason": "why",
                                               "last_failover_seconds": 0.0531, "last_failover": breakdown}]}
    breakdown = {"detect_seconds": 0.0502, "elect_seconds": 0.0, "address_seconds": 0.0021,
                 "announce_seconds": None, "total_seconds": 0.0523}
    (line,) = transitions(doc("backup", 10.0, None), doc("master", 20.0, breakdown))
    assert line.endswith("backup -> master in 53ms (detect 50ms, elect 0.0ms, address 2.1ms)  why")
    (line,) = transitions(doc("backup", 10.0, None), doc("master", 20.0, None))
    assert line.endswith("backup -> master in 53ms  why")
