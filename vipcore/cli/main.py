"""The ``vipcore`` command line. Errors a user can cause print one line, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from vipcore.core.errors import MissingExtraError, VipcoreError

#: Subcommand -> the module that registers it (``register(subparsers)``), in ``--help`` order.
COMMANDS = {
    "resolve": "vipcore.cli.resolve",
    "backends": "vipcore.cli.backends",
    "agent": "vipcore.cli.agent",
    "lab": "vipcore.lab.cli",
    "status": "vipcore.cli.status",
    "controller": "vipcore.cli.controller",
}

#: The extra a command comes with (``pyproject.toml``): what to install when its module cannot be imported.
COMMAND_EXTRAS = {"agent": "agent", "lab": "agent", "status": "agent", "controller": "kubernetes"}

#: Commands that build a large object graph once, print it and are done: the console script ends them
#: without the interpreter's teardown (:func:`run`).
EXIT_AT_ONCE = frozenset({"resolve"})


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
            try:
                importlib.import_module(module).register(sub)
            except ImportError as exc:
                missing = MissingExtraError.of(f"vipcore {name}", exc, COMMAND_EXTRAS.get(name))
                if missing is None:
                    raise
                _unavailable(sub, name, missing)
    return parser


def _unavailable(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str,
                 missing: MissingExtraError) -> None:
    """``name`` as a command that says which extra to install (whatever its arguments, ``--help`` too):
    an install with some extras lists every command and runs those it has."""
    parser = sub.add_parser(name, help=f"(needs the {missing.extra!r} extra: not installed)", add_help=False)

    def refuse(args: argparse.Namespace) -> int:
        raise missing

    parser.set_defaults(func=refuse, any_arguments=True)


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # The subcommand comes first (no global options take a value); anything else gets the full parser.
    first = args_in[0] if args_in else None
    parser = build_parser(first if first in COMMANDS else None)
    args, unknown = parser.parse_known_args(args_in)
    if unknown and not getattr(args, "any_arguments", False):
        parser.parse_args(args_in)  # argparse's own message for them, and exit 2
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


def run() -> NoReturn:
    """The ``vipcore`` console script: :func:`main` on the process's arguments, then exit with its code.

    A command of :data:`EXIT_AT_ONCE` exits at once once its output is
    flushed (``os._exit``): the interpreter's teardown would free, one by
    one, everything the command built (tens of milliseconds for a 20k-object
    manifest) and run ``atexit`` handlers such a command has none of. Every
    other command (the agent, the lab) exits the usual way.
    """
    argv = sys.argv[1:]
    code = main(argv)
    if argv[:1] and argv[0] in EXIT_AT_ONCE:
        for stream in (sys.stdout, sys.stderr):
            # A reader gone (`| head`) or a stream main() closed: nothing more to say, as main() decided.
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
