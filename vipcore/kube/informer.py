"""List+watch into a cache, with backoff, 410 re-lists and asyncio delivery."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import tenacity

from vipcore.core import objects
from vipcore.core.plan import persisted_lineage
from vipcore.core.errors import ManifestError
from vipcore.core.model import (
    IP_ANNOTATION,
    LOAD_BALANCER_CLASS,
    POOL_ANNOTATION,
    DesiredState,
    EndpointSlice,
    MetricSample,
    Node,
    Pool,
    Service,
)
from vipcore.kube.client import ApiUnavailableError, KubernetesError, backoff, describe, status_of
from vipcore.kube.kinds import ALL_KINDS, Kind, object_key

log = logging.getLogger("vipcore.kube")

Obj = dict[str, Any]


@attrs.frozen
class ObjectChange:
    """One change the source applied to its cache (synthetic for re-list differences)."""

    kind: str
    type: str  # ADDED, MODIFIED, DELETED
    key: str
    resource_version: str
    obj: Obj = attrs.field(eq=False, repr=False)
    #: True when found by comparing a re-list with the cache (a missed change).
    relisted: bool = False


@attrs.frozen
class ConnectionState:
    """How the source's connection to the API server is doing."""

    connected: bool
    #: Wall-clock time (``time.time()``) of the last loss of connection, while disconnected.
    disconnected_since: float | None
    #: Lists after the first one of each kind (after 410 Gone, or a watch that could not resume).
    relists: int
    #: Watches re-established after an error.
    reconnects: int
    #: Failed requests (each one backed off).
    errors: int
    last_error: str | None
    synced: bool


class _StreamEnded(Exception):
    """A watch ended before it was healthy (counts as a failure for backoff)."""


class _Gone(Exception):
    """The resourceVersion is too old: re-list."""


# ------------------------------------------------------------------ the source

#: Kinds whose last valid conversion stays in force when an edit makes the object invalid (pools).
KEEP_LAST_VALID = frozenset({"vippools", "eips"})


class KubernetesSource:
    """List+watch into a cache; :meth:`state` is the :class:`DesiredState`; :meth:`watch` streams it.

    ``classes`` and ``default_class`` choose the Services served (see
    :func:`vipcore.core.objects.service_wanted`). Implements :class:`vipcore.sources.Source`.
    """

    allocates = False

    def __init__(
        self,
        client: Any,
        *,
        kinds: Iterable[Kind] = ALL_KINDS,
        classes: frozenset[str] = frozenset({LOAD_BALANCER_CLASS}),
        default_class: bool = False,
        openelb: bool = True,
        watch_timeout: float = 300.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        healthy_after: float = 1.0,
        optional_recheck: float = 30.0,
        request_timeout: float = 10.0,
        keep: Mapping[str, Callable[[Obj], Obj]] | None = None,
        page_size: int = 500,
        handed_on: Iterable[str] = (),
    ) -> None:
        self.client = client
        #: Objects per list request (``limit``); 0 lists each kind in one request.
        self.page_size = page_size
        #: Per kind, the transform applied to every object before it is cached (see :data:`AGENT_FIELDS`).
        self.keep = dict(keep or {})
        #: Kinds whose objects are handed to :attr:`on_object_change` and cached as their identity only
        #: (kind, name, namespace, resourceVersion: what a relist compares): their listener keeps what
        #: it needs (the agent's VipGroup view keeps its own model of each VipGroup and Node; the objects
        #: as well would hold a 25,000-address group and 5,000 Nodes twice). :meth:`objects` and a
        #: DELETED change give those identities; :meth:`state` leaves these kinds out (nothing converted
        #: twice: the listener converts them).
        self.handed_on = frozenset(handed_on)
        self.kinds = tuple(kinds)
        self.classes = classes
        self.default_class = default_class
        self.openelb = openelb
        self.watch_timeout = watch_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.healthy_after = healthy_after
        self.optional_recheck = optional_recheck
        self.request_timeout = request_timeout
        #: Called in the watching thread for every applied change (keep it quick).
        self.on_object_change: list[Callable[[ObjectChange], None]] = []
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Obj]] = {k.name: {} for k in self.kinds}
        self._converted: dict[tuple[str, str], tuple[str, Any]] = {}
        self._invalid: dict[tuple[str, str], str] = {}
        self._synced: set[str] = set()
        self._healthy: dict[str, bool] = {k.name: False for k in self.kinds}
        self._disconnected_since: float | None = None
        self._relists = 0
        self._reconnects = 0
        self._errors = 0
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: set[Any] = set()
        self._wake = Wakeup()
        self._synced_event = threading.Event()
        self._delivered: DesiredState | None = None
        #: Per kind, the resourceVersion to resume watching from (None: list first).
        self._positions: dict[str, str | None] = {}

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start one watching thread per kind; idempotent. Call from the event loop if using :meth:`watch`."""
        if self._threads:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: watch() is not used
            self._wake.bind()
        for kind in self.kinds:
            thread = threading.Thread(target=self._run, args=(kind,), name=f"k8s-watch:{kind.name}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching; open streams are shut down."""
        self._stop.set()
        with self._lock:
            responses = list(self._responses)
        for resp in responses:
            _shutdown(resp)
        for thread in self._threads:
            thread.join(timeout)

    async def close(self) -> None:
        """:meth:`stop` from asyncio."""
        await asyncio.to_thread(self.stop)

    def wait_synced(self, timeout: float) -> bool:
        """Block until every kind was listed once."""
        return self._synced_event.wait(timeout)

    async def initial(self, timeout: float = 30.0) -> DesiredState:
        """Start, and return the first complete state; ApiUnavailableError if not had in ``timeout``."""
        self.start()
        if not await asyncio.to_thread(self._synced_event.wait, timeout):
            state = self.connection()
            raise ApiUnavailableError(
                f"no complete state from the Kubernetes API within {timeout:.0f}s "
                f"(last error: {state.last_error or 'none'}); check the API server address and RBAC")
        self._delivered = self.state()
        return self._delivered

    async def watch(self, on_change: Callable[[DesiredState], Awaitable[None]]) -> None:
        """Call ``on_change`` after every change of the desired state (bursts coalesce), until cancelled."""
        self.start()
        if not self._wake.bound:
            raise RuntimeError("KubernetesSource.watch needs start() to run inside the event loop")
        # Compare with what initial() handed out, so a change in between is not lost.
        last = self._delivered
        self._wake.set()
        while True:
            await self._wake.wait(None)
            self._wake.clear()
            if not self._synced_event.is_set():
                continue
            state = self.state()
            if state != last:
                last = self._delivered = state
                await on_change(state)

    # -------------------------------------------------------------- views

    def connection(self) -> ConnectionState:
        with self._lock:
            connected = all(self._healthy.values())
            return ConnectionState(
                connected=connected,
                disconnected_since=None if connected else self._disconnected_since,
                relists=self._relists, reconnects=self._reconnects, errors=self._errors,
                last_error=self._last_error, synced=self._synced_event.is_set())

    def metrics(self) -> list[MetricSample]:
        """Connection health as metric samples (for ``vipcore_collect_metrics``)."""
        state = self.connection()
        with self._lock:
            cached = {kind: len(objs) for kind, objs in self._cache.items()}
            invalid = len(self._invalid)
        samples = [
            MetricSample("vipcore_kubernetes_connected", float(state.connected), kind="gauge",
                         help="1 while every watch of the Kubernetes source is established"),
            MetricSample("vipcore_kubernetes_relists_total", float(state.relists),
                         help="Lists after a watch expired (410 Gone)"),
            MetricSample("vipcore_kubernetes_reconnects_total", float(state.reconnects),
                         help="Watches re-established after an error"),
            MetricSample("vipcore_kubernetes_errors_total", float(state.errors),
                         help="Failed list or watch requests (each backed off)"),
            MetricSample("vipcore_kubernetes_invalid_objects", float(invalid), kind="gauge",
                         help="Objects skipped because they failed validation"),
        ]
        samples += [MetricSample("vipcore_kubernetes_cached_objects", float(n), labels=(("kind", kind),),
                                 kind="gauge", help="Objects in the source's cache") for kind, n in cached.items()]
        return samples

    def objects(self, kind: str) -> dict[str, Obj]:
        """The cached objects of a kind by key (``namespace/name`` or ``name``); do not mutate."""
        with self._lock:
            return dict(self._cache[kind])

    @property
    def invalid(self) -> dict[str, str]:
        """Objects skipped because they failed validation: ``kind/key`` -> message."""
        with self._lock:
            return {f"{k}/{key}": msg for (k, key), msg in self._invalid.items()}

    def service_model(self, obj: Mapping[str, Any]) -> Service:
        """The model of a Service object: the one :meth:`state` converted for this resourceVersion, if any.

        Raises :class:`~vipcore.core.errors.ManifestError` for an invalid Service, as the conversion does.
        """
        rv = (obj.get("metadata") or {}).get("resourceVersion", "")
        with self._lock:
            cached = self._converted.get(("services", object_key(obj)))
        # The cache key is the resourceVersion plus, for Services, a fingerprint of the Eips they read.
        if cached is not None and cached[0].split("/", 1)[0] == rv and isinstance(cached[1], Service):
            return cached[1]
        return objects.service_from_k8s(obj)

    def _converted_items(self, kind: str, fn: Callable[[Obj], Any], depends: str = "") -> list[Any]:
        """Converted values of one kind; conversion is cached per resourceVersion (and ``depends``, a
        fingerprint of other objects the conversion reads); invalid objects skipped."""
        out: list[Any] = []
        if kind in self.handed_on:  # identities only: their listener converts them
            return out
        for key, obj in self._cache.get(kind, {}).items():
            rv = obj["metadata"].get("resourceVersion", "") + depends
            cached = self._converted.get((kind, key))
            if cached is not None and cached[0] == rv:
                value = cached[1]
            else:
                try:
                    value = fn(obj)
                    self._invalid.pop((kind, key), None)
                except ManifestError as exc:
                    # A pool edit that fails conversion keeps the last valid pool in force (as MetalLB
                    # keeps its last good configuration): addresses never vanish behind a Service's back.
                    value = cached[1] if cached is not None and kind in KEEP_LAST_VALID else None
                    if self._invalid.get((kind, key)) != str(exc):
                        log.error("%s invalid %s %s: %s", "keeping the last valid" if value is not None
                                  else "skipping", kind, key, exc)
                    self._invalid[(kind, key)] = str(exc)
                self._converted[(kind, key)] = (rv, value)
            if value is not None:
                out.append(value)
        return out

    def pools(self) -> tuple[Pool, ...]:
        """The pools (VipPools and ``vip`` Eips) from the cache, now, by name."""
        with self._lock:
            pools: list[Pool] = self._converted_items("vippools", _pool) + self._converted_items("eips", _pool)
        return tuple(sorted(pools, key=lambda p: p.name))

    def state(self) -> DesiredState:
        """The desired state from the cache, now."""
        def service(obj: Obj) -> Service | None:
            # Eips too: a Service of a bgp/layer2 Eip is OpenELB's, on the agents as on the controller.
            wanted = objects.service_wanted(obj, classes=self.classes, default_class=self.default_class,
                                            openelb=self.openelb, eips=list(self._cache.get("eips", {}).values()))
            return objects.service_from_k8s(obj) if wanted else None

        pool = _pool
        with self._lock:
            nodes: list[Node] = self._converted_items("nodes", objects.node_from_k8s)
            eip_versions = ",".join(sorted(str(e["metadata"].get("resourceVersion"))
                                           for e in self._cache.get("eips", {}).values()))
            services: list[Service] = self._converted_items("services", service, depends="/" + eip_versions)
            slices: list[EndpointSlice] = self._converted_items("endpointslices", objects.endpoint_slice_from_k8s)
            pools: list[Pool] = self._converted_items("vippools", pool) + self._converted_items("eips", pool)
            vrids = dict(self._converted_items("vipgroups", objects.pinned_vrid))
            # Each VipGroup's Services: a group renamed by a membership change inherits its VRID
            # (as the controller decides), so agents agree before the renamed VipGroup is written.
            lineage = persisted_lineage(() if "vipgroups" in self.handed_on
                                        else self._cache.get("vipgroups", {}).values())
        return DesiredState(
            nodes=tuple(sorted(nodes, key=lambda n: n.name)),
            services=tuple(sorted(services, key=lambda s: s.key)),
            endpoint_slices=tuple(sorted(slices, key=lambda s: (s.namespace, s.name))),
            pools=tuple(sorted(pools, key=lambda p: p.name)),
            vrids=vrids,
            lineage=lineage,
        )

    # -------------------------------------------------------------- the watching thread

    def _retrying(self, kind: Kind) -> tenacity.Retrying:
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda exc: not isinstance(exc, _Gone)),
            wait=backoff(self.backoff_initial, self.backoff_max),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._sleep,
            before_sleep=functools.partial(self._failed, kind),
            reraise=True,
        )

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # stop() interrupts a backoff

    def _failed(self, kind: Kind, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        text = describe(exc) if exc else "unknown error"
        delay = retry_state.next_action.sleep if retry_state.next_action else 0.0
        with self._lock:
            self._errors += 1
            self._last_error = f"{kind.name}: {text}"
            if all(self._healthy.values()):
                self._disconnected_since = time.time()
            self._healthy[kind.name] = False
        log.warning("watching %s failed (%s); retrying in %.2fs", kind.name, text, delay)

    def _run(self, kind: Kind) -> None:
        relist = False  # the next list replaces a watch that expired: count it, emit missed changes
        while not self._stop.is_set():
            try:
                for attempt in self._retrying(kind):
                    with attempt:
                        if self._positions.get(kind.name) is None:
                            self._positions[kind.name] = self._list(kind, relist=relist)
                            relist = False
                            if self._positions[kind.name] is None:  # an optional kind that is not served
                                self._stop.wait(self.optional_recheck)
                                continue
                        self._stream(kind, attempt.retry_state.attempt_number)
            except _Gone:
                log.info("watch of %s expired (410 Gone); re-listing", kind.name)
                self._positions[kind.name] = None
                relist = True
            except Exception as exc:  # tenacity reraises the last error only when stopping
                if not self._stop.is_set():
                    log.exception("watching %s stopped unexpectedly: %s", kind.name, exc)
                    self._stop.wait(self.backoff_max)

    def _mark_healthy(self, kind: Kind) -> None:
        with self._lock:
            self._healthy[kind.name] = True
            if all(self._healthy.values()):
                self._disconnected_since = None

    def _list(self, kind: Kind, *, relist: bool) -> str | None:
        """List ``kind``, replace its cache, emit differences; returns the list's resourceVersion.

        None for an optional kind that is not served (its CRD is not installed).
        """
        try:
            listed = self._list_pages(kind)
        except Exception as exc:
            if kind.optional and status_of(exc) == 404:
                self._replace(kind, [], relist=relist)
                self._mark_healthy(kind)
                self._synced_now(kind)
                log.info("%s are not served (CRD not installed); checking again in %.0fs", kind.name,
                         self.optional_recheck)
                return None
            raise
        items, version = listed
        self._replace(kind, items, relist=relist)
        self._mark_healthy(kind)
        self._synced_now(kind)
        return version

    def _list_pages(self, kind: Kind) -> tuple[list[Obj], str]:
        """Every object of ``kind`` (slimmed) and the list's resourceVersion, ``page_size`` at a time.

        As client-go's reflector: each page is one request within ``request_timeout`` (one list of
        50,000 objects is not), and all pages are one consistent snapshot. A continue token that
        expired between pages (410) restarts the list: the cache is compared with a consistent list
        to find deletions, so the inconsistent continuation the 410 offers is not taken.
        """
        func = kind.lister(self.client)
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": self.request_timeout}
        if kind.label_selector:
            kwargs["label_selector"] = kind.label_selector
        if self.page_size:
            kwargs["limit"] = self.page_size
        restarts = 0
        items: list[Obj] = []
        while True:
            try:
                resp = func(**kwargs)
            except Exception as exc:
                if "_continue" not in kwargs or status_of(exc) != 410 or restarts >= 3:
                    raise
                restarts += 1
                log.info("listing %s: the continue token expired after %d objects; listing again",
                         kind.name, len(items))
                kwargs.pop("_continue")
                items = []
                continue
            body = json.loads(resp.data)
            page = body.get("items") or []
            meta = body.get("metadata") or {}
            del body, resp  # a page need not outlive its slimmed items
            for i, item in enumerate(page):
                item.setdefault("kind", kind.kind)
                item.setdefault("apiVersion", kind.api_version)
                page[i] = self._kept(kind, item)  # in place: each full object is freed as it is replaced
            items.extend(page)
            token = meta.get("continue")
            if not token:
                return items, str(meta["resourceVersion"])
            kwargs["_continue"] = token

    def _synced_now(self, kind: Kind) -> None:
        with self._lock:
            self._synced.add(kind.name)
            done = len(self._synced) == len(self.kinds)
        if done and not self._synced_event.is_set():
            self._synced_event.set()
            self._notify()

    def _cached(self, kind: Kind, obj: Obj) -> Obj:
        """What the cache keeps of ``obj``: itself, or its identity for a :attr:`handed_on` kind."""
        return _head(obj) if kind.name in self.handed_on and isinstance(obj.get("metadata"), dict) else obj

    def _replace(self, kind: Kind, items: list[Obj], *, relist: bool) -> None:
        fresh = {object_key(o): o for o in items}
        changes: list[ObjectChange] = []
        with self._lock:
            if relist:
                self._relists += 1
            old = self._cache[kind.name]
            for key, obj in old.items():
                if key not in fresh:
                    changes.append(ObjectChange(kind.name, "DELETED", key, obj["metadata"].get("resourceVersion", ""),
                                                obj, relisted=relist))
            for key, obj in fresh.items():
                rv = obj["metadata"].get("resourceVersion", "")
                if key not in old:
                    changes.append(ObjectChange(kind.name, "ADDED", key, rv, obj, relisted=relist))
                elif old[key]["metadata"].get("resourceVersion") != rv:
                    changes.append(ObjectChange(kind.name, "MODIFIED", key, rv, obj, relisted=relist))
            self._cache[kind.name] = fresh if kind.name not in self.handed_on else {
                key: self._cached(kind, obj) for key, obj in fresh.items()}
            for key in set(old) - set(fresh):
                self._converted.pop((kind.name, key), None)
                self._invalid.pop((kind.name, key), None)
        self._publish(changes)

    def _stream(self, kind: Kind, attempt: int) -> None:
        """One watch request from the kind's position, which it advances event by event.

        Raises _Gone on 410, _StreamEnded when the stream ended before it was healthy.
        """
        resource_version = self._positions[kind.name]
        assert resource_version is not None
        func = kind.lister(self.client)
        # Spread the server-side timeouts so that kinds do not reconnect in lockstep.
        timeout = int(self.watch_timeout * random.uniform(0.9, 1.1)) or 1
        kwargs: dict[str, Any] = {
            "watch": True, "resource_version": resource_version, "allow_watch_bookmarks": True,
            "timeout_seconds": timeout, "_preload_content": False,
            "_request_timeout": (self.request_timeout, timeout + self.request_timeout),
        }
        if kind.label_selector:
            kwargs["label_selector"] = kind.label_selector
        # resourceVersions are opaque, but every etcd-backed server issues increasing
        # integers: compare them only then, to drop changes a lagging replica replays.
        floor = int(resource_version) if resource_version.isdigit() else None
        started = time.monotonic()
        resp = func(**kwargs)
        with self._lock:
            self._responses.add(resp)
            if attempt > 1 or not self._healthy[kind.name]:
                self._reconnects += 1
        if self._stop.is_set():
            _shutdown(resp)  # stop() ran while this request was in flight
        self._mark_healthy(kind)
        try:
            for line in _lines(resp):
                event = json.loads(line)
                etype, obj = event.get("type"), event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise KubernetesError(f"watch error: {obj.get('message')}", status=obj.get("code"))
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if floor is not None and rv.isdigit() and int(rv) <= floor:
                    continue  # replayed by a lagging API server: already applied
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    obj.setdefault("kind", kind.kind)
                    obj.setdefault("apiVersion", kind.api_version)
                    self._apply(kind, etype, self._kept(kind, obj))
                if rv:
                    # Advance at once: a failure later in this stream resumes from here.
                    self._positions[kind.name] = rv
                if self._stop.is_set():
                    break
        finally:
            with self._lock:
                self._responses.discard(resp)
            resp.close()  # watch connections are not reused (the server closes them too)
            resp.release_conn()
        if time.monotonic() - started < self.healthy_after and not self._stop.is_set():
            raise _StreamEnded(f"watch of {kind.name} ended after {time.monotonic() - started:.2f}s")

    def _kept(self, kind: Kind, obj: Obj) -> Obj:
        """``obj`` reduced by the kind's transform; unchanged if there is none or it cannot cope."""
        transform = self.keep.get(kind.name)
        if transform is None:
            return obj
        try:
            return transform(obj)
        except Exception:  # noqa: BLE001 - a malformed object is cached whole and reported by conversion
            return obj

    def _apply(self, kind: Kind, etype: str, obj: Obj) -> None:
        key = object_key(obj)
        rv = obj["metadata"].get("resourceVersion", "")
        with self._lock:
            cache = self._cache[kind.name]
            known = cache.get(key)
            if etype == "DELETED":
                if known is None:
                    return
                del cache[key]
                self._converted.pop((kind.name, key), None)
                self._invalid.pop((kind.name, key), None)
            else:
                if known is not None and not _newer(rv, known["metadata"].get("resourceVersion", "")):
                    return  # already seen (a replay): never emit a duplicate, never go back
                etype = "MODIFIED" if known is not None else "ADDED"
                cache[key] = self._cached(kind, obj)
        self._publish([ObjectChange(kind.name, etype, key, rv, obj)])

    def _publish(self, changes: list[ObjectChange]) -> None:
        if not changes:
            return
        for change in changes:
            for callback in self.on_object_change:
                try:
                    callback(change)
                except Exception:
                    log.exception("object change callback failed")
        self._notify()

    def _notify(self) -> None:
        self._wake.set()


def _pool(obj: Obj) -> Pool | None:
    """A VipPool or an Eip of protocol ``vip`` (other Eips are OpenELB's BGP/layer2 pools: None)."""
    if obj.get("kind") == "Eip" and (obj.get("spec") or {}).get("protocol") != "vip":
        return None
    return objects.pool_from_k8s(obj)


# ------------------------------------------------------------------ what an agent keeps

# Each transform keeps what vipcore.core.objects (and the agent's observers)
# read, and nothing else: no managedFields, no last-applied annotation, no
# endpoint addresses or node images. A field of the wrong shape is kept as
# it came, so conversion reports it exactly as it would have; list entries
# keep their positions, so messages name the same index.

_META = ("name", "namespace", "resourceVersion")


def _meta(obj: Obj, *, labels: tuple[str, ...] | None = (), annotations: tuple[str, ...] = ()) -> Any:
    """``metadata`` with the identity fields, the given labels (None: all) and annotations."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return meta
    out = {k: meta[k] for k in _META if k in meta}
    for field, wanted in (("labels", labels), ("annotations", annotations)):
        value = meta.get(field)
        if value is None:
            continue
        if wanted is None or not isinstance(value, dict):
            out[field] = value
        else:
            picked = {k: value[k] for k in wanted if k in value}
            if picked:
                out[field] = picked
    return out


def _pick(value: Any, keys: tuple[str, ...]) -> Any:
    """A mapping reduced to ``keys``; anything else as it is."""
    return {k: value[k] for k in keys if k in value} if isinstance(value, dict) else value


def _entries(value: Any, keys: tuple[str, ...]) -> Any:
    """Each mapping of a list reduced to ``keys``; anything else as it is."""
    return [_pick(v, keys) for v in value] if isinstance(value, list) else value


def _head(obj: Obj, **meta: Any) -> dict[str, Any]:
    return {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"), "metadata": _meta(obj, **meta)}


class _Shared:
    """Equal pieces of slimmed objects, one copy each: 10,000 Services often have a few distinct specs.

    Bounded: past ``limit`` distinct pieces, new ones are kept as they are.
    Cached objects are never mutated, so sharing is safe.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._pieces: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, key: Any, value: Any) -> Any:
        with self._lock:
            found = self._pieces.get(key)
            if found is not None:
                return found
            if len(self._pieces) < self.limit:
                self._pieces[key] = value
        return value


_SPECS = _Shared(4096)
#: One per (node, readiness): a slice's endpoints become references to these.
_ENDPOINTS = _Shared(65536)


def _shared_json(shared: _Shared, value: Any) -> Any:
    try:
        key = json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return value
    return shared(key, value)


def keep_node(obj: Obj) -> Obj:
    """A Node: labels, the Ready condition, addresses."""
    out = _head(obj, labels=None)
    status = obj.get("status")
    if isinstance(status, dict):
        kept: dict[str, Any] = {}
        conditions = status.get("conditions")
        if isinstance(conditions, list):
            kept["conditions"] = [_pick(c, ("type", "status")) for c in conditions
                                  if isinstance(c, dict) and c.get("type") == "Ready"]
        elif conditions is not None:
            kept["conditions"] = conditions
        if "addresses" in status:
            kept["addresses"] = _entries(status["addresses"], ("type", "address"))
        out["status"] = kept
    elif status is not None:
        out["status"] = status
    return out


_SERVICE_SPEC = ("type", "loadBalancerClass", "externalTrafficPolicy", "loadBalancerIP", "ipFamilies",
                 "ipFamilyPolicy")
_SERVICE_ANNOTATIONS = (IP_ANNOTATION, POOL_ANNOTATION, objects.OPENELB_OPT_IN, objects.OPENELB_POOL,
                        objects.OPENELB_IP)


def keep_service(obj: Obj) -> Obj:
    """A Service: what selects it and what it asks for; only the type when it is no LoadBalancer."""
    spec = obj.get("spec")
    if isinstance(spec, dict) and spec.get("type") != "LoadBalancer":
        return {**_head(obj), "spec": {"type": spec.get("type")}}
    out = _head(obj, annotations=_SERVICE_ANNOTATIONS)
    if isinstance(spec, dict):
        kept = {k: spec[k] for k in _SERVICE_SPEC if k in spec}
        if "ports" in spec:
            kept["ports"] = _entries(spec["ports"], ("port", "protocol"))
        out["spec"] = _shared_json(_SPECS, kept)
    elif spec is not None:
        out["spec"] = spec
    status = obj.get("status")
    if isinstance(status, dict) and isinstance(status.get("loadBalancer"), dict):
        lb = status["loadBalancer"]
        out["status"] = {"loadBalancer": {"ingress": _entries(lb["ingress"], ("ip",))} if "ingress" in lb else {}}
    elif status is not None and not isinstance(status, dict):
        out["status"] = status
    return out


def keep_endpoint_slice(obj: Obj) -> Obj:
    """An EndpointSlice: its Service, and each endpoint's node and readiness."""
    out = _head(obj, labels=(objects.SERVICE_NAME_LABEL,))
    endpoints = obj.get("endpoints")
    if isinstance(endpoints, list):
        kept = []
        for ep in endpoints:
            if not isinstance(ep, dict):
                kept.append(ep)
                continue
            entry: dict[str, Any] = {}
            node = ep.get("nodeName")
            if node is not None:
                entry["nodeName"] = node
            if "conditions" in ep:
                entry["conditions"] = _pick(ep["conditions"], ("ready",))
            conditions = entry.get("conditions", {})
            if isinstance(node, str) and isinstance(conditions, dict) and isinstance(conditions.get("ready", True), bool):
                # Thousands of slices name the same few thousand nodes: one entry per node and readiness.
                entry = _ENDPOINTS((sys.intern(node), "conditions" in entry, conditions.get("ready")), entry)
            kept.append(entry)
        out["endpoints"] = kept
    elif endpoints is not None:
        out["endpoints"] = endpoints
    return out


def keep_pool(obj: Obj) -> Obj:
    """A VipPool or Eip: all of its spec (pools are few), the default-pool annotation."""
    out = _head(obj, annotations=(objects.OPENELB_DEFAULT_POOL,))
    if "spec" in obj:
        out["spec"] = obj["spec"]
    return out


def keep_vipgroup(obj: Obj) -> Obj:
    """A VipGroup: its spec (the VipGroup view joins it as written; the full view reads the VRID and
    Services, as a renamed group inherits the VRID) and holders (the agent's holder-status writer
    reads them)."""
    out = _head(obj)
    if "spec" in obj:
        out["spec"] = _pick(obj["spec"], ("interface", "nodes", "vrid", "vips", "services", "shard"))
    if "status" in obj:
        out["status"] = _pick(obj["status"], ("holders",))
    return out


def keep_lease(obj: Obj) -> Obj:
    """A heartbeat Lease: its spec."""
    out = _head(obj)
    if "spec" in obj:
        out["spec"] = obj["spec"]
    return out


#: What an agent caches of each kind (``KubernetesSource(keep=AGENT_FIELDS)``). The
#: controller caches whole objects: it writes them back.
AGENT_FIELDS: Mapping[str, Callable[[Obj], Obj]] = {
    "nodes": keep_node,
    "services": keep_service,
    "endpointslices": keep_endpoint_slice,
    "vippools": keep_pool,
    "eips": keep_pool,
    "vipgroups": keep_vipgroup,
    "leases": keep_lease,
}


def _newer(rv: str, known: str) -> bool:
    """Whether ``rv`` is a later version than ``known`` (numeric when both are, else merely different)."""
    if rv.isdigit() and known.isdigit():
        return int(rv) > int(known)
    return rv != known


def _lines(resp: Any) -> Iterator[str]:
    """Newline-delimited JSON lines of a streaming response, as chunks arrive."""
    buffer = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line.decode()
    if buffer.strip():
        yield buffer.decode()


def _shutdown(resp: Any) -> None:
    """Unblock a thread reading a streaming response."""
    try:
        if hasattr(resp, "shutdown"):
            resp.shutdown()
        else:
            resp.close()
    except Exception:
        pass


class Wakeup:
    """Wakes a task on an event loop from any thread: the one thread-to-loop wake-up.

    :meth:`bind` (on the loop) before use; :meth:`set` may be called from any
    thread, also before binding or after the loop closed (then it does nothing).
    A :meth:`set` from another thread while the waiter is already awake (not yet
    cleared), or while an earlier wake-up is still on its way, costs nothing: a
    watch thread delivering a burst of events wakes the loop once, not once per
    event, and a wake-up nobody waits for (left set) wakes nothing again.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        #: A wake-up from another thread is on its way to the loop.
        self._scheduled = False
        #: Wake-ups sent to the loop from other threads (each one is a pass of the loop).
        self.crossed = 0

    def bind(self) -> None:
        """Attach to the running loop (RuntimeError if none runs)."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._scheduled = False

    @property
    def bound(self) -> bool:
        return self._event is not None

    def set(self, *_: object) -> None:
        """Wake the waiter (thread-safe); extra arguments are ignored so this can be a change callback."""
        loop, event = self._loop, self._event
        if loop is None or event is None or loop.is_closed():
            return
        if _on_loop(loop):
            event.set()
            return
        # The caller changed what the waiter reads before calling: a waiter still awake reads it after
        # its clear(), and a wake-up on its way wakes it after this change. Either way none is needed.
        if event.is_set() or self._scheduled:
            return
        self._scheduled = True
        self.crossed += 1
        try:
            loop.call_soon_threadsafe(self._arrive)
        except RuntimeError:  # the loop closed meanwhile
            self._scheduled = False

    def _arrive(self) -> None:
        self._scheduled = False  # before set(): a set() from now on must send its own wake-up
        if self._event is not None:
            self._event.set()

    def set_after(self, delay: float) -> None:
        """Wake the waiter ``delay`` seconds from now (thread-safe; nothing once the loop closed)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(loop.call_later, delay, self.set)

    def clear(self) -> None:
        if self._event is not None:
            self._event.clear()

    def is_set(self) -> bool:
        return self._event is not None and self._event.is_set()

    async def wait(self, timeout: float | None) -> bool:
        """Wait (on the bound loop) until set or ``timeout`` passes; True if set."""
        assert self._event is not None, "Wakeup.bind() first"
        return await wait_event(self._event, timeout)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if set.

    Not ``asyncio.wait_for``: on Python 3.11 a cancellation that arrives as the
    event is set can be lost there, leaving the task running after cancel().
    """
    if event.is_set():
        return True
    if timeout is None:  # no wait_for, no race: the plain wait (no task, no timer per wake-up)
        await event.wait()
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()
