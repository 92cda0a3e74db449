"""The plugin contract third-party backends import: the ``Backend`` base class, markers, hook
specifications, the context a backend is given, its registry, the one placement helper, and the
plugin host that owns the plugin manager."""

from __future__ import annotations

from vipcore.backend.base import Backend
from vipcore.backend.contract import BackendContext, BackendInfo, BackendRegistry, rank_nodes
from vipcore.backend.markers import hookimpl

__all__ = ["Backend", "BackendContext", "BackendInfo", "BackendRegistry", "hookimpl", "rank_nodes"]
