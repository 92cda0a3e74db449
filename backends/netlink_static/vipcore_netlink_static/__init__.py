"""vipcore backend ``netlink_static``: a deterministic holder per group, no peer protocol."""

from __future__ import annotations

from vipcore_netlink_static.backend import NetlinkStaticBackend
from vipcore_netlink_static.settings import Settings

__all__ = ["NetlinkStaticBackend", "Settings"]
