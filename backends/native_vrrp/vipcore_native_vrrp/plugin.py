"""Entry point ``vipcore.backends: native_vrrp``: registers :class:`NativeVrrpBackend`."""

from __future__ import annotations

from vipcore.backend import BackendRegistry, hookimpl
from vipcore_native_vrrp.backend import NativeVrrpBackend


@hookimpl
def vipcore_register_backends(registry: BackendRegistry) -> None:
    registry.add(NativeVrrpBackend)
