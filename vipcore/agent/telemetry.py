"""The agent's telemetry: its Prometheus collector, the ``/status`` document, and the endpoint wiring."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from vipcore.agent.runtime import Agent
from vipcore.core.model import FailoverPhases, MetricSample, Pool, State
from vipcore.ops.http import Endpoint
from vipcore.ops.metrics import (
    CORE_METRICS,
    MetricsObserver,
    allocation_samples,
    gauge,
    sample_families,
    short_name,
    version,
    warn_once,
)

log = logging.getLogger("vipcore.agent")


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
        yield gauge("vipcore_groups", "VIP groups this node takes part in", len(agent.memberships))
        yield gauge("vipcore_skipped_groups", "VIP groups of this node skipped (e.g. missing interface)",
                     len(agent.skipped))
        yield gauge("vipcore_failed_groups", "VIP groups of this node whose last backend hook failed (retried with "
                    "backoff; the agent is not ready while any is)", len(agent.failed))
        yield gauge("vipcore_source_failing", "1 while the source of desired state fails (the last good state is "
                    "kept)", 1.0 if agent.source_error is not None else 0.0)
        unresolved = len(agent.resolution.unresolved) if agent.resolution is not None else 0
        yield gauge("vipcore_unresolved_services", "Services that got no VIP group", unresolved)
        yield gauge("vipcore_ready", "1 when the agent has started and dispatched its groups",
                     1.0 if agent.ready else 0.0)
        yield gauge("vipcore_start_time_seconds", "Unix time the agent started", agent.started_at)
        info = GaugeMetricFamily("vipcore_info", "The agent's node and backend", labels=["node", "backend", "version"])
        info.add_metric([agent.node, agent.config.backend, version()], 1.0)
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
        warn_once(f"source {type(source).__name__} failed in vipcore_collect_metrics: {type(exc).__name__}: {exc}")
        return []



# -- the document (agent side) -------------------------------------------------------


def agent_status(agent: Agent) -> dict[str, Any]:
    """The ``/status`` document of a running agent (see the module docstring).

    A router the backend has not reported yet appears with state ``init``
    (``fault`` when its join failed). A group whose last hook failed is listed
    in ``failed`` and its routers carry ``"failed": true`` and the error as
    their reason, also when a failed leave keeps it held.
    """
    routers: list[dict[str, Any]] = []
    for name in sorted(set(agent.memberships) | set(agent.failed)):
        membership = agent.memberships.get(name) or agent.desired.get(name)
        if membership is None:
            continue
        group = membership.group
        failure = agent.failed.get(name)
        for family in group.families:
            router = agent.routers.get((name, family))
            if router is not None:
                state, reason = router.state.value, router.reason
            else:
                state = State.FAULT.value if failure is not None else State.INIT.value
                reason = "not reported by the backend yet"
            if failure is not None:
                reason = f"failed: {failure.error}"
            routers.append({
                "group": name,
                "short_name": group.short_name,
                "family": family.k8s_name,
                "interface": group.interface,
                "vrid": router.vrid if router is not None and router.vrid is not None else group.vrid,
                "vips": [str(ip) for ip in group.vips(family)],
                "state": state,
                "since": router.since if router is not None else None,
                "reason": reason,
                "last_failover_seconds": router.last_failover_seconds if router is not None else None,
                "last_failover": phases_json(router.last_failover) if router is not None else None,
                "priority": membership.priority,
                "preferred_holder": membership.preferred_holder,
                "failed": failure is not None,
            })
    unresolved = agent.resolution.unresolved if agent.resolution is not None else ()
    sections, broken = agent.hooks.status_sections()
    return {
        "node": agent.node,
        "backend": agent.config.backend,
        "ready": agent.ready,
        "not_ready_reason": agent.not_ready_reason(),
        "started_at": agent.started_at,
        "now": time.time(),
        "routers": routers,
        "skipped": [{"group": g, "reason": r} for g, r in sorted(agent.skipped.items())],
        "unresolved": [{"service": u.service, "reason": u.reason} for u in unresolved],
        "failed": [{"group": f.group, "hook": f.hook, "error": f.error, "since": f.since, "attempts": f.attempts,
                    "retry_at": f.retry_at} for _, f in sorted(agent.failed.items())],
        "source_error": agent.source_error,
        "sections": {name: [table.to_json() for table in tables] for name, tables in sections.items()},
        "sections_skipped": [{"plugin": error.plugin, "error": str(error)} for error in broken],
    }


def phases_json(phases: FailoverPhases | None) -> dict[str, float | None] | None:
    """A router's ``last_failover``: each phase's seconds and their total, or None."""
    if phases is None:
        return None
    return {**{f"{name}_seconds": value for name, value in phases.items()}, "total_seconds": phases.total}


# -- wiring for the agent -----------------------------------------------------------

OBSERVER_PLUGIN = "vipcore.ops.metrics"


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
    endpoint = Endpoint(address if address is not None else agent.config.metrics, agent_registry(agent),
                        ready=lambda: agent.ready, status=lambda: agent_status(agent),
                        not_ready_reason=agent.not_ready_reason)
    await endpoint.start()
    return endpoint
