"""Where desired state comes from: manifest files on disk, or the Kubernetes API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from vipcore.core.model import DesiredState


class Source(Protocol):
    """What the agent needs from a source of desired state."""

    #: Whether the resolver allocates addresses itself (True for manifests,
    #: False for Kubernetes, where the controller allocates and writes status).
    allocates: bool

    async def initial(self) -> DesiredState:
        """The first complete state; raises a VipcoreError if it cannot be had."""
        ...

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        """Call ``on_change`` after every change, until cancelled."""
        ...
