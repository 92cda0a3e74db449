"""What a backend is given and how it is registered.

A backend is a class with a ``name`` class attribute and ``@hookimpl``
methods for the dispatch hooks in :mod:`vipcore.backend.hookspecs`. A plugin module
registers it through :func:`vipcore_register_backends`::

    from vipcore import hookimpl

    class MyBackend:
        name = "mine"

        @hookimpl
        async def vipcore_backend_start(self, context): ...

    @hookimpl
    def vipcore_register_backends(registry):
        registry.add(MyBackend)

The agent instantiates the chosen class with no arguments, registers the
instance with the plugin manager, and calls ``vipcore_backend_start`` with a
:class:`BackendContext`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from vipcore.core.errors import PluginError
from vipcore.backend.markers import hookimpl
from vipcore.core.model import IPAddress, StateChange


@attrs.frozen
class BackendInfo:
    """A registered backend: its class and where it came from."""

    name: str
    factory: type[Any]
    plugin: str
    distribution: str | None = None
    version: str | None = None


@attrs.define
class BackendRegistry:
    """Collects backends; passed to ``vipcore_register_backends``."""

    _plugin: str = "?"
    _distribution: str | None = None
    _version: str | None = None
    backends: dict[str, BackendInfo] = attrs.field(factory=dict)

    def bind(self, plugin: str, distribution: str | None, version: str | None) -> "BackendRegistry":
        """A registry that records ``plugin`` as the origin of what it adds."""
        bound = BackendRegistry(plugin, distribution, version)
        bound.backends = self.backends
        return bound

    def add(self, backend: type[Any]) -> None:
        """Register a backend class; it must have a ``name`` class attribute."""
        name = getattr(backend, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(self._plugin, f"backend class {backend!r} has no 'name' attribute",
                              distribution=self._distribution)
        existing = self.backends.get(name)
        if existing is not None and existing.factory is not backend:
            raise PluginError(
                self._plugin,
                f"backend name {name!r} is already registered by plugin {existing.plugin!r}",
                distribution=self._distribution,
            )
        self.backends[name] = BackendInfo(name, backend, self._plugin, self._distribution, self._version)


def _no_report(change: StateChange) -> None:
    return None


def default_is_managed(address: IPAddress) -> bool:
    return False


@attrs.frozen
class BackendContext:
    """Everything a backend gets from the agent when it starts."""

    #: This node's name (as in the Node object).
    node: str
    #: The backend's own config section (``config[backend_name]``), plain data.
    config: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    #: Report a transition; the agent fans it out to ``vipcore_state_changed``.
    report: Callable[[StateChange], None] = _no_report
    #: Whether an address on an interface is one vipcore manages (a VIP of a
    #: known group or inside a pool): used to remove stale VIPs at start.
    is_managed: Callable[[IPAddress], bool] = default_is_managed
    #: A directory the backend may write to (configs, pid files, state).
    state_dir: Path = Path("/run/vipcore")
    #: The backend's registered name.
    backend_name: str = ""
    #: Wall clock, replaceable in tests.
    clock: Callable[[], float] = time.time
