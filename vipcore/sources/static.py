"""Desired state given in code: for tests, embedding, and library users without files or a cluster.

::

    from vipcore.sources.static import StaticSource, desired_state

    state = desired_state([node_dict, pool_dict, service_dict])   # plain Kubernetes dicts
    source = StaticSource(state)
    agent = Agent(Config(backend="mine", node_name="node-a"), source=source)
    ...
    await source.set(new_state)                                   # the agent applies it
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from vipcore.core import objects

from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState


def desired_state(
    items: Iterable[Mapping[str, Any]],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
) -> DesiredState:
    """Plain Kubernetes objects (Nodes, Services, EndpointSlices, VipPools or OpenELB Eips, VipGroups) as a
    :class:`DesiredState`, through the one converter (:mod:`vipcore.core.objects`). Other kinds are ignored;
    an invalid object is a :class:`ManifestError` naming it and the field."""
    return objects.state_from_objects(((None, obj) for obj in items), classes=classes,
                                      default_class=default_class)


class StaticSource:
    """A :class:`~vipcore.sources.Source` holding a state given in code; :meth:`set` replaces it.

    ``allocates`` (default True): the agent's resolver allocates addresses
    itself, as with manifests; pass False when the Services already carry
    their addresses (as the controller writes them in a cluster).
    """

    def __init__(self, state: DesiredState, *, allocates: bool = True) -> None:
        self.state = state
        self.allocates = allocates
        self._changes: asyncio.Queue[DesiredState] | None = None

    async def initial(self) -> DesiredState:
        return self.state

    async def set(self, state: DesiredState) -> None:
        """Replace the state; a running :meth:`watch` hands it to the agent."""
        self.state = state
        if self._changes is not None:
            await self._changes.put(state)

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        self._changes = asyncio.Queue()
        try:
            while True:
                await on_change(await self._changes.get())
        finally:
            self._changes = None


__all__ = ["StaticSource", "desired_state"]
