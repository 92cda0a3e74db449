"""The plugin manager and the typed facade: the only caller of ``pm.hook``.

Built-in and third-party backends load the same way: entry points in the
``vipcore.backends`` group, each loaded on its own so that one broken plugin
yields a :class:`~vipcore.core.errors.PluginError` naming it and its distribution
while the others keep working.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from vipcore.backend import hookspecs
from vipcore.backend.contract import BackendInfo, BackendRegistry
from vipcore.core.errors import PluginError, UnknownBackendError
from vipcore.core.model import Membership, MetricSample, Resolution, StateChange

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vipcore.backends"


@attrs.frozen
class LoadFailure:
    """An entry point that could not be loaded."""

    name: str
    distribution: str | None
    error: PluginError


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def plugin_manager(
    *, load_entrypoints: bool = True, plugins: Iterable[tuple[str, object]] = ()
) -> tuple[pluggy.PluginManager, list[LoadFailure]]:
    """Build a plugin manager: hookspecs, entry-point plugins, then ``plugins``.

    Returns the manager and the entry points that failed to load (they are
    not fatal here; choosing a failed backend is).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    failures: list[LoadFailure] = []
    if load_entrypoints:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist, version = _distribution(ep)
            try:
                module = ep.load()
                pm.register(module, name=ep.name)
            except Exception as exc:  # a third party's import error must not crash us
                error = PluginError(ep.name, f"failed to load {ep.value}: {type(exc).__name__}: {exc}",
                                    distribution=dist)
                # Not fatal here: `vipcore backends` lists it, choosing it fails.
                log.debug("%s", error)
                failures.append(LoadFailure(ep.name, dist, error))
                continue
            _DISTRIBUTIONS[id(module)] = (dist, version)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(getattr(exc.plugin, "__name__", str(exc.plugin)), f"unknown hook: {exc}") from None
    return pm, failures


# Where each entry-point plugin came from, keyed by module identity.
_DISTRIBUTIONS: dict[int, tuple[str | None, str | None]] = {}


async def _settle(result: object) -> None:
    if inspect.isawaitable(result):
        await result


class Hooks:
    """Typed calls into the plugins. Keyword arguments only, always."""

    def __init__(self, pm: pluggy.PluginManager, failures: Iterable[LoadFailure] = ()) -> None:
        self.pm = pm
        self.failures = list(failures)
        self._backend: tuple[str, BackendInfo] | None = None

    # -- registration ------------------------------------------------------

    def backends(self) -> dict[str, BackendInfo]:
        """Every registered backend, by name; a plugin that raises is named."""
        registry = BackendRegistry()
        for impl in self.pm.hook.vipcore_register_backends.get_hookimpls():
            dist, version = _DISTRIBUTIONS.get(id(impl.plugin), (None, None))
            bound = registry.bind(impl.plugin_name, dist, version)
            try:
                impl.function(registry=bound)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(impl.plugin_name, f"vipcore_register_backends raised {type(exc).__name__}: {exc}",
                                  distribution=dist) from None
        return dict(registry.backends)

    def backend(self, name: str) -> BackendInfo:
        """The backend called ``name``, or an error listing the installed ones."""
        for failure in self.failures:
            if failure.name == name:
                raise failure.error
        found = self.backends()
        if name not in found:
            raise UnknownBackendError(name, list(found), broken=[f.name for f in self.failures])
        return found[name]

    def activate(self, info: BackendInfo) -> object:
        """Instantiate the backend and register it as the dispatch target."""
        try:
            instance = info.factory()
        except Exception as exc:
            raise PluginError(info.plugin, f"backend {info.name!r} could not be created: {type(exc).__name__}: {exc}",
                              distribution=info.distribution) from None
        self.pm.register(instance, name=f"backend:{info.name}")
        self._backend = (f"backend:{info.name}", info)
        return instance

    def deactivate(self) -> None:
        if self._backend is not None:
            plugin = self.pm.get_plugin(self._backend[0])
            if plugin is not None:
                self.pm.unregister(plugin)
            self._backend = None

    # -- dispatch ----------------------------------------------------------

    async def _dispatch(self, hook: str, **kwargs: Any) -> None:
        if self._backend is None:
            raise PluginError("?", f"{hook} called with no active backend")
        info = self._backend[1]
        caller = getattr(self.pm.hook, hook)
        try:
            result = caller(**kwargs)
            if result is None:
                raise PluginError(info.plugin, f"backend {info.name!r} does not implement {hook}",
                                  distribution=info.distribution)
            await _settle(result)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                info.plugin, f"backend {info.name!r} failed in {hook}: {type(exc).__name__}: {exc}",
                distribution=info.distribution,
            ) from exc

    async def start(self, *, context: Any) -> None:
        await self._dispatch("vipcore_backend_start", context=context)

    async def stop(self, *, graceful: bool) -> None:
        await self._dispatch("vipcore_backend_stop", graceful=graceful)

    async def join(self, *, membership: Membership) -> None:
        await self._dispatch("vipcore_group_join", membership=membership)

    async def update(self, *, old: Membership, new: Membership) -> None:
        await self._dispatch("vipcore_group_update", old=old, new=new)

    async def leave(self, *, membership: Membership, graceful: bool) -> None:
        await self._dispatch("vipcore_group_leave", membership=membership, graceful=graceful)

    async def release(self, *, group: str, reason: str) -> None:
        await self._dispatch("vipcore_group_release", group=group, reason=reason)

    async def takeover(self, *, group: str, reason: str) -> None:
        await self._dispatch("vipcore_group_takeover", group=group, reason=reason)

    # -- notification ------------------------------------------------------

    def _notify(self, hook: str, **kwargs: Any) -> list[Any]:
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %r failed in %s; continuing", impl.plugin_name, hook)
                continue
            if result is not None:
                results.append(result)
        return results

    def state_changed(self, *, change: StateChange) -> None:
        self._notify("vipcore_state_changed", change=change)

    def resolved(self, *, node: str, resolution: Resolution) -> None:
        self._notify("vipcore_resolved", node=node, resolution=resolution)

    def collect_metrics(self) -> list[MetricSample]:
        samples: list[MetricSample] = []
        for result in self._notify("vipcore_collect_metrics"):
            samples.extend(result)
        return samples


def load_hooks(*, plugins: Iterable[tuple[str, object]] = (), load_entrypoints: bool = True) -> Hooks:
    """A ready facade over a fresh plugin manager."""
    pm, failures = plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
    return Hooks(pm, failures)


__all__ = ["ENTRY_POINT_GROUP", "Hooks", "LoadFailure", "load_hooks", "plugin_manager"]
