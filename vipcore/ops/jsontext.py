"""JSON text indented for people, fast: what ``json.dumps(value, indent=2)`` prints, byte for byte.

``json.dumps`` with ``indent`` runs the standard library's pure-Python
encoder, a generator call per value: for ``vipcore resolve -o json`` on a
20k-object manifest (groups listing thousands of nodes, addresses and
Services) that is most of the output's time. Here lists of strings, the
bulk of such documents, are joined at C speed, each string escaped by the
``json`` module's own C function, so the text is the standard encoder's.
"""

from __future__ import annotations

import json
from typing import Any

_encode: Any = json.encoder.encode_basestring_ascii
_float: Any = json.encoder.JSONEncoder().iterencode  # the standard rules for floats (NaN, Infinity, repr)


def dumps_indented(value: Any, indent: int = 2) -> str:
    """``json.dumps(value, indent=indent)`` (ASCII only, keys in their order, ``TypeError`` for what JSON
    cannot hold, ``ValueError`` for a circular reference)."""
    parts: list[str] = []
    _write(value, parts, "\n", " " * indent, set())
    return "".join(parts)


def _key(key: Any) -> str:
    # As the standard encoder: strings as they are, other scalars as their JSON text, anything else refused.
    if isinstance(key, str):
        return _encode(key)  # type: ignore[no-any-return]
    text = _scalar(key)
    if text is None:
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
    return _encode(text)  # type: ignore[no-any-return]


def _scalar(value: Any) -> str | None:
    """The JSON text of a scalar, None for a container (or something JSON cannot hold)."""
    if isinstance(value, str):
        return _encode(value)  # type: ignore[no-any-return]
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return "".join(_float(value))
    return None


def _write(value: Any, parts: list[str], newline: str, step: str, seen: set[int]) -> None:
    text = _scalar(value)
    if text is not None:
        parts.append(text)
        return
    if isinstance(value, (list, tuple)):
        if not value:
            parts.append("[]")
            return
        inner = newline + step
        if all(type(item) is str for item in value):
            parts.append("[" + inner + ("," + inner).join(map(_encode, value)) + newline + "]")
            return
        _enter(value, seen)
        parts.append("[")
        lead = inner
        for item in value:
            parts.append(lead)
            lead = "," + inner
            _write(item, parts, inner, step, seen)
        parts.append(newline + "]")
        seen.discard(id(value))
        return
    if isinstance(value, dict):
        if not value:
            parts.append("{}")
            return
        inner = newline + step
        separator = "," + inner
        try:  # the usual row: string keys and values only (the C escape refuses anything else)
            parts.append("{" + inner + separator.join([_encode(k) + ": " + _encode(v) for k, v in value.items()])
                         + newline + "}")
            return
        except TypeError:
            pass
        _enter(value, seen)
        parts.append("{")
        lead = inner
        for key, item in value.items():
            # Inlined for the usual case (a string key, a string value): no call per member.
            head = lead + (_encode(key) if type(key) is str else _key(key)) + ": "
            lead = separator
            if type(item) is str:
                parts.append(head + _encode(item))
            else:
                parts.append(head)
                _write(item, parts, inner, step, seen)
        parts.append(newline + "}")
        seen.discard(id(value))
        return
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _enter(container: object, seen: set[int]) -> None:
    if id(container) in seen:
        raise ValueError("Circular reference detected")
    seen.add(id(container))


__all__ = ["dumps_indented"]
