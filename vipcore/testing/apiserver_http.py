"""HTTP for the test API server: routing, discovery, tables and watch streams.

One thread per connection (``ThreadingHTTPServer``), HTTP/1.1 keep-alive,
watches as chunked streams of newline-delimited JSON events, as upstream.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import select
import socket
import sys
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from vipcore.testing.apiserver_match import ApiError, Obj, bad_request, field_selector, label_selector
from vipcore.testing.apiserver_store import Change, Expired, PrinterColumn, ResourceType

from vipcore.testing.apiserver_store import Store
from vipcore.testing import apiserver_protobuf as protobuf


class ServerState(Protocol):
    """What the HTTP layer needs of :class:`vipcore.testing.apiserver.ApiServer`."""

    store: Store
    bookmark_interval: float

    @property
    def address(self) -> str: ...

    def _track(self, conn: socket.socket, add: bool) -> None: ...

    def _record(self, method: str, path: str, code: int, client: str = "") -> None: ...

    def _black_holed(self, client: str, path: str) -> bool: ...

    def _swallow(self, method: str, path: str, client: str) -> bool: ...

    def _take_failure(self) -> int: ...

    def _rejection(self, method: str, path: str) -> int: ...

    def _take_replay(self) -> int: ...

log = logging.getLogger("vipcore.testing.apiserver")

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
DEFAULT_WATCH_TIMEOUT = 1800


# ------------------------------------------------------------------ discovery

def version_info() -> Obj:
    return {"major": "1", "minor": "31", "gitVersion": "v1.31.0+vipcore.test", "gitCommit": "0" * 40,
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22.0",
            "compiler": "gc", "platform": "linux/amd64"}


def resource_list(types: list[ResourceType], group_version: str) -> Obj:
    resources: list[Obj] = []
    for t in sorted(types, key=lambda t: t.plural):
        entry: Obj = {"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
                      "verbs": VERBS}
        if t.short_names:
            entry["shortNames"] = list(t.short_names)
        if t.categories:
            entry["categories"] = list(t.categories)
        resources.append(entry)
        if t.status_subresource:
            resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced,
                              "kind": t.kind, "verbs": ["get", "patch", "update"]})
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def group_entry(group: str, versions: list[str]) -> Obj:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def openapi_index(types: list[ResourceType]) -> Obj:
    """``/openapi/v3``: one document per group version."""
    paths = {}
    for t in types:
        prefix = f"apis/{t.group}/{t.version}" if t.group else f"api/{t.version}"
        paths[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash=vipcore"}
    return {"paths": paths}


def openapi_document(types: list[ResourceType]) -> Obj:
    """A minimal OpenAPI v3 document: enough for kubectl to see that the server validates fields itself."""
    paths: Obj = {}
    schemas: Obj = {}
    for t in types:
        prefix = f"/apis/{t.group}/{t.version}" if t.group else f"/api/{t.version}"
        scope = f"{prefix}/namespaces/{{namespace}}" if t.namespaced else prefix
        gvk = {"group": t.group, "version": t.version, "kind": t.kind}
        param = [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}]
        paths[f"{scope}/{t.plural}/{{name}}"] = {
            "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get", "responses": {}},
            "patch": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch",
                      "parameters": param, "responses": {}},
            "put": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "put",
                    "parameters": param, "responses": {}},
        }
        paths[f"{scope}/{t.plural}"] = {
            "post": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "post",
                     "parameters": param, "responses": {}},
        }
        schema = dict(t.schema) if t.schema else {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = [gvk]
        schemas[f"{t.group or 'core'}.{t.version}.{t.kind}"] = schema
    return {"openapi": "3.0.0", "info": {"title": "vipcore test API server", "version": "v1.31.0"},
            "paths": paths, "components": {"schemas": schemas}}


# ------------------------------------------------------------------ tables

def _jsonpath(obj: Any, path: str) -> list[Any]:
    """The small JSONPath subset printer columns use: ``.a.b``, ``.a[0].b``, ``.a[*].b``."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    values = [obj]
    for name, index in re.findall(r"\.([A-Za-z0-9_-]+)|\[(\*|\d+)\]", path):
        found: list[Any] = []
        for value in values:
            if name:
                if isinstance(value, Mapping) and name in value:
                    found.append(value[name])
            elif isinstance(value, list):
                found.extend(value if index == "*" else value[int(index):int(index) + 1])
        values = found
    return values


def _age(timestamp: str) -> str:
    try:
        then = datetime.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return "<unknown>"
    seconds = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * 2:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _cell(column: PrinterColumn, obj: Obj) -> Any:
    values = _jsonpath(obj, column.json_path)
    if not values:
        return None
    if column.type == "date":
        return _age(str(values[0]))
    if len(values) == 1 and not isinstance(values[0], (dict, list)):
        return values[0]
    flat = values[0] if len(values) == 1 else values
    if isinstance(flat, list) and all(not isinstance(v, (dict, list)) for v in flat):
        return ",".join(str(v) for v in flat)
    return json.dumps(flat, separators=(",", ":"))


def table(rtype: ResourceType, objects: list[Obj], *, include: str, resource_version: str | None = None,
          continue_token: str | None = None) -> Obj:
    """A ``meta.k8s.io/v1 Table``: what ``kubectl get`` prints."""
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name of the object",
                "priority": 0}]
    columns += [{"name": c.name, "type": "string" if c.type == "date" else c.type, "format": c.format,
                 "description": c.description, "priority": c.priority} for c in rtype.printer_columns]
    rows = []
    for obj in objects:
        row: Obj = {"cells": [obj["metadata"]["name"]] + [_cell(c, obj) for c in rtype.printer_columns]}
        if include == "Object":
            row["object"] = obj
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    metadata: Obj = {}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    if continue_token:
        metadata["continue"] = continue_token
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": columns,
            "rows": rows}


# ------------------------------------------------------------------ watch filtering

def translate(change: Change, rtype: ResourceType, namespace: str | None, labels: Any, fields: Any) -> Obj | None:
    """A history change as this watcher sees it: selector transitions become ADDED/DELETED, as upstream."""
    if change.type_key != rtype.key:
        return None
    if rtype.namespaced and namespace is not None and change.obj["metadata"].get("namespace") != namespace:
        return None

    def matches(obj: Obj | None) -> bool:
        return obj is not None and labels(obj["metadata"].get("labels") or {}) and fields(obj)

    now = matches(change.obj)
    before = matches(change.prev) if change.event == "MODIFIED" else False
    if change.event == "ADDED":
        return {"type": "ADDED", "object": change.obj} if now else None
    if change.event == "DELETED":
        return {"type": "DELETED", "object": change.obj} if now or matches(change.prev) else None
    if now and before:
        return {"type": "MODIFIED", "object": change.obj}
    if now:
        return {"type": "ADDED", "object": change.obj}
    if before:
        return {"type": "DELETED", "object": change.obj}
    return None


# ------------------------------------------------------------------ list options


def check_list_options(query: Mapping[str, str]) -> None:
    """Upstream's ValidateListOptions (422) and the storage layer's continue rule (400)."""
    watch = query.get("watch") in ("1", "true", "True")
    rv = query.get("resourceVersion") or ""
    match = query.get("resourceVersionMatch") or ""
    problems = []
    if "sendInitialEvents" in query:
        # This server has no watch-list (as with the WatchList feature gate off): clients fall back to list+watch.
        problems.append("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the "
                        "WatchList feature gate is enabled")
    if match and "sendInitialEvents" not in query:
        if watch:
            problems.append("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch")
        if not rv:
            problems.append("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless "
                            "resourceVersion is provided")
        if query.get("continue"):
            problems.append("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue "
                            "is provided")
        if match not in ("Exact", "NotOlderThan"):
            problems.append(f'resourceVersionMatch: Unsupported value: "{match}": supported values: "Exact", '
                            '"NotOlderThan"')
        elif match == "Exact" and rv == "0":
            problems.append('resourceVersionMatch: Forbidden: resourceVersionMatch "exact" is forbidden for '
                            'resourceVersion "0"')
    if problems:
        raise ApiError(422, "Invalid", 'ListOptions.meta.k8s.io "" is invalid: ' + ", ".join(problems))
    if query.get("continue") and rv not in ("", "0"):
        raise bad_request("specifying resource version is not allowed when using continue")


# ------------------------------------------------------------------ the handler

class ApiHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: ServerState) -> None:
        self.api = api
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, ApiHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a stopped informer, a killed agent) is routine, as for a real API
        server: one debug line, not socketserver's traceback on stderr. Anything else is logged in full."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            log.debug("client %s hung up: %s", client_address, exc)
            return
        log.exception("request from %s failed", client_address)


class ApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK add 40 ms to every response.
    disable_nagle_algorithm = True
    server: ApiHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def setup(self) -> None:
        super().setup()
        self.server.api._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api._track(self.connection, False)

    # -------------------------------------------------------------- plumbing

    def _send_json(self, code: int, body: Obj) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # Recorded before the answer leaves: a client that got it finds it in the record.
        self.server.api._record(self.command, self.path, code, self._client)
        self.wfile.write(data)

    @property
    def _client(self) -> str:
        return str(self.headers.get("User-Agent") or "")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        if "protobuf" in ctype:
            # kubectl sends these for built-in kinds and does not fall back: decode what is described.
            try:
                return protobuf.decode(raw)
            except protobuf.Unsupported as exc:
                raise ApiError(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media types "
                               f"include: application/json, application/yaml ({ctype}: {exc})") from None
        if "cbor" in ctype:
            raise ApiError(415, "UnsupportedMediaType",
                           f"the body of the request was in an unknown format - accepted media types include: "
                           f"application/json, application/yaml (got {ctype})")
        try:
            if "yaml" in ctype:
                import yaml
                return yaml.safe_load(raw)
            return json.loads(raw)
        except ValueError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from None

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        api = self.server.api
        if api._black_holed(self._client, self.path):
            self._body()
            api._swallow(self.command, self.path, self._client)
            self.close_connection = True  # lifted: drop the connection, the request was never processed
            return
        try:
            failure = api._take_failure()
            if failure:
                self._body()
                reason = "ServiceUnavailable" if failure == 503 else "InternalError"
                raise ApiError(failure, reason, "injected failure: the server is currently unable to handle "
                                                "the request")
            rejected = api._rejection(self.command, self.path)
            if rejected:
                self._body()
                raise ApiError(rejected, {409: "Conflict", 422: "Invalid", 403: "Forbidden"}.get(rejected, "BadRequest"),
                               f"injected rejection: {self.command} {self.path.split('?')[0]} refused")
            self._route()
        except ApiError as exc:
            self._send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            log.debug("connection dropped: %s", exc)
            self.close_connection = True
        except Exception as exc:  # a server bug: answer 500 rather than hang the client
            log.exception("test API server failed on %s %s", self.command, self.path)
            self._send_json(500, ApiError(500, "InternalError", f"internal error: {exc!r}").status())

    # -------------------------------------------------------------- routing

    def _route(self) -> None:
        api = self.server.api
        store = api.store
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if self.command == "GET":
            doc = self._discovery(parts)
            if doc is not None:
                self._send_json(200, doc)
                return
            if url.path in ("/healthz", "/livez", "/readyz"):
                data = b"ok"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(data)
                return
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        rtype = store.resolve(group, version, rest[0])
        if rtype is None or len(rest) > 3 or (namespace is not None and not rtype.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if name is not None and rtype.namespaced and namespace is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        as_table = "as=Table" in (self.headers.get("Accept") or "")
        strict = query.get("fieldValidation") == "Strict"
        include = query.get("includeObject", "")
        method = self.command
        if method == "GET" and name is None:
            check_list_options(query)
        if name is None:
            if method == "GET" and query.get("watch") in ("1", "true", "True"):
                self._watch(rtype, namespace, query, as_table=as_table, include=include)
            elif method == "GET":
                listed = store.list_objects(rtype, namespace, label=query.get("labelSelector"),
                                    field=query.get("fieldSelector"),
                                    limit=int(query["limit"]) if query.get("limit") else None,
                                    continue_token=query.get("continue"),
                                    resource_version=query.get("resourceVersion"),
                                    resource_version_match=query.get("resourceVersionMatch"))
                if as_table:
                    listed = table(rtype, listed["items"], include=include,
                                   resource_version=listed["metadata"]["resourceVersion"],
                                   continue_token=listed["metadata"].get("continue"))
                self._send_json(200, listed)
            elif method == "POST":
                self._send_json(201, store.create(rtype, namespace, self._body(), strict=strict))
            else:
                raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested "
                                                        f"resource ({method} {rtype.plural})")
            return
        if method == "GET":
            if sub not in (None, "status") or (sub == "status" and not rtype.status_subresource):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            obj = store.get(rtype, namespace, name)
            self._send_json(200, table(rtype, [obj], include=include) if as_table else obj)
        elif method == "PUT":
            self._send_json(200, store.update(rtype, namespace, name, self._body(), subresource=sub, strict=strict))
        elif method == "PATCH":
            ctype = self.headers.get("Content-Type") or ""
            if "apply-patch" in ctype:
                raise ApiError(415, "UnsupportedMediaType", "server-side apply is not supported by the vipcore "
                                                            "test API server; use merge or JSON patch")
            self._send_json(200, store.patch(rtype, namespace, name, ctype, self._body(), subresource=sub,
                                             strict=strict))
        elif method == "DELETE":
            if sub is not None:
                raise ApiError(405, "MethodNotAllowed", "subresources cannot be deleted")
            body = self._body()
            self._send_json(200, store.delete(rtype, namespace, name, body if isinstance(body, dict) else None))
        else:
            raise ApiError(405, "MethodNotAllowed", f"method {method} is not allowed")

    def _discovery(self, parts: list[str]) -> Obj | None:
        api = self.server.api
        served = api.store.served()
        groups: dict[str, list[str]] = {}
        for t in served:
            if t.group and t.version not in groups.setdefault(t.group, []):
                groups[t.group].append(t.version)
        if parts == ["version"]:
            return version_info()
        if parts == ["openapi", "v3"]:
            return openapi_index(served)
        if len(parts) >= 4 and parts[:2] == ["openapi", "v3"]:
            gv = "/".join(parts[3:]) if parts[2] == "apis" else parts[3]
            chosen = [t for t in served if (f"{t.group}/{t.version}" if t.group else t.version) == gv]
            return openapi_document(chosen) if chosen else None
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": api.address}]}
        if parts == ["api", "v1"]:
            return resource_list([t for t in served if not t.group], "v1")
        if parts == ["apis"]:
            return {"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [group_entry(g, v) for g, v in sorted(groups.items())]}
        if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
            return {"kind": "APIGroup", "apiVersion": "v1", **group_entry(parts[1], groups[parts[1]])}
        if len(parts) == 3 and parts[0] == "apis" and parts[2] in groups.get(parts[1], ()):
            return resource_list([t for t in served if t.group == parts[1] and t.version == parts[2]],
                                 f"{parts[1]}/{parts[2]}")
        return None

    # -------------------------------------------------------------- watch

    def _peer_closed(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, rtype: ResourceType, namespace: str | None, query: Mapping[str, str], *,
               as_table: bool, include: str) -> None:
        api = self.server.api
        store = api.store
        labels = label_selector(query.get("labelSelector"))
        fields = field_selector(query.get("fieldSelector"), rtype.selectable, rtype.kind)
        try:
            timeout = float(query.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError:
            raise bad_request("timeoutSeconds must be a number") from None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1", "True")
        rv_text = query.get("resourceVersion") or ""
        if rv_text not in ("", "0") and not rv_text.isdigit():
            raise bad_request(f"invalid resource version {rv_text!r}")
        deadline = time.monotonic() + timeout
        initial: list[Obj] = []
        with store.cond:
            epoch = store.watch_epoch
            if rv_text in ("", "0"):
                position = store.resource_version
                initial = [{"type": "ADDED", "object": o} for o in store.current(rtype)
                           if translate(Change(0, rtype.key, "ADDED", o, None), rtype, namespace, labels, fields)]
            else:
                position = int(rv_text)
                replay = api._take_replay()
                if replay:
                    earlier = [c.rv for c in store.changes_after(store.compacted) if c.rv <= position]
                    position = earlier[-replay - 1] if len(earlier) > replay else store.compacted
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.server.api._record("WATCH", self.path, 200, self._client)
        self.close_connection = True

        def emit(event: Obj) -> None:
            if as_table and event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                event = {"type": event["type"], "object": table(rtype, [event["object"]], include=include)}
            self._chunk(event)

        def bookmark(rv: int) -> None:
            self._chunk({"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                        "metadata": {"resourceVersion": str(rv)}}})

        for event in initial:
            emit(event)
        next_bookmark = time.monotonic() + api.bookmark_interval
        while True:
            events: list[Obj] = []
            error: Obj | None = None
            finished = False
            with store.cond:
                while True:
                    now = time.monotonic()
                    if store.watch_epoch != epoch or now >= deadline:
                        finished = True
                        break
                    if not store.held:
                        try:
                            changes = store.changes_after(position)
                        except Expired as exc:
                            error = ApiError(410, "Expired", str(exc)).status()
                            break
                        if changes:
                            position = changes[-1].rv
                            events = [e for e in (translate(c, rtype, namespace, labels, fields)
                                                  for c in changes) if e]
                        else:
                            position = max(position, store.resource_version)
                        if events:
                            break
                        if bookmarks and now >= next_bookmark:
                            break
                    store.cond.wait(max(0.0, min(deadline - now, next_bookmark - now, 1.0)))
                    if self._peer_closed():
                        return  # the client went away: free this thread now, not at the timeout
            if api._swallow("WATCH", self.path, self._client):
                return  # black-holed: nothing more is delivered; lifted, the connection is dropped
            try:
                if error is not None:
                    self._chunk({"type": "ERROR", "object": error})
                    break
                for event in events:
                    emit(event)
                if finished:
                    if bookmarks and store.watch_epoch == epoch:
                        bookmark(position)
                    break
                if bookmarks and time.monotonic() >= next_bookmark:
                    bookmark(position)
                    next_bookmark = time.monotonic() + api.bookmark_interval
            except OSError:
                return
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass


def shutdown_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass

