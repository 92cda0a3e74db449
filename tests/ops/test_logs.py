"""Log lines: one per event; transitions carry group, family, VRID, old -> new and reason; no traces for expected errors."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agents import backend_of, make_agent
from vipcore.core.errors import InterfaceNotFoundError
from vipcore.ops.logs import JsonFormatter, TextFormatter, configure
from vipcore.core.model import Family

VIPCORE = str(Path(sys.executable).parent / "vipcore")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Text and JSON renderings of everything vipcore logs during the test."""
    text, js = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(text), logging.StreamHandler(js)]
    handlers[0].setFormatter(TextFormatter())
    handlers[1].setFormatter(JsonFormatter())
    logger = logging.getLogger("vipcore")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield text, js
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(old_level)


def drive_one_failover(tmp_path: Path) -> tuple[str, int]:
    async def scenario() -> tuple[str, int]:
        agent = make_agent(tmp_path)
        await agent.start()
        try:
            eth1 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth1")
            backend_of(agent).fail_over(eth1, Family.IPV4, 0.25)
            vrid = agent.memberships[eth1].group.vrid
            assert vrid is not None
            return eth1, vrid
        finally:
            await agent.stop(graceful=True)

    return asyncio.run(scenario())


def test_text_transition_lines_carry_every_field(tmp_path: Path, captured: tuple[io.StringIO, io.StringIO]) -> None:
    group, vrid = drive_one_failover(tmp_path)
    lines = [line for line in captured[0].getvalue().splitlines() if "event=transition" in line]
    # 3 routers start as backup, one becomes master, 3 stop.
    assert len(lines) == 7
    master = next(line for line in lines if "new=master" in line)
    for field in (f"group={group}", "family=IPv4", f"vrid={vrid}", "old=backup", "new=master",
                  'reason="master down: no advert for 0.225s"'):
        assert field in master, master
    assert "\n" not in master and "Traceback" not in captured[0].getvalue()


def test_json_transition_lines_are_objects_with_every_field(
        tmp_path: Path, captured: tuple[io.StringIO, io.StringIO]) -> None:
    group, vrid = drive_one_failover(tmp_path)
    records = [json.loads(line) for line in captured[1].getvalue().splitlines()]
    transitions = [r for r in records if r.get("event") == "transition"]
    master = next(r for r in transitions if r["new"] == "master")
    assert {k: master[k] for k in ("group", "family", "vrid", "old", "new", "reason")} == {
        "group": group, "family": "IPv4", "vrid": vrid, "old": "backup", "new": "master",
        "reason": "master down: no advert for 0.225s"}
    assert master["level"] == "info" and master["logger"] == "vipcore.agent"


def test_expected_errors_have_no_trace_but_unexpected_ones_do() -> None:
    text, js = io.StringIO(), io.StringIO()
    log = logging.getLogger("vipcore.test_logs")
    log.propagate = False
    for stream, formatter in ((text, TextFormatter()), (js, JsonFormatter())):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        log.addHandler(handler)
    try:
        try:
            raise InterfaceNotFoundError("eth9")
        except InterfaceNotFoundError:
            log.exception("group x: cannot join", extra={"event": "group_error", "group": "x"})
        try:
            raise KeyError("bug")
        except KeyError:
            log.exception("plugin crashed")
    finally:
        log.handlers.clear()
    expected, unexpected = text.getvalue().splitlines()[0], text.getvalue().split("\n", 1)[1]
    assert "exc=" not in expected and 'error="interface \'eth9\' does not exist on this node"' in expected
    assert "event=group_error group=x" in expected
    assert "exc=" in unexpected and "KeyError" in unexpected
    first, second = (json.loads(line) for line in js.getvalue().splitlines())
    assert "exc" not in first and first["error"].startswith("interface 'eth9'")
    assert "Traceback" in second["exc"]


def test_values_are_quoted_only_when_needed() -> None:
    record = logging.makeLogRecord({"name": "vipcore.x", "levelname": "INFO", "levelno": 20, "msg": "m",
                                    "a": "plain", "b": "two words", "c": "", "d": None, "e": True, "f": 'q"x'})
    line = TextFormatter().format(record)
    assert line.endswith('a=plain b="two words" c="" d=- e=true f="q\\"x"'), line


def test_agent_startup_error_is_one_line_with_json_logs(tmp_path: Path) -> None:
    """``vipcore agent --log-format json``: a config error is still one JSON-free line, no trace."""
    config = tmp_path / "agent.yaml"
    config.write_text("backend: no_such_backend\nnode_name: node-a\nmanifests: [/nonexistent]\nmetrics: ''\n")
    result = subprocess.run([VIPCORE, "agent", "--config", str(config), "--log-format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_configure_installs_the_chosen_formatter() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("json", "debug")
        assert isinstance(root.handlers[0].formatter, JsonFormatter) and root.level == logging.DEBUG
        configure("text")
        assert isinstance(root.handlers[0].formatter, TextFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
