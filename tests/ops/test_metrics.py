"""Pure pieces of vipcore.ops.metrics: reason classes, plugin samples, pool and VRID usage."""

from __future__ import annotations

import ipaddress
import logging

import attrs
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from vipcore.ops.http import parse_address
from vipcore.ops.metrics import (
    CORE_METRICS, FAILOVER_BUCKETS, MetricsObserver, allocation_samples, reason_class,
    sample_families, samples_of, short_name,
)
from vipcore.core.errors import ConfigError
from vipcore.core.model import (
    Family,
    MetricSample,
    Pool,
    Resolution,
    State,
    StateChange,
    TransitionCause,
    VipGroup,
    VridPolicy,
)

GROUP = "a" * 64 + "-eth0"


@pytest.mark.parametrize(("reason", "cls"), [
    ("master down: no advert for 0.350s", "master_down"),
    ("master 198.51.100.12 resigned (priority 0)", "peer_resigned"),
    ("preempted by 198.51.100.11 (priority 200)", "preempted"),
    ("handed over to 198.51.100.12", "handed_over"),
    ("no new master advertised within 0.300s", "handed_over"),
    ("released: drain", "released"),
    ("takeover: control plane", "takeover"),
    ("takeover: sync with IPv4 (became master)", "sync"),
    ("address owner (priority 255)", "address_owner"),
    ("graceful stop", "stopped"),
    ("agent stopping (hard)", "stopped"),
    ("no VIPs of this family left", "config"),
    ("chosen holder of 3 node(s)", "placement"),
    ("node-b is the chosen holder", "placement"),
    ("interface 'eth9': No such device", "fault"),
    ("started", "started"),
    ("something nobody foresaw", "other"),
])
def test_reason_class_is_short_and_bounded(reason: str, cls: str) -> None:
    assert reason_class(reason) == cls


def test_short_name_matches_the_table_form() -> None:
    assert short_name(GROUP) == "aaaaaaaaaaaa-eth0"
    assert short_name(VipGroup(GROUP, "eth0", ("n1",)).name) == VipGroup(GROUP, "eth0", ("n1",)).short_name


def change(new: State, reason: str, failover: float | None = None, family: Family = Family.IPV4) -> StateChange:
    return StateChange(group=GROUP, family=family, old=State.BACKUP, new=new, reason=reason, at=1.0,
                       node="node-a", backend="x", vrid=7, failover_seconds=failover)


def test_observer_counts_transitions_and_observes_failovers_into_master_only() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(registry)
    observer.vipcore_state_changed(change(State.MASTER, "master down: no advert for 0.3s", 0.012))
    observer.vipcore_state_changed(change(State.MASTER, "takeover: x", 7.0, Family.IPV6))
    observer.vipcore_state_changed(change(State.BACKUP, "preempted by x", 0.5))  # not a failover
    observer.vipcore_state_changed(change(State.MASTER, "started", None))  # unknown duration
    text = generate_latest(registry).decode()
    count = samples_of(text, "vipcore_failover_seconds_count")
    assert count == {(("family", "IPv4"),): 1.0, (("family", "IPv6"),): 1.0}
    buckets = samples_of(text, "vipcore_failover_seconds_bucket")
    assert buckets[(("family", "IPv4"), ("le", "0.01"))] == 0.0
    assert buckets[(("family", "IPv4"), ("le", "0.025"))] == 1.0
    assert buckets[(("family", "IPv6"), ("le", "5.0"))] == 0.0
    assert buckets[(("family", "IPv6"), ("le", "10.0"))] == 1.0
    transitions = samples_of(text, "vipcore_transitions_total")
    assert sum(transitions.values()) == 4.0
    assert {dict(k)["reason"] for k in transitions} == {"master_down", "takeover", "preempted", "started"}
    assert FAILOVER_BUCKETS[0] == 0.01 and FAILOVER_BUCKETS[-1] == 10.0


def test_plugin_samples_become_families_and_bad_ones_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    samples = [
        MetricSample("vipcore_x_packets_total", 3, (("reason", "ttl"),), help="packets"),
        MetricSample("vipcore_x_packets_total", 2, (("reason", "ttl"),)),  # duplicate: summed
        MetricSample("vipcore_x_packets_total", 1, (("reason", "auth"),)),
        MetricSample("vipcore_x_restarts", 4),  # a counter without _total still exposes _total
        MetricSample("vipcore_x_queue", 9, kind="gauge"),
        MetricSample("vipcore_x_queue", 8, kind="counter"),  # kind clash: dropped
        MetricSample("bad name", 1),
        MetricSample("vipcore_x_bad_label", 1, (("bad-label", "v"),)),
        MetricSample("vipcore_x_kind", 1, kind="histogram"),
        MetricSample("vipcore_groups", 99, kind="gauge"),  # shadows a core metric
    ]
    registry = CollectorRegistry()

    class Collector:
        def collect(self):  # type: ignore[no-untyped-def]
            return sample_families(samples, reserved=CORE_METRICS)

    registry.register(Collector())
    with caplog.at_level(logging.WARNING, logger="vipcore.ops.metrics"):
        text = generate_latest(registry).decode()
    assert samples_of(text, "vipcore_x_packets_total") == {(("reason", "ttl"),): 5.0, (("reason", "auth"),): 1.0}
    assert samples_of(text, "vipcore_x_restarts_total") == {(): 4.0}
    assert samples_of(text, "vipcore_x_queue") == {(): 9.0}
    assert "# HELP vipcore_x_packets_total packets" in text
    assert "bad name" not in text and "bad_label" not in text and "vipcore_x_kind" not in text
    assert "vipcore_groups" not in text
    assert any("vipcore_groups" in r.getMessage() for r in caplog.records)


def test_allocation_samples_count_pool_and_vrid_usage() -> None:
    ip = ipaddress.ip_address
    lan = Pool("lan", ((ip("198.51.100.10"), ip("198.51.100.19")), (ip("2001:db8::10"), ip("2001:db8::1f"))),
               interface="eth0")
    dmz = Pool("dmz", ((ip("203.0.113.1"), ip("203.0.113.4")),), interface="eth1")
    groups = (
        VipGroup("g1-eth0", "eth0", ("a", "b"), vrid=3, vips_v4=(ip("198.51.100.10"), ip("198.51.100.11")),  # type: ignore[arg-type]
                 vips_v6=(ip("2001:db8::10"),)),  # type: ignore[arg-type]
        VipGroup("g2-eth0", "eth0", ("a",), vrid=9, vips_v4=(ip("198.51.100.12"),)),  # type: ignore[arg-type]
        VipGroup("g3-eth1", "eth1", ("a",), vrid=3, vips_v4=(ip("203.0.113.2"),)),  # type: ignore[arg-type]
    )
    resolution = Resolution(groups, allocations={"ns/late": (ip("198.51.100.13"),)})
    policy = {"eth0": VridPolicy(1, 100, frozenset({7})), "eth1": VridPolicy()}
    found = {(s.name, s.labels): s.value for s in allocation_samples(resolution, [lan, dmz], policy.__getitem__)}
    assert found[("vipcore_pool_addresses", (("pool", "lan"), ("family", "IPv4")))] == 10
    assert found[("vipcore_pool_addresses", (("pool", "lan"), ("family", "IPv6")))] == 16
    assert found[("vipcore_pool_addresses_allocated", (("pool", "lan"), ("family", "IPv4")))] == 4
    assert found[("vipcore_pool_addresses_allocated", (("pool", "lan"), ("family", "IPv6")))] == 1
    assert found[("vipcore_pool_addresses_allocated", (("pool", "dmz"), ("family", "IPv4")))] == 1
    assert found[("vipcore_vrids_used", (("interface", "eth0"),))] == 2
    assert found[("vipcore_vrids_used", (("interface", "eth1"),))] == 1
    assert found[("vipcore_vrids_usable", (("interface", "eth0"),))] == 99
    assert found[("vipcore_vrids_usable", (("interface", "eth1"),))] == 255
    assert all(s.kind == "gauge" for s in allocation_samples(resolution, [lan, dmz]))


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9641", ("127.0.0.1", 9641)), ("[::1]:9641", ("::1", 9641)), (":0", ("127.0.0.1", 0)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9641", "host:", "host:99999", "host:port"])
def test_parse_address_rejects_garbage(text: str) -> None:
    with pytest.raises(ConfigError, match="metrics.address"):
        parse_address(text)


def test_transition_label_comes_from_the_typed_cause_when_given() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(registry)
    # Free text a substring match would misfile ("down" -> fault, nothing -> other).
    observer.vipcore_state_changed(attrs.evolve(change(State.MASTER, "link came back down the hall"),
                                                cause=TransitionCause.SYNC))
    observer.vipcore_state_changed(attrs.evolve(change(State.BACKUP, "followed IPv4"), cause=TransitionCause.LINK_UP))
    observer.vipcore_state_changed(change(State.MASTER, "master down: no advert"))  # third party: no cause
    transitions = samples_of(generate_latest(registry).decode(), "vipcore_transitions_total")
    assert {dict(k)["reason"] for k in transitions} == {"sync", "link_up", "master_down"}
