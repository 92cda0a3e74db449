"""Prometheus metrics for the agent (and the controller), and the HTTP endpoint.

Three parts:

* :class:`MetricsObserver` — a built-in plugin on the notification hook
  ``vipcore_state_changed``: counts transitions (by a short, bounded reason
  class) and observes failover durations in a histogram. Every backend gets it
  for free because it only listens to what backends already report.
* :class:`AgentCollector` — a custom collector evaluated at scrape time: the
  state of every (group, family) router on this node, group and unresolved
  Service counts, pool and VRID usage, and whatever plugins offer through
  ``vipcore_collect_metrics`` (:func:`sample_families`) — and the agent's
  source too, if it has a ``vipcore_collect_metrics()`` method (the
  Kubernetes source's watch reconnects and re-lists).
  :class:`SampleCollector` does the same for any callable (the controller).
* :class:`Endpoint` — a small asyncio HTTP server on the agent's own loop:
  ``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` (JSON). Running on
  the loop means scrape-time collection reads the agent's and the backend's
  state from the thread that owns it; each request is tiny and non-blocking.

Every metric lives in a private :class:`prometheus_client.CollectorRegistry`;
the process-global registry is never touched, so several agents (tests, the
lab) can share one process.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vipcore.backend import hookimpl
from vipcore.errors import ConfigError
from vipcore.model import Family, IPAddress, MetricSample, Pool, Resolution, State, StateChange, VridPolicy

if TYPE_CHECKING:
    from vipcore.agent import Agent

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1:9641"
#: Failovers range from a graceful hand-over at 0.01 s adverts (~10 ms) to a
#: node death at 1 s adverts (~3.5 s) and control-plane failover (seconds).
FAILOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

# -- reason classes -------------------------------------------------------------

#: (reason class, substrings of a lower-cased reason), tried in order. Backends
#: report free text ("master down: no advert for 0.350s"); a label must stay
#: bounded, so the counter carries the class and the log line the text.
REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("peer_resigned", ("resigned", "priority 0")),
    ("master_down", ("master down", "no advert")),
    ("preempted", ("preempted",)),
    ("handed_over", ("handed over", "no new master")),
    ("sync", ("sync with",)),
    ("released", ("released", "release")),
    ("takeover", ("takeover", "take over")),
    ("address_owner", ("address owner", "priority 255")),
    ("config", ("no vips", "config", "update", "changed")),
    ("stopped", ("graceful stop", "stopping", "stopped", "shutdown", "leave", "left")),
    ("placement", ("chosen holder", "placement", "holder")),
    ("fault", ("fault", "error", "failed", "does not exist", "not found", "no such", "interface", "exited",
               "killed", "down")),
    ("started", ("start", "join")),
)


def reason_class(reason: str) -> str:
    """A short, bounded class for a free-text transition reason (``other`` if none fits)."""
    text = reason.lower()
    for name, needles in REASON_CLASSES:
        if any(needle in text for needle in needles):
            return name
    return "other"


def short_name(group: str) -> str:
    """The 12-hex-digit form of a group name, as in tables: ``3f2a...-eth0``."""
    digest, sep, interface = group.partition("-")
    return f"{digest[:12]}-{interface}" if sep else group[:12]


# -- the observer plugin -----------------------------------------------------------


class MetricsObserver:
    """Counts transitions and failover durations; a notification-hook plugin."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter(
            "vipcore_transitions", "Router state transitions on this node, by new state and reason class",
            ["group", "family", "to", "reason"], registry=registry,
        )
        self.failover = Histogram(
            "vipcore_failover_seconds",
            "Time from the trigger (previous holder's adverts stopping, or a control-plane decision) "
            "to VIPs added and first announcement sent",
            ["family"], buckets=FAILOVER_BUCKETS, registry=registry,
        )

    @hookimpl
    def vipcore_state_changed(self, change: StateChange) -> None:
        family = change.family.k8s_name
        self.transitions.labels(short_name(change.group), family, change.new.value,
                                reason_class(change.reason)).inc()
        if change.new is State.MASTER and change.failover_seconds is not None:
            self.failover.labels(family).observe(change.failover_seconds)


# -- plugin samples -> Prometheus families -----------------------------------------


def sample_families(samples: Iterable[MetricSample], *, reserved: frozenset[str] = frozenset()) -> list[Metric]:
    """Group plugin samples by name into Prometheus metric families.

    Invalid names, names in ``reserved`` (the core's own) and a kind that
    differs from the first sample of the same name are skipped with a warning,
    so one faulty plugin never breaks a scrape. Duplicate label sets are
    summed for counters and the last one kept for gauges. Counter names get
    ``_total`` on exposition whether or not the plugin wrote it.
    """
    grouped: dict[str, list[MetricSample]] = {}
    for sample in samples:
        base = sample.name[:-len("_total")] if sample.kind == "counter" and sample.name.endswith("_total") else sample.name
        if not _METRIC_NAME.match(sample.name) or base in reserved or sample.kind not in ("counter", "gauge") \
                or not all(_LABEL_NAME.match(k) and not k.startswith("__") for k, _ in sample.labels):
            _warn_once(f"skipping invalid metric sample {sample.name!r} ({sample.kind}, labels {sample.labels})")
            continue
        grouped.setdefault(base, []).append(sample)
    families: list[Metric] = []
    for base, group in sorted(grouped.items()):
        kind = group[0].kind
        keys = sorted({k for s in group for k, _ in s.labels})
        values: dict[tuple[str, ...], float] = {}
        for sample in group:
            if sample.kind != kind:
                _warn_once(f"metric {base!r} offered as both {kind} and {sample.kind}; keeping {kind}")
                continue
            labels = dict(sample.labels)
            key = tuple(str(labels.get(k, "")) for k in keys)
            values[key] = values.get(key, 0.0) + sample.value if kind == "counter" else sample.value
        help_text = next((s.help for s in group if s.help), base)
        family: Metric = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(base, help_text, labels=keys)
        for key, value in values.items():
            family.add_metric(list(key), value)  # type: ignore[attr-defined]
        families.append(family)
    return families


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message, extra={"event": "metrics_error"})


# -- pool and VRID usage (agent and controller) ------------------------------------


def allocation_samples(
    resolution: Resolution,
    pools: Iterable[Pool],
    vrid_policy: Callable[[str], VridPolicy] | None = None,
) -> list[MetricSample]:
    """Pool usage per (pool, family) and VRID usage per interface, as gauges.

    The addresses in use are the resolution's allocations plus the VIPs of its
    groups; each is counted in the first pool that contains it. VRIDs in use
    are the distinct VRIDs of the groups on an interface (the IPv4 and IPv6
    routers of a group share one). ``vrid_policy(interface)`` gives the usable
    range; without it only the used count is reported.
    """
    pools = tuple(pools)
    used: set[IPAddress] = {ip for addresses in resolution.allocations.values() for ip in addresses}
    used.update(ip for g in resolution.groups for f in Family for ip in g.vips(f))
    samples: list[MetricSample] = []
    counted: set[IPAddress] = set()
    for pool in pools:
        for family in pool.families:
            inside = {ip for ip in used if ip.version == family and ip not in counted and pool.contains(ip)}
            counted |= inside
            labels: tuple[tuple[str, str], ...] = (("pool", pool.name), ("family", family.k8s_name))
            samples.append(MetricSample("vipcore_pool_addresses", float(pool.size(family)), labels, kind="gauge",
                                        help="Addresses in the pool (network and broadcast excluded)"))
            samples.append(MetricSample("vipcore_pool_addresses_allocated", float(len(inside)), labels,
                                        kind="gauge", help="Addresses of the pool allocated to Services"))
    by_interface: dict[str, set[int]] = {}
    for group in resolution.groups:
        vrids = by_interface.setdefault(group.interface, set())
        if group.vrid is not None:
            vrids.add(group.vrid)
    for interface, vrids in sorted(by_interface.items()):
        labels = (("interface", interface),)
        samples.append(MetricSample("vipcore_vrids_used", float(len(vrids)), labels, kind="gauge",
                                    help="Distinct VRIDs used by VIP groups on the interface (L2 network)"))
        if vrid_policy is not None:
            samples.append(MetricSample("vipcore_vrids_usable", float(len(vrid_policy(interface).usable)), labels,
                                        kind="gauge", help="VRIDs vipcore may use on the interface (range minus exclude)"))
    return samples


# -- the scrape-time collector ------------------------------------------------------

#: Families the core itself exposes; plugins cannot shadow them.
CORE_METRICS = frozenset({
    "vipcore_router_state", "vipcore_router_state_since_seconds", "vipcore_router_last_failover_seconds",
    "vipcore_transitions", "vipcore_failover_seconds", "vipcore_groups", "vipcore_skipped_groups",
    "vipcore_unresolved_services", "vipcore_ready", "vipcore_start_time_seconds", "vipcore_info",
    "vipcore_pool_addresses", "vipcore_pool_addresses_allocated", "vipcore_vrids_used", "vipcore_vrids_usable",
})


class AgentCollector:
    """Reads the agent's state and the plugins' samples at scrape time."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def describe(self) -> list[Metric]:
        # Empty: do not let the registry call collect() at registration time.
        return []

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        routers = list(agent.routers.values())
        state = GaugeMetricFamily("vipcore_router_state", "State of each (group, family) router on this node "
                                  "(1 for the current state)", labels=["group", "family", "state"])
        since = GaugeMetricFamily("vipcore_router_state_since_seconds",
                                  "Unix time of the router's last transition", labels=["group", "family"])
        failover = GaugeMetricFamily("vipcore_router_last_failover_seconds",
                                     "Duration of the router's last failover to MASTER", labels=["group", "family"])
        for router in routers:
            group, family = short_name(router.group), router.family.k8s_name
            for value in State:
                state.add_metric([group, family, value.value], 1.0 if router.state is value else 0.0)
            since.add_metric([group, family], router.since)
            if router.last_failover_seconds is not None:
                failover.add_metric([group, family], router.last_failover_seconds)
        yield state
        yield since
        yield failover
        yield _gauge("vipcore_groups", "VIP groups this node takes part in", len(agent.memberships))
        yield _gauge("vipcore_skipped_groups", "VIP groups of this node skipped (e.g. missing interface)",
                     len(agent.skipped))
        unresolved = len(agent.resolution.unresolved) if agent.resolution is not None else 0
        yield _gauge("vipcore_unresolved_services", "Services that got no VIP group", unresolved)
        yield _gauge("vipcore_ready", "1 when the agent has started and dispatched its groups",
                     1.0 if agent.ready else 0.0)
        yield _gauge("vipcore_start_time_seconds", "Unix time the agent started", agent.started_at)
        info = GaugeMetricFamily("vipcore_info", "The agent's node and backend", labels=["node", "backend", "version"])
        info.add_metric([agent.node, agent.config.backend, _version()], 1.0)
        yield info
        if agent.resolution is not None:
            pools: Iterable[Pool] = getattr(agent, "pools", None) or ()
            yield from sample_families(allocation_samples(agent.resolution, pools, agent.config.vrid_policy))
        offered = agent.hooks.collect_metrics() + _source_samples(agent)
        yield from sample_families(offered, reserved=CORE_METRICS)


def _source_samples(agent: Agent) -> list[MetricSample]:
    """Samples of a source that offers ``vipcore_collect_metrics()`` without being a registered plugin.

    The Kubernetes source counts watch reconnects and re-lists; it need not
    know about plugin managers to have them scraped.
    """
    source = agent.source
    offer = getattr(source, "vipcore_collect_metrics", None)
    if not callable(offer) or agent.hooks.pm.is_registered(source):
        return []
    try:
        return list(offer() or [])
    except Exception as exc:  # a source bug must not break the scrape
        _warn_once(f"source {type(source).__name__} failed in vipcore_collect_metrics: {type(exc).__name__}: {exc}")
        return []


class SampleCollector:
    """A collector over any callable that returns MetricSamples (the controller uses it).

    ``registry.register(SampleCollector(lambda: hooks.collect_metrics() + allocation_samples(...)))``
    """

    def __init__(self, samples: Callable[[], Iterable[MetricSample]], *,
                 reserved: frozenset[str] = frozenset()) -> None:
        self.samples = samples
        self.reserved = reserved

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from sample_families(self.samples(), reserved=self.reserved)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


@functools.cache
def _version() -> str:
    try:
        from importlib.metadata import version

        return version("vipcore")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


# -- the HTTP endpoint --------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` too) as (host, port); a ConfigError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"must look like 'host:port', got {address!r}", field="metrics.address")
    return host.strip("[]") or "127.0.0.1", int(port)


class Endpoint:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` on one asyncio server.

    ``ready`` and ``status`` are called on the event loop for every request;
    they must be quick and must not block.
    """

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], bool] = lambda: True,
        status: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self.status = status
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None and self._server.sockets, "endpoint not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host, _ = parse_address(self.address)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        host, port = parse_address(self.address)
        try:
            self._server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.address}: {exc.strerror or exc} "
                              "(set metrics.address to a free host:port, or '' to disable)",
                              field="metrics.address") from None
        log.info("metrics endpoint listening on %s", self.url, extra={"event": "metrics_listening", "url": self.url})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "Endpoint":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            # Headers are read and ignored; a blank line ends them.
            while True:
                line = await asyncio.wait_for(reader.readline(), 5.0)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                status, ctype, body = self._route(method, target.split("?", 1)[0])
            head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a scraper that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            except Exception as exc:  # a collector bug must not kill the server
                log.error("metrics collection failed: %s: %s", type(exc).__name__, exc,
                          extra={"event": "metrics_error"})
                return 500, "text/plain", f"collection failed: {exc}\n".encode()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return (200, "text/plain", b"ready\n") if self.ready() else (503, "text/plain", b"not ready\n")
        if path == "/status" and self.status is not None:
            return 200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz, /readyz, /status\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


# -- wiring for the agent -----------------------------------------------------------

OBSERVER_PLUGIN = "vipcore.metrics"


def agent_registry(agent: Agent) -> CollectorRegistry:
    """A fresh registry with the observer registered on ``agent.hooks`` and the collector.

    Idempotent per agent: a second call replaces the earlier observer.
    """
    registry = CollectorRegistry(auto_describe=False)
    pm = agent.hooks.pm
    if pm.get_plugin(OBSERVER_PLUGIN) is not None:
        pm.unregister(name=OBSERVER_PLUGIN)
    pm.register(MetricsObserver(registry), name=OBSERVER_PLUGIN)
    registry.register(AgentCollector(agent))
    return registry


async def serve_agent(agent: Agent, address: str | None = None) -> Endpoint:
    """Register the metrics observer on ``agent`` and start its endpoint.

    Call it before ``agent.start()`` so the first transitions are counted and
    ``/readyz`` answers 503 while the agent starts.
    """
    from vipcore.status import agent_status

    endpoint = Endpoint(address if address is not None else agent.config.metrics, agent_registry(agent),
                        ready=lambda: agent.ready, status=lambda: agent_status(agent))
    await endpoint.start()
    return endpoint


def samples_of(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Parse one metric's samples out of an exposition (for tests and ``vipcore status``)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


__all__ = [
    "AgentCollector", "CORE_METRICS", "SampleCollector", "DEFAULT_ADDRESS", "Endpoint", "FAILOVER_BUCKETS", "MetricsObserver",
    "allocation_samples", "agent_registry", "parse_address", "reason_class", "sample_families", "samples_of",
    "serve_agent", "short_name",
]
