"""keepalived.conf rendering: golden files, determinism, names, settings.

Regenerate the golden files after an intended change with
``VIPCORE_UPDATE_GOLDEN=1 pytest tests/backends/keepalived/test_render.py`` and review the diff.
"""

from __future__ import annotations

import ipaddress
import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from vipcore.core.errors import ConfigError
from vipcore.core.model import Family, Node
from vipcore.core.resolve import membership
from vipcore.core.placement import PRIORITY_STEP
from vipcore_keepalived.render import instance_name, render
from vipcore_keepalived.settings import KeepalivedSettings

from tests.helpers.memberships import NODE_A_INTERFACES, group, member

GOLDEN = Path(__file__).parent / "golden"
FIFO = Path("/run/vipcore/node-a/keepalived.fifo")

WEB = group(["node-a", "node-b", "node-c"], "eth0", 17, ["198.51.100.101", "198.51.100.100"],
            ["2001:db8:100::100"], ["default/web", "default/api"])
LOCAL = group(["node-a", "node-c"], "eth0", 42, ["198.51.100.120"], services=["shop/cart"])
DMZ = group(["node-a", "node-b"], "eth1", 5, ["203.0.113.70"], ["2001:db8:200::70"], ["dmz/gw"])

CASES = {
    # Cluster policy: every node, dual-stack, multicast, defaults.
    "cluster_dualstack": (
        [member(WEB, "node-a")], {}, {},
    ),
    # A Local-policy group (the nodes with endpoints) beside the Cluster one; no preempt, GARP knobs.
    "local_and_cluster": (
        [member(WEB, "node-a"), member(LOCAL, "node-a")],
        {"preempt": False, "advert_interval": 1, "garp": {"count": 3, "interval": 0.05, "delay": 2, "refresh": 60}},
        {},
    ),
    # Unicast across two interfaces (two L2 networks), dual-stack.
    "unicast_two_interfaces": (
        [member(WEB, "node-a"), member(DMZ, "node-a"), member(LOCAL, "node-a")],
        {"unicast": True, "router_id": "rack1-a"},
        NODE_A_INTERFACES,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    memberships, config, interfaces = CASES[case]
    text = render(memberships, KeepalivedSettings.from_config(config), node="node-a", fifo=FIFO,
                  interfaces=interfaces).text
    path = GOLDEN / f"{case}.conf"
    if os.environ.get("VIPCORE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


def test_output_is_byte_identical_whatever_the_input_order() -> None:
    memberships = [member(WEB, "node-a"), member(DMZ, "node-a"), member(LOCAL, "node-a")]
    settings = KeepalivedSettings.from_config({"unicast": True})
    first = render(memberships, settings, node="node-a", fifo=FIFO, interfaces=NODE_A_INTERFACES).text
    for seed in range(5):
        shuffled = list(memberships)
        random.Random(seed).shuffle(shuffled)
        again = render(shuffled, settings, node="node-a", fifo=FIFO, interfaces=dict(NODE_A_INTERFACES)).text
        assert again == first


def test_priorities_are_the_cores_placement_on_every_node() -> None:
    settings = KeepalivedSettings()
    seen = {}
    for node in WEB.nodes:
        rendered = render([member(WEB, node)], settings, node=node, fifo=FIFO)
        (v4, v6) = rendered.instances
        assert v4.priority == v6.priority == member(WEB, node).priority
        assert f"priority {v4.priority}\n" in rendered.text
        seen[node] = v4.priority
    assert sorted(seen.values()) == [254 - 2 * PRIORITY_STEP, 254 - PRIORITY_STEP, 254]


def test_instance_names_are_short_deterministic_and_documented_in_comments() -> None:
    # Named after the router, not the group: a rename keeps the instance across a reload.
    name = instance_name(17, "eth0", Family.IPV4)
    assert name == "vc_17_eth0_4"
    assert len(instance_name(255, "i" * 15, Family.IPV6)) <= 24
    text = render([member(WEB, "node-a")], KeepalivedSettings(), node="node-a", fifo=FIFO).text
    assert f"# group {WEB.name} (IPv4)" in text
    assert "vrrp_strict" not in text


def test_single_family_group_has_no_sync_group() -> None:
    text = render([member(LOCAL, "node-a")], KeepalivedSettings(), node="node-a", fifo=FIFO).text
    assert "vrrp_sync_group" not in text
    assert text.count("vrrp_instance") == 1


def test_release_leaves_the_group_out_and_takeover_raises_priority() -> None:
    settings = KeepalivedSettings()
    released = render([member(WEB, "node-b"), member(LOCAL, "node-a")], settings, node="node-b", fifo=FIFO,
                      released=frozenset({WEB.name}))
    assert {i.group for i in released.instances} == {LOCAL.name}
    assert f"# group {WEB.name} is released" in released.text
    taken = render([member(WEB, "node-b")], settings, node="node-b", fifo=FIFO, taken_over=frozenset({WEB.name}))
    assert {i.priority for i in taken.instances} == {254}


def test_unicast_picks_on_link_addresses() -> None:
    rendered = render([member(DMZ, "node-a")], KeepalivedSettings(unicast=True), node="node-a", fifo=FIFO,
                      interfaces=NODE_A_INTERFACES)
    v4, v6 = rendered.instances
    assert str(v4.unicast_src) == "203.0.113.11" and [str(p) for p in v4.unicast_peers] == ["203.0.113.12"]
    assert str(v6.unicast_src) == "2001:db8:200::11" and [str(p) for p in v6.unicast_peers] == ["2001:db8:200::12"]


def test_group_without_vrid_is_not_rendered() -> None:
    no_vrid = group(["node-a"], "eth0", 1, ["198.51.100.130"])
    import attrs

    no_vrid = attrs.evolve(no_vrid, vrid=None)
    rendered = render([member(no_vrid, "node-a")], KeepalivedSettings(), node="node-a", fifo=FIFO)
    assert rendered.instances == ()
    assert "has no VRID" in rendered.text


@pytest.mark.parametrize("config, field", [
    ({"advert_interval": 0.005}, "advert_interval"),
    ({"advert_interval": 0.125}, "advert_interval"),
    ({"advert_interval": "fast"}, "advert_interval"),
    ({"preempt": "yes"}, "preempt"),
    ({"garp": {"count": -1}}, "garp.count"),
    ({"garp": {"burst": 1}}, "garp"),
    ({"router_id": "two words"}, "router_id"),
    ({"restart_attempts": 0}, "restart_attempts"),
])
def test_bad_settings_name_the_key(config: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as error:
        KeepalivedSettings.from_config(config)
    assert field in str(error.value) and "keepalived" in str(error.value)


def test_unknown_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="advert_intervall"):
        KeepalivedSettings.from_config({"advert_intervall": 1})


# -- properties ----------------------------------------------------------------

_NODE_NAMES = ["node-a", "node-b", "node-c", "node-d", "node-e"]


@st.composite
def _memberships(draw: st.DrawFn) -> list[tuple[object, ...]]:
    count = draw(st.integers(1, 6))
    chosen = []
    for i in range(count):
        members = draw(st.lists(st.sampled_from(_NODE_NAMES[1:]), min_size=0, max_size=4, unique=True))
        interface = draw(st.sampled_from(["eth0", "eth1", "bond0.100"]))
        v4 = draw(st.lists(st.integers(100, 149), max_size=3, unique=True))
        v6 = draw(st.lists(st.integers(0x100, 0x1ff), max_size=2, unique=True))
        if not v4 and not v6:
            v4 = [100 + i]
        chosen.append((["node-a", *members], interface, 1 + i, [f"198.51.100.{x}" for x in v4],
                       [f"2001:db8:100::{x:x}" for x in v6], [f"ns/svc{i}"]))
    return chosen


@hsettings(max_examples=60, deadline=None)
@given(_memberships(), st.randoms(use_true_random=False), st.booleans())
def test_render_is_a_function_of_the_set_of_memberships(specs, rnd, unicast) -> None:  # type: ignore[no-untyped-def]
    nodes = [Node(n, (ipaddress.ip_address(f"198.51.100.{11 + i}"),)) for i, n in enumerate(_NODE_NAMES)]
    groups = {}
    for names, interface, vrid, v4, v6, services in specs:
        g = group(names, interface, vrid, v4, v6, services)
        groups[g.name] = g
    memberships = [membership(g, "node-a", nodes) for g in groups.values()]
    settings = KeepalivedSettings(unicast=unicast)
    first = render(memberships, settings, node="node-a", fifo=FIFO, interfaces=NODE_A_INTERFACES)
    rnd.shuffle(memberships)
    again = render(memberships, settings, node="node-a", fifo=FIFO, interfaces=NODE_A_INTERFACES)
    assert again.text == first.text
    names = [i.name for i in first.instances]
    assert len(names) == len(set(names)) and all(len(n) <= 33 for n in names)
    expected = {(g.name, f) for g in groups.values() for f in g.families}
    assert {(i.group, i.family) for i in first.instances} == expected
    for instance in first.instances:
        assert instance.priority == membership(groups[instance.group], "node-a", nodes).priority
        assert f"vrrp_instance {instance.name} {{" in first.text
    assert "vrrp_strict" not in first.text
