"""``vipcore backends``: the installed backends and their distributions, and the plugins that failed."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from vipcore.backend.host import install_hint, load_hooks
from vipcore.ops.tables import render_table


def cmd_backends(args: argparse.Namespace) -> int:
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
        if not rows:
            print(f"no backend is installed: {install_hint()}", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("backends", help="list installed backends")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_backends)
