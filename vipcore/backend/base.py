"""``vipcore.Backend``: the base class third-party backends derive from.

Deriving is optional (a plain class with ``@hookimpl`` methods works too), but
it gives completion, type checking and early errors: every method named like
a hook is an implementation without a per-method ``@hookimpl`` (the plugin
manager recognises them, as pytest recognises unmarked ``pytest_*``
functions), and a subclass that leaves out a dispatch hook cannot be
registered. Dispatch still goes through the pluggy hooks.

Each dispatch hook returns ``None`` (an ``async def`` that finishes) or
``True``; anything else is an error naming the backend and the hook.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from vipcore.backend.contract import BackendContext
from vipcore.core.model import Membership


class Backend(abc.ABC):
    """A vipcore backend: override the abstract hooks as ``async def`` methods.

    Subclasses set ``name`` (the name operators write as ``backend:``) and
    need a constructor without arguments. See ``docs/writing-a-backend.md``.
    """

    #: The backend's registered name.
    name: ClassVar[str] = ""
    #: Tells the plugin manager that methods named like hooks are implementations (see checks.AUTOMATIC_HOOKS).
    _vipcore_automatic_hooks: ClassVar[bool] = True

    #: What the agent gave :meth:`vipcore_backend_start`; set by the default implementation.
    context: BackendContext

    async def vipcore_backend_start(self, context: BackendContext) -> None:
        """The agent starts: keep ``context`` (override to open sockets, clean stale VIPs; call super)."""
        self.context = context

    @abc.abstractmethod
    async def vipcore_backend_stop(self, graceful: bool) -> None:
        """The agent stops; afterwards the backend holds no VIP. ``graceful``: hand over first."""

    @abc.abstractmethod
    async def vipcore_group_join(self, membership: Membership) -> None:
        """Start taking part in ``membership.group``; report every transition via ``context.report``."""

    @abc.abstractmethod
    async def vipcore_group_update(self, old: Membership, new: Membership) -> None:
        """Apply the difference between ``old`` and ``new``; VIP-only changes keep the holder.

        ``new.name`` differs from ``old.name`` when a node joined or left (the name hashes the node list):
        re-key what you keep from the old name to the new one.
        """

    @abc.abstractmethod
    async def vipcore_group_leave(self, membership: Membership, graceful: bool) -> None:
        """Stop taking part; afterwards hold none of the group's VIPs (report its routers ``STOPPED``)."""

    @abc.abstractmethod
    async def vipcore_group_release(self, group: str, reason: str) -> None:
        """Stay a member but stop holding (drain, control plane). ``group`` is the group's name."""

    @abc.abstractmethod
    async def vipcore_group_takeover(self, group: str, reason: str) -> None:
        """Hold the group (by name) now, or undo an earlier release."""


__all__ = ["Backend"]
