"""Label selectors, field selectors and patches, as the Kubernetes API applies them.

Pure functions on plain dicts, used by the test API server. Errors are
:class:`ApiError` values carrying the HTTP code and reason the real API
server answers with.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

Obj = dict[str, Any]


class ApiError(Exception):
    """A failed request, rendered as a ``Status`` body."""

    def __init__(self, code: int, reason: str, message: str, *, details: Mapping[str, Any] | None = None,
                 metadata: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        #: The Status's ListMeta (an expired continue's 410 carries a new ``continue`` there).
        self.metadata = dict(metadata or {})

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


# ---------------------------------------------------------------- label selectors

_LABEL_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)

Matcher = Callable[[Mapping[str, str]], bool]


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, current = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += ch
    terms.append(current)
    return [t for t in terms if t.strip()]


def _label_term(term: str) -> Matcher:
    m = _LABEL_TERM.match(term)
    if not m or (m.group("neg") and (m.group("op") or m.group("setop"))):
        raise bad_request(f"unable to parse requirement: {term.strip()!r}")
    key = m.group("key")
    if m.group("neg"):
        return lambda labels: key not in labels
    op = m.group("op")
    if op:
        value = m.group("value")
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    setop = m.group("setop")
    if setop:
        values = {v.strip() for v in m.group("values").split(",") if v.strip()}
        if setop == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels


def label_selector(text: str | None) -> Matcher:
    """A matcher for a ``labelSelector`` query (=, ==, !=, in, notin, exists, !exists)."""
    if not text:
        return lambda labels: True
    terms = [_label_term(t) for t in _split_terms(text)]
    return lambda labels: all(term(labels) for term in terms)


# ---------------------------------------------------------------- field selectors

FieldMatcher = Callable[[Obj], bool]


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """A field as the API compares it: a string, "" when absent."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(text: str | None, supported: frozenset[str], kind: str) -> FieldMatcher:
    """A matcher for a ``fieldSelector`` query; unsupported fields are a 400, as upstream."""
    if not text:
        return lambda obj: True
    checks: list[tuple[str, bool, str]] = []
    for term in _split_terms(text):
        m = re.match(r"^\s*([A-Za-z0-9._-]+)\s*(==|=|!=)\s*(.*?)\s*$", term)
        if not m:
            raise bad_request(f"invalid selector: {term.strip()!r}")
        path, op, value = m.groups()
        if path not in supported:
            raise bad_request(f'field label not supported: {path}')
        checks.append((path, op != "!=", value))
    del kind
    return lambda obj: all((field_value(obj, p) == v) == eq for p, eq, v in checks)


# ---------------------------------------------------------------- patches

_DIRECTIVE_PREFIX = ("$setElementOrder/", "$retainKeys", "$patch", "$deleteFromPrimitiveList/")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


#: Lists that strategic merge patch merges by a key (``patchMergeKey``), by path from the object root.
SMP_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("spec", "ports"): "port",                    # Service
    ("metadata", "ownerReferences"): "uid",
    ("status", "conditions"): "type",
    ("spec", "template", "spec", "containers"): "name",
}
#: Primitive lists with the ``merge`` strategy: a patch adds to the set.
SMP_SET_LISTS = frozenset({("metadata", "finalizers")})


def _strip(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not k.startswith(_DIRECTIVE_PREFIX)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return copy.deepcopy(value)


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch for the lists vipcore and kubectl touch on built-in kinds.

    Lists in :data:`SMP_MERGE_KEYS` merge item by item on their key (``$patch:
    delete`` removes one, ``$patch: replace`` replaces the list); lists in
    :data:`SMP_SET_LISTS` are set unions (``$deleteFromPrimitiveList/<field>``
    removes); other lists are replaced, as upstream for lists without a strategy.
    ``$setElementOrder`` and ``$retainKeys`` are accepted and ignored.
    """
    if not isinstance(patch, Mapping):
        return _strip(patch)
    if patch.get("$patch") == "replace":
        return _strip(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in (value or [])]
            continue
        if key.startswith(_DIRECTIVE_PREFIX):
            continue
        sub = path + (key,)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and sub in SMP_MERGE_KEYS:
            result[key] = _merge_keyed(list(result.get(key) or []), value, SMP_MERGE_KEYS[sub], sub)
        elif isinstance(value, list) and sub in SMP_SET_LISTS:
            old = list(result.get(key) or [])
            result[key] = old + [v for v in value if v not in old]
        elif isinstance(value, Mapping):
            result[key] = strategic_merge_patch(result.get(key), value, sub)
        else:
            result[key] = _strip(value)
    return result


def _merge_keyed(old: list[Any], items: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, Mapping) and i.get("$patch") == "replace" for i in items):
        return [_strip(i) for i in items if not (isinstance(i, Mapping) and i.get("$patch") == "replace")]
    out = [copy.deepcopy(i) for i in old]
    for item in items:
        if not isinstance(item, Mapping) or key not in item:
            raise invalid(f"the patch of {'.'.join(path)} needs the merge key {key!r} in every item")
        at = next((n for n, o in enumerate(out) if isinstance(o, Mapping) and o.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if at is not None:
                del out[at]
        elif at is None:
            out.append(_strip(item))
        else:
            out[at] = strategic_merge_patch(out[at], item, path)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise invalid(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise invalid(f"the server rejected our request due to an error in our request: "
                          f"path {path!r} does not exist")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    key = parts[-1]
    if isinstance(parent, dict) and key in parent:
        return parent[key]
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent[int(key)]
    raise invalid(f"the server rejected our request due to an error in our request: path {path!r} does not exist")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    key = parts[-1]
    if isinstance(parent, dict) and key in parent:
        return parent.pop(key)
    if isinstance(parent, list) and key.isdigit() and int(key) < len(parent):
        return parent.pop(int(key))
    raise invalid(f"the server rejected our request due to an error in our request: "
                  f"unable to remove nonexistent key {path!r}")


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    key = parts[-1]
    if isinstance(parent, dict):
        if replace and key not in parent:
            raise invalid(f"the server rejected our request due to an error in our request: "
                          f"replace operation does not apply: doc is missing key {path!r}")
        parent[key] = value
    elif isinstance(parent, list):
        if key == "-" and not replace:
            parent.append(value)
        elif key.isdigit() and int(key) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(key)] = value
            else:
                parent.insert(int(key), value)
        else:
            raise invalid(f"the server rejected our request due to an error in our request: "
                          f"index out of range in {path!r}")
    else:
        raise invalid(f"the server rejected our request due to an error in our request: path {path!r} does not exist")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, Mapping) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation {op!r}")
        kind, path = op["op"], op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op.get("value")), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            value = _remove(doc, op["from"])
            doc = _add(doc, path, value, replace=False)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])), replace=False)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise invalid(f"the server rejected our request due to an error in our request: "
                              f"testing value {path!r} failed")
        else:
            raise bad_request(f"unknown json patch operation {kind!r}")
    return doc
