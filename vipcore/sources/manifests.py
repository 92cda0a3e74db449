"""Desired state from static Kubernetes manifests on disk (the embedded default).

Reads files or folders of multi-document YAML with Nodes, Services,
EndpointSlices, VipPools (or OpenELB Eips) and VipGroups (pinned VRIDs).
Objects of other kinds are ignored. Any validation problem is a
:class:`~vipcore.core.errors.ManifestError` naming the file, the object and the field.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from vipcore.core import objects
from vipcore.core.errors import ManifestError, VipcoreError
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, EndpointSlice, Node, Pool, Service

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.25


def manifest_files(paths: Iterable[Path]) -> list[Path]:
    """The YAML files named, folders expanded (sorted, not recursive into dot-folders)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise ManifestError("no such file or folder", source=str(path))
    return files


def _documents(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1}" if mark is not None else None
        raise ManifestError(f"invalid YAML: {problem}", source=str(path), field=where) from None
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ManifestError("each YAML document must be a Kubernetes object (a mapping)",
                                source=f"{path} (document {index + 1})")
        if doc.get("kind") == "List":
            for item in doc.get("items") or []:
                yield index, item
        else:
            yield index, doc


def load_manifests(
    paths: Iterable[Path],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
) -> DesiredState:
    """Read every manifest into a :class:`DesiredState`."""
    nodes: dict[str, Node] = {}
    services: dict[str, Service] = {}
    slices: list[EndpointSlice] = []
    pools: dict[str, Pool] = {}
    vrids: dict[str, int] = {}
    for path in manifest_files(paths):
        for index, obj in _documents(path):
            kind = obj.get("kind")
            try:
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
            except ManifestError as exc:
                raise ManifestError(str(exc), source=f"{path} (document {index + 1})") from None
    return DesiredState(
        nodes=tuple(nodes.values()),
        services=tuple(services.values()),
        endpoint_slices=tuple(slices),
        pools=tuple(pools.values()),
        vrids=vrids,
    )


class ManifestSource:
    """Loads manifests and watches them for changes (mtime/size polling).

    Every node reads the same files, so addresses are allocated locally
    (deterministically): ``allocates`` is True.
    """

    allocates = True

    def __init__(self, paths: Iterable[Path], *, poll_interval: float = POLL_INTERVAL) -> None:
        self.paths = tuple(paths)
        self.poll_interval = poll_interval
        self._fingerprint: tuple[tuple[str, int, int], ...] = ()
        self.last_error: str | None = None

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        items = []
        for path in self.paths:
            candidates = [p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES] if path.is_dir() else [path]
            for p in candidates:
                try:
                    st = p.stat()
                except OSError:
                    continue
                items.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(sorted(items))

    def load(self) -> DesiredState:
        """Read now; raises ManifestError on any invalid manifest."""
        self._fingerprint = self._snapshot()
        return load_manifests(self.paths)

    async def initial(self) -> DesiredState:
        return self.load()

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        """Call ``on_change`` with the new state after every valid edit; forever.

        An invalid edit is logged once and ignored: the last good state stays.
        """
        while True:
            await asyncio.sleep(self.poll_interval)
            snapshot = self._snapshot()
            if snapshot == self._fingerprint:
                continue
            self._fingerprint = snapshot
            try:
                state = load_manifests(self.paths)
            except VipcoreError as exc:
                if str(exc) != self.last_error:
                    log.error("manifests changed but are invalid; keeping the last good state: %s", exc)
                self.last_error = str(exc)
                continue
            self.last_error = None
            await on_change(state)
