"""The ``vipcore`` command line: the composition roots, one module per subcommand."""

from __future__ import annotations

from vipcore.cli.main import main

__all__ = ["main"]
