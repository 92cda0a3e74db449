"""The plugin manager and the typed facade: the only caller of ``pm.hook``.

Built-in and third-party backends load the same way: entry points in the
``vipcore.backends`` group, each loaded and checked on its own. A plugin with
a mistake (it fails to import, implements a hook that does not exist, takes
an argument the hook does not pass, adds a broken backend class or a name
another plugin owns) is skipped and recorded as a :class:`LoadFailure` naming
it and its distribution; the other plugins keep working, and only choosing
the faulty backend is an error.

Dispatch checks what the backend returns (``True``, or an awaitable that
finishes with ``None`` or ``True``), runs each call under a deadline, and
names a hook that blocks the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import logging
import math
import numbers
import time
from collections.abc import Awaitable, Generator, Iterable
from typing import Any, cast

import attrs
import pluggy

from vipcore.backend import hookspecs
from vipcore.backend.base import Backend
from vipcore.backend.checks import (
    DISPATCH_HOOKS,
    REQUIRED_HOOKS,
    automatic_hooks,
    backend_class_problems,
    class_problems,
    hook_names,
    plugin_problems,
    unknown_hook_message,
)
from vipcore.backend.contract import BackendInfo, BackendRegistry, RegistryProblem
from vipcore.core.errors import MissingExtraError, PluginError, UnknownBackendError
from vipcore.core.model import Membership, MetricSample, Resolution, StateChange, StatusTable

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "vipcore.backends"
#: What to install when no backend is: the built-in backends' distributions.
BUILTIN_DISTRIBUTIONS = ("vipcore-native-vrrp", "vipcore-keepalived", "vipcore-netlink-static")
#: A hook holding the event loop longer than this (seconds) is named in a warning.
BLOCKING_THRESHOLD = 0.1


@attrs.frozen
class LoadFailure:
    """A plugin, or a backend it adds, that was skipped.

    ``name`` is the backend's name when known (what operators write as
    ``backend:``), else the plugin's (its entry point's) name.
    """

    name: str
    distribution: str | None
    error: PluginError
    plugin: str | None = None


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus: methods of a :class:`vipcore.Backend` named like hooks need no marker
    (as pytest's manager accepts unmarked ``pytest_*`` functions), and where each plugin came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        #: plugin name -> (distribution, version) for entry-point plugins.
        self.origins: dict[str, tuple[str | None, str | None]] = {}
        self._hooks = frozenset(hook_names())

    def parse_hookimpl_opts(self, plugin: object, name: str) -> pluggy.HookimplOpts | None:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name in self._hooks and automatic_hooks(plugin):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method) and not getattr(method, "__isabstractmethod__", False):
                return pluggy.HookimplOpts(wrapper=False, hookwrapper=False, optionalhook=False,
                                           tryfirst=False, trylast=False, specname=None)
        return opts


def plugin_manager(
    *, load_entrypoints: bool = True, plugins: Iterable[tuple[str, object]] = ()
) -> tuple[PluginManager, list[LoadFailure]]:
    """Build a plugin manager: hookspecs, entry-point plugins, then ``plugins``.

    Returns the manager and the entry points that were skipped (not fatal
    here; choosing a skipped backend is). ``plugins`` are the caller's own
    code: a mistake in one raises a :class:`PluginError` at once.
    """
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    failures: list[LoadFailure] = []
    if load_entrypoints:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist, version = _distribution(ep)
            try:
                module = ep.load()
            except Exception as exc:  # a third party's import error must not crash us
                # A backend that needs the agent's netlink library on an install without it: say so.
                extra = MissingExtraError.of("it", exc, "agent") if isinstance(exc, ImportError) else None
                advice = f" (the {extra.extra!r} extra: pip install 'vipcore[{extra.extra}]')" if extra else ""
                error = PluginError(ep.name, f"failed to load {ep.value}: {type(exc).__name__}: {exc}{advice}",
                                    distribution=dist)
                log.debug("%s", error, exc_info=exc)
                failures.append(LoadFailure(ep.name, dist, error, ep.name))
                continue
            try:
                _register(pm, ep.name, module)
            except PluginError as exc:
                error = PluginError(ep.name, str(exc).split(": ", 1)[-1], distribution=dist)
                failures.append(LoadFailure(ep.name, dist, error, ep.name))
                continue
            pm.origins[ep.name] = (dist, version)
    for name, plugin in plugins:
        _register(pm, name, plugin)
    return pm, failures


def _register(pm: PluginManager, name: str, plugin: object) -> None:
    """Register one plugin, or raise a PluginError naming it and leave the manager as it was."""
    problems = plugin_problems(plugin, automatic=automatic_hooks(plugin))
    if problems:
        raise PluginError(name, "; ".join(problems))
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(name, f"invalid hook implementation: {exc}") from None


class _Timed:
    """An awaitable that runs ``inner`` and measures each step it holds the event loop."""

    def __init__(self, inner: Awaitable[Any]) -> None:
        self.inner = inner
        self.longest = 0.0

    def __await__(self) -> Generator[Any, Any, Any]:
        steps = self.inner.__await__()
        send: Any = None
        throw: BaseException | None = None
        while True:
            started = time.perf_counter()
            try:
                yielded = steps.throw(throw) if throw is not None else steps.send(send)
            except StopIteration as stop:
                self.longest = max(self.longest, time.perf_counter() - started)
                return stop.value
            finally:
                self.longest = max(self.longest, time.perf_counter() - started)
            try:
                send, throw = (yield yielded), None
            except BaseException as exc:  # cancellation and the like go to the hook
                send, throw = None, exc


async def _run(timed: _Timed) -> Any:
    return await timed


class Hooks:
    """Typed calls into the plugins. Keyword arguments only, always.

    ``deadline``: seconds a group hook (join, update, leave, release,
    takeover) may take; ``stop_deadline`` the same for start and stop. None:
    no deadline.
    """

    def __init__(
        self,
        pm: pluggy.PluginManager,
        failures: Iterable[LoadFailure] = (),
        *,
        deadline: float | None = None,
        stop_deadline: float | None = None,
        blocking_threshold: float = BLOCKING_THRESHOLD,
    ) -> None:
        self.pm = pm
        self.load_failures = list(failures)
        self.deadline = deadline
        self.stop_deadline = stop_deadline
        self.blocking_threshold = blocking_threshold
        self._backend: tuple[str, BackendInfo] | None = None

    def _origin(self, plugin: str) -> tuple[str | None, str | None]:
        origins: dict[str, tuple[str | None, str | None]] = getattr(self.pm, "origins", {})
        return origins.get(plugin, (None, None))

    # -- registration ------------------------------------------------------

    def _registry(self) -> BackendRegistry:
        registry = BackendRegistry(check=class_problems)
        for impl in self.pm.hook.vipcore_register_backends.get_hookimpls():
            dist, version = self._origin(impl.plugin_name)
            bound = registry.bind(impl.plugin_name, dist, version)
            try:
                impl.function(registry=bound)
            except Exception as exc:
                log.debug("plugin %r failed in vipcore_register_backends", impl.plugin_name, exc_info=exc)
                error = PluginError(impl.plugin_name, f"vipcore_register_backends raised {type(exc).__name__}: {exc}",
                                    distribution=dist)
                registry.problems.append(RegistryProblem(None, error))
        return registry

    def backends(self) -> dict[str, BackendInfo]:
        """Every usable backend, by name. Plugins with mistakes are left out (see :attr:`failures`)."""
        return dict(self._registry().backends)

    @property
    def failures(self) -> list[LoadFailure]:
        """Every skipped plugin or backend, each naming the plugin and its distribution."""
        registry = self._registry()
        skipped = list(self.load_failures)
        for problem in registry.problems + registry.conflicts:
            plugin = problem.error.plugin
            skipped.append(LoadFailure(problem.name or plugin, problem.error.distribution, problem.error, plugin))
        return skipped

    def backend(self, name: str) -> BackendInfo:
        """The backend called ``name``, or the error of the plugin that failed to provide it."""
        registry = self._registry()
        if name in registry.backends:
            return registry.backends[name]
        failures = self.failures
        for failure in failures:
            if failure.name == name:
                raise failure.error
        broken = sorted({f.name for f in failures})
        error = UnknownBackendError(name, list(registry.backends), broken=broken)
        if not registry.backends:
            raise PluginError(name, f"{str(error).split(': ', 1)[-1]}; {install_hint()}")
        raise error

    def activate(self, info: BackendInfo) -> object:
        """Instantiate the backend, check it, and register it as the dispatch target."""
        try:
            instance = info.factory()
        except Exception as exc:
            log.debug("backend %r could not be created", info.name, exc_info=exc)
            raise self._error(info, f"backend {info.name!r} could not be created: {type(exc).__name__}: {exc}") \
                from None
        automatic = automatic_hooks(instance)
        problems = backend_class_problems(type(instance), automatic=automatic) \
            if type(instance) is not info.factory else []
        if problems:
            raise self._error(info, f"backend {info.name!r} ({type(instance).__qualname__}): " + "; ".join(problems))
        try:
            _register(self.pm, f"backend:{info.name}", instance)  # type: ignore[arg-type]
        except PluginError as exc:
            raise self._error(info, str(exc).split(": ", 1)[-1]) from None
        self._backend = (f"backend:{info.name}", info)
        absent = [hook for hook in DISPATCH_HOOKS if hook not in REQUIRED_HOOKS and not self._implements(hook)]
        if absent:
            log.warning("%s", self._error(info, f"backend {info.name!r} does not implement {', '.join(absent)}: "
                                                "draining this node fails for each of its groups"))
        return instance

    def deactivate(self) -> None:
        if self._backend is not None:
            plugin = self.pm.get_plugin(self._backend[0])
            if plugin is not None:
                self.pm.unregister(plugin)
            self._backend = None

    @property
    def active(self) -> BackendInfo | None:
        """The backend dispatch goes to, if any."""
        return self._backend[1] if self._backend is not None else None

    # -- dispatch ----------------------------------------------------------

    def _error(self, info: BackendInfo, message: str) -> PluginError:
        return PluginError(info.plugin, message, distribution=info.distribution)

    def _implements(self, hook: str) -> bool:
        assert self._backend is not None
        return any(impl.plugin_name == self._backend[0] for impl in getattr(self.pm.hook, hook).get_hookimpls())

    async def _dispatch(self, hook: str, deadline: float | None, what: str = "", **kwargs: Any) -> None:
        if self._backend is None:
            raise PluginError("?", f"{hook} called with no active backend")
        info = self._backend[1]
        about = f" ({what})" if what else ""
        if not self._implements(hook):
            raise self._error(info, f"backend {info.name!r} does not implement {hook}{about}")
        caller = getattr(self.pm.hook, hook)
        started = time.perf_counter()
        try:
            result = caller(**kwargs)
        except Exception as exc:
            raise self._failed(info, hook, about, exc) from exc
        finally:
            self._check_blocking(info, hook, about, time.perf_counter() - started)
        if not inspect.isawaitable(result):
            if result is not True:
                raise self._error(info, f"backend {info.name!r} returned {result!r} from {hook}{about}: "
                                        "a hook returns True, or is an async def that returns None or True")
            return
        timed = _Timed(result)
        task = asyncio.ensure_future(_run(timed))
        try:
            done, _ = await asyncio.wait({task}, timeout=deadline)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            self._check_blocking(info, hook, about, timed.longest)
        if not done:
            # Do not wait for the cancellation: a hook that ignores it must not hold us (SIGTERM).
            task.cancel()
            task.add_done_callback(_consume)
            raise self._error(info, f"backend {info.name!r} did not finish {hook}{about} within {deadline:g} s")
        try:
            value = task.result()
        except Exception as exc:
            raise self._failed(info, hook, about, exc) from exc
        if value is not None and value is not True:
            raise self._error(info, f"backend {info.name!r} returned {value!r} from {hook}{about}: "
                                    "an async hook returns None or True")

    def _failed(self, info: BackendInfo, hook: str, about: str, exc: Exception) -> PluginError:
        if isinstance(exc, PluginError):
            return exc
        # The traceback matters to the plugin's author; operators get the one line.
        log.debug("backend %r raised in %s%s", info.name, hook, about, exc_info=exc)
        return self._error(info, f"backend {info.name!r} failed in {hook}{about}: {type(exc).__name__}: {exc}")

    def _check_blocking(self, info: BackendInfo, hook: str, about: str, seconds: float) -> None:
        if seconds > self.blocking_threshold:
            log.warning("%s", self._error(
                info, f"backend {info.name!r} blocked the event loop for {seconds:.2f} s in {hook}{about}: "
                      "await, or run blocking work in a thread (asyncio.to_thread)"),
                extra={"event": "blocking_hook", "hook": hook, "seconds": seconds})

    async def start(self, *, context: Any) -> None:
        await self._dispatch("vipcore_backend_start", self.stop_deadline, context=context)
        if self._backend is None:
            return
        plugin, info = self._backend
        instance = self.pm.get_plugin(plugin)
        # The base class keeps the context in its start; an override that skips super() would otherwise
        # fail every group later ("no attribute 'context'", retried for ever) instead of once, here.
        if isinstance(instance, Backend) and not hasattr(instance, "context"):
            raise self._error(info, f"backend {info.name!r} overrides vipcore_backend_start without calling "
                                    "super().vipcore_backend_start(context): self.context is unset")

    async def stop(self, *, graceful: bool) -> None:
        await self._dispatch("vipcore_backend_stop", self.stop_deadline, graceful=graceful)

    async def join(self, *, membership: Membership) -> None:
        await self._dispatch("vipcore_group_join", self.deadline, membership.group.short_name, membership=membership)

    async def update(self, *, old: Membership, new: Membership) -> None:
        await self._dispatch("vipcore_group_update", self.deadline, new.group.short_name, old=old, new=new)

    async def leave(self, *, membership: Membership, graceful: bool) -> None:
        await self._dispatch("vipcore_group_leave", self.deadline, membership.group.short_name,
                             membership=membership, graceful=graceful)

    async def release(self, *, group: str, reason: str) -> None:
        await self._dispatch("vipcore_group_release", self.deadline, _short(group), group=group, reason=reason)

    async def takeover(self, *, group: str, reason: str) -> None:
        await self._dispatch("vipcore_group_takeover", self.deadline, _short(group), group=group, reason=reason)

    # -- notification ------------------------------------------------------

    def _notify(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        results = []
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                result = impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception:
                log.exception("plugin %r failed in %s; continuing", impl.plugin_name, hook)
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def state_changed(self, *, change: StateChange) -> None:
        self._notify("vipcore_state_changed", change=change)

    def resolved(self, *, node: str, resolution: Resolution) -> None:
        self._notify("vipcore_resolved", node=node, resolution=resolution)

    def collect_metrics(self) -> list[MetricSample]:
        """Every plugin's samples; a plugin returning something else is skipped and named (once per problem)."""
        samples: list[MetricSample] = []
        for plugin, result in self._notify("vipcore_collect_metrics"):
            problem = metric_problem(result)
            if problem:
                dist, _ = self._origin(plugin)
                _warn_once(str(PluginError(plugin, f"vipcore_collect_metrics {problem}; its samples are skipped",
                                           distribution=dist)))
                continue
            samples.extend(result)
        return samples

    def status_sections(self) -> tuple[dict[str, list[StatusTable]], list[PluginError]]:
        """Every plugin's ``/status`` tables by section name, and the plugins skipped.

        A section is named after its plugin, the active backend's after the
        backend (``native_vrrp``, not ``backend:native_vrrp``). A plugin that
        raises or returns something other than a list of well-formed
        :class:`StatusTable` is skipped whole and named (a warning once per
        problem, and in the returned errors, which the document lists).
        """
        sections: dict[str, list[StatusTable]] = {}
        errors: list[PluginError] = []
        for impl in self.pm.hook.vipcore_status_sections.get_hookimpls():
            plugin = impl.plugin_name
            dist, _ = self._origin(plugin)
            try:
                result = impl.function()
            except Exception as exc:  # one broken section must not cost the document
                log.debug("plugin %r failed in vipcore_status_sections", plugin, exc_info=exc)
                problem: str | None = f"raised {type(exc).__name__}: {exc}"
            else:
                if result is None:
                    continue
                problem = status_problem(result)
            if problem:
                error = PluginError(plugin, f"vipcore_status_sections {problem}; its section is skipped",
                                    distribution=dist)
                _warn_once(str(error))
                errors.append(error)
                continue
            name = self._backend[1].name if self._backend is not None and plugin == self._backend[0] else plugin
            sections.setdefault(name, []).extend(cast("list[StatusTable]", result))
        return sections, errors


def status_problem(result: object) -> str | None:
    """Why ``result`` is not a list of well-formed StatusTables (cells JSON scalars, one per column), or None."""
    if not isinstance(result, (list, tuple)):
        return f"returned {type(result).__name__}, not a list of vipcore.StatusTable"
    for table in result:
        if not isinstance(table, StatusTable):
            return f"returned {table!r}, not a vipcore.StatusTable"
        columns: object = table.columns
        rows: object = table.rows
        # Checked before iterating: a number is not iterable and a string would be taken as one column a letter.
        if not isinstance(columns, (tuple, list)):
            return f"returned table {table.title!r} whose columns are {columns!r}, not a tuple of column names"
        if not isinstance(rows, (tuple, list)):
            return f"returned table {table.title!r} whose rows are {rows!r}, not a tuple of rows"
        if not isinstance(table.title, str) or not all(isinstance(c, str) for c in table.columns):
            return f"returned a table whose title or columns are not strings ({table.title!r})"
        for row in table.rows:
            if not isinstance(row, (list, tuple)):
                return f"returned table {table.title!r} with row {row!r}, not a list of cells"
            if len(row) != len(table.columns):
                return (f"returned table {table.title!r} with a row of {len(row)} cells for "
                        f"{len(table.columns)} columns")
            for cell in row:
                if cell is not None and not isinstance(cell, (str, int, float, bool)):
                    return f"returned table {table.title!r} with cell {cell!r}, not a string, number, bool or None"
                if isinstance(cell, float) and not math.isfinite(cell):
                    return f"returned table {table.title!r} with cell {cell!r} (not valid JSON)"
    return None


def metric_problem(result: object) -> str | None:
    """Why ``result`` is not a list of well-formed MetricSamples, or None."""
    if not isinstance(result, (list, tuple)):
        return f"returned {type(result).__name__}, not a list of vipcore.MetricSample"
    for sample in result:
        if not isinstance(sample, MetricSample):
            return f"returned {sample!r}, not a vipcore.MetricSample"
        if not isinstance(sample.value, numbers.Real) or isinstance(sample.value, bool):
            return f"returned sample {sample.name!r} with non-numeric value {sample.value!r}"
        if sample.kind not in ("counter", "gauge"):
            return f"returned sample {sample.name!r} of kind {sample.kind!r} (counter or gauge)"
        if sample.kind == "counter" and (math.isnan(sample.value) or sample.value < 0):
            return f"returned counter {sample.name!r} with value {sample.value!r}"
        if not isinstance(sample.name, str) or not sample.name.replace("_", "a").isalnum() \
                or sample.name[0].isdigit():
            return f"returned a sample named {sample.name!r}, not a metric name"
        labels: object = sample.labels
        if not isinstance(labels, (tuple, list)) or not all(
                isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in labels):
            # A dict (what most metric libraries take) is iterated by key: checked here, not unpacked.
            return f"returned sample {sample.name!r} with labels {labels!r}, not a tuple of (name, value) string pairs"
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in sample.labels):
            return f"returned sample {sample.name!r} with non-string labels {sample.labels!r}"
    return None


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message, extra={"event": "plugin_error"})


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _short(group: str) -> str:
    digest, _, interface = group.partition("-")
    return f"{digest[:12]}-{interface}" if interface else group[:12]


def install_hint() -> str:
    """What to install when no backend is."""
    return ("install a backend distribution next to vipcore, e.g. `pip install "
            + " ".join(BUILTIN_DISTRIBUTIONS) + "` (see docs/writing-a-backend.md for your own)")


def load_hooks(
    *, plugins: Iterable[tuple[str, object]] = (), load_entrypoints: bool = True,
    deadline: float | None = None, stop_deadline: float | None = None,
) -> Hooks:
    """A ready facade over a fresh plugin manager."""
    pm, failures = plugin_manager(load_entrypoints=load_entrypoints, plugins=plugins)
    return Hooks(pm, failures, deadline=deadline, stop_deadline=stop_deadline)


__all__ = ["BUILTIN_DISTRIBUTIONS", "ENTRY_POINT_GROUP", "Hooks", "LoadFailure", "PluginManager", "install_hint",
           "load_hooks", "metric_problem", "plugin_manager", "status_problem"]
