"""The object store behind the test API server: resourceVersions, history, semantics.

Thread-safe (one condition variable guards everything). Stored objects are
never mutated after a commit, so watch streams can share them. What it
implements, as the real API server does:

- one global, monotonically increasing resourceVersion (as a string);
- a bounded history of changes; watches replay it from a resourceVersion and
  get ``410 Expired`` once it was compacted away; paginated lists are
  consistent snapshots and their continue tokens expire the same way;
- 201/404/409 semantics, ``409 Conflict`` on a write with a stale
  resourceVersion, status-subresource isolation, generateName, uid,
  creationTimestamp, generation on spec changes, finalizers and
  deletionTimestamp, namespaces that must exist, no-op writes that do not
  bump the resourceVersion;
- CustomResourceDefinitions register their kinds; their schemas prune and
  validate custom resources.
"""

from __future__ import annotations

import base64
import copy
import datetime
import json
import random
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from vipcore.testing.apiserver_match import (
    ApiError,
    Obj,
    bad_request,
    field_selector,
    invalid,
    json_patch,
    label_selector,
    merge_patch,
    strategic_merge_patch,
)
from vipcore.testing.apiserver_schema import prune, unknown_fields, validate

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class PrinterColumn:
    """An ``additionalPrinterColumns`` entry, for ``kubectl get`` tables."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@attrs.frozen
class ResourceType:
    """One served kind: where it lives in the URL space and how it behaves."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    #: Keep a status given on create (Nodes); otherwise create resets it.
    keep_status_on_create: bool = False
    #: Whether metadata.generation is kept (custom resources, CRDs).
    generation: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[PrinterColumn, ...] = ()
    schema: Mapping[str, Any] | None = attrs.field(default=None, hash=False, eq=False)
    custom: bool = False
    #: Field selectors beyond metadata.name and metadata.namespace.
    fields: frozenset[str] = frozenset()
    defaulter: Callable[[Obj], None] | None = attrs.field(default=None, hash=False, eq=False)
    #: Checks a main-resource update (old, new) after defaulting; raises ApiError.
    update_check: Callable[[Obj, Obj], None] | None = attrs.field(default=None, hash=False, eq=False)
    #: Adjusts a main-resource update (old, new) before defaulting, as upstream's PrepareForUpdate.
    prepare_update: Callable[[Obj, Obj], None] | None = attrs.field(default=None, hash=False, eq=False)
    #: Defaults and validates the object after a status write; raises ApiError.
    status_check: Callable[[Obj], None] | None = attrs.field(default=None, hash=False, eq=False)
    #: Top-level and nested fields a built-in kind knows, for ``fieldValidation=Strict`` (None: not checked).
    known_fields: Mapping[str, Any] | None = attrs.field(default=None, hash=False, eq=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def resource(self) -> str:
        """``plural`` or ``plural.group``: how upstream names the resource in messages."""
        return self.key

    @property
    def selectable(self) -> frozenset[str]:
        return self.fields | {"metadata.name", "metadata.namespace"}


@attrs.frozen
class Change:
    """One committed change, as kept in the history."""

    rv: int
    type_key: str
    event: str  # ADDED, MODIFIED, DELETED
    obj: Obj = attrs.field(eq=False)
    prev: Obj | None = attrs.field(eq=False)


class Expired(Exception):
    """A resourceVersion older than the retained history."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


def _gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _without_rv(obj: Obj) -> Obj:
    clone = dict(obj)
    meta = dict(_meta(obj))
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    clone["metadata"] = meta
    return clone


def _spec_part(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Store:
    """Objects of every registered kind, with one resourceVersion counter."""

    def __init__(self, *, history_limit: int = 1000) -> None:
        self.cond = threading.Condition()
        self.history_limit = history_limit
        self.types: dict[str, ResourceType] = {}
        self._by_path: dict[tuple[str, str, str], ResourceType] = {}
        self._objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self._history: deque[Change] = deque()
        self._rv = 0
        #: Changes at or below this resourceVersion are gone from the history.
        self.compacted = 0
        #: Bumped to end every open watch.
        self.watch_epoch = 0
        #: While set, watches deliver nothing (a stalled watch cache).
        self.held = False
        self.on_commit: list[Callable[[ResourceType, Change], None]] = []

    # ------------------------------------------------------------ types

    def register(self, rtype: ResourceType) -> None:
        with self.cond:
            self.types[rtype.key] = rtype
            self._by_path[(rtype.group, rtype.version, rtype.plural)] = rtype
            self._objects.setdefault(rtype.key, {})

    def unregister(self, group: str, plural: str) -> None:
        with self.cond:
            for path, rtype in list(self._by_path.items()):
                if rtype.group == group and rtype.plural == plural:
                    del self._by_path[path]
            key = f"{plural}.{group}" if group else plural
            self.types.pop(key, None)
            self._objects.pop(key, None)

    def resolve(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_path.get((group, version, plural))

    def served(self) -> list[ResourceType]:
        with self.cond:
            return list(self._by_path.values())

    @property
    def resource_version(self) -> int:
        return self._rv

    # ------------------------------------------------------------ commits

    def _commit(self, rtype: ResourceType, event: str, obj: Obj, prev: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        meta = obj["metadata"]
        key = (meta.get("namespace") or "", meta["name"])
        if event == "DELETED":
            self._objects[rtype.key].pop(key, None)
        else:
            self._objects[rtype.key][key] = obj
        change = Change(rv=self._rv, type_key=rtype.key, event=event, obj=obj, prev=prev)
        self._history.append(change)
        while len(self._history) > self.history_limit:
            self.compacted = self._history.popleft().rv
        for hook in self.on_commit:
            hook(rtype, change)
        if event == "DELETED" and rtype.namespaced:
            self._namespace_done(key[0])
        self.cond.notify_all()
        return obj

    # ------------------------------------------------------------ reads

    def _namespace_must_exist(self, rtype: ResourceType, namespace: str | None) -> None:
        if rtype.namespaced and ("", namespace or "") not in self._objects.get("namespaces", {}):
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           details={"name": namespace, "kind": "namespaces"})

    def _not_found(self, rtype: ResourceType, name: str) -> ApiError:
        return ApiError(404, "NotFound", f'{rtype.resource} "{name}" not found',
                        details={"name": name, "group": rtype.group, "kind": rtype.plural})

    def _current(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self._objects.get(rtype.key, {}).get((namespace or "", name))
        if obj is None:
            raise self._not_found(rtype, name)
        return obj

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self._current(rtype, namespace, name))

    def _snapshot(self, rtype: ResourceType, at: int) -> dict[tuple[str, str], Obj]:
        """The objects of ``rtype`` as they were at resourceVersion ``at`` (caller checked it is retained)."""
        objects = dict(self._objects.get(rtype.key, {}))
        for change in reversed(self._history):
            if change.rv <= at:
                break
            if change.type_key != rtype.key:
                continue
            meta = change.obj["metadata"]
            key = (meta.get("namespace") or "", meta["name"])
            if change.event == "ADDED":
                objects.pop(key, None)
            elif change.prev is not None:
                objects[key] = change.prev
        return objects

    def list_objects(
        self,
        rtype: ResourceType,
        namespace: str | None,
        *,
        label: str | None = None,
        field: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> Obj:
        """A ``<Kind>List``; consistent across pages."""
        labels = label_selector(label)
        fields = field_selector(field, rtype.selectable, rtype.kind)
        start_after: tuple[str, str] | None = None
        with self.cond:
            at = self._rv
            if continue_token:
                try:
                    token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                    at, start_after = int(token["rv"]), (token["start"][0], token["start"][1])
                except (ValueError, KeyError, TypeError, IndexError):
                    raise bad_request("continue key is not valid") from None
                if at == -1:  # an inconsistent continuation (handed out with a 410): the latest version
                    at = self._rv
                elif at < self.compacted:
                    # As upstream's etcd3 store: the 410 carries a token continuing at the latest
                    # resourceVersion, for clients that accept an inconsistent list.
                    fresh = {"rv": -1, "start": list(start_after)}
                    raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue "
                                   "parameter, or use the continue token in this response to retrieve the "
                                   "remainder of the results. Continuing with the provided token results in "
                                   "an inconsistent list - objects that were created, modified, or deleted "
                                   "between the time the first chunk was returned and now may show up in "
                                   "the list.",
                                   metadata={"continue": base64.urlsafe_b64encode(
                                       json.dumps(fresh).encode()).decode()})
            elif resource_version_match == "Exact" and resource_version:
                at = int(resource_version)
                if at < self.compacted:
                    raise _gone(f"too old resource version: {at} ({self.compacted + 1})")
                if at > self._rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {at}, current: {self._rv}")
            objects = self._snapshot(rtype, at) if at != self._rv else self._objects.get(rtype.key, {})
            keys = sorted(k for k in objects if not rtype.namespaced or namespace is None or k[0] == namespace)
            items = [objects[k] for k in keys
                     if (start_after is None or k > start_after)
                     and labels(_meta(objects[k]).get("labels") or {}) and fields(objects[k])]
        metadata: dict[str, Any] = {"resourceVersion": str(at)}
        if limit and len(items) > limit:
            last = items[limit - 1]["metadata"]
            token = {"rv": at, "start": [last.get("namespace") or "", last["name"]]}
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        rendered = [copy.deepcopy(o) for o in items]
        if not rtype.custom:
            # Built-in lists carry kind and apiVersion on the list only, as upstream.
            for item in rendered:
                item.pop("kind", None)
                item.pop("apiVersion", None)
        return {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": metadata,
                "items": rendered}

    # ------------------------------------------------------------ writes

    def _check_name(self, rtype: ResourceType, name: Any) -> str:
        if not isinstance(name, str) or not name:
            raise invalid(f"{rtype.kind} \"\" is invalid: metadata.name: Required value: "
                          "name or generateName is required")
        if len(name) > 253 or not _NAME.match(name):
            raise invalid(f'{rtype.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": '
                          "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
                          "'-' or '.', and must start and end with an alphanumeric character")
        return name

    def _validate_custom(self, rtype: ResourceType, obj: Obj, name: str, *, strict: bool = False) -> Obj:
        if rtype.schema is None:
            return obj
        body = {k: v for k, v in obj.items() if k not in ("metadata", "kind", "apiVersion")}
        if strict:
            unknown = unknown_fields(body, rtype.schema)
            if unknown:
                raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))
        body = prune(body, rtype.schema)
        errors = validate(body, rtype.schema)
        if errors:
            raise invalid(f'{rtype.kind}.{rtype.group} "{name}" is invalid: ' + ", ".join(errors))
        return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": obj["metadata"], **body}

    def _strict_builtin(self, rtype: ResourceType, obj: Obj, name: str) -> None:
        """``fieldValidation=Strict`` on a built-in kind: unknown fields are a 400, as upstream."""
        assert rtype.known_fields is not None
        unknown: list[str] = []

        def walk(value: Any, known: Any, path: str) -> None:
            if known is None or not isinstance(value, Mapping):
                return
            if isinstance(known, list):  # a list of items of one shape
                return
            for key, sub in value.items():
                if key not in known:
                    unknown.append(f"{path}{key}")
                elif isinstance(known[key], list) and isinstance(sub, list):
                    for i, item in enumerate(sub):
                        walk(item, known[key][0] if known[key] else None, f"{path}{key}[{i}].")
                else:
                    walk(sub, known[key], f"{path}{key}.")

        walk({k: v for k, v in obj.items() if k != "metadata"}, rtype.known_fields, "")
        if unknown:
            raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))

    def _namespace_not_terminating(self, rtype: ResourceType, namespace: str | None) -> None:
        if not rtype.namespaced:
            return
        ns = self._objects.get("namespaces", {}).get(("", namespace or ""))
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f'{rtype.resource} is forbidden: unable to create new content in '
                                             f'namespace {namespace} because it is being terminated',
                           details={"kind": rtype.plural, "group": rtype.group})

    def _check_body_kind(self, rtype: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        kind = body.get("kind")
        if kind not in (None, "", rtype.kind):
            raise bad_request(f"the kind of the object ({kind}) does not match the URL ({rtype.kind})")
        api_version = body.get("apiVersion")
        if api_version not in (None, "", rtype.api_version):
            raise bad_request(f"the API version in the data ({api_version}) does not match the expected API "
                              f"version ({rtype.api_version})")
        return copy.deepcopy(body)

    def create(self, rtype: ResourceType, namespace: str | None, body: Any, *, strict: bool = False) -> Obj:
        obj = self._check_body_kind(rtype, body)
        obj["kind"], obj["apiVersion"] = rtype.kind, rtype.api_version
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if rtype.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            meta["namespace"] = namespace or body_ns or "default"
        else:
            meta.pop("namespace", None)
        with self.cond:
            if not meta.get("name") and meta.get("generateName"):
                while True:
                    name = meta["generateName"] + "".join(random.choices(_GENERATE_ALPHABET, k=5))
                    if (meta.get("namespace") or "", name) not in self._objects[rtype.key]:
                        break
                meta["name"] = name
            name = self._check_name(rtype, meta.get("name"))
            self._namespace_must_exist(rtype, meta.get("namespace"))
            if (meta.get("namespace") or "", name) in self._objects[rtype.key]:
                raise ApiError(409, "AlreadyExists", f'{rtype.resource} "{name}" already exists',
                               details={"name": name, "group": rtype.group, "kind": rtype.plural})
            for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            if rtype.generation:
                meta["generation"] = 1
            else:
                meta.pop("generation", None)
            if rtype.status_subresource and not rtype.keep_status_on_create:
                obj.pop("status", None)
            if rtype.known_fields is not None and strict:
                self._strict_builtin(rtype, obj, name)
            if rtype.defaulter is not None:
                rtype.defaulter(obj)
            if rtype.custom:
                obj = self._validate_custom(rtype, obj, name, strict=strict)
            self._namespace_not_terminating(rtype, meta.get("namespace"))
            return copy.deepcopy(self._commit(rtype, "ADDED", obj, None))

    def _write(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        compute: Callable[[Obj], Any],
        *,
        subresource: str | None,
        require_rv: bool,
        strict: bool = False,
    ) -> Obj:
        """Replace an object with ``compute(copy of current)``, with every upstream rule on writes."""
        if subresource not in (None, "status") or (subresource == "status" and not rtype.status_subresource):
            raise self._not_found(rtype, name)
        with self.cond:
            old = self._current(rtype, namespace, name)
            new = self._check_body_kind(rtype, compute(copy.deepcopy(old)))
            new["kind"], new["apiVersion"] = rtype.kind, rtype.api_version
            new_meta = new.get("metadata")
            if not isinstance(new_meta, dict):
                new_meta = new["metadata"] = {}
            if new_meta.get("name") not in (None, name):
                raise bad_request(f"the name of the object ({new_meta.get('name')}) does not match the name on "
                                  f"the URL ({name})")
            given = new_meta.get("resourceVersion")
            if not given and require_rv:
                raise invalid(f'{rtype.kind}.{rtype.group} "{name}" is invalid: metadata.resourceVersion: '
                              "Invalid value: 0x0: must be specified for an update")
            if given and str(given) != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict",
                               f'Operation cannot be fulfilled on {rtype.resource} "{name}": the object has been '
                               "modified; please apply your changes to the latest version and try again",
                               details={"name": name, "group": rtype.group, "kind": rtype.plural})
            if subresource == "status":
                # Status writes change status only (and never metadata, as upstream).
                result = copy.deepcopy(old)
                if "status" in new:
                    result["status"] = new["status"]
                else:
                    result.pop("status", None)
                new = result
                if rtype.status_check is not None:
                    rtype.status_check(new)
                if rtype.custom:
                    # Pruned and validated against the schema like any write, as upstream (the status part too).
                    new = self._validate_custom(rtype, new, name, strict=strict)
            else:
                if rtype.status_subresource:
                    if "status" in old:
                        new["status"] = copy.deepcopy(old["status"])
                    else:
                        new.pop("status", None)
                meta = new["metadata"]
                for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                              "deletionGracePeriodSeconds", "generation"):
                    if field in old["metadata"]:
                        meta[field] = old["metadata"][field]
                    else:
                        meta.pop(field, None)
                if "deletionTimestamp" in old["metadata"]:
                    added = set(meta.get("finalizers") or ()) - set(old["metadata"].get("finalizers") or ())
                    if added:
                        raise invalid(f'{rtype.kind} "{name}" is invalid: metadata.finalizers: Forbidden: no new '
                                      "finalizers can be added if the object is being deleted, found new "
                                      f"finalizers {sorted(added)!r}")
                if rtype.prepare_update is not None:
                    rtype.prepare_update(old, new)
                if rtype.known_fields is not None and strict:
                    self._strict_builtin(rtype, new, name)
                if rtype.defaulter is not None:
                    rtype.defaulter(new)
                if rtype.update_check is not None:
                    rtype.update_check(old, new)
                if rtype.custom:
                    new = self._validate_custom(rtype, new, name, strict=strict)
                if rtype.generation and _spec_part(new) != _spec_part(old):
                    new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if _without_rv(new) == _without_rv(old):
                return copy.deepcopy(old)  # no-op writes keep the resourceVersion, as upstream
            meta = new["metadata"]
            if "deletionTimestamp" in meta and not meta.get("finalizers"):
                return copy.deepcopy(self._commit(rtype, "DELETED", new, old))
            return copy.deepcopy(self._commit(rtype, "MODIFIED", new, old))

    def update(self, rtype: ResourceType, namespace: str | None, name: str, body: Any,
               *, subresource: str | None = None, strict: bool = False) -> Obj:
        """PUT. Custom resources require metadata.resourceVersion, as upstream."""
        return self._write(rtype, namespace, name, lambda _old: body, subresource=subresource,
                           require_rv=rtype.custom, strict=strict)

    def patch(self, rtype: ResourceType, namespace: str | None, name: str, content_type: str, patch: Any,
              *, subresource: str | None = None, strict: bool = False) -> Obj:
        """PATCH with a merge, strategic merge (built-in kinds only) or JSON patch."""
        kind = content_type.split(";")[0].strip()
        if kind == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise bad_request("merge patch must be a JSON object")
            apply: Callable[[Obj], Any] = lambda old: merge_patch(old, patch)
        elif kind == STRATEGIC_PATCH:
            if rtype.custom:
                raise ApiError(415, "UnsupportedMediaType",
                               f'the body of the request was in an unknown format - accepted media types include: '
                               f'{JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml')
            if not isinstance(patch, dict):
                raise bad_request("strategic merge patch must be a JSON object")
            apply = lambda old: strategic_merge_patch(old, patch)
        elif kind == JSON_PATCH:
            apply = lambda old: json_patch(old, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}")
        return self._write(rtype, namespace, name, apply, subresource=subresource, require_rv=False,
                           strict=strict)

    def delete(self, rtype: ResourceType, namespace: str | None, name: str,
               options: Mapping[str, Any] | None = None) -> Obj:
        """DELETE: immediate without finalizers, else sets deletionTimestamp and waits for them."""
        preconditions = (options or {}).get("preconditions") or {}
        with self.cond:
            old = self._current(rtype, namespace, name)
            meta = old["metadata"]
            for field, label in (("resourceVersion", "ResourceVersion"), ("uid", "UID")):
                wanted = preconditions.get(field)
                if wanted and wanted != meta.get(field):
                    raise ApiError(409, "Conflict",
                                   f'Operation cannot be fulfilled on {rtype.resource} "{name}": Precondition '
                                   f"failed: {label} in precondition: {wanted}, {label} in object meta: "
                                   f"{meta.get(field)}")
            if rtype.key == "namespaces":
                return self._delete_namespace(rtype, old)
            if meta.get("finalizers"):
                if "deletionTimestamp" in meta:
                    return copy.deepcopy(old)
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = now_rfc3339()
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                return copy.deepcopy(self._commit(rtype, "MODIFIED", new, old))
            return copy.deepcopy(self._commit(rtype, "DELETED", copy.deepcopy(old), old))

    def _delete_namespace(self, rtype: ResourceType, old: Obj) -> Obj:
        """Terminate a namespace: delete everything in it; it goes once the last object is gone (caller holds cond)."""
        name = old["metadata"]["name"]
        if "deletionTimestamp" not in old["metadata"]:
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["status"] = {"phase": "Terminating"}
            old = self._commit(rtype, "MODIFIED", new, old)
        for key, inner in list(self.types.items()):
            if not inner.namespaced:
                continue
            for (ns, obj_name), obj in list(self._objects.get(key, {}).items()):
                if ns != name:
                    continue
                if obj["metadata"].get("finalizers"):
                    if "deletionTimestamp" not in obj["metadata"]:
                        marked = copy.deepcopy(obj)
                        marked["metadata"]["deletionTimestamp"] = now_rfc3339()
                        marked["metadata"]["deletionGracePeriodSeconds"] = 0
                        self._commit(inner, "MODIFIED", marked, obj)
                else:
                    self._commit(inner, "DELETED", copy.deepcopy(obj), obj)
        return copy.deepcopy(self._namespace_done(name) or old)

    def _namespace_done(self, name: str) -> Obj | None:
        """Remove a terminating namespace once it is empty; the deleted object, or None (caller holds cond)."""
        ns_type = self.types.get("namespaces")
        ns = self._objects.get("namespaces", {}).get(("", name))
        if ns_type is None or ns is None or "deletionTimestamp" not in ns["metadata"]:
            return None
        for key, inner in self.types.items():
            if inner.namespaced and any(k[0] == name for k in self._objects.get(key, {})):
                return None
        return self._commit(ns_type, "DELETED", copy.deepcopy(ns), ns)

    def drop_kind(self, rtype: ResourceType) -> None:
        """Every object of a kind goes, with DELETED events (its CRD was deleted)."""
        with self.cond:
            for obj in list(self._objects.get(rtype.key, {}).values()):
                self._commit(rtype, "DELETED", copy.deepcopy(obj), obj)

    # ------------------------------------------------------------ watches and faults

    def changes_after(self, rv: int) -> list[Change]:
        """Retained changes newer than ``rv`` (caller holds ``cond``); raises Expired."""
        if rv < self.compacted:
            raise Expired(rv, self.compacted + 1)
        newer: list[Change] = []
        for change in reversed(self._history):
            if change.rv <= rv:
                break
            newer.append(change)
        newer.reverse()
        return newer

    def current(self, rtype: ResourceType) -> Iterable[Obj]:
        """Every stored object of ``rtype`` (caller holds ``cond``)."""
        return [self._objects[rtype.key][k] for k in sorted(self._objects.get(rtype.key, {}))]

    def compact(self) -> None:
        """Forget the history up to now, as etcd compaction does."""
        with self.cond:
            self.compacted = self._rv
            self._history.clear()
            self.cond.notify_all()

    def expire(self) -> None:
        """Compact past every resourceVersion handed out so far and end all watches.

        Every consumer's next watch from a resourceVersion it knows gets 410.
        """
        with self.cond:
            self._rv += 1  # resourceVersions may skip; clients must not assume contiguity
            self.compacted = self._rv
            self._history.clear()
            self.watch_epoch += 1
            self.cond.notify_all()

    def close_watches(self) -> None:
        with self.cond:
            self.watch_epoch += 1
            self.cond.notify_all()
