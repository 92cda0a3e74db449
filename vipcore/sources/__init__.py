"""Where desired state comes from: manifest files on disk, the Kubernetes API, or code (:mod:`.static`).

Any object with the :class:`Source` shape works: pass it as ``Agent(config, source=...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from vipcore.core.model import DesiredState, GroupState


class Source(Protocol):
    """What the agent needs from a source of desired state.

    A source may fail at any time (bad input, API down): the agent keeps the
    last good state, logs one line and calls :meth:`watch` again after a
    backoff; a failing :meth:`initial` is retried the same way. A source never
    has to protect the agent from itself.
    """

    #: Whether the agent's resolver allocates addresses itself. True when every
    #: node reads the same complete input (manifests, a static state) and so
    #: allocates the same addresses deterministically; False when the Services
    #: already carry their addresses (Kubernetes, where the controller allocates
    #: and writes them to the Service status) and the agent only honours them.
    allocates: bool

    async def initial(self) -> DesiredState | GroupState:
        """The first complete state; raises (a VipcoreError, ideally) if it cannot be had yet."""
        ...

    async def watch(self, on_change: Callable[[DesiredState | GroupState], Awaitable[None]]) -> None:
        """Call ``on_change`` after every change, until cancelled. Raising ends this watch only."""
        ...
