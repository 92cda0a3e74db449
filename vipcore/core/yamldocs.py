"""YAML text from untrusted files, parsed with bounded time and memory: the one way vipcore reads YAML.

Manifests and the config file come from people and tools that make
mistakes: binary junk, UTF-16, 5,000-deep nesting, alias bombs. Every such
input becomes one error naming the file (and the line when known), never a
traceback, and nothing here grows without bound:

- bytes are decoded as UTF-8 (a BOM is honoured, UTF-16 and UTF-32 too when
  they start with their BOM, as YAML 1.1 allows); anything else is refused
  with the offset of the first bad byte;
- the C loader (``yaml.CSafeLoader``) is used when PyYAML was built with
  libyaml (with the builder below, about 13x faster than the pure-Python
  loader on manifests: ``bench/manifests.py``), ``SafeLoader`` otherwise;
- nesting is limited to :data:`MAX_DEPTH` levels (libyaml stops at 1,000; the
  pure-Python composer would hit ``RecursionError``);
- aliases may add at most :data:`ALIAS_BUDGET` nodes to a document once
  expanded, and may not refer to themselves: a "billion laughs" document is
  refused after composing, before anything walks the expanded tree.
"""

from __future__ import annotations

import codecs
import re
import reprlib
from collections.abc import Callable
from typing import Any

import yaml

from vipcore.core.errors import ConfigError

#: The deepest nesting accepted (a Kubernetes object is rarely deeper than 15).
MAX_DEPTH = 100
#: Nodes that aliases may add to one document once expanded.
ALIAS_BUDGET = 10_000

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Whether the C loader is in use.
C_LOADER = _Base is not yaml.SafeLoader

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"


#: Tags whose values are immutable: one built value serves every plain scalar of the same text.
_IMMUTABLE = frozenset({"tag:yaml.org,2002:int", "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null",
                        "tag:yaml.org,2002:float"})
_UNKNOWN = object()

_SCALAR = yaml.ScalarNode
_SEQUENCE = yaml.SequenceNode

#: The tag the loader gives every untagged node; :class:`_Builder` resolves it.
_IMPLICIT = "?"


class _Loader(_Base):  # type: ignore[valid-type,misc]
    """The safe loader with tag resolution moved out of the composer (into :class:`_Builder`).

    PyYAML resolves every node's tag with a Python call (and two more for
    path resolvers the safe loader does not have), even under the C loader:
    a third of the composing time. Here those hooks are C callables that
    return a constant; the builder resolves plain scalars once per distinct
    value, with PyYAML's own rules.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        # str.format ignores extra arguments: a C-speed "return a constant".
        self.resolve = _IMPLICIT.format
        self.descend_resolver = "".format
        self.ascend_resolver = "".format


_resolver = yaml.resolver.Resolver()

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)

_short = reprlib.Repr()
_short.maxlevel = 2
_short.maxstring = 40
_short.maxother = 40


def show(value: object) -> str:
    """A short, bounded ``repr`` for messages (safe on deep or huge values)."""
    return _short.repr(value)


def decode(data: bytes, *, source: str, error: type[ConfigError] = ConfigError) -> str:
    """``data`` as text: UTF-8, or UTF-16/32 with a BOM; ``error`` naming ``source`` otherwise."""
    encoding = "utf-8"
    for bom, name in _BOMS:
        if data.startswith(bom):
            encoding = name
            break
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise error(f"not {encoding.upper().replace('-SIG', '')} text (invalid byte at offset {exc.start}); "
                    "save the file as UTF-8", source=source) from None


def load_all(text: str, *, source: str, error: type[ConfigError] = ConfigError,
             lines_before: Callable[[], int] | None = None) -> list[Any]:
    """Every YAML document of ``text``; one ``error`` naming ``source`` and the line for anything wrong.

    ``lines_before``: when ``text`` is a piece of a file, the number of line breaks before it (asked
    only for an error's message, whose line then counts from the file's start).
    """
    loader = _Loader(text)
    documents: list[Any] = []
    # Aliases need a '*': text without one cannot hold a bomb, and the walk is skipped.
    aliases = "*" in text
    lines = lines_before or _none_before
    builder = _Builder(loader, source=source, error=error, lines=lines)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            if aliases:
                _check_node(node, source=source, error=error, lines=lines)
            documents.append(builder.build(node))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        where = f"line {mark.line + 1 + lines()}" if mark is not None else None
        raise error(f"invalid YAML: {problem}", source=source, field=where) from None
    except RecursionError:
        raise error(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", source=source) from None
    except (ValueError, TypeError, OverflowError) as exc:
        # The constructors' own limits, e.g. an integer of more than 4,300 digits.
        raise error(f"invalid YAML: {show(str(exc))}", source=source) from None
    finally:
        loader.dispose()
    return documents


class _Builder:
    """Python values from a composed document: strings, mappings and lists directly, the rest by PyYAML.

    PyYAML's generic constructor costs several microseconds a node in Python
    (most of a 20k-object parse even with the C loader); nearly every node
    of a manifest is a string, a mapping or a list, built here directly.
    Other scalars (int, bool, null, float, timestamp) and collections with
    explicit tags or merge keys go to the safe constructor, so the result is
    ``yaml.safe_load``'s.
    """

    def __init__(self, loader: yaml.SafeLoader, *, source: str, error: type[ConfigError],
                 lines: Callable[[], int]) -> None:
        self.loader = loader
        self.source = source
        self.error = error
        self.lines = lines
        self.tags: dict[str, str] = {}
        #: Plain scalars already built to an immutable value (int, bool, null, float), by their text.
        self.plain: dict[str, Any] = {}

    def build(self, node: yaml.Node, depth: int = 1) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", source=self.source,
                             field=_line(node, self.lines))
        kind = type(node)
        if kind is _SCALAR:
            return self.scalar(node)  # type: ignore[arg-type]
        if node.tag != _IMPLICIT:
            return self.delegate(node)
        tags = self.tags
        # The composer builds exactly these node classes: ``type(...) is`` rather than ``isinstance``.
        if kind is _SEQUENCE:
            return [self.scalar(c) if type(c) is _SCALAR else self.build(c, depth + 1) for c in node.value]
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            # Inlined fast path (most nodes): an untagged string, quoted or already known to resolve to str.
            if type(key_node) is not _SCALAR:
                raise self.error("invalid YAML: a mapping key must be a plain value, not a list or mapping",
                                 source=self.source, field=_line(key_node, self.lines))
            elif key_node.tag == _IMPLICIT and (key_node.style or tags.get(key_node.value) == _STR):
                key = key_node.value
            else:
                key = self.scalar(key_node)
                if key_node.tag == _MERGE:  # "<<: *base": PyYAML's own flattening rules
                    return self.delegate(node)
            if type(value_node) is _SCALAR:
                if value_node.tag == _IMPLICIT and (value_node.style or tags.get(value_node.value) == _STR):
                    out[key] = value_node.value
                else:
                    out[key] = self.scalar(value_node)
            else:
                out[key] = self.build(value_node, depth + 1)
        return out

    def tag_of(self, node: yaml.ScalarNode) -> str:
        if node.style:  # quoted or block: a string, as YAML says
            return _STR
        value = node.value
        tag = self.tags.get(value)
        if tag is None:
            tag = self.tags[value] = _resolver.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        return tag

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag == _IMPLICIT:
            value = node.value
            if not node.style:
                built = self.plain.get(value, _UNKNOWN)
                if built is not _UNKNOWN:
                    return built
            tag = node.tag = self.tag_of(node)
            if tag == _STR or tag == _MERGE:
                return value
            built = self.loader.construct_document(node)
            if tag in _IMMUTABLE and not node.style:
                # The next ``port: 80`` is the same int: one dict lookup instead of PyYAML's constructor.
                self.plain[value] = built
            return built
        return self.loader.construct_document(node)

    def delegate(self, root: yaml.Node) -> Any:
        """Resolve the implicit tags under ``root`` and let PyYAML's safe constructor build it."""
        stack = [root]
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if type(node) is yaml.ScalarNode:
                if node.tag == _IMPLICIT:
                    node.tag = self.tag_of(node)
            elif type(node) is yaml.SequenceNode:
                if node.tag == _IMPLICIT:
                    node.tag = _SEQ
                stack.extend(node.value)
            else:
                if node.tag == _IMPLICIT:
                    node.tag = _MAP
                stack.extend(part for pair in node.value for part in pair)
        return self.loader.construct_document(root)


def _check_node(root: yaml.Node, *, source: str, error: type[ConfigError], lines: Callable[[], int]) -> None:
    """Refuse recursive aliases, nesting beyond MAX_DEPTH and alias expansion beyond ALIAS_BUDGET.

    One iterative post-order walk over the composed graph (each node once):
    ``size`` and ``height`` are those of the tree the aliases would expand to.
    """
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    unique = 0
    # (node, children expanded?) ; a node is "open" while its children are being walked.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _children(node)
        if done:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if height[key] > MAX_DEPTH:
                raise error(f"invalid YAML: nested deeper than {MAX_DEPTH} levels",
                            source=source, field=_line(node, lines))
            if size[key] - unique > ALIAS_BUDGET:
                raise error(f"invalid YAML: aliases expand to more than {ALIAS_BUDGET} extra nodes "
                            "(an alias bomb?)", source=source, field=_line(node, lines))
            continue
        if key in size:
            continue
        if key in open_:
            raise error("invalid YAML: an alias refers to the node that contains it", source=source,
                        field=_line(node, lines))
        open_.add(key)
        unique += 1
        if len(open_) > MAX_DEPTH:
            raise error(f"invalid YAML: nested deeper than {MAX_DEPTH} levels", source=source,
                        field=_line(node, lines))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _line(node: yaml.Node, lines: Callable[[], int]) -> str | None:
    mark = node.start_mark
    return f"line {mark.line + 1 + lines()}" if mark is not None else None


def _none_before() -> int:
    return 0


#: What YAML counts as a line break (YAML 1.1, as libyaml and PyYAML's reader count them).
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def line_breaks(text: str, end: int) -> int:
    """How many line breaks the YAML parsers count in ``text[:end]`` (a CR LF is one): the
    ``lines_before`` of a piece of ``text`` starting at ``end``."""
    if "\r" in text or "\x85" in text or "\u2028" in text or "\u2029" in text:
        return len(_BREAK.findall(text, 0, end))
    return text.count("\n", 0, end)


__all__ = ["ALIAS_BUDGET", "C_LOADER", "MAX_DEPTH", "decode", "line_breaks", "load_all", "show"]
