"""The entry point of the ``keepalived`` backend (group ``vipcore.backends``)."""

from __future__ import annotations

from vipcore.backend import BackendRegistry, hookimpl
from vipcore_keepalived.backend import KeepalivedBackend


@hookimpl
def vipcore_register_backends(registry: BackendRegistry) -> None:
    registry.add(KeepalivedBackend)
