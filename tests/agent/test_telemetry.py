"""The agent's endpoint, driven end to end with a fake backend: /metrics, /healthz, /readyz, /status."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from tests.helpers.agents import (
    BACKEND, aget, astatus, backend_of, free_port, make_agent, running, wait_for,
)
from vipcore.cli.agent import run_agent
from vipcore.backend import hookimpl
from vipcore.ops.metrics import samples_of, short_name
from vipcore.ops.status import status_table
from vipcore.core.model import FailoverPhases, Family, MetricSample, State, StatusTable


def labels(**kw: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(kw.items()))


def test_scrape_sees_transition_histogram_and_drop_counters(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            backend = backend_of(agent)
            eth0 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth0")
            group = short_name(eth0)

            code, ctype, before = await aget(url + "/metrics")
            assert code == 200 and ctype.startswith("text/plain")
            assert samples_of(before, "vipcore_router_state")[
                labels(group=group, family="IPv4", state="backup")] == 1.0
            assert samples_of(before, "vipcore_failover_seconds_count") == {}
            started = samples_of(before, "vipcore_transitions_total")
            assert started[labels(group=group, family="IPv4", to="backup", reason="started")] == 1.0

            backend.fail_over(eth0, Family.IPV4, 0.042)
            backend.drop("bad_ttl", 2)
            backend.drop("vrid_mismatch")
            _, _, after = await aget(url + "/metrics")

        state = samples_of(after, "vipcore_router_state")
        assert state[labels(group=group, family="IPv4", state="master")] == 1.0
        assert state[labels(group=group, family="IPv4", state="backup")] == 0.0
        assert state[labels(group=group, family="IPv6", state="backup")] == 1.0  # the other router did not move
        transitions = samples_of(after, "vipcore_transitions_total")
        assert transitions[labels(group=group, family="IPv4", to="master", reason="master_down")] == 1.0
        assert all(len(dict(k)["reason"]) < 20 for k in transitions)  # a class, not the free text
        assert samples_of(after, "vipcore_failover_seconds_count") == {labels(family="IPv4"): 1.0}
        buckets = samples_of(after, "vipcore_failover_seconds_bucket")
        assert buckets[labels(family="IPv4", le="0.025")] == 0.0
        assert buckets[labels(family="IPv4", le="0.05")] == 1.0
        assert samples_of(after, "vipcore_failover_seconds_sum")[labels(family="IPv4")] == 0.042
        assert samples_of(after, "vipcore_router_last_failover_seconds")[labels(group=group, family="IPv4")] == 0.042
        dropped = samples_of(after, f"vipcore_{BACKEND}_packets_dropped_total")
        assert dropped == {labels(reason="bad_ttl"): 2.0, labels(reason="vrid_mismatch"): 1.0}
        assert samples_of(after, f"vipcore_{BACKEND}_packets_sent_total") == {(): 0.0}
        assert samples_of(after, "vipcore_groups") == {(): 2.0}  # node-a is in the eth0 and eth1 groups
        assert samples_of(after, "vipcore_unresolved_services") == {(): 0.0}

    asyncio.run(scenario())


def test_pool_and_vrid_usage_from_the_agents_resolution(tmp_path: Path) -> None:
    async def scenario() -> str:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            _, _, text = await aget(url + "/metrics")
        return text

    text = asyncio.run(scenario())
    size = samples_of(text, "vipcore_pool_addresses")
    assert size[labels(pool="lan", family="IPv4")] == 50.0
    assert size[labels(pool="lan", family="IPv6")] == 256.0
    assert size[labels(pool="dmz", family="IPv4")] == 30.0  # a /27 without network and broadcast
    used = samples_of(text, "vipcore_pool_addresses_allocated")
    assert used[labels(pool="lan", family="IPv4")] == 2.0  # web and api
    assert used[labels(pool="lan", family="IPv6")] == 1.0  # web is dual-stack
    assert used[labels(pool="dmz", family="IPv4")] == 1.0  # shop
    assert samples_of(text, "vipcore_vrids_used") == {labels(interface="eth0"): 1.0, labels(interface="eth1"): 1.0}
    assert samples_of(text, "vipcore_vrids_usable")[labels(interface="eth0")] == 255.0


def test_health_readiness_status_and_unknown_paths(tmp_path: Path) -> None:
    async def scenario() -> None:
        from vipcore.agent.telemetry import serve_agent

        agent = make_agent(tmp_path)
        endpoint = await serve_agent(agent, "127.0.0.1:0")
        try:
            assert (await aget(endpoint.url + "/healthz"))[0] == 200
            assert (await aget(endpoint.url + "/readyz"))[0] == 503  # not started yet
            await agent.start()
            assert (await aget(endpoint.url + "/readyz"))[0] == 200
            code, _, body = await aget(endpoint.url + "/nope")
            assert code == 404 and "/metrics" in body
            document = await astatus(endpoint.url)
            assert document["node"] == "node-a" and document["backend"] == BACKEND and document["ready"] is True
            await agent.stop(graceful=True)
            assert (await aget(endpoint.url + "/readyz"))[0] == 503
        finally:
            await endpoint.close()

    asyncio.run(scenario())


def test_status_document_lists_every_router_with_its_details(tmp_path: Path) -> None:
    async def scenario() -> dict[str, object]:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            eth1 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth1")
            backend_of(agent).fail_over(eth1, Family.IPV4, 0.3)
            return await astatus(url)

    document = asyncio.run(scenario())
    routers = document["routers"]
    assert isinstance(routers, list)
    # eth0 group: IPv4 + IPv6 routers; eth1 group: IPv4 only.
    assert sorted((r["interface"], r["family"]) for r in routers) == [
        ("eth0", "IPv4"), ("eth0", "IPv6"), ("eth1", "IPv4")]
    eth1 = next(r for r in routers if r["interface"] == "eth1")
    assert eth1["state"] == "master" and eth1["last_failover_seconds"] == 0.3
    assert eth1["reason"].startswith("master down")
    assert len(eth1["vips"]) == 1 and ipaddress.ip_address(eth1["vips"][0]) in ipaddress.ip_network("203.0.113.64/27")
    assert 1 <= eth1["vrid"] <= 255
    assert eth1["short_name"] == short_name(eth1["group"]) and len(eth1["group"]) > 64
    assert eth1["preferred_holder"] in ("node-a", "node-b")
    assert document["skipped"] == [] and document["unresolved"] == []
    json.dumps(document)  # plain JSON all the way down


def test_agent_run_serves_the_configured_address_and_closes_it(tmp_path: Path) -> None:
    port = free_port()
    agent = make_agent(tmp_path, metrics=f"127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}"

    async def scenario() -> None:
        task = asyncio.create_task(run_agent(agent))
        await wait_for(lambda: agent.ready or task.done())
        assert not task.done(), task
        code, _, text = await aget(url + "/metrics")
        assert code == 200
        # The observer was registered before start(): the first transitions are counted.
        assert sum(samples_of(text, "vipcore_transitions_total").values()) == 3.0
        agent._stopping.set()  # what SIGTERM does
        await asyncio.wait_for(task, 10)
        try:
            await aget(url + "/healthz")
        except OSError:
            return
        raise AssertionError("endpoint still answering after the agent stopped")

    asyncio.run(scenario())


def test_the_global_prometheus_registry_is_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(make_agent(tmp_path)):
            pass

    asyncio.run(scenario())
    names = {m.name for m in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("vipcore") for n in names)


def test_a_busy_address_is_a_config_error(tmp_path: Path) -> None:
    import socket

    import pytest

    from vipcore.core.errors import ConfigError
    from vipcore.agent.telemetry import serve_agent

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(ConfigError, match="metrics.address.*cannot listen"):
            asyncio.run(serve_agent(make_agent(tmp_path), address))


def test_a_source_offering_samples_is_scraped_and_a_broken_one_is_not_fatal(tmp_path: Path) -> None:
    from vipcore.sources.manifests import ManifestSource

    class CountingSource(ManifestSource):  # type: ignore[misc]
        relists = 3

        def vipcore_collect_metrics(self) -> list[MetricSample]:
            if self.relists < 0:
                raise RuntimeError("boom")
            return [MetricSample("vipcore_kubernetes_watch_relists_total", float(self.relists),
                                 (("resource", "services"),), help="re-lists after 410 Gone")]

    async def scenario() -> tuple[str, int, str]:
        agent = make_agent(tmp_path)
        source = CountingSource(agent.config.manifests)
        agent.source = source
        async with running(agent) as url:
            _, _, good = await aget(url + "/metrics")
            source.relists = -1
            code, _, broken = await aget(url + "/metrics")
        return good, code, broken

    good, code, broken = asyncio.run(scenario())
    assert samples_of(good, "vipcore_kubernetes_watch_relists_total") == {labels(resource="services"): 3.0}
    assert code == 200 and "vipcore_router_state" in broken
    assert "vipcore_kubernetes_watch_relists_total" not in broken


def test_a_generic_endpoint_for_the_controller(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from vipcore.ops.http import Endpoint
    from vipcore.ops.metrics import SampleCollector

    registry = CollectorRegistry(auto_describe=False)
    allocations = {"n": 0.0}
    registry.register(SampleCollector(lambda: [
        MetricSample("vipcore_controller_allocations_total", allocations["n"], help="addresses allocated")]))

    async def scenario() -> tuple[str, str, int]:
        async with Endpoint("127.0.0.1:0", registry) as endpoint:
            _, _, first = await aget(endpoint.url + "/metrics")
            allocations["n"] = 5
            _, _, second = await aget(endpoint.url + "/metrics")
            code, _, _ = await aget(endpoint.url + "/status")  # no status callable: not served
        return first, second, code

    first, second, code = asyncio.run(scenario())
    assert samples_of(first, "vipcore_controller_allocations_total") == {(): 0.0}
    assert samples_of(second, "vipcore_controller_allocations_total") == {(): 5.0}
    assert code == 404


def test_a_router_in_fault_makes_the_agent_unready_until_it_recovers(tmp_path: Path) -> None:
    from vipcore.core.model import State, StateChange, TransitionCause

    async def scenario() -> None:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            assert (await aget(url + "/readyz"))[0] == 200
            group = sorted(agent.memberships)[0]

            def report(new: State, reason: str) -> None:
                agent.report(StateChange(group=group, family=Family.IPV4, old=State.BACKUP, new=new, reason=reason,
                                         at=0.0, node=agent.node, backend=BACKEND, cause=TransitionCause.LINK_DOWN))

            report(State.FAULT, "eth0 lost carrier")
            code, _, body = await aget(url + "/readyz")
            assert code == 503 and "fault" in body and "eth0 lost carrier" in body
            report(State.BACKUP, "eth0 is back")
            assert (await aget(url + "/readyz"))[0] == 200

    asyncio.run(scenario())


# -- the failover breakdown and the plugins' status sections ----------------------------


class _BrokenSections:
    """Third-party observers whose sections are wrong: skipped and named, the rest of /status served."""

    def __init__(self, result: object = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error

    @hookimpl
    def vipcore_status_sections(self) -> object:
        if self.error is not None:
            raise self.error
        return self.result


def test_failover_breakdown_on_status_metrics_and_the_transition_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    phases = FailoverPhases(detect=0.048, elect=0.0021, address=0.0013, announce=0.0004)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], str]:
        agent = make_agent(tmp_path)
        async with running(agent) as url:
            backend = backend_of(agent)
            eth0 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth0")
            eth1 = next(name for name, m in agent.memberships.items() if m.group.interface == "eth1")
            with caplog.at_level(logging.INFO, logger="vipcore"):
                backend.fail_over(eth0, Family.IPV4, 0.052, phases)
            backend._report(eth0, Family.IPV4, State.BACKUP, "preempted")  # the breakdown stays with the failover
            backend.fail_over(eth1, Family.IPV4, 0.05, phases)
            backend.take_over(eth1, Family.IPV4, 0.2)  # a newer failover without one: no stale breakdown
            first = await astatus(url)
            _, _, metrics = await aget(url + "/metrics")
            return first, {"metrics": metrics}, eth0

    document, scraped, eth0 = asyncio.run(scenario())
    routers = {(r["group"], r["family"]): r for r in document["routers"]}
    kept = routers[(eth0, "IPv4")]
    assert kept["state"] == "backup"
    assert kept["last_failover"] == {"detect_seconds": 0.048, "elect_seconds": 0.0021, "address_seconds": 0.0013,
                                     "announce_seconds": 0.0004, "total_seconds": pytest.approx(0.0518)}
    assert routers[(eth0, "IPv6")]["last_failover"] is None
    eth1 = next(r for r in document["routers"] if r["interface"] == "eth1")
    assert eth1["last_failover_seconds"] == 0.2 and eth1["last_failover"] is None
    counts = samples_of(scraped["metrics"], "vipcore_failover_phase_seconds_count")
    assert counts == {labels(phase=p): 2.0 for p in ("detect", "elect", "address", "announce")}
    buckets = samples_of(scraped["metrics"], "vipcore_failover_phase_seconds_bucket")
    assert buckets[labels(phase="announce", le="0.0005")] == 2.0 and buckets[labels(phase="detect", le="0.025")] == 0
    line = next(r.getMessage() for r in caplog.records if getattr(r, "event", None) == "transition"
                and getattr(r, "new", None) == "master")
    assert "detect_ms=48.0 elect_ms=2.1 address_ms=1.3 announce_ms=0.4" in line
    record = next(r for r in caplog.records if getattr(r, "event", None) == "transition"
                  and getattr(r, "new", None) == "master")
    assert record.detect_seconds == 0.048 and record.announce_seconds == 0.0004  # type: ignore[attr-defined]
    text = status_table(document)
    assert "LAST FAILOVER OF" in text and "48ms" in text and "2.1ms" in text and "0.4ms" in text


def test_plugins_add_status_sections_and_a_broken_one_is_skipped_and_named(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        agent = make_agent(tmp_path)
        pm = agent.hooks.pm
        pm.register(_BrokenSections(result={"not": "a list"}), name="acme-dict")
        pm.register(_BrokenSections(result=[StatusTable("bad", ("A", "B"), (("only one",),))]), name="acme-row")
        pm.register(_BrokenSections(result=[StatusTable("obj", ("A",), ((object(),),))]), name="acme-cell")
        pm.register(_BrokenSections(error=RuntimeError("boom")), name="acme-raises")
        pm.register(_BrokenSections(result=None), name="acme-none")
        async with running(agent) as url:
            backend_of(agent).sections = [StatusTable(
                "peers", ("PEER", "STATE", "RTT MS", "UP"),
                (("198.51.100.12", "up", 0.25, True), ("198.51.100.13", "down", None, False)), note="a note")]
            return await astatus(url)

    document = asyncio.run(scenario())
    json.dumps(document)
    assert document["sections"] == {BACKEND: [{
        "title": "peers", "columns": ["PEER", "STATE", "RTT MS", "UP"], "note": "a note",
        "rows": [["198.51.100.12", "up", 0.25, True], ["198.51.100.13", "down", None, False]]}]}
    skipped = {s["plugin"]: s["error"] for s in document["sections_skipped"]}
    assert sorted(skipped) == ["acme-cell", "acme-dict", "acme-raises", "acme-row"]
    assert "returned dict, not a list of vipcore.StatusTable" in skipped["acme-dict"]
    assert "a row of 1 cells for 2 columns" in skipped["acme-row"]
    assert "raised RuntimeError: boom" in skipped["acme-raises"]
    assert all(e.startswith(f"plugin '{p}'") for p, e in skipped.items())
    text = status_table(document)
    assert f"{BACKEND}: peers" in text and "198.51.100.13  down   -" in text and "0.25" in text
    assert "(a note)" in text and "section skipped: plugin 'acme-raises'" in text
