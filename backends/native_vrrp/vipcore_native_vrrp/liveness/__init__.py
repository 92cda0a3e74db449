"""Node-level liveness between vipcore peers: BFD (RFC 5880, single hop per RFC 5881).

One session per peer node on a link, shared by every VRRP group on it. ``packet``
and ``session`` are sans-IO; ``detector`` runs the sessions in a thread of their own,
so a busy event loop cannot delay detection or cause a false one.
"""

from __future__ import annotations

from vipcore_native_vrrp.liveness.packet import ControlPacket, Diagnostic, PacketError, SessionState, decode, encode
from vipcore_native_vrrp.liveness.session import Dropped, Send, Session, SessionConfig, StateChanged

__all__ = [
    "ControlPacket", "Diagnostic", "Dropped", "PacketError", "Send", "Session", "SessionConfig", "SessionState",
    "StateChanged", "decode", "encode",
]
