"""vipcore's native VRRPv3 backend (RFC 5798), IPv4 and IPv6.

Layers, each importing only the ones before it:

* :mod:`vipcore_native_vrrp.protocol` — sans-IO: packet codec and the
  per-(group, family) state machine; no sockets, no clock, no netlink.
* :mod:`vipcore_native_vrrp.transport` — raw IP protocol 112 sockets and the
  asyncio timer that drives a machine.
* :mod:`vipcore_native_vrrp.backend` — the vipcore dispatch hooks.
"""

BACKEND_NAME = "native_vrrp"
