"""What a backend is given and how it is registered.

A backend is a class with a ``name`` class attribute and the dispatch hooks
of :mod:`vipcore.backend.hookspecs`: a subclass of :class:`vipcore.Backend`
(no marker needed) or a plain class whose methods are marked ``@hookimpl``.
A plugin module registers it through ``vipcore_register_backends``::

    from vipcore import Backend, hookimpl

    class MyBackend(Backend):
        name = "mine"

        async def vipcore_group_join(self, membership): ...
        ...

    @hookimpl
    def vipcore_register_backends(registry):
        registry.add(MyBackend)

The agent instantiates the chosen class with no arguments, registers the
instance with the plugin manager, and calls ``vipcore_backend_start`` with a
:class:`BackendContext`.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from vipcore.core import placement
from vipcore.core.errors import PluginError
from vipcore.core.model import (
    Family,
    FailoverPhases,
    IPAddress,
    State,
    StateChange,
    TransitionCause,
    VipGroup,
)


@attrs.frozen
class BackendInfo:
    """A registered backend: its class and where it came from."""

    name: str
    factory: type[Any]
    plugin: str
    distribution: str | None = None
    version: str | None = None


@attrs.frozen
class RegistryProblem:
    """A backend a plugin tried to add and could not: skipped, named, fatal only if chosen."""

    #: The backend name, when the class had one.
    name: str | None
    error: PluginError


@attrs.define
class BackendRegistry:
    """Collects backends; passed to ``vipcore_register_backends``.

    :meth:`add` never raises: a class with a mistake is recorded in
    ``problems`` (naming the plugin and its distribution) and left out, so one
    plugin's mistake never hides another plugin's backends.
    """

    _plugin: str = "?"
    _distribution: str | None = None
    _version: str | None = None
    backends: dict[str, BackendInfo] = attrs.field(factory=dict)
    problems: list[RegistryProblem] = attrs.field(factory=list)
    #: Names registered by more than one plugin (recomputed by :meth:`settle`).
    conflicts: list[RegistryProblem] = attrs.field(factory=list)
    #: Every (name, info) added, duplicates included; :meth:`settle` decides between duplicates.
    _added: list[BackendInfo] = attrs.field(factory=list)
    #: Finds a class's mistakes (the plugin host passes :func:`vipcore.backend.checks.class_problems`).
    _check: Callable[[type[Any]], list[str]] = attrs.field(default=lambda backend: [])

    def bind(self, plugin: str, distribution: str | None, version: str | None) -> "BackendRegistry":
        """A registry that records ``plugin`` as the origin of what it adds."""
        bound = BackendRegistry(plugin, distribution, version, check=self._check)
        bound.backends = self.backends
        bound.problems = self.problems
        bound.conflicts = self.conflicts
        bound._added = self._added
        return bound

    def error(self, message: str) -> PluginError:
        """A :class:`PluginError` naming this registry's plugin and distribution."""
        return PluginError(self._plugin, message, distribution=self._distribution)

    def add(self, backend: type[Any]) -> None:
        """Register a backend class; it must have a ``name`` class attribute and the dispatch hooks."""
        name = getattr(backend, "name", None)
        if not isinstance(backend, type):
            # An instance (``registry.add(MyBackend())``) is this backend's mistake alone: said in one line,
            # not an AttributeError out of the check that would drop every backend the plugin adds.
            cls = type(backend).__name__
            self.problems.append(RegistryProblem(name if isinstance(name, str) and name else None, self.error(
                f"registry.add takes a backend class, got an instance of {type(backend).__qualname__!r}: "
                f"write registry.add({cls}), not registry.add({cls}())")))
            return
        if not isinstance(name, str) or not name:
            self.problems.append(RegistryProblem(None, self.error(
                f"backend class {getattr(backend, '__qualname__', backend)!r} has no 'name' attribute")))
            return
        problems = self._check(backend)
        if problems:
            self.problems.append(RegistryProblem(name, self.error(
                f"backend {name!r} ({backend.__qualname__}): " + "; ".join(problems))))
            return
        info = BackendInfo(name, backend, self._plugin, self._distribution, self._version)
        self._added.append(info)
        self.settle()

    def settle(self) -> None:
        """Decide every name registered more than once.

        Two plugins registering the same name: the one whose plugin (entry point)
        name is the backend name keeps it and the other is skipped, named; when
        neither or both are, the name is ambiguous and neither is used.
        """
        by_name: dict[str, list[BackendInfo]] = {}
        for info in self._added:
            same = by_name.setdefault(info.name, [])
            if not any(other.factory is info.factory for other in same):
                same.append(info)
        self.backends.clear()
        self.conflicts.clear()
        for name, infos in by_name.items():
            if len(infos) == 1:
                self.backends[name] = infos[0]
                continue
            owners = [i for i in infos if i.plugin == name]
            keep = owners[0] if len(owners) == 1 else None
            if keep is not None:
                self.backends[name] = keep
            for info in infos:
                if info is keep:
                    continue
                others = " and ".join(_origin(o) for o in infos if o is not info)
                message = (f"registers backend {name!r}, which {others} also registers; "
                           + ("skipped (the plugin named after the backend keeps it)" if keep is not None
                              else "neither is used: uninstall one"))
                error = PluginError(info.plugin, message, distribution=info.distribution)
                self.conflicts.append(RegistryProblem(name, error))


def _origin(info: BackendInfo) -> str:
    return f"plugin {info.plugin!r}" + (f" (from {info.distribution})" if info.distribution else "")


def rank_nodes(group: VipGroup, nodes: Iterable[str], weights: Mapping[str, float] | None = None) -> tuple[str, ...]:
    """Order ``nodes`` for ``group``, best holder first, exactly as the agent does.

    The one placement helper for backends: it ranks by ``group.placement_key``
    (never by the group name, which changes whenever a node joins or leaves).
    ``Membership.members`` is already in this order; use this to rank another
    set of nodes (say, the members still reachable).
    """
    return placement.rank(group.placement_key, nodes, weights)


def _no_report(change: StateChange) -> None:
    return None


def _shown(value: object) -> str:
    return f"{value!r} ({type(value).__name__})" if isinstance(value, (str, int, float)) else \
        f"a {type(value).__name__}"


def state_change_problem(change: object) -> str | None:
    """What is wrong with a change a backend reports, one sentence naming the field; None when it is fine.

    The model does not validate (it is built on the failover path); this is checked where a backend hands a
    change over, so a malformed one fails the hook that sent it instead of the agent's router table.
    """
    if not isinstance(change, StateChange):
        return f"takes a vipcore.StateChange, got {_shown(change)}"

    def number(value: object) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    checks: tuple[tuple[str, bool, str], ...] = (
        ("group", isinstance(change.group, str) and bool(change.group), "the group's name (membership.name)"),
        ("family", isinstance(change.family, Family), "a vipcore.Family"),
        ("old", isinstance(change.old, State), "a vipcore.State"),
        ("new", isinstance(change.new, State), "a vipcore.State"),
        ("reason", isinstance(change.reason, str), "a str"),
        ("at", number(change.at), "a number of seconds (context.clock())"),
        ("node", isinstance(change.node, str), "a str (context.node)"),
        ("backend", isinstance(change.backend, str), "a str (the backend's name)"),
        ("vrid", change.vrid is None or (isinstance(change.vrid, int) and not isinstance(change.vrid, bool)),
         "an int or None"),
        ("failover_seconds", change.failover_seconds is None or number(change.failover_seconds),
         "a number or None"),
        ("cause", change.cause is None or isinstance(change.cause, TransitionCause),
         "a vipcore TransitionCause or None"),
        ("failover_phases", change.failover_phases is None or isinstance(change.failover_phases, FailoverPhases),
         "a vipcore.FailoverPhases or None"),
    )
    for field, fine, wanted in checks:
        if not fine:
            return f"StateChange.{field} must be {wanted}, got {_shown(getattr(change, field))}"
    return None


def checked_report(report: Callable[[StateChange], None]) -> Callable[[StateChange], None]:
    """``report`` behind :func:`state_change_problem`: a malformed change raises ``TypeError`` in the
    backend's hook (which then fails that group, in one line naming the field) and never reaches ``report``."""
    if getattr(report, "__vipcore_checked__", False):
        return report

    def checked(change: StateChange) -> None:
        problem = state_change_problem(change)
        if problem is not None:
            raise TypeError(f"context.report: {problem}")
        report(change)

    checked.__vipcore_checked__ = True  # type: ignore[attr-defined]
    checked.__wrapped__ = report  # type: ignore[attr-defined]
    return checked


def default_is_managed(address: IPAddress) -> bool:
    return False


@attrs.frozen
class BackendContext:
    """Everything a backend gets from the agent when it starts."""

    #: This node's name (as in the Node object).
    node: str
    #: The backend's own config section (``config[backend_name]``), plain data.
    config: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    #: Report a transition; the agent fans it out to ``vipcore_state_changed``. Each change is checked
    #: first (:func:`state_change_problem`): a malformed one raises ``TypeError`` naming the field.
    report: Callable[[StateChange], None] = attrs.field(default=_no_report, converter=checked_report)
    #: Whether an address on an interface is one vipcore manages (a VIP of a
    #: known group or inside a pool): used to remove stale VIPs at start.
    is_managed: Callable[[IPAddress], bool] = default_is_managed
    #: A directory the backend may write to (configs, pid files, state).
    state_dir: Path = Path("/run/vipcore")
    #: The backend's registered name.
    backend_name: str = ""
    #: Wall clock, replaceable in tests.
    clock: Callable[[], float] = time.time
