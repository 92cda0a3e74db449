"""The ``vipcore`` command line. Errors a user can cause print one line, never a traceback."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vipcore.errors import VipcoreError
from vipcore.model import Family, Resolution


def resolution_to_json(resolution: Resolution) -> dict[str, Any]:
    """The ``vipcore resolve -o json`` document."""
    return {
        "groups": [
            {
                "name": g.name,
                "interface": g.interface,
                "nodes": list(g.nodes),
                "vrid": g.vrid,
                "vips": {"ipv4": [str(ip) for ip in g.vips_v4], "ipv6": [str(ip) for ip in g.vips_v6]},
                "services": list(g.services),
            }
            for g in resolution.groups
        ],
        "unresolved": [{"service": u.service, "reason": u.reason} for u in resolution.unresolved],
    }


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def resolution_to_table(resolution: Resolution) -> str:
    rows = [
        [
            g.short_name, g.interface, str(g.vrid), ",".join(g.nodes),
            ",".join(str(ip) for f in Family for ip in g.vips(f)), ",".join(g.services),
        ]
        for g in resolution.groups
    ]
    text = render_table(["GROUP", "INTERFACE", "VRID", "NODES", "VIPS", "SERVICES"], rows)
    if resolution.unresolved:
        text += "\n\n" + render_table(
            ["UNRESOLVED SERVICE", "REASON"], [[u.service, u.reason] for u in resolution.unresolved]
        )
    return text


def cmd_resolve(args: argparse.Namespace) -> int:
    from vipcore.config import load_config
    from vipcore.resolve import resolve
    from vipcore.sources.manifests import load_manifests

    config = load_config(args.config, overrides={"source": "manifests", "manifests": args.files})
    state = load_manifests(config.manifests)
    resolution = resolve(state, vrid_policy=config.vrid_policy)
    if args.output == "json":
        print(json.dumps(resolution_to_json(resolution), indent=2))
    else:
        print(resolution_to_table(resolution))
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    from vipcore.plugins import load_hooks

    hooks = load_hooks()
    rows = [
        [info.name, info.distribution or "-", info.version or "-", info.plugin]
        for info in sorted(hooks.backends().values(), key=lambda i: i.name)
    ]
    if args.output == "json":
        print(json.dumps([dict(zip(("name", "distribution", "version", "plugin"), r)) for r in rows]
                         + [{"name": f.name, "distribution": f.distribution, "error": str(f.error)}
                            for f in hooks.failures], indent=2))
    else:
        print(render_table(["BACKEND", "DISTRIBUTION", "VERSION", "PLUGIN"], rows))
        for failure in hooks.failures:
            print(f"broken: {failure.error}", file=sys.stderr)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from vipcore import logs
    from vipcore.agent import Agent
    from vipcore.config import load_config

    overrides = {"node_name": args.node_name, "backend": args.backend, "log_format": args.log_format}
    config = load_config(args.config, overrides=overrides)
    logs.configure(config.log_format, config.log_level)
    agent = Agent(config)
    asyncio.run(_run_agent(agent))
    return 0


async def _run_agent(agent: Any) -> None:
    runner = getattr(agent, "serve", None) or agent.run
    await runner()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vipcore", description="Keep Kubernetes LoadBalancer VIPs reachable.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("resolve", help="print the VIP groups the manifests resolve to (dry run)")
    p.add_argument("-f", "--file", dest="files", action="append", required=True, metavar="PATH",
                   help="manifest file or folder (repeatable)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--config", help="config file (for VRID ranges)")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("backends", help="list installed backends")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_backends)

    p = sub.add_parser("agent", help="run the node agent")
    p.add_argument("--config", required=True, help="config file (YAML)")
    p.add_argument("--node-name", help="override node_name")
    p.add_argument("--backend", help="override backend")
    p.add_argument("--log-format", choices=("text", "json"), help="override log_format")
    p.set_defaults(func=cmd_agent)

    for module in ("vipcore.lab.cli", "vipcore.status", "vipcore.controller"):
        _register_optional(sub, module)
    return parser


def _register_optional(sub: Any, module: str) -> None:
    """Subcommands that live in their own modules register themselves."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return
        raise
    mod.register(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except VipcoreError as exc:
        print(f"vipcore: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error.
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    sys.exit(main())
