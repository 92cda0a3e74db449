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
from vipcore.core.errors import ManifestError
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, EndpointSlice, Node, Pool, Service


def desired_state(
    items: Iterable[Mapping[str, Any]],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
) -> DesiredState:
    """Plain Kubernetes objects (Nodes, Services, EndpointSlices, VipPools or OpenELB Eips, VipGroups) as a
    :class:`DesiredState`, through the one converter (:mod:`vipcore.core.objects`). Other kinds are ignored;
    an invalid object is a :class:`ManifestError` naming it and the field."""
    nodes: dict[str, Node] = {}
    services: dict[str, Service] = {}
    slices: list[EndpointSlice] = []
    pools: dict[str, Pool] = {}
    vrids: dict[str, int] = {}
    for obj in items:
        if not isinstance(obj, Mapping):
            raise ManifestError(f"not a Kubernetes object (a mapping): {obj!r}")
        kind = obj.get("kind")
        if kind == "Node":
            node = objects.node_from_k8s(obj)
            nodes[node.name] = node
        elif kind == "Service":
            if objects.service_wanted(obj, classes=classes, default_class=default_class):
                service = objects.service_from_k8s(obj)
                services[service.key] = service
        elif kind == "EndpointSlice":
            slices.append(objects.endpoint_slice_from_k8s(obj))
        elif kind == "VipPool" or (kind == "Eip" and (obj.get("spec") or {}).get("protocol") == "vip"):
            pool = objects.pool_from_k8s(obj)
            if pool.name in pools:
                raise ManifestError(f"pool {pool.name!r} is defined twice", source=objects.describe(obj))
            pools[pool.name] = pool
        elif kind == "VipGroup":
            name, vrid = objects.pinned_vrid(obj)
            vrids[name] = vrid
    return DesiredState(nodes=tuple(nodes.values()), services=tuple(services.values()),
                        endpoint_slices=tuple(slices), pools=tuple(pools.values()), vrids=vrids)


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
