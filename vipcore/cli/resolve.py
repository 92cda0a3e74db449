"""``vipcore resolve``: the VIP groups manifests resolve to (a dry run, no root, no network)."""

from __future__ import annotations

import argparse
import gc
import os
from typing import Any

from vipcore.core.model import Family, Resolution
from vipcore.core.objects import vipgroup_spec
from vipcore.core.resolve import resolve
from vipcore.core.settings import load_config
from vipcore.ops.jsontext import dumps_indented
from vipcore.ops.tables import render_table
from vipcore.sources.manifests import load_manifests


def resolution_to_json(resolution: Resolution) -> dict[str, Any]:
    """The ``vipcore resolve -o json`` document."""
    return {
        "groups": [
            {"name": g.name, **vipgroup_spec(g)}
            for g in resolution.groups
        ],
        "unresolved": [{"service": u.service, "reason": u.reason} for u in resolution.unresolved],
    }


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
    # A one-shot command that builds about a million objects (a 20k-object manifest) and keeps them to
    # the end: the cyclic collector would only walk them again and again (a fifth of the parse), and
    # they hold no cycles to collect. The forked half of a split parse inherits this.
    collecting = gc.isenabled()
    gc.disable()
    try:
        config = load_config(args.config, overrides={"source": "manifests", "manifests": args.files})
        # Single-threaded here: a large manifest may be parsed on two processes.
        state = load_manifests(config.manifests, jobs=min(2, os.cpu_count() or 1))
        resolution = resolve(state, vrid_policy=config.vrid_policy)
        if args.output == "json":
            print(dumps_indented(resolution_to_json(resolution)))
        else:
            print(resolution_to_table(resolution))
    finally:
        if collecting:
            gc.enable()
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("resolve", help="print the VIP groups the manifests resolve to (dry run)")
    p.add_argument("-f", "--file", dest="files", action="append", required=True, metavar="PATH",
                   help="manifest file or folder (repeatable)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--config", help="config file (for VRID ranges)")
    p.set_defaults(func=cmd_resolve)
