"""Desired state from static Kubernetes manifests on disk (the embedded default).

Reads files or folders of multi-document YAML with Nodes, Services,
EndpointSlices, VipPools (or OpenELB Eips) and VipGroups (pinned VRIDs).
Objects of other kinds are ignored. Any validation problem is a
:class:`~vipcore.core.errors.ManifestError` naming the file, the object and the field.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from vipcore.core import objects, yamldocs
from vipcore.core.errors import ManifestError, VipcoreError
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, MetricSample, Service

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml", ".json")
POLL_INTERVAL = 0.25
#: Seconds between re-reads of unchanged files while they are invalid (a read may have failed transiently).
RETRY_INTERVAL = 10.0


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


#: Texts longer than this may be parsed in two halves, the second in a forked process (``jobs`` > 1).
SPLIT_ABOVE = 1_000_000
#: A line that starts a YAML document: a block or quoted scalar cannot hold one (YAML's c-forbidden).
_DOCUMENT_START = re.compile(r"^---(?=[ \t]|\r?\n|$)", re.M)
_DIRECTIVE = re.compile(r"^%", re.M)


def _parse(text: str, source: str) -> list[Any]:
    return yamldocs.load_all(text, source=source, error=ManifestError)


def _parse_halves(text: str, source: str) -> list[Any] | None:
    """The documents of ``text`` parsed in two halves, the second in a forked process;
    None when it cannot be split here (no fork, directives, no document start past the middle).

    The halves meet at a document start, so the documents are the serial
    parse's. Raises ManifestError for bad YAML (its line counts from its half).
    """
    if _DIRECTIVE.search(text) or "fork" not in multiprocessing.get_all_start_methods():
        return None
    split = _DOCUMENT_START.search(text, len(text) // 2)
    if split is None:
        return None
    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
            later = pool.submit(_parse, text[split.start():], source)
            return _parse(text[:split.start()], source) + later.result()
    except (OSError, BrokenProcessPool):
        return None


def _load_all(text: str, source: str, jobs: int) -> list[Any]:
    """:func:`yamldocs.load_all`, in two halves on two processes when ``jobs`` > 1 and the text is large.

    Parsing is most of ``vipcore resolve -f`` on a large manifest and the C
    loader holds the interpreter lock, so the second half goes to a forked
    process (:func:`_parse_halves`). Anything unusual (an error, a document
    that is not a mapping) is parsed again serially, so errors name the same
    line and document. Only for callers that may fork (the CLI,
    single-threaded): the agent's ManifestSource parses serially in its worker thread.
    """
    if jobs > 1 and len(text) > SPLIT_ABOVE:
        try:
            docs = _parse_halves(text, source)
        except ManifestError:
            docs = None  # the serial parse below reports it, with the line it names
        if docs is not None and all(doc is None or isinstance(doc, Mapping) for doc in docs):
            return docs
    return _parse(text, source)


def _documents(path: Path, jobs: int = 1) -> Iterator[tuple[int, Mapping[str, Any]]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", source=str(path)) from None
    text = yamldocs.decode(data, source=str(path), error=ManifestError)
    docs = _load_all(text, str(path), jobs)
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{path} (document {index + 1})"
        if not isinstance(doc, Mapping):
            raise ManifestError("each YAML document must be a Kubernetes object (a mapping)", source=where)
        if doc.get("kind") == "List":
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise ManifestError(f"must be a list of objects, got {type(items).__name__}", source=where,
                                    field="items")
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise ManifestError(f"must be a Kubernetes object (a mapping), got {type(item).__name__}",
                                        source=where, field=f"items[{i}]")
                yield index, item
        else:
            yield index, doc


def load_manifests(
    paths: Iterable[Path],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
    jobs: int = 1,
) -> DesiredState:
    """Read every manifest into a :class:`DesiredState`.

    ``jobs`` > 1: a large file may be parsed on two processes (forked: only
    from a single-threaded caller, such as the CLI).

    Raises :class:`ManifestError` (one line naming the file, document, object
    and field) for anything invalid, and for nothing else: undecodable bytes,
    hostile YAML, wrong types, a pool or Service defined twice.
    """
    return objects.state_from_objects(
        ((f"{path} (document {index + 1})", obj) for path in manifest_files(paths)
         for index, obj in _documents(path, jobs)),
        classes=classes, default_class=default_class)


class ManifestSource:
    """Loads manifests and watches them for changes (mtime/size polling).

    Every node reads the same files, so addresses are allocated locally
    (deterministically): ``allocates`` is True.

    Parsing runs in a worker thread: a 20k-object file takes seconds and must
    not stall the event loop that times VRRP adverts. An invalid edit (junk
    bytes, bad YAML, a bad field) never reaches the agent: the last good state
    stays, one line is logged per distinct problem, the files are read again
    on their next change, and ``vipcore_manifests_stale`` says so.
    """

    allocates = True

    def __init__(self, paths: Iterable[Path], *, poll_interval: float = POLL_INTERVAL,
                 retry_interval: float = RETRY_INTERVAL) -> None:
        self.paths = tuple(paths)
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self._fingerprint: tuple[tuple[str, int, int, int], ...] = ()
        #: The problem with the files as they are now (None: the state in use is theirs).
        self.last_error: str | None = None
        self.loads = 0
        self.failures = 0

    def _snapshot(self) -> tuple[tuple[str, int, int, int], ...]:
        items = []
        for path in self.paths:
            try:
                candidates = ([p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES] if path.is_dir()
                              else [path])
            except OSError:
                candidates = [path]
            for p in candidates:
                try:
                    st = p.stat()
                except OSError:
                    continue
                # ctime too: a chmod that makes an unreadable file readable is a change worth a retry.
                items.append((str(p), st.st_mtime_ns, st.st_ctime_ns, st.st_size))
        return tuple(sorted(items))

    def load(self) -> DesiredState:
        """Read now (blocking); raises ManifestError on any invalid manifest."""
        self._fingerprint = self._snapshot()
        try:
            state = load_manifests(self.paths)
        except VipcoreError as exc:
            self.failures += 1
            self.last_error = str(exc)
            raise
        self.loads += 1
        self.last_error = None
        return state

    async def initial(self) -> DesiredState:
        """The first state, parsed off the event loop; ManifestError if the files are invalid."""
        return await asyncio.to_thread(self.load)

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        """Call ``on_change`` with the new state after every valid edit; forever.

        An invalid edit is logged once and ignored: the last good state stays;
        the files are read again on their next change, and every
        ``retry_interval`` seconds while they stay invalid.
        """
        loop = asyncio.get_running_loop()
        tried = loop.time()
        while True:
            await asyncio.sleep(self.poll_interval)
            snapshot = await asyncio.to_thread(self._snapshot)
            if snapshot == self._fingerprint and not (
                    self.last_error is not None and loop.time() - tried >= self.retry_interval):
                continue
            tried = loop.time()
            previous = self.last_error
            try:
                state = await asyncio.to_thread(self.load)
            except VipcoreError as exc:
                if str(exc) != previous:
                    log.error("manifests changed but are invalid; keeping the last good state: %s", exc,
                              extra={"event": "manifests_invalid"})
                continue
            except Exception as exc:  # a bug in a loader must not take the VIPs down either
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.last_error != previous:
                    log.exception("reading the manifests failed; keeping the last good state",
                                  extra={"event": "manifests_invalid"})
                continue
            if previous is not None:
                log.info("manifests are valid again", extra={"event": "manifests_valid"})
            await on_change(state)

    def vipcore_collect_metrics(self) -> list[MetricSample]:
        """Whether the state in use is stale, and load counts, for the agent's /metrics."""
        return [
            MetricSample("vipcore_manifests_stale", 1.0 if self.last_error is not None else 0.0, kind="gauge",
                         help="1 while the manifests on disk are invalid and the last good state is in use"),
            MetricSample("vipcore_manifests_loads", float(self.loads), help="Manifest reads that were valid"),
            MetricSample("vipcore_manifests_load_failures", float(self.failures),
                         help="Manifest reads refused as invalid"),
        ]
