"""Load-time checks of a plugin's hooks and of a backend class.

A plugin author's mistake (a misspelled hook or argument, a dispatch hook left
out, a method without the marker) is found when the plugin is loaded, with a
message that says what to change, never at the first dispatch.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable

from vipcore.backend import hookspecs
from vipcore.backend.markers import PROJECT

#: Hooks the active backend must answer: the agent calls every one of them.
DISPATCH_HOOKS = (
    "vipcore_backend_start", "vipcore_backend_stop", "vipcore_group_join", "vipcore_group_update",
    "vipcore_group_leave", "vipcore_group_release", "vipcore_group_takeover",
)
#: What a plain (not :class:`vipcore.Backend`) class must implement: the agent calls these for
#: every group. Release and takeover are called only when a node is drained or the control plane
#: decides; a class without them is accepted with a warning (a drain then fails for each group).
REQUIRED_HOOKS = DISPATCH_HOOKS[:5]
#: Hooks a backend instance may implement besides the dispatch hooks.
OBSERVER_HOOKS = ("vipcore_state_changed", "vipcore_resolved", "vipcore_collect_metrics",
                  "vipcore_status_sections")
_MARKER = PROJECT + "_impl"
#: Class attribute set by :class:`vipcore.Backend`: its methods named like hooks need no marker.
AUTOMATIC_HOOKS = "_vipcore_automatic_hooks"


def hook_names() -> tuple[str, ...]:
    """Every hook specification's name."""
    return tuple(sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
                        if name.startswith(PROJECT + "_")))


def spec_arguments(hook: str) -> tuple[str, ...]:
    """The arguments of a hook specification, in order."""
    return tuple(inspect.signature(getattr(hookspecs, hook)).parameters)


def suggestion(name: str, known: Iterable[str] | None = None) -> str:
    """`` (did you mean X?)`` for a near-miss of a known hook name, else ``""``."""
    close = difflib.get_close_matches(name, list(known if known is not None else hook_names()), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


def unknown_hook_message(name: str) -> str:
    return f"unknown hook {name}{suggestion(name)}"


def marked(function: object) -> bool:
    """Whether ``function`` carries the ``@hookimpl`` marker."""
    return getattr(function, _MARKER, None) is not None


def argument_problems(hook: str, function: object, *, bound: bool) -> list[str]:
    """Arguments of an implementation that the specification does not offer."""
    try:
        parameters = list(inspect.signature(function).parameters)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return []
    if not bound and parameters:
        parameters = parameters[1:]  # ``self`` of a method read from the class
    allowed = spec_arguments(hook)
    problems = []
    for arg in parameters:
        if arg in allowed:
            continue
        close = difflib.get_close_matches(arg, allowed, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"it passes: {', '.join(allowed) or 'nothing'}"
        problems.append(f"{hook}() takes argument {arg!r}, which the hook does not pass ({hint})")
    return problems


def backend_class_problems(cls: type, *, automatic: bool) -> list[str]:
    """What is wrong with a backend class, one sentence each; empty when it is fine.

    ``automatic``: the class derives from :class:`vipcore.Backend`, whose
    methods named like hooks are implementations without the marker.
    """
    problems: list[str] = []
    known = hook_names()
    names = sorted({n for klass in cls.__mro__ if klass is not object for n in vars(klass)})
    implemented: set[str] = set()
    for name in names:
        attribute = inspect.getattr_static(cls, name)
        function = getattr(attribute, "__func__", attribute)
        if not callable(function):
            continue
        if name in known:
            if automatic or marked(function):
                if not getattr(function, "__isabstractmethod__", False):
                    implemented.add(name)
                    problems += argument_problems(name, function, bound=isinstance(attribute, staticmethod))
            else:
                problems.append(f"method {name} is not marked @hookimpl (or derive the class from vipcore.Backend)")
        elif name.startswith(PROJECT + "_"):
            problems.append(f"method {unknown_hook_message(name)}")
    required = DISPATCH_HOOKS if automatic else REQUIRED_HOOKS
    missing = [hook for hook in required if hook not in implemented]
    if missing:
        problems.append(f"does not implement the dispatch hook(s) {', '.join(missing)}")
    return problems


def plugin_problems(plugin: object, *, automatic: bool = False) -> list[str]:
    """What is wrong with a plugin object or module's hook implementations; empty when fine.

    Unknown (misspelled) hook names and arguments the hook does not pass, the
    two mistakes pluggy would otherwise report as a raw traceback or only on
    ``check_pending``.
    """
    problems: list[str] = []
    known = hook_names()
    for name in dir(plugin):
        if name.startswith("__"):
            continue
        try:
            attribute = inspect.getattr_static(plugin, name)
        except AttributeError:
            continue
        function = getattr(attribute, "__func__", attribute)
        if not callable(function) or not (marked(function) or (automatic and name in known)):
            continue
        if name not in known:
            problems.append(unknown_hook_message(name))
            continue
        bound = inspect.ismodule(plugin) or isinstance(attribute, staticmethod) or not inspect.isclass(plugin)
        target = getattr(plugin, name) if not inspect.isclass(plugin) else function
        problems += argument_problems(name, target, bound=bound)
    return problems


def automatic_hooks(backend: object) -> bool:
    """Whether ``backend`` (a class or instance) derives from :class:`vipcore.Backend`,
    whose methods named like hooks need no marker."""
    return bool(getattr(backend, AUTOMATIC_HOOKS, False))


def class_problems(backend: type) -> list[str]:
    """Load-time problems of a backend class, as :meth:`BackendRegistry.add` reports them.

    A factory that overrides ``__new__`` (its instances are of another type)
    is checked when the agent instantiates it.
    """
    if "__new__" in vars(backend):
        return []
    return backend_class_problems(backend, automatic=automatic_hooks(backend))
