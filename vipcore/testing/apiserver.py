"""A faithful Kubernetes API server for tests, speaking REST and watch over plain HTTP.

Serves core/v1 Namespaces, Nodes, Services (with ``/status``) and Events,
discovery.k8s.io/v1 EndpointSlices, coordination.k8s.io/v1 Leases, and
CustomResourceDefinitions with the kinds they define (load them from
``deploy/crds``, or create them through the API). The official ``kubernetes``
client and ``kubectl`` talk to it through a generated kubeconfig::

    with ApiServer(crds=["deploy/crds"]) as server:
        api = kubernetes.client.CoreV1Api(server.client())
        server.fail_next(5)            # the next 5 requests answer 503
        server.expire()                # every known resourceVersion is now too old (410)

Semantics follow the real API server (see :mod:`vipcore.testing.apiserver_store`).
Fault injection: :meth:`ApiServer.close_watches`, :meth:`compact`,
:meth:`expire`, :meth:`hold_watches`, :meth:`fail_next`, :meth:`reject` (writes to one object refused),
:meth:`refuse_connections`, :meth:`black_hole` (one client's requests are
accepted and never answered). Every answered request is recorded with the
client's User-Agent (:attr:`ApiServer.requests`): who wrote what, when. Run it standalone with
``python -m vipcore.testing.apiserver --port 8080 --crds deploy/crds --kubeconfig out.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from vipcore.testing.apiserver_http import ApiHTTPServer, shutdown_socket
from vipcore.testing.apiserver_match import ApiError, Obj
from vipcore.testing.apiserver_store import Change, ResourceType, Store
from vipcore.testing.apiserver_types import BUILTIN, CRD, types_from_crd
from vipcore.testing.kubeconfig import write_kubeconfig

__all__ = ["ApiError", "ApiServer", "RequestRecord", "main"]

log = logging.getLogger("vipcore.testing.apiserver")

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@attrs.frozen
class RequestRecord:
    """One answered request: for asserting on client behaviour (retries, backoff)."""

    at: float  # time.monotonic()
    method: str  # GET, POST, ..., or WATCH for a watch stream that started
    path: str
    code: int  # 0: swallowed by a black hole (never answered, never processed)
    client: str = ""  # the User-Agent header


class ApiServer:
    """The test API server; a context manager that starts and stops it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        crds: Iterable[str | Path] = (),
        history_limit: int = 1000,
        bookmark_interval: float = 1.0,
        namespaces: Iterable[str] = DEFAULT_NAMESPACES,
    ) -> None:
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.store = Store(history_limit=history_limit)
        self.store.on_commit.append(self._crd_changed)
        for rtype in BUILTIN:
            self.store.register(rtype)
        self.requests: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._failures: list[int] = []
        self._replay = 0
        self._connections: set[socket.socket] = set()
        #: Black holes: (User-Agent part, path part); guarded by _lock, waited on with _holes_changed.
        self._holes: list[tuple[str, str]] = []
        self._rejections: list[tuple[str, int]] = []
        self._holes_changed = threading.Condition(self._lock)
        self._stopping = False
        self._httpd: ApiHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._relisten: threading.Timer | None = None
        for name in namespaces:
            self.store.create(self._type("v1", "Namespace"), None, {"metadata": {"name": name}})
        for path in crds:
            self.load_crds(path)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "ApiServer":
        self._listen()
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._holes_changed.notify_all()
        if self._relisten is not None:
            self._relisten.cancel()
        self._stop_listening()
        self.store.close_watches()

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self) -> None:
        with self._lock:
            if self._httpd is not None:
                return
            for attempt in range(50):
                try:
                    httpd = ApiHTTPServer((self.host, self.port), self)
                    break
                except OSError:
                    if attempt == 49 or self.port == 0:
                        raise
                    time.sleep(0.05)
            self.port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                            name=f"apiserver:{self.port}", daemon=True)
            self._thread.start()

    def _stop_listening(self) -> None:
        with self._lock:
            httpd, self._httpd = self._httpd, None
            connections = list(self._connections)
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        for conn in connections:
            shutdown_socket(conn)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(self, method: str, path: str, code: int, client: str = "") -> None:
        with self._lock:
            self.requests.append(RequestRecord(time.monotonic(), method, path, code, client))

    def _black_holed(self, client: str, path: str) -> bool:
        with self._lock:
            return not self._stopping and any(c in client and p in path for c, p in self._holes)

    def _swallow(self, method: str, path: str, client: str) -> bool:
        """Hold a request from a black-holed client until the hole is lifted; True if it was swallowed."""
        with self._lock:
            if not any(c in client and p in path for c, p in self._holes) or self._stopping:
                return False
            self.requests.append(RequestRecord(time.monotonic(), method, path, 0, client))
            self._holes_changed.wait_for(
                lambda: self._stopping or not any(c in client and p in path for c, p in self._holes))
        return True

    def _take_failure(self) -> int:
        with self._lock:
            return self._failures.pop(0) if self._failures else 0

    def _rejection(self, method: str, path: str) -> int:
        """The code a write to ``path`` is refused with (:meth:`reject`), else 0."""
        if method == "GET":
            return 0
        path = path.split("?", 1)[0]
        with self._lock:
            return next((code for prefix, code in self._rejections if path == prefix or path.startswith(prefix + "/")),
                        0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def open_connections(self) -> int:
        """Client connections currently open (watch streams included)."""
        with self._lock:
            return len(self._connections)

    @property
    def listening(self) -> bool:
        return self._httpd is not None

    # ------------------------------------------------------------ clients

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default") -> Path:
        """A kubeconfig for this server (for kubectl, or ``kubernetes.config.load_kube_config``)."""
        return write_kubeconfig(path, self.url, namespace=namespace)

    def client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` configured for this server."""
        import kubernetes.client

        config = kubernetes.client.Configuration()
        config.host = self.url
        return kubernetes.client.ApiClient(config)

    # ------------------------------------------------------------ objects, without HTTP

    def _type(self, api_version: str, kind: str) -> ResourceType:
        group, _, version = api_version.rpartition("/")
        for rtype in self.store.served():
            if rtype.group == group and rtype.version == version and rtype.kind == kind:
                return rtype
        raise ApiError(404, "NotFound", f"no kind {kind!r} is registered for {api_version!r}")

    def create(self, obj: Mapping[str, Any]) -> Obj:
        """Create an object (by its apiVersion and kind) as a POST would."""
        rtype = self._type(str(obj.get("apiVersion")), str(obj.get("kind")))
        return self.store.create(rtype, (obj.get("metadata") or {}).get("namespace"), obj)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj:
        return self.store.get(self._type(api_version, kind), namespace, name)

    def objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every object of a kind (in one namespace, or all)."""
        listed = self.store.list_objects(self._type(api_version, kind), namespace)
        return list(listed["items"])

    def update(self, obj: Mapping[str, Any], *, subresource: str | None = None) -> Obj:
        rtype = self._type(str(obj.get("apiVersion")), str(obj.get("kind")))
        meta = obj.get("metadata") or {}
        return self.store.update(rtype, meta.get("namespace"), meta["name"], obj, subresource=subresource)

    def patch(self, api_version: str, kind: str, name: str, patch: Any, *, namespace: str | None = None,
              content_type: str = "application/merge-patch+json", subresource: str | None = None) -> Obj:
        return self.store.patch(self._type(api_version, kind), namespace, name, content_type, patch,
                                subresource=subresource)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Obj:
        return self.store.delete(self._type(api_version, kind), namespace, name)

    def load_crds(self, path: str | Path) -> list[str]:
        """Create every CustomResourceDefinition in a YAML file or a folder of them; returns their names."""
        root = Path(path)
        files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")) if root.is_dir() else [root]
        names = []
        for file in files:
            for doc in yaml.safe_load_all(file.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    names.append(self.store.create(CRD, None, doc)["metadata"]["name"])
        return names

    def _crd_changed(self, rtype: ResourceType, change: Change) -> None:
        if rtype.key != CRD.key:
            return
        spec = change.obj.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        if change.event == "DELETED":
            # Its objects go first, with DELETED events to every watcher, as the CRD cleanup does.
            for served in list(self.store.served()):
                if served.group == group and served.plural == plural:
                    self.store.drop_kind(served)
            self.store.unregister(group, plural)
            return
        for served in types_from_crd(change.obj):
            self.store.register(served)

    # ------------------------------------------------------------ fault injection

    def close_watches(self) -> None:
        """End every open watch stream (cleanly, as an API server restart would)."""
        self.store.close_watches()

    def compact(self) -> None:
        """Drop the change history up to now: watches from older resourceVersions get 410."""
        self.store.compact()

    def expire(self) -> None:
        """Compact past every resourceVersion handed out and end all watches: every resume gets 410."""
        self.store.expire()

    @contextlib.contextmanager
    def hold_watches(self) -> Iterator[None]:
        """Deliver nothing to watches inside the block (a stalled watch cache); they catch up after."""
        with self.store.cond:
            self.store.held = True
        try:
            yield
        finally:
            with self.store.cond:
                self.store.held = False
                self.store.cond.notify_all()

    @contextlib.contextmanager
    def black_hole(self, client: str, *, path: str = "") -> Iterator[None]:
        """Inside the block, requests from clients whose User-Agent contains ``client`` (and whose path
        contains ``path``) are accepted and never answered, and their open watch streams go silent: a
        network black hole between that client and the server. On leaving, the held connections are
        closed unanswered: those requests were never processed."""
        hole = (client, path)
        with self._lock:
            self._holes.append(hole)
        try:
            yield
        finally:
            with self._lock:
                self._holes.remove(hole)
                self._holes_changed.notify_all()

    @contextlib.contextmanager
    def reject(self, path: str, code: int = 422) -> Iterator[None]:
        """Inside the block, every write (not GET) to the object at ``path`` or its subresources, such as
        ``/api/v1/namespaces/default/services/web``, is answered ``code`` (422 Invalid, 409 Conflict, 403
        Forbidden, ...) with a Status body and not applied: one object the server keeps refusing."""
        rejection = (path.rstrip("/"), code)
        with self._lock:
            self._rejections.append(rejection)
        try:
            yield
        finally:
            with self._lock:
                self._rejections.remove(rejection)

    def fail_next(self, count: int, code: int = 503) -> None:
        """Answer the next ``count`` requests (of any kind) with ``code`` (500 or 503) and a Status body."""
        if code not in (500, 503):
            raise ValueError("code must be 500 or 503")
        with self._lock:
            self._failures.extend([code] * count)

    def replay_next_watch(self, changes: int) -> None:
        """Make the next watch that resumes from a resourceVersion start ``changes`` changes earlier.

        Models an API server replica whose watch cache lags: the client sees
        changes again that it already had, and must not apply them twice.
        """
        with self._lock:
            self._replay = changes

    def _take_replay(self) -> int:
        with self._lock:
            replay, self._replay = self._replay, 0
            return replay

    def clear_failures(self) -> None:
        """Forget failures injected by :meth:`fail_next` that were not used yet."""
        with self._lock:
            self._failures.clear()

    def refuse_connections(self, seconds: float) -> None:
        """Stop listening and drop every open connection now; listen again on the same port after ``seconds``.

        Returns at once; while refusing, clients get "connection refused".
        """
        if self.port == 0:
            raise ValueError("the server must be started first")
        self._stop_listening()
        self.store.close_watches()
        self._relisten = threading.Timer(seconds, self._listen)
        self._relisten.daemon = True
        self._relisten.start()

    def requests_since(self, since: float, method: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.at >= since and (method is None or r.method == method)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vipcore.testing.apiserver",
                                     description="Run the vipcore test Kubernetes API server.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: any free port)")
    parser.add_argument("--crds", action="append", default=[], help="CRD YAML file or folder (repeatable)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    parser.add_argument("--bookmark-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = ApiServer(host=args.host, port=args.port, crds=args.crds, bookmark_interval=args.bookmark_interval)
    except (OSError, ApiError, yaml.YAMLError) as exc:
        parser.error(str(exc))
    with server:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig)
        print(f"serving on {server.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
