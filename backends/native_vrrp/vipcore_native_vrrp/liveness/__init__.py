"""Node-level liveness between vipcore peers: BFD (RFC 5880, single hop per RFC 5881).

One session per peer node on a link, shared by every VRRP group on it. ``packet``
and ``session`` are sans-IO; ``worker`` runs the sessions in a process of their own
(``detector`` is the agent's side of it, ``control`` their channel), so a busy agent
cannot delay detection or cause a false one; ``coordinator`` decides who needs a
session and what a lost peer means.
"""

from __future__ import annotations

from vipcore_native_vrrp.liveness.packet import ControlPacket, Diagnostic, PacketError, SessionState, decode, encode
from vipcore_native_vrrp.liveness.session import Dropped, Send, Session, SessionConfig, StateChanged

__all__ = [
    "ControlPacket", "Diagnostic", "Dropped", "PacketError", "Send", "Session", "SessionConfig", "SessionState",
    "StateChanged", "decode", "encode",
]
