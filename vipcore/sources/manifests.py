"""Desired state from static Kubernetes manifests on disk (the embedded default).

Reads files or folders of multi-document YAML with Nodes, Services,
EndpointSlices, VipPools (or OpenELB Eips) and VipGroups (pinned VRIDs).
Objects of other kinds are ignored. Any validation problem is a
:class:`~vipcore.core.errors.ManifestError` naming the file, the object and the field.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import operator
import os
import pickle
import re
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs

from vipcore.core import objects, yamldocs
from vipcore.core.errors import ManifestError, VipcoreError
from vipcore.core.model import LOAD_BALANCER_CLASS, DesiredState, EndpointSlice, MetricSample, Node, Service

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

YAML_SUFFIXES = (".yaml", ".yml", ".json")
#: Seconds between looks at the files' fingerprints where inotify is unavailable.
POLL_INTERVAL = 0.25
#: With inotify: seconds between looks anyway (what inotify cannot see: an edit on a network filesystem).
RESCAN_INTERVAL = 10.0
#: Seconds from a change event to the look: the rest of a writer's burst comes in meanwhile (one look a save).
SETTLE = 0.05
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


#: Texts longer than this may be read on two processes, the parent and a forked child (``jobs`` > 1).
SPLIT_ABOVE = 1_000_000
#: About how many characters of a split text one piece holds (pieces end at document starts). Small
#: enough that the two processes finish within a few tens of milliseconds of each other, large enough
#: that a piece's own costs (a loader, a pickle) do not count.
PIECE = 128 * 1024
#: At most this many pieces (a piece's number travels as one byte).
MAX_PIECES = 255
#: A line that starts a YAML document: a block or quoted scalar cannot hold one (YAML's c-forbidden).
_DOCUMENT_START = re.compile(r"^---(?=[ \t]|\r?\n|$)", re.M)


def _has_directive(text: str) -> bool:
    """Whether a line of ``text`` starts with ``%`` (a YAML directive: it applies to the document after
    it, so such a text is not cut). Two substring searches: the regex ``^%`` took 33 ms on 4.7 MB."""
    return text.startswith("%") or "\n%" in text


@attrs.define
class ReadCounts:
    """What this process read of the manifests (:data:`counts`), a forked child's share included: how
    often a file was read and how much text was parsed (a bad file is read once, not once more to word
    its error). For tests and benches."""

    files: int = 0
    characters: int = 0


#: This process's :class:`ReadCounts`.
counts = ReadCounts()


def _parse(text: str, source: str, lines_before: Callable[[], int] | None = None, *,
           counted: int | None = None) -> list[Any]:
    """``text``'s documents (``counted``: how many of its characters are the file's, default all)."""
    counts.characters += len(text) if counted is None else counted
    return yamldocs.load_all(text, source=source, error=ManifestError, lines_before=lines_before)


def _read(path: Path) -> str:
    counts.files += 1
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read: {exc.strerror}", source=str(path)) from None
    return yamldocs.decode(data, source=str(path), error=ManifestError)


class _DocumentError(ManifestError):
    """A document that is no object (not a mapping, a List of other things), raised with its index: a
    piece of a file (:func:`_read_piece`) names it once the documents before the piece are counted."""

    def __init__(self, message: str, *, path: str, index: int, field: str | None = None) -> None:
        super().__init__(message, source=_where(path, index), field=field)
        self.message, self.index = message, index


def _objects(docs: list[Any], path: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Every object of the parsed documents, with its document's index (``List`` items flattened)."""
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if type(doc) is not dict and not isinstance(doc, Mapping):
            raise _DocumentError("each YAML document must be a Kubernetes object (a mapping)", path=path,
                                 index=index)
        if doc.get("kind") == "List":
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise _DocumentError(f"must be a list of objects, got {type(items).__name__}", path=path,
                                     index=index, field="items")
            for i, item in enumerate(items):
                if not isinstance(item, Mapping):
                    raise _DocumentError(f"must be a Kubernetes object (a mapping), got {type(item).__name__}",
                                         path=path, index=index, field=f"items[{i}]")
                yield index, item
        else:
            yield index, doc


def _where(path: str, index: int) -> str:
    """How a message names a document (built only for a message: a string per document is not free)."""
    return f"{path} (document {index + 1})"


def _documents(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    return _objects(_parse(_read(path), str(path)), str(path))


#: Appended to every piece but a file's last: the next document's start, which the piece was cut before. A
#: piece that ends inside a quoted scalar or a flow collection then fails where the whole file does (at
#: that line, with the same words), not at its own end; a piece without a problem gets one empty document
#: more, dropped.
_NEXT = "---\n"


@attrs.define
class _Piece:
    """What reading a piece of a file gave (:func:`_read_piece`): its objects, and where it went wrong.

    A problem is kept, not raised, so that the file's error is the serial read's (:func:`_placed`): a YAML
    problem (``yaml``: ``problem`` is the whole message, its line counted from the file's start) wins over
    any object's, as the serial read parses the whole file before converting; an object's problem
    (``problem`` and ``field``, in document ``document`` of the piece) is named once the documents before
    the piece are counted.
    """

    #: The objects converted, up to a problem; None: not converted (a problem earlier in the file) or not read.
    builder: objects.StateBuilder | None
    #: Documents parsed (None: not parsed, after a YAML problem).
    documents: int | None
    problem: str | None = None
    yaml: bool = False
    field: str | None = None
    document: int = 0
    #: An object defined twice within the piece: the serial read names both documents.
    twice: bool = False


def _read_piece(text: str, start: int, end: int, source: str, classes: frozenset[str], default_class: bool,
                convert: bool = True) -> _Piece:
    """``text[start:end]`` (a file's text, or a piece of it cut at document starts) parsed and, if
    ``convert``, its objects converted into a builder. Raises nothing for what the text holds."""
    piece = text[start:end] if end == len(text) else text[start:end] + _NEXT
    try:
        docs = _parse(piece, source, (lambda: yamldocs.line_breaks(text, start)) if start else None,
                      counted=end - start)
    except ManifestError as exc:
        return _Piece(None, None, str(exc), yaml=True)
    if end != len(text):
        docs.pop()  # _NEXT's empty document
    if not convert:
        return _Piece(None, len(docs))
    builder = objects.StateBuilder()
    add, convert_one, index = builder.add, objects.convert, 0
    try:
        for index, obj in _objects(docs, source):
            try:
                converted = convert_one(obj, classes=classes, default_class=default_class)
            except ManifestError as exc:
                return _Piece(builder, len(docs), str(exc), document=index)
            if converted is not None:
                try:
                    add(converted)
                except ManifestError:
                    return _Piece(builder, len(docs), "defined twice", document=index, twice=True)
    except _DocumentError as exc:
        return _Piece(builder, len(docs), exc.message, field=exc.field, document=exc.index)
    return _Piece(builder, len(docs))


class _Serially(Exception):
    """The forked read cannot word this error as the serial read does (an object defined twice): read
    serially."""


def _placed(read: list[_Piece], source: str, into: objects.StateBuilder) -> None:
    """Merge the pieces of one file, read in order, into ``into`` (the files before it), or raise the
    error the serial read gives: the first YAML problem in the file, else the first object's, with its
    document counted from the file's start. :class:`_Serially` for an object defined twice."""
    for piece in read:
        if piece.yaml:
            assert piece.problem is not None
            raise ManifestError(piece.problem)  # already names the file and the line
    before = 0
    for piece in read:
        if piece.twice:
            raise _Serially()
        if piece.builder is not None:
            try:
                into.merge(piece.builder)
            except ManifestError:
                raise _Serially() from None
        if piece.problem is not None:
            raise ManifestError(piece.problem, source=_where(source, before + piece.document), field=piece.field)
        assert piece.documents is not None and piece.builder is not None  # no problem before: read in full
        before += piece.documents


def _pieces(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of the pieces of ``text``: about :data:`PIECE` characters each, each but the
    first starting at a document start; one piece when there is no document start to cut at."""
    count = min(MAX_PIECES, max(2, len(text) // PIECE))
    cuts = [0]
    for i in range(1, count):
        found = _DOCUMENT_START.search(text, max(cuts[-1] + 1, len(text) * i // count))
        if found is None:
            break
        if found.start() > cuts[-1]:
            cuts.append(found.start())
    cuts.append(len(text))
    return list(zip(cuts, cuts[1:]))


#: What both processes run on a piece: :func:`_read_piece`'s arguments and result.
_Work = Callable[[str, int, int, str, frozenset[str], bool, bool], _Piece]


def _read_parallel(text: str, source: str, classes: frozenset[str], default_class: bool, *,
                   work: _Work | None = None) -> list[_Piece] | None:
    """The pieces of ``text`` parsed and converted on two processes, this one and a forked child (for
    :func:`_placed`); None when it cannot be split here (no fork, directives, no document start to cut
    at) or the child did not answer.

    The text is cut into pieces at document starts (:func:`_pieces`), each
    read into a builder of its own, and the builders merged in the pieces'
    order (:meth:`~vipcore.core.objects.StateBuilder.merge`): the state is
    the serial read's, and the work of building it is shared too. The parent
    reads the first piece and the child the last; the others are handed out
    as they are asked for, one byte each from a pipe both processes read
    (a read of one byte takes it from the other): whichever process is
    faster (its pieces cheaper, or its CPU less shared) reads more, and both
    finish within about a piece of each other, the parent with time to load
    the child's answer. The child inherits the text (nothing is sent to it)
    and returns its builders (model values, not the parsed dicts): a fraction
    of the bytes to pickle and to load, and its share of the conversion done
    alongside the parent's. A bare ``fork`` and pipes, not a process pool: the pool's
    imports, threads and queues cost more than it saves (``bench/manifests.py``).

    A problem in a piece is kept with it (:class:`_Piece`), not raised, and
    both processes read on: the file's error is worded from this one read.
    A process skips the pieces after one with a YAML problem (the file's
    error is that one's or an earlier piece's) and converts none after one
    with an object's problem (their YAML still counts: the serial read
    parses the whole file first). ``work``: what both processes run on a
    piece (tests), :func:`_read_piece` by default.
    """
    if _has_directive(text) or not hasattr(os, "fork"):
        return None
    pieces = _pieces(text)
    if len(pieces) < 2:
        return None
    work = work or _read_piece
    try:
        readable, writable = os.pipe()
        tickets, handing = os.pipe()
    except OSError:
        return None
    # Room for the child's pieces while the parent is busy with its own: it reads them between pieces.
    with contextlib.suppress(AttributeError, OSError):
        fcntl.fcntl(readable, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    # The middle pieces' numbers, written before the fork: each process reads them one byte at a time
    # until the pipe is empty (and, its writer closed, reads nothing more).
    os.write(handing, bytes(range(1, len(pieces) - 1)))
    os.close(handing)
    try:
        child = os.fork()
    except OSError:
        for fd in (readable, writable, tickets):
            os.close(fd)
        return None
    if child == 0:  # pragma: no cover - the forked child (its result is checked by the parent's tests)
        _child(writable, readable, tickets, work, text, pieces, source, classes, default_class)
    os.close(writable)
    read: dict[int, _Piece] = {}
    inbox = _Inbox(readable)
    try:
        os.set_blocking(readable, False)
        _read_taken(_taken(0, tickets), read, work, text, pieces, source, classes, default_class, inbox)
        os.set_blocking(readable, True)
        inbox.receive(read)
    except BaseException:
        # A bug (a problem in the text is kept, not raised): the child's pieces are moot.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        raise
    finally:
        os.close(readable)
        os.close(tickets)
        _reap(child)
    counts.characters += inbox.characters
    if not inbox.done or inbox.broken or sorted(read) != list(range(len(pieces))):
        return None  # the child died (or, cannot happen, a piece was read by neither); never a short state
    return [read[number] for number in range(len(pieces))]


def _read_taken(numbers: Iterable[int], read: dict[int, _Piece], work: _Work, text: str,
                pieces: list[tuple[int, int]], source: str, classes: frozenset[str], default_class: bool,
                inbox: _Inbox | None = None, out: int | None = None) -> None:
    """Read the pieces ``numbers`` names (ascending after the first) into ``read``, each sent to ``out``
    (the child) as it is read; in the parent, what the child has sent is loaded from ``inbox`` between
    pieces. No piece after one with a YAML problem is read (known here or from the child), none after
    one with an object's problem converted."""
    skip_after = convert_before = len(pieces)
    for number in numbers:
        if number > skip_after:
            piece = _Piece(None, None)
        else:
            start, end = pieces[number]
            piece = work(text, start, end, source, classes, default_class, number < convert_before)
            if piece.yaml:
                skip_after = min(skip_after, number)
            elif piece.problem is not None:
                convert_before = min(convert_before, number)
        read[number] = piece
        if out is not None:
            _send(out, ("piece", number, piece))
        if inbox is not None:
            inbox.receive(read)  # what the child has sent meanwhile, loaded while it reads on
            for other, sent in read.items():
                if sent.yaml:
                    skip_after = min(skip_after, other)


#: Bytes the pipe from the child may hold (Linux lets any process ask for up to 1 MiB): the child writes
#: each piece as it is read and should not wait for the parent to finish its own.
PIPE_SIZE = 1 << 20
_LENGTH = 8


class _Inbox:
    """The parent's end of the child's pipe: length-prefixed pickles of ``("piece", number, piece)``,
    then ``("done", characters parsed, None)``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.done = False
        #: A message could not be loaded: the child's answer is not to be used.
        self.broken = False
        #: Characters the child parsed (in its ``done``).
        self.characters = 0

    def receive(self, read: dict[int, _Piece]) -> None:
        """Load every piece the child has sent into ``read``: what the pipe holds now when it does not
        block, else everything until the child closes it. Whatever cannot be loaded (half a message: the
        child died) is left for :attr:`done` to tell."""
        while True:
            try:
                chunk = os.read(self.fd, PIPE_SIZE)
            except BlockingIOError:
                return
            self.pending += chunk
            self._messages(read)
            if not chunk:
                return

    def _messages(self, read: dict[int, _Piece]) -> None:
        if self.broken:
            return
        pending = self.pending
        at = 0
        while len(pending) - at >= _LENGTH:
            size = int.from_bytes(pending[at:at + _LENGTH], "little")
            if len(pending) - at - _LENGTH < size:
                break
            try:
                kind, number, value = pickle.loads(pending[at + _LENGTH:at + _LENGTH + size])
            except Exception:  # noqa: BLE001 - a garbled message: treated as no answer (a serial read)
                self.broken = True
                return
            at += _LENGTH + size
            if kind == "piece":
                read[number] = value
            elif kind == "done":
                self.done = True
                self.characters = number
        del pending[:at]


def _taken(first: int, tickets: int) -> Iterator[int]:
    """``first``, then the numbers this process takes from the ``tickets`` pipe until it is empty."""
    yield first
    while ticket := os.read(tickets, 1):
        yield ticket[0]


def _child(out: int, other: int, tickets: int, work: _Work, text: str, pieces: list[tuple[int, int]],
           source: str, classes: frozenset[str], default_class: bool) -> NoReturn:
    """The forked child: read the last piece and the middle ones it takes, send each as it is read
    (:class:`_Inbox`), then ``done`` with the characters it parsed; exit at once (``os._exit``: never the
    parent's ``atexit``, ``finally`` blocks or buffered output). Each piece is pickled when read, so
    the pickling is part of the work shared out, and the parent loads it while the child reads on."""
    status = 1
    try:
        os.close(other)
        parsed = counts.characters
        _read_taken(_taken(len(pieces) - 1, tickets), {}, work, text, pieces, source, classes, default_class,
                    out=out)
        _send(out, ("done", counts.characters - parsed, None))
        status = 0
    finally:
        os._exit(status)


class _Pickler(pickle.Pickler):
    """Pickles the model values a piece holds as their class and field values (loaded by calling the
    class, as :func:`~vipcore.core.objects.convert` built them): attrs' own state is a dict built in
    Python for every object, a third more time to write and a fifth more to load."""

    #: The classes pickled so, with a getter of every field (all of them ``__init__`` arguments).
    FIELDS = {cls: operator.attrgetter(*(field.name for field in attrs.fields(cls)))
              for cls in (Node, Service, EndpointSlice) if all(field.init for field in attrs.fields(cls))}

    def reducer_override(self, obj: Any) -> Any:
        fields = self.FIELDS.get(type(obj))
        if fields is None:
            return NotImplemented
        return type(obj), fields(obj)


def _send(fd: int, message: tuple[str, int | None, object]) -> None:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    data = buffer.getvalue()
    view = memoryview(len(data).to_bytes(_LENGTH, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _load_forked(paths: Iterable[Path], classes: frozenset[str], default_class: bool) -> DesiredState:
    """:func:`load_manifests` with a large file read on two processes (:func:`_read_parallel`).
    Raises the serial read's ManifestError for anything invalid, :class:`_Serially` where it cannot."""
    builder = objects.StateBuilder()
    for path in manifest_files(paths):
        text = _read(path)
        read = _read_parallel(text, str(path), classes, default_class) if len(text) > SPLIT_ABOVE else None
        if read is None:
            read = [_read_piece(text, 0, len(text), str(path), classes, default_class)]
        _placed(read, str(path), builder)
    return builder.state()


def load_manifests(
    paths: Iterable[Path],
    *,
    classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
    default_class: bool = True,
    jobs: int = 1,
) -> DesiredState:
    """Read every manifest into a :class:`DesiredState`.

    ``jobs`` > 1: a large file may be parsed and converted on two processes
    (forked: only from a single-threaded caller, such as the CLI); the result
    is the serial read's, and so is the error for anything invalid, worded
    from that one read (only an object defined twice is read again serially,
    to name both documents).

    Raises :class:`ManifestError` (one line naming the file, document, object
    and field) for anything invalid, and for nothing else: undecodable bytes,
    hostile YAML, wrong types, a pool or Service defined twice.
    """
    paths = tuple(paths)
    if jobs > 1:
        try:
            return _load_forked(paths, classes, default_class)
        except _Serially:
            pass  # read again serially below: its error names both documents
    return objects.state_from_objects(
        ((_where(str(path), index), obj) for path in manifest_files(paths)
         for index, obj in _documents(path)),
        classes=classes, default_class=default_class)


class ManifestSource:
    """Loads manifests and watches them for changes (inotify on their folders, mtime/size fingerprints).

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
                 retry_interval: float = RETRY_INTERVAL, rescan_interval: float = RESCAN_INTERVAL,
                 notify: bool = True) -> None:
        self.paths = tuple(paths)
        self.poll_interval = poll_interval
        self.retry_interval = retry_interval
        self.rescan_interval = rescan_interval
        #: Use inotify when the system has it (False: poll every ``poll_interval``, as without it).
        self.notify = notify
        #: Looks at the files' fingerprints since the watch started (each one a stat per file, off the loop).
        self.looks = 0
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
        import asyncio  # here, not at the top: `vipcore resolve -f` never runs a loop (30 ms of import)

        return await asyncio.to_thread(self.load)

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        """Call ``on_change`` with the new state after every valid edit; forever.

        The files are looked at (a ``stat`` each, off the event loop) when
        inotify reports a change in their folders, :data:`SETTLE` seconds
        later, and every ``rescan_interval`` seconds in any case; without
        inotify, every ``poll_interval`` seconds. An idle node therefore
        wakes up for its manifests once per rescan, not four times a second.
        An invalid edit is logged once and ignored: the last good state
        stays; the files are read again on their next change, and every
        ``retry_interval`` seconds while they stay invalid.
        """
        import asyncio

        # Here, not at the top: `vipcore resolve` reads manifests and watches nothing (ctypes and what
        # it imports are a few milliseconds of its start-up).
        from vipcore.sources.filewatch import FolderWatch, folders_of

        loop = asyncio.get_running_loop()
        files = FolderWatch.open() if self.notify else None
        changed = asyncio.Event()
        if files is not None:
            watch = files

            def readable() -> None:
                watch.drain()
                changed.set()

            loop.add_reader(watch.fileno(), readable)
        tried = loop.time()
        try:
            first = True
            while True:
                interval = self.poll_interval if files is None else self.rescan_interval
                if self.last_error is not None:
                    interval = min(interval, max(0.0, tried + self.retry_interval - loop.time()))
                if not first:
                    await _wait(changed, interval, notified=files is not None)
                first = False
                changed.clear()
                if files is not None:
                    # Watches before the look: a change from here on is an event, none falls in between.
                    if not files.add(await asyncio.to_thread(folders_of, self.paths)):
                        log.info("cannot watch the manifests' folders (inotify); polling every %.2f s",
                                 self.poll_interval)
                        loop.remove_reader(files.fileno())
                        files.close()
                        files = None
                self.looks += 1
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
        finally:
            if files is not None:
                loop.remove_reader(files.fileno())
                files.close()

    def vipcore_collect_metrics(self) -> list[MetricSample]:
        """Whether the state in use is stale, and load counts, for the agent's /metrics."""
        return [
            MetricSample("vipcore_manifests_stale", 1.0 if self.last_error is not None else 0.0, kind="gauge",
                         help="1 while the manifests on disk are invalid and the last good state is in use"),
            MetricSample("vipcore_manifests_loads", float(self.loads), help="Manifest reads that were valid"),
            MetricSample("vipcore_manifests_load_failures", float(self.failures),
                         help="Manifest reads refused as invalid"),
        ]


async def _wait(changed: asyncio.Event, timeout: float, *, notified: bool) -> None:
    """Until ``changed`` is set (then :data:`SETTLE` more seconds) or ``timeout`` seconds passed."""
    import asyncio

    if not notified:
        await asyncio.sleep(timeout)
        return
    try:
        await asyncio.wait_for(changed.wait(), timeout)
    except asyncio.TimeoutError:
        return
    await asyncio.sleep(SETTLE)
