"""The pluggy project name and its markers: the one place both are made."""

from __future__ import annotations

import pluggy

PROJECT = "vipcore"

#: Marker for hook specifications (used only by :mod:`vipcore.backend.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT)

#: Marker for hook implementations (``@hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)
