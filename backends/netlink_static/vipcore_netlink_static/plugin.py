"""Entry point of the ``netlink_static`` backend (group ``vipcore.backends``)."""

from __future__ import annotations

from vipcore.backend import BackendRegistry, hookimpl
from vipcore_netlink_static.backend import NetlinkStaticBackend


@hookimpl
def vipcore_register_backends(registry: BackendRegistry) -> None:
    registry.add(NetlinkStaticBackend)
