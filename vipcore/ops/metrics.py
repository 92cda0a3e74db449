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
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vipcore.backend import hookimpl
from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, IPAddress, MetricSample, Pool, Resolution, State, StateChange, VridPolicy

log = logging.getLogger(__name__)

#: Failovers range from a graceful hand-over at 0.01 s adverts (~10 ms) to a
#: node death at 1 s adverts (~3.5 s) and control-plane failover (seconds).
FAILOVER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Finer at the bottom: adding an address or sending the first announcement takes about a millisecond.
PHASE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, *FAILOVER_BUCKETS)

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
        self.phases = Histogram(
            "vipcore_failover_phase_seconds",
            "Failovers into MASTER after the master failed, by phase: detect (master last heard -> failure "
            "detected), elect (-> decision, rank delay included), address (-> VIPs in the kernel), announce "
            "(-> first gratuitous ARP / NA sent)",
            ["phase"], buckets=PHASE_BUCKETS, registry=registry,
        )

    @hookimpl
    def vipcore_state_changed(self, change: StateChange) -> None:
        family = change.family.k8s_name
        # The typed cause when the backend gives one; the substring classes
        # only for third-party backends that send free text alone.
        label = change.cause.value if change.cause is not None else reason_class(change.reason)
        self.transitions.labels(short_name(change.group), family, change.new.value, label).inc()
        if change.new is State.MASTER and change.failover_seconds is not None:
            self.failover.labels(family).observe(change.failover_seconds)
        if change.new is State.MASTER and change.failover_phases is not None:
            for phase, seconds in change.failover_phases.items():
                if seconds is not None:
                    self.phases.labels(phase).observe(seconds)


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
            warn_once(f"skipping invalid metric sample {sample.name!r} ({sample.kind}, labels {sample.labels})")
            continue
        grouped.setdefault(base, []).append(sample)
    families: list[Metric] = []
    for base, group in sorted(grouped.items()):
        kind = group[0].kind
        keys = sorted({k for s in group for k, _ in s.labels})
        values: dict[tuple[str, ...], float] = {}
        for sample in group:
            if sample.kind != kind:
                warn_once(f"metric {base!r} offered as both {kind} and {sample.kind}; keeping {kind}")
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


def warn_once(message: str) -> None:
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


# -- names the agent's collector owns -----------------------------------------------

CORE_METRICS = frozenset({
    "vipcore_router_state", "vipcore_router_state_since_seconds", "vipcore_router_last_failover_seconds",
    "vipcore_transitions", "vipcore_failover_seconds", "vipcore_failover_phase_seconds", "vipcore_groups", "vipcore_skipped_groups",
    "vipcore_unresolved_services", "vipcore_ready", "vipcore_start_time_seconds", "vipcore_info",
    "vipcore_pool_addresses", "vipcore_pool_addresses_allocated", "vipcore_vrids_used", "vipcore_vrids_usable",
})


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


def gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


@functools.cache
def version() -> str:
    try:
        from importlib.metadata import version

        return version("vipcore")
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"

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
    "CORE_METRICS", "FAILOVER_BUCKETS", "MetricsObserver", "PHASE_BUCKETS", "SampleCollector", "allocation_samples",
    "gauge", "reason_class", "sample_families", "samples_of", "short_name", "version", "warn_once",
]
