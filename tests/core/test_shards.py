"""Big groups written as VipGroup shards: stable, deterministic, and merged back into the same group."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from tests.core.test_plan import NODES, pool, svc
from vipcore.core import shards
from vipcore.core.model import FINALIZER, Shard, VipGroup
from vipcore.core.objects import vipgroup_from_k8s
from vipcore.core.plan import Plan, group_status, holder_notes, persisted_lineage, plan

BOUND = 8
POOL = pool(addresses=("203.0.113.1-203.0.113.250", "2001:db8::1-2001:db8::ff"))


def cluster(count: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [dual(svc(f"s{i}")) if rng.random() < 0.3 else svc(f"s{i}") for i in range(count)]


def dual(obj: dict[str, Any]) -> dict[str, Any]:
    obj["spec"].update(ipFamilyPolicy="RequireDualStack", ipFamilies=["IPv4", "IPv6"])
    return obj


def apply(result: Plan, services: list[dict[str, Any]], groups: dict[str, dict[str, Any]],
          rv: int) -> list[dict[str, Any]]:
    """What the writer does with ``result``: the Services with their status, the VipGroups as written."""
    for write in result.groups:
        groups[write.name] = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup",
                              "metadata": {"name": write.name, "resourceVersion": str(rv)}, "spec": write.spec}
    for name in result.deletes:
        groups.pop(name, None)
    out = []
    for obj in services:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        ips = [str(ip) for ip in result.addresses.get(key, ())]
        new = svc(obj["metadata"]["name"], ips=tuple(ips))
        new["spec"] = obj["spec"]
        out.append(new)
    return out


def run(services: list[dict[str, Any]], groups: dict[str, dict[str, Any]], bound: int = BOUND) -> Plan:
    return plan(services, nodes=NODES, endpoint_slices=(), pools=(POOL,), vipgroups=list(groups.values()),
                shard_vips=bound)


def merged(groups: dict[str, dict[str, Any]]) -> dict[str, VipGroup]:
    """The groups an agent merges from these objects (every set complete, one shard 0 each)."""
    sets: dict[str, list[VipGroup]] = {}
    for obj in groups.values():
        g = vipgroup_from_k8s(obj)
        sets.setdefault(g.shard.key if g.shard else g.name, []).append(g)
    out = {}
    for parts in sets.values():
        (zero,) = [g for g in parts if g.shard is None or g.shard.index == 0]
        assert shards.complete(zero, parts)
        out[zero.name] = shards.merge(zero, parts)
    return out


def test_small_group_is_written_as_today() -> None:
    groups: dict[str, dict[str, Any]] = {}
    result = run(cluster(BOUND // 2), groups)
    assert [w.name for w in result.groups] == [result.resolution.groups[0].name]
    assert "shard" not in result.groups[0].spec  # byte for byte the unsharded spec


def test_big_group_is_sharded_stable_and_deterministic() -> None:
    groups: dict[str, dict[str, Any]] = {}
    services = cluster(60)
    first = run(services, groups)
    (group,) = first.resolution.groups
    services = apply(first, services, groups, 1)
    counts = {obj["spec"]["shard"]["count"] for obj in groups.values()}
    assert [obj["spec"]["nodes"] for name, obj in groups.items() if name != group.name] == [[]] * (len(groups) - 1)
    assert counts == {shards.needed(len(group.vips_v4) + len(group.vips_v6), BOUND)} and len(groups) > 1
    assert group.name in groups  # shard 0 is named as the group: holders are recorded there
    assert merged(groups) == {group.name: group} and group.vips_v6  # both families
    # Restarted controller: the same answer, nothing to write.
    again = run(services, groups)
    assert not again.groups and not again.deletes
    # One Service more, one less: one shard rewritten each time, the others untouched.
    for change in ("add", "remove"):
        services = services + [svc("new-one")] if change == "add" else services[1:]
        result = run(services, groups)
        assert len(result.groups) == 1 and not result.deletes, change
        assert result.groups[0].group.shard is not None
        services = apply(result, services, groups, 2)
        assert merged(groups) == {g.name: g for g in result.resolution.groups}


def test_growing_the_shard_count_writes_additions_before_removals() -> None:
    groups: dict[str, dict[str, Any]] = {}
    services = cluster(BOUND // 2)
    services = apply(run(services, groups), services, groups, 1)
    assert len(groups) == 1
    services = cluster(40)
    result = run(services, groups)
    # Shard 0 (the old object) loses VIPs: it is written last, after every new shard holds its VIPs.
    assert result.groups[-1].name in groups and [w.create for w in result.groups[:-1]] == [True] * (len(result.groups) - 1)


def test_shard_count_keeps_its_count_while_within_the_bound() -> None:
    assert shards.shard_count(200, None) == 1
    assert shards.shard_count(300, None) == 4  # 300 > 256: 128 on average
    assert shards.shard_count(300, 2) == 2  # 150 on average, within the bound: kept
    assert shards.shard_count(600, 2) == 8  # outgrown
    assert shards.shard_count(300, 64) == 4  # far too many: shrunk
    assert shards.shard_count(100, 2) == 2  # below the bound, but kept while it was sharded


@pytest.mark.parametrize("seed", range(5))
def test_a_service_keeps_its_shard_when_the_count_doubles(seed: int) -> None:
    keys = [f"ns/{random.Random(seed).random()}-{i}" for i in range(50)]
    for key in keys:
        assert shards.shard_of(key, 8) in (shards.shard_of(key, 4), shards.shard_of(key, 4) + 4)


def test_merge_dedupes_a_service_moving_between_shards_and_leaves_out_another_routers() -> None:
    a, b = ipaddress.IPv4Address("203.0.113.9"), ipaddress.IPv4Address("203.0.113.2")
    zero = VipGroup("g-eth0", "eth0", ("n1", "n2"), vrid=3, vips_v4=(a,), services=("d/x",), shard=Shard("k", 0, 2))
    one = VipGroup("k-1", "eth0", (), vrid=3, vips_v4=(a, b), services=("d/x", "d/y"), shard=Shard("k", 1, 2))
    other = VipGroup("k-2", "eth0", (), vrid=4, vips_v4=(ipaddress.IPv4Address("203.0.113.7"),),
                     services=("d/z",), shard=Shard("k", 2, 4))
    group = shards.merge(zero, [one, other, zero])
    assert group == VipGroup("g-eth0", "eth0", ("n1", "n2"), vrid=3, vips_v4=(b, a), services=("d/x", "d/y"))
    assert shards.complete(zero, [zero, one]) and not shards.complete(zero, [zero]) and not shards.complete(None, [one])


def test_a_node_flip_rewrites_shard_zero_only() -> None:
    groups: dict[str, dict[str, Any]] = {}
    services = cluster(40)
    services = apply(run(services, groups), services, groups, 1)
    (old,) = merged(groups)
    # node-c leaves: the group is renamed (its name hashes its nodes); its set and other shards stay.
    result = plan(services, nodes=NODES[:2], endpoint_slices=(), pools=(POOL,), vipgroups=list(groups.values()),
                  shard_vips=BOUND)
    (group,) = result.resolution.groups
    assert group.name != old
    assert [(w.name, w.create) for w in result.groups] == [(group.name, True)] and result.deletes == (old,)
    apply(result, services, groups, 2)
    assert merged(groups) == {group.name: group}


def test_holders_lineage_and_status_of_shards() -> None:
    groups: dict[str, dict[str, Any]] = {}
    services = cluster(40)
    result = run(services, groups)
    apply(result, services, groups, 1)
    (group,) = result.resolution.groups
    assert persisted_lineage(groups.values()) == {group.name: tuple(sorted(group.services))} or \
        sorted(persisted_lineage(groups.values())[group.name]) == sorted(group.services)
    groups[group.name]["status"] = {"holders": {"ipv4": {"node": "node-b"}}}
    holders, notes = holder_notes({}, groups.values())
    assert {k for k, h in holders.items() if h.get("ipv4") == "node-b"} == {
        k for k, ips in result.addresses.items() if any(ip.version == 4 for ip in ips)}
    other = next(obj for name, obj in groups.items() if name != group.name)
    status = group_status(other)
    assert status is not None and status["conditions"][0]["reason"] == "Shard"


@pytest.mark.parametrize("seed", range(10))
def test_merged_kept_incrementally_equals_merge(seed: int) -> None:
    """Shards counted in and out (a VIP or Service briefly in two) give :func:`shards.merge`'s group."""
    rng = random.Random(seed)
    pool4 = [ipaddress.IPv4Address(f"203.0.113.{i}") for i in range(1, 40)]
    pool6 = [ipaddress.IPv6Address(f"2001:db8::{i:x}") for i in range(1, 40)]

    def part(index: int) -> VipGroup:
        return VipGroup("g-eth0" if index == 0 else f"k-{index}", "eth0", ("n1",) if index == 0 else (), vrid=3,
                        vips_v4=tuple(sorted(rng.sample(pool4, rng.randint(0, 6)))),
                        vips_v6=tuple(sorted(rng.sample(pool6, rng.randint(0, 3)))),
                        services=tuple(sorted({f"d/s{rng.randint(0, 30)}" for _ in range(rng.randint(0, 5))})),
                        shard=Shard("k", index, 4))

    merged, current = shards.Merged(), {}
    for _ in range(60):
        index = rng.randrange(4)
        new = part(index)
        if index in current:
            merged.remove(current[index])
        merged.add(new)
        current[index] = new
        if 0 in current:
            assert merged.group(current[0]) == shards.merge(current[0], current.values())


def test_merged_builds_its_tuples_again_only_after_a_change() -> None:
    """A group renamed with nothing counted in or out (a Node flip replaces shard 0 by one holding the
    same) gets the same VIP and Service tuples: no copy of 25,000 addresses, equal by identity."""
    vips = tuple(ipaddress.IPv6Address(f"2001:db8::{i:x}") for i in range(1, 9))
    zero = VipGroup("a-eth0", "eth0", ("n1", "n2"), vrid=3, vips_v6=vips[:4], services=("d/s0",),
                    shard=Shard("k", 0, 2))
    other = VipGroup("k-1", "eth0", (), vrid=3, vips_v6=vips[4:], services=("d/s1",), shard=Shard("k", 1, 2))
    merged = shards.Merged()
    merged.add(zero)
    merged.add(other)
    first = merged.group(zero)
    renamed = VipGroup("b-eth0", "eth0", ("n1",), vrid=3, vips_v6=vips[:4], services=("d/s0",),
                       shard=Shard("k", 0, 2))
    second = merged.group(renamed)
    assert second.name == "b-eth0" and second.nodes == ("n1",)
    assert second.vips_v6 is first.vips_v6 and second.services is first.services
    # Something counted out: the tuples follow.
    merged.remove(other)
    third = merged.group(renamed)
    assert third.vips_v6 == vips[:4] and third.services == ("d/s0",)
    assert third == shards.merge(renamed, [])
