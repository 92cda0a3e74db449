"""Sans-IO VRRPv3: the packet codec and the per-router state machine.

Nothing here imports socket, asyncio, time or pyroute2 (an import-linter
contract checks it): every input carries its own ``now``.
"""

from vipcore_native_vrrp.protocol.machine import (
    Action,
    AddVips,
    Announce,
    Dropped,
    Phase,
    RemoveVips,
    Router,
    RouterConfig,
    Send,
    StateChanged,
    TransitionError,
    master_down_interval,
    skew_time,
)
from vipcore_native_vrrp.protocol.packet import Advertisement, PacketError, decode, encode

__all__ = [
    "Action",
    "AddVips",
    "Advertisement",
    "Announce",
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
    "master_down_interval",
    "skew_time",
]
