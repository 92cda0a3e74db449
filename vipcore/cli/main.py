"""The ``vipcore`` command line. Errors a user can cause print one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vipcore.core.errors import VipcoreError

#: Subcommand -> the module that registers it (``register(subparsers)``), in ``--help`` order.
COMMANDS = {
    "resolve": "vipcore.cli.resolve",
    "backends": "vipcore.cli.backends",
    "agent": "vipcore.cli.agent",
    "lab": "vipcore.lab.cli",
    "status": "vipcore.cli.status",
    "controller": "vipcore.cli.controller",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` that one.

    A command imports only its own module: ``vipcore resolve`` does not pay for
    the agent's, the controller's and the ``kubernetes`` client's imports
    (a third of its time on a 20k-object manifest).
    """
    parser = argparse.ArgumentParser(prog="vipcore", description="Keep Kubernetes LoadBalancer VIPs reachable.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is None or name == only:
            importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # The subcommand comes first (no global options take a value); anything else gets the full parser.
    first = args_in[0] if args_in else None
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(args_in)
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
