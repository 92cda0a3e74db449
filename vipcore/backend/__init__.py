"""The plugin contract third-party backends import: markers, hook specifications, the context a
backend is given, its registry, and the plugin host that owns the plugin manager."""

from __future__ import annotations

from vipcore.backend.contract import BackendContext, BackendInfo, BackendRegistry
from vipcore.backend.markers import hookimpl

__all__ = ["BackendContext", "BackendInfo", "BackendRegistry", "hookimpl"]
