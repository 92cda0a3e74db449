"""Pure parts of the lab, no root: keepalived rendering, scenario manifests, probe arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipcore.core.errors import LabError
from vipcore.lab.agents import (
    PLAIN_KEEPALIVED,
    Deployment,
    render_plain_keepalived,
    write_example_manifests,
    write_scenario_manifests,
)
from vipcore.lab.cli import node_names
from vipcore.lab.probe import Probe, _checksum, _echo, _parse_reply, _Timeline
from vipcore.lab.topology import Lab
from vipcore.core.resolve import membership


def lab(tmp_path: Path, nodes: tuple[str, ...] = ("node-a", "node-b", "node-c")) -> Lab:
    return Lab(prefix="vcLu", nodes=nodes, run_root=tmp_path)


def test_example_manifests_for_the_default_lab_resolve_like_the_examples(tmp_path: Path) -> None:
    the_lab = lab(tmp_path)
    ours = Deployment(backend=PLAIN_KEEPALIVED, manifests=write_example_manifests(the_lab, tmp_path / "m"))
    examples = Deployment(backend=PLAIN_KEEPALIVED, manifests=Path(__file__).resolve().parents[2] / "examples" / "manifests")
    assert ours.state()[0].groups == examples.state()[0].groups


def test_plain_keepalived_config_matches_what_the_agents_compute(tmp_path: Path) -> None:
    deployment = Deployment(backend=PLAIN_KEEPALIVED, manifests=write_example_manifests(lab(tmp_path), tmp_path / "m"))
    resolution, nodes = deployment.state()
    web = max(resolution.groups, key=lambda g: len(g.nodes))
    for node in ("node-a", "node-b", "node-c"):
        text = render_plain_keepalived(resolution, nodes, node, advert_interval=0.1)
        assert "vrrp_version 3" in text and "vrrp_strict" not in text and "nopreempt" not in text
        assert f"virtual_router_id {web.vrid}" in text
        assert f"priority {membership(web, node, nodes).priority}" in text
        assert "advert_int 0.1\n" in text
        assert f"{web.vips_v4[0]}/32 dev eth0" in text and f"{web.vips_v6[0]}/128 dev eth0" in text
        assert f"vrrp_sync_group {web.short_name}" in text
        # One family per instance: keepalived cannot mix them.
        assert text.count("vrrp_instance") == sum(len(g.families) for g in resolution.groups_of(node))
    assert "advert_int 1\n" in render_plain_keepalived(resolution, nodes, "node-a", advert_interval=1.0)
    assert "nopreempt" in render_plain_keepalived(resolution, nodes, "node-a", advert_interval=1.0, preempt=False)


def test_plain_keepalived_with_bfd_has_a_session_per_peer_tracked_by_every_instance(tmp_path: Path) -> None:
    deployment = Deployment(backend=PLAIN_KEEPALIVED, manifests=write_example_manifests(lab(tmp_path), tmp_path / "m"))
    resolution, nodes = deployment.state()
    text = render_plain_keepalived(resolution, nodes, "node-a", advert_interval=0.1,
                                   bfd={"weight": -10, "reverse": True})
    assert text.count("bfd_instance ") == 2 and "bfd_instance bfd_node_a" not in text
    assert "neighbor_ip 198.51.100.12" in text and "source_ip 198.51.100.11" in text
    assert "min_rx 10" in text and "min_tx 10" in text and "multiplier 5" in text
    assert text.count("track_bfd {") == text.count("vrrp_instance")
    assert "bfd_node_b weight -10 reverse" in text
    assert "bfd_instance" not in render_plain_keepalived(resolution, nodes, "node-a", advert_interval=0.1)


@pytest.mark.parametrize("groups", [1, 16, 64, 255])
def test_scenario_manifests_give_that_many_groups_with_every_lab_node(tmp_path: Path, groups: int) -> None:
    the_lab = lab(tmp_path)
    deployment = Deployment(backend="native_vrrp", manifests=write_scenario_manifests(the_lab, tmp_path / "m", groups))
    resolution, _ = deployment.state()
    assert len(resolution.groups) == groups and not resolution.unresolved
    assert all(set(the_lab.nodes) <= set(g.nodes) for g in resolution.groups)
    assert len({g.vrid for g in resolution.groups}) == groups
    assert all(len(g.families) == 2 for g in resolution.groups)
    # Only lab nodes run: every VIP goes to the best-ranked of them.
    assert set(deployment.expected_holders(the_lab.nodes).values()) <= set(the_lab.nodes)


def test_set_ready_flips_a_node(tmp_path: Path) -> None:
    the_lab = lab(tmp_path)
    deployment = Deployment(backend="netlink_static", manifests=write_example_manifests(the_lab, the_lab.run_dir / "m"))
    web_nodes = lambda: max(deployment.state()[0].groups, key=lambda g: len(g.nodes)).nodes  # noqa: E731
    assert "node-a" in web_nodes()
    deployment.set_ready(the_lab, "node-a", False)
    assert "node-a" not in web_nodes()
    deployment.set_ready(the_lab, "node-a", True)
    assert "node-a" in web_nodes()
    elsewhere = Deployment(backend="netlink_static", manifests=tmp_path / "elsewhere")
    with pytest.raises(LabError, match="not a manifest file the lab wrote"):
        elsewhere.set_ready(the_lab, "node-a", False)


def test_lab_names_and_addresses(tmp_path: Path) -> None:
    the_lab = lab(tmp_path, node_names(4))
    assert the_lab.ns("node-d") == "vcLu-node-d"
    assert str(the_lab.address("node-d", "eth1", 6)) == "2001:db8:200::14"
    assert str(the_lab.address(None, "eth0", 4)) == "198.51.100.2"
    with pytest.raises(LabError):
        Lab(prefix="bad prefix")
    with pytest.raises(LabError):
        node_names(0)


def test_echo_packets_round_trip() -> None:
    packet = _echo(4, 0x1234, 7)
    assert _checksum(packet) == 0
    reply = bytes([0]) + packet[1:]
    ip_header = bytes([0x45]) + bytes(19)
    assert _parse_reply(4, ip_header + reply) == (0x1234, 7)
    assert _parse_reply(4, ip_header + packet) is None  # an echo request is not a reply
    assert _parse_reply(6, bytes([129]) + _echo(6, 9, 65535)[1:]) == (9, 65535)


def _probe_with(items: list[tuple[int, float, float]], *, sent: int, unanswered: list[float],
                started: float = 100.0, ended: float = 103.0) -> Probe:
    probe = Probe("vcLu-cl", "198.51.100.115")
    probe._data.started, probe._data.ended, probe._data.sent = started, ended, sent
    probe._data.items, probe._data.unanswered = items, unanswered
    return probe


def test_probe_result_longest_gap_loss_and_first_reply() -> None:
    # Replies every 10 ms from 100.0, none between 101.0 and 101.25, then again until 103.0.
    times = [100.0 + i * 0.01 for i in range(301) if not 101.0 < 100.0 + i * 0.01 < 101.25]
    probe = _probe_with([(i, t, t + 0.001) for i, t in enumerate(times)], sent=301,
                        unanswered=[100.0 + i * 0.01 for i in range(101, 125)])
    result = probe.result(after=100.5)
    assert result.longest_gap == pytest.approx(0.25, abs=0.011)
    assert result.recovered and result.lost == 24
    assert result.first_reply == pytest.approx(0.001)
    # A window after the outage sees none of it.
    assert probe.result(after=102.0).longest_gap == pytest.approx(0.01, abs=0.001)


def test_probe_result_when_replies_never_come_back() -> None:
    items = [(i, 100.0 + i * 0.01, 100.0 + i * 0.01) for i in range(100)]
    result = _probe_with(items, sent=300, unanswered=[101.0 + i * 0.01 for i in range(200)]).result(after=100.5)
    assert not result.recovered
    assert result.longest_gap == pytest.approx(103.0 - 100.99, abs=0.001)


def test_address_monitor_lines() -> None:
    from vipcore.lab.monitor import parse_event

    added = parse_event("3: eth0    inet 198.51.100.115/32 scope global eth0\\       valid_lft forever", "node-a", 1.0)
    assert added is not None and added.added and str(added.address) == "198.51.100.115" and added.interface == "eth0"
    gone = parse_event("Deleted 3: eth0    inet6 2001:db8:100::1e9/128 scope global nodad \\  valid_lft forever",
                       "node-b", 2.0)
    assert gone is not None and not gone.added and gone.node == "node-b"
    assert parse_event("3: eth0    inet 198.51.100.11/24 brd 198.51.100.255 scope global eth0", "n", 0) is None
    assert parse_event("1: lo    inet6 ::1/128 scope host", "n", 0) is None
    assert parse_event("garbage", "n", 0) is None


class _Clocks:
    """A wall clock and a monotonic clock that a test moves by hand (the wall one can step)."""

    def __init__(self) -> None:
        self.mono, self.step = 500.0, 0.0

    def wall(self) -> float:
        return 1_700_000_000.0 + self.mono + self.step

    def monotonic(self) -> float:
        return self.mono


def _timespec(wall: float) -> tuple[int, int]:
    return int(wall), round((wall - int(wall)) * 1e9)


@pytest.mark.parametrize("step", [1.0, -1.0])
def test_probe_times_ignore_a_wall_clock_step_during_the_run(step: float) -> None:
    """The kernel stamps replies on the wall clock; NTP or a resumed VM may step it during a run (a CI
    machine once did, by about a second). The probe's times are epoch seconds as of its start, advancing
    with the monotonic clock: a gap measured across the step is the real one."""
    clocks = _Clocks()
    timeline = _Timeline(clocks.wall, clocks.monotonic)
    clocks.mono += 0.010
    before = timeline.stamp(*_timespec(clocks.wall()), clocks.monotonic())
    clocks.mono += 0.049
    timeline.drained(clocks.monotonic())  # the socket found empty 1 ms before the reply came
    clocks.mono += 0.001
    arrived = clocks.wall()  # stamped by the kernel, then the clock steps before the read
    clocks.step = step
    clocks.mono += 0.002
    after = timeline.stamp(*_timespec(arrived), clocks.monotonic())
    assert after - before == pytest.approx(0.050, abs=0.0025)
    assert timeline.now() - before == pytest.approx(0.052, abs=1e-6)
    # After the step, stamps and reads agree again.
    clocks.mono += 0.010
    assert timeline.stamp(*_timespec(clocks.wall()), clocks.monotonic()) - before == pytest.approx(0.062, abs=1e-6)
