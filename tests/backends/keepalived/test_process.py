"""The process manager against a stand-in keepalived (no root needed).

The stand-in is a small Python program that answers ``--version`` like
keepalived, writes the pid files it is given, and appends one line per
signal it receives to a journal: what the process manager *sent* is checked
against what the process *got*.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, Membership, State, StateChange
from vipcore.backend import BackendContext
from vipcore_keepalived.backend import KeepalivedBackend
from vipcore_keepalived.process import (
    FifoEvent,
    KeepalivedProcess,
    KeepalivedUnavailableError,
    Paths,
    check_keepalived,
)
from vipcore_keepalived.render import instance_name
from vipcore_keepalived.settings import KeepalivedSettings

from tests.helpers.memberships import group, member

pytestmark = pytest.mark.timeout(60)

STAND_IN = """\
#!{python}
import os, signal, sys, time
if "--version" in sys.argv:
    sys.stderr.write("Keepalived v{version} (01/16,2022)\\n")
    sys.exit(0)
journal = os.environ["STANDIN_JOURNAL"]
def note(text):
    with open(journal, "a") as f:
        f.write(text + "\\n")
args = sys.argv[1:]
with open(args[args.index("-p") + 1], "w") as f:
    f.write(str(os.getpid()))
fifo = None
conf = open(args[args.index("-f") + 1]).read()
for line in conf.splitlines():
    if line.strip().startswith("notify_fifo"):
        fifo = line.split()[1]
note("START " + str(os.getpid()))
if os.environ.get("STANDIN_DIE"):
    sys.exit(3)
def hup(*_):
    note("HUP")
def term(*_):
    note("TERM")
    sys.exit(0)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, term)
# Like keepalived: the VRRP pid file appears once signals are handled.
with open(args[args.index("-r") + 1], "w") as f:
    f.write(str(os.getpid()))
if fifo and os.environ.get("STANDIN_EVENTS"):
    with open(fifo, "w") as f:
        f.write(os.environ["STANDIN_EVENTS"].replace(";", "\\n") + "\\n")
while True:
    time.sleep(0.05)
"""


def stand_in(tmp_path: Path, version: str = "2.2.7") -> Path:
    path = tmp_path / "keepalived"
    path.write_text(STAND_IN.format(python=sys.executable, version=version))
    path.chmod(0o755)
    return path


def journal(tmp_path: Path) -> list[str]:
    path = tmp_path / "journal"
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STANDIN_JOURNAL", str(tmp_path / "journal"))
    return tmp_path


async def eventually(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_missing_keepalived_names_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(KeepalivedUnavailableError, match="apt-get install keepalived") as error:
        check_keepalived(str(tmp_path / "no-such-keepalived"))
    assert "keepalived" in str(error.value) and "plugin" in str(error.value)


def test_too_old_keepalived_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeepalivedUnavailableError, match=r"1\.3\.5 is too old.*apt-get install keepalived"):
        check_keepalived(str(stand_in(tmp_path, "1.3.5")))
    assert check_keepalived(str(stand_in(tmp_path, "2.2.7"))) == (2, 2, 7)


def test_fifo_lines() -> None:
    assert FifoEvent.parse('INSTANCE "vc_abc_eth0_4" MASTER 254\n') == FifoEvent("INSTANCE", "vc_abc_eth0_4",
                                                                                  "MASTER", 254)
    assert FifoEvent.parse('GROUP "vc_abc_eth0" BACKUP 0') == FifoEvent("GROUP", "vc_abc_eth0", "BACKUP", 0)
    assert FifoEvent.parse("garbage") is None


def test_sighup_only_when_the_text_changes(env: Path) -> None:
    settings = KeepalivedSettings(binary=str(stand_in(env)))

    async def go() -> None:
        process = KeepalivedProcess(Paths.in_dir(env / "state"), settings)
        try:
            assert await process.apply("config 1\n") == "started"
            await eventually(lambda: any(l.startswith("START") for l in journal(env)))
            assert await process.apply("config 1\n") == "unchanged"
            assert await process.apply("config 1\n") == "unchanged"
            await asyncio.sleep(0.2)
            assert journal(env).count("HUP") == 0 and process.counters.reloads == 0
            assert await process.apply("config 2\n") == "reloaded"
            await eventually(lambda: journal(env).count("HUP") == 1)
            assert (env / "state" / "keepalived.conf").read_text() == "config 2\n"
            assert process.counters.reloads == 1
            assert not list((env / "state").glob(".*.tmp"))
        finally:
            await process.close()
        assert journal(env)[-1] == "TERM"
        assert process.pid is None

    asyncio.run(go())


def test_restart_with_backoff_then_give_up(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_DIE", "1")
    settings = KeepalivedSettings(binary=str(stand_in(env)), restart_attempts=3, restart_backoff_max=0.1)
    exits: list[tuple[int | None, bool]] = []

    async def go() -> None:
        process = KeepalivedProcess(Paths.in_dir(env / "state"), settings,
                                    on_exit=lambda code, again: exits.append((code, again)))
        try:
            await process.apply("config\n")
            await eventually(lambda: process.gave_up)
            assert [line.split()[0] for line in journal(env)] == ["START"] * 3
            assert process.counters.restarts == 2 and process.counters.starts == 3
            assert exits[-1] == (3, False) and all(again for _, again in exits[:-1])
            # Same text after giving up: nothing happens; a new config tries again.
            assert await process.apply("config\n") == "unchanged"
            monkeypatch.delenv("STANDIN_DIE")
            assert await process.apply("config, fixed\n") == "started"
            await eventually(lambda: len(journal(env)) == 4)
            await asyncio.sleep(0.2)
            assert process.running
        finally:
            await process.close()

    asyncio.run(go())


def test_backend_reports_fifo_transitions_and_faults(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    web = group(["node-a", "node-b"], "vcKnone0", 9, ["198.51.100.101"])
    v4 = instance_name(9, "vcKnone0", Family.IPV4)
    monkeypatch.setenv("STANDIN_EVENTS", f'INSTANCE "{v4}" BACKUP 254;GROUP "x" MASTER 0;INSTANCE "{v4}" MASTER 254')
    reports: list[StateChange] = []

    async def go() -> None:
        backend = KeepalivedBackend()
        context = BackendContext(node="node-a", config={"binary": str(stand_in(env))}, report=reports.append,
                                 state_dir=env / "state", backend_name="keepalived")
        # Stale cleanup walks this namespace's interfaces; nothing is managed, so nothing is removed.
        await backend.vipcore_backend_start(context=context)
        m: Membership = member(web, "node-a")
        try:
            backend._cleaned.add("vcKnone0")  # no such interface: nothing to clean
            await backend.vipcore_group_join(membership=m)
            await eventually(lambda: [r.new for r in reports] == [State.BACKUP, State.MASTER])
            assert reports[-1].group == web.name and reports[-1].vrid == 9 and reports[-1].node == "node-a"
            assert backend.process is not None and backend.process.pid is not None
            os.kill(backend.process.pid, signal.SIGKILL)
            await eventually(lambda: State.FAULT in [r.new for r in reports])
        finally:
            await backend.vipcore_backend_stop(graceful=True)
        assert reports[-1].new is State.STOPPED

    asyncio.run(go())


def test_a_state_dir_keepalived_cannot_parse_is_refused(env: Path) -> None:
    backend = KeepalivedBackend()
    context = BackendContext(node="node-a", config={"binary": str(stand_in(env))}, state_dir=env / "my state",
                             backend_name="keepalived")
    with pytest.raises(ConfigError, match="state_dir"):
        asyncio.run(backend.vipcore_backend_start(context=context))
