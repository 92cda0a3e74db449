"""``vipcore agent``: run the node agent, with its metrics and status endpoint."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from vipcore.agent.runtime import Agent
from vipcore.agent.telemetry import serve_agent
from vipcore.core.settings import load_config
from vipcore.ops import logs
from vipcore.ops.statedir import StateDirLock


def cmd_agent(args: argparse.Namespace) -> int:
    overrides = {"node_name": args.node_name, "backend": args.backend, "log_format": args.log_format}
    config = load_config(args.config, overrides=overrides)
    logs.configure(config.log_format, config.log_level)
    # Before anything writes there: a second agent on the same state_dir stops here, with one line.
    with StateDirLock(config.state_dir):
        agent = Agent(config)
        asyncio.run(run_agent(agent))
    return 0


async def run_agent(agent: Agent) -> None:
    """The endpoint first (``/readyz`` answers 503 while the agent starts; the metrics observer sees the
    first transitions), then the agent until SIGTERM/SIGINT."""
    endpoint = await serve_agent(agent) if agent.config.metrics else None
    try:
        await agent.run()
    finally:
        if endpoint is not None:
            await endpoint.close()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("agent", help="run the node agent")
    p.add_argument("--config", required=True, help="config file (YAML)")
    p.add_argument("--node-name", help="override node_name")
    p.add_argument("--backend", help="override backend")
    p.add_argument("--log-format", choices=("text", "json"), help="override log_format")
    p.set_defaults(func=cmd_agent)
