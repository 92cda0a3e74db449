"""deploy/monitoring: the Grafana dashboard and the Prometheus alert rules use only metrics vipcore exports.

The exported names are scraped from a real controller and a real agent (Kubernetes
source, fake backend) running in-process against the test API server, plus the
names documented in docs/operating.md's metrics reference for metrics that only
appear with one backend or in some states (native_vrrp drops, keepalived restarts,
the split-brain detector's responders). Every expression is parsed with
promql-parser (the Rust PromQL parser Prometheus-compatible tools use).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.agents import BACKEND, FakePlugin, aget, backend_of, wait_for
from tests.helpers.cluster import lb_ips, node, service, vipgroups, vippool
from tests.helpers.cluster import wait_for as wait_until
from vipcore.agent.runtime import Agent
from vipcore.backend.host import load_hooks
from vipcore.core.model import Family
from vipcore.core.settings import Config
from vipcore.sources.kubernetes import KubernetesAgentSource
from vipcore.testing.apiserver import ApiServer

promql = pytest.importorskip("promql_parser", reason="promql-parser is not installed (test extra)")

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "vipcore.rules.yml"
DASHBOARD = MONITORING / "vipcore-dashboard.json"
OPERATING = ROOT / "docs" / "operating.md"
#: Grafana's variables, replaced by plausible values before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h", "$instance": ".*"}


def sample_names(exposition: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(exposition) for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (a SyntaxError-like ValueError if it does not parse)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql.VectorSelector) and node.name:
            names.add(node.name)
    promql.walk(promql.parse(expr), visit)
    return names


def documented_names() -> set[str]:
    """First-column metric names of the tables under "## Metrics reference"; histograms expanded."""
    text = OPERATING.read_text().split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"\|\s*`(vipcore_[a-z0-9_]+)`\s*\|\s*(\w+)", line)
        if match:
            name, kind = match.groups()
            names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for annotation in board["annotations"]["list"]:
        yield annotation["name"], annotation["expr"]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            inner = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["definition"])
            assert inner, variable
            yield f"variable {variable['name']}", inner.group(1)


def grafana_free(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Sample names from a live controller's and a live agent's /metrics (module-scoped: ~3 s)."""
    from tests.helpers.cluster import Running, settings
    from vipcore.controller.runtime import Controller

    with ApiServer(crds=[ROOT / "deploy" / "crds"], bookmark_interval=0.5) as server:
        for name in ("node-a", "node-b", "node-c"):
            server.create(node(name))
        server.create(vippool("lan", "203.0.113.10-203.0.113.19"))
        server.create(service("web"))
        client = server.client()
        running = Running(Controller(settings("c1"), client))
        try:
            wait_until(lambda: lb_ips(server, "web") and vipgroups(server), what="an address and a VipGroup")
            controller = running.controller
            wait_until(lambda: controller.last_plan is not None and controller.elector.leading,
                       what="a leading controller with a plan")
            names = sample_names(generate_latest(controller.registry).decode())
            names |= asyncio.run(agent_names(server, tmp_path_factory.mktemp("agent")))
        finally:
            running.stop()
            running.controller.source.stop(2.0)
            client.close()
    yield names


async def agent_names(server: ApiServer, folder: Path) -> set[str]:
    from vipcore.agent.telemetry import serve_agent

    client = server.client()
    config = Config(backend=BACKEND, node_name="node-a", source="kubernetes", metrics="127.0.0.1:0",
                    state_dir=folder / "state")
    hooks = load_hooks(plugins=[("ops-fake", FakePlugin)], load_entrypoints=False)
    agent = Agent(config, hooks=hooks, source=KubernetesAgentSource(config, client=client, record_holders=False),
                  interface_check=lambda name: True)
    endpoint = await serve_agent(agent, "127.0.0.1:0")
    try:
        await agent.start()
        await wait_for(lambda: bool(agent.memberships))
        group = next(iter(agent.memberships))
        backend_of(agent).fail_over(group, Family.IPV4, 0.2)
        backend_of(agent).drop("ttl")
        code, _, body = await aget(endpoint.url + "/metrics")
        assert code == 200, body
        return sample_names(body)
    finally:
        await agent.stop(graceful=True)
        await endpoint.close()
        await agent.source.close()  # type: ignore[attr-defined]
        client.close()


def test_scraped_names_include_the_core_controller_and_kubernetes_metrics(exported: set[str]) -> None:
    for name in ("vipcore_router_state", "vipcore_transitions_total", "vipcore_failover_seconds_bucket",
                 "vipcore_pool_addresses_allocated", "vipcore_vrids_usable", "vipcore_controller_leader",
                 "vipcore_kubernetes_connected", "vipcore_ready", "vipcore_info"):
        assert name in exported


def test_every_metric_in_the_rules_and_the_dashboard_is_exported_or_documented(exported: set[str]) -> None:
    documented = documented_names()
    known = exported | documented
    # What only some states or backends show must at least be documented.
    assert {"vipcore_vip_responders", "vipcore_vrrp_packets_dropped_total",
            "vipcore_keepalived_restarts_total"} <= documented
    used: dict[str, set[str]] = {}
    for rule in rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    for where, expr in dashboard_exprs():
        for name in metric_names(grafana_free(expr)):
            used.setdefault(name, set()).add(f"panel {where!r}")
    unknown = {name: sorted(places) for name, places in used.items() if name not in known}
    assert unknown == {}
    assert len(used) >= 30  # the checks above ran over real content


def test_a_misspelled_metric_would_be_caught(exported: set[str]) -> None:
    assert "vipcore_router_states" not in exported | documented_names()
    assert metric_names('sum by (group) (vipcore_router_states{state="master"})') == {"vipcore_router_states"}


def test_every_rule_parses_and_is_complete() -> None:
    seen: set[str] = set()
    for rule in rules():
        assert rule["alert"].startswith("Vipcore") and rule["alert"] not in seen
        seen.add(rule["alert"])
        promql.parse(rule["expr"])
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
    # The alerts issue 16 asks for (configuration stale: VipcoreConfigurationStale, VipcoreSourceFailing).
    for wanted in ("VipcoreNoHolder", "VipcoreMultipleResponders", "VipcoreMultipleHolders", "VipcoreFlapping",
                   "VipcorePoolNearlyExhausted", "VipcoreVridRangeNearlyExhausted", "VipcoreControllerNotLeading",
                   "VipcoreConfigurationStale", "VipcoreSourceFailing", "VipcoreConfigurationInvalid",
                   "VipcoreAgentNotReady", "VipcoreFailedGroups"):
        assert wanted in seen


def test_a_broken_expression_is_rejected_by_the_parser() -> None:
    with pytest.raises(Exception):
        promql.parse("sum by (group (vipcore_router_state)")


def test_dashboard_panels_parse_and_cover_what_operators_look_at() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for where, expr in dashboard_exprs():
        promql.parse(grafana_free(expr))
    used = set().union(*(metric_names(grafana_free(e)) for _, e in dashboard_exprs()))
    for name in ("vipcore_router_state", "vipcore_transitions_total", "vipcore_failover_seconds_bucket",
                 "vipcore_failover_phase_seconds_bucket", "vipcore_vip_responders", "vipcore_pool_addresses_allocated", "vipcore_vrids_used",
                 "vipcore_controller_leader", "vipcore_kubernetes_connected", "vipcore_vrrp_packets_dropped_total",
                 "vipcore_keepalived_restarts_total", "vipcore_netlink_static_announce_errors_total"):
        assert name in used, name
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24


def test_operating_docs_point_at_the_monitoring_files() -> None:
    text = OPERATING.read_text()
    assert "deploy/monitoring/vipcore-dashboard.json" in text and "deploy/monitoring/vipcore.rules.yml" in text
