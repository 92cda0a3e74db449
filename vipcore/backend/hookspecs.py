"""The vipcore plugin contract: hook specifications and nothing else.

Three kinds of hook:

* **Registration** — every plugin may add backends to a registry.
* **Dispatch** — the core tells the *active backend* what to do. Exactly one
  backend instance is registered for these; each call returns ``True`` or an
  awaitable (an ``async def`` implementation) that the agent awaits under a
  deadline and that must finish with ``None`` or ``True``. Any other result
  (``"ok"``, ``42``, ``False``, ``None`` from a plain ``def``) is an error
  naming the plugin and the hook. These are ``firstresult`` hooks.
* **Notification** — backends and the core report what happened; every
  implementation is called, results are ignored, and an exception in one
  observer is logged with the plugin's name and never reaches the backend.

Each hook is documented in ``docs/hooks.md`` (a test checks it).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vipcore.backend.contract import BackendContext, BackendRegistry
    from vipcore.core.model import Membership, MetricSample, Resolution, StateChange, StatusTable

from vipcore.backend.markers import PROJECT, hookspec

__all__ = ["PROJECT", "hookspec"]

# -- registration -----------------------------------------------------------


@hookspec
def vipcore_register_backends(registry: BackendRegistry) -> None:
    """Add backend classes with ``registry.add(BackendClass)``.

    Called once per plugin manager, on every plugin. Results are ignored.
    """


# -- dispatch to the active backend ------------------------------------------


@hookspec(firstresult=True)
def vipcore_backend_start(context: BackendContext) -> bool | Awaitable[Any] | None:
    """The agent starts: prepare (open sockets, clean stale VIPs of ``context``).

    First non-None result wins: ``True`` or an awaitable the agent awaits.
    ``None`` from every plugin is an error naming the backend.
    """


@hookspec(firstresult=True)
def vipcore_backend_stop(graceful: bool) -> bool | Awaitable[Any] | None:
    """The agent stops. ``graceful``: hand groups over before dropping VIPs.

    First non-None result wins, as for ``vipcore_backend_start``. After it
    returns (or its awaitable completes) the backend holds no VIP.
    """


@hookspec(firstresult=True)
def vipcore_group_join(membership: Membership) -> bool | Awaitable[Any] | None:
    """This node starts taking part in a group (one VRRP router per family).

    First non-None result wins. The backend decides who holds the VIPs and
    reports every transition through ``vipcore_state_changed``.
    """


@hookspec(firstresult=True)
def vipcore_group_update(old: Membership, new: Membership) -> bool | Awaitable[Any] | None:
    """A group this node takes part in changed (VIPs, members, priorities, VRID).

    ``new.name`` may differ from ``old.name``: a membership change renames a
    group (the name hashes the node list) and the agent pairs the old and the
    new one by interface and VRID. A backend keeps its router (instance,
    addresses) under the new name and applies the difference without moving
    the holder when the holder did not change.
    First non-None result wins.
    """


@hookspec(firstresult=True)
def vipcore_group_leave(membership: Membership, graceful: bool) -> bool | Awaitable[Any] | None:
    """This node stops taking part in a group; afterwards it holds none of its VIPs.

    ``graceful``: hand over first (make-before-break) when the protocol allows.
    First non-None result wins.
    """


@hookspec(firstresult=True)
def vipcore_group_release(group: str, reason: str) -> bool | Awaitable[Any] | None:
    """Give a group up without leaving it (drain, failed health, control plane).

    The node stays a member but must stop holding: a VRRP backend lowers its
    priority / resigns, a static backend removes the VIPs. First non-None
    result wins.
    """


@hookspec(firstresult=True)
def vipcore_group_takeover(group: str, reason: str) -> bool | Awaitable[Any] | None:
    """Hold a group now (control-plane decision) or undo an earlier release.

    First non-None result wins.
    """


# -- notification -----------------------------------------------------------


@hookspec
def vipcore_state_changed(change: StateChange) -> None:
    """A backend's router for (group, family) changed state. Notification only.

    Every implementation is called; results are ignored; an exception in one
    is logged with the plugin's name and does not reach the backend.
    """


@hookspec
def vipcore_resolved(node: str, resolution: Resolution) -> None:
    """The agent or controller resolved the desired state. Notification only."""


@hookspec
def vipcore_collect_metrics() -> list[MetricSample]:
    """Return metric samples (counters, gauges) at scrape time.

    All results are collected and concatenated; ``None`` counts as none.
    """
    return []


@hookspec
def vipcore_status_sections() -> list[StatusTable]:
    """Return tables for the agent's ``/status`` document (``vipcore status`` prints them).

    All results are collected, each under its plugin's name (the active
    backend's under the backend's name); ``None`` counts as none. A result
    that is not a list of well-formed :class:`vipcore.StatusTable`, or an
    exception, skips that plugin's section with one warning naming it.
    """
    return []
