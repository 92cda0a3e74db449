"""The ``vipcore`` command line. Errors a user can cause print one line, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vipcore.cli import agent, backends, controller, resolve, status
from vipcore.core.errors import VipcoreError
from vipcore.lab import cli as lab


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vipcore", description="Keep Kubernetes LoadBalancer VIPs reachable.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (resolve, backends, agent, lab, status, controller):
        command.register(sub)
    return parser


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
