"""Run ``vipcore agent`` with the Kubernetes source and its holder-status plugin.

Equivalent to ``vipcore agent --config FILE`` once the agent builds the
Kubernetes source itself and registers the plugins the source offers; until
then the end-to-end tests start agents through this file.
"""

from __future__ import annotations

import asyncio
import sys

from vipcore import logs
from vipcore.agent import Agent
from vipcore.config import load_config
from vipcore.errors import VipcoreError
from vipcore.plugins import load_hooks
from vipcore.sources.kubernetes_agent import KubernetesAgentSource


def main(argv: list[str]) -> int:
    config = load_config(argv[0])
    logs.configure(config.log_format, config.log_level)
    source = KubernetesAgentSource(config)
    agent = Agent(config, hooks=load_hooks(plugins=source.plugins()), source=source)
    try:
        asyncio.run(agent.run())
    except VipcoreError as exc:
        print(f"vipcore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
