"""Sans-IO VRRPv3: the packet codec and the per-router state machine.

Nothing here imports socket, asyncio, time or pyroute2 (an import-linter
contract checks it): every input carries its own ``now``.
"""

from vipcore_native_vrrp.protocol.actions import (
    Action,
    AddVips,
    Announce,
    Dropped,
    RemoveVips,
    Send,
    StateChanged,
)
from vipcore_native_vrrp.protocol.auth import Authenticator
from vipcore_native_vrrp.protocol.machine import Phase, Router, TransitionError, followers
from vipcore_native_vrrp.protocol.router_config import RouterConfig, master_down_interval, skew_time
from vipcore_native_vrrp.protocol.packet import Advertisement, PacketError, decode, encode

__all__ = [
    "Action",
    "AddVips",
    "Advertisement",
    "Announce",
    "Authenticator",
    "Dropped",
    "PacketError",
    "Phase",
    "RemoveVips",
    "Router",
    "RouterConfig",
    "Send",
    "StateChanged",
    "TransitionError",
    "decode",
    "encode",
    "followers",
    "master_down_interval",
    "skew_time",
]
