"""Which peers get a liveness session, and what a lost one means (no sockets: a recording detector)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pytest

from tests.helpers.memberships import NODE_A_INTERFACES, group, member
from vipcore.core.model import Family, IPAddress, Membership, PeerNode, State
from vipcore_native_vrrp.liveness.coordinator import Coordinator, LivenessSettings
from vipcore_native_vrrp.liveness.detector import SessionView
from vipcore_native_vrrp.liveness.packet import Diagnostic, SessionState
from vipcore_native_vrrp.protocol.router_config import MAX_RANK_STEPS

A = ipaddress.ip_address


class RecordingDetector:
    """Stands in for the worker-backed detector: remembers the peers it was given."""

    def __init__(self, interface: str, local: IPAddress, config: object, **kwargs: Any) -> None:
        self.interface = interface
        self.peers: set[IPAddress] = set()

    def start(self) -> None:
        pass

    def set_peers(self, peers: Iterable[IPAddress]) -> None:
        self.peers = set(peers)

    def close(self, *, graceful: bool) -> None:
        pass


@attrs.define
class FakeRouter:
    state: State
    master: IPAddress | None = None
    released: bool = False


@attrs.define
class FakeDriver:
    router: FakeRouter
    lost: list[tuple[float, str]] = attrs.Factory(list)
    silent: list[float] = attrs.Factory(list)

    def peer_lost(self, delay: float, what: str, silent_for: float = 0.0) -> None:
        self.lost.append((delay, what))
        self.silent.append(silent_for)


def coordinator(groups: list[tuple[Membership, Mapping[Family, FakeDriver]]],
                keepalived_peers: Iterable[str] = ()) -> Coordinator:
    return Coordinator(LivenessSettings(), asyncio.new_event_loop(), lambda: groups,
                       RecordingDetector, keepalived_peers=keepalived_peers)  # type: ignore[arg-type]


def test_liveness_is_on_by_default() -> None:
    assert LivenessSettings().enabled
    # After a lost peer, the runner-up waits long enough for the best survivor's first advert to arrive
    # even from a loaded node (bench/membership.py saw timers 40-80 ms late): not the 20 ms it once was.
    assert LivenessSettings().rank_step >= 0.1
    assert LivenessSettings.from_mapping(None).enabled


def test_a_master_keeps_sessions_with_every_member_but_keepalived_ones() -> None:
    web = group(["node-a", "node-b", "node-c"], "eth0", 7, v4=["198.51.100.100"])
    drivers = {Family.IPV4: FakeDriver(FakeRouter(State.MASTER))}
    for keepalived, expected in (((), {A("198.51.100.12"), A("198.51.100.13")}),
                                 (("node-c",), {A("198.51.100.12")}),  # by node name
                                 (("198.51.100.12",), {A("198.51.100.13")})):  # by address
        c = coordinator([(member(web, "node-a"), drivers)], keepalived_peers=keepalived)
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector)
        assert detector.peers == expected, keepalived


def test_an_expired_session_to_the_master_starts_master_down_by_rank() -> None:
    web = group(["node-a", "node-b", "node-c"], "eth0", 7, v4=["198.51.100.100"])
    membership = member(web, "node-a")
    master_node = membership.members[0].name
    if master_node == "node-a":  # the test needs node-a to be a backup: pick a group where it is not first
        web = group(["node-a", "node-b", "node-c"], "eth0", 8, v4=["198.51.100.101"])
        membership = member(web, "node-a")
        master_node = membership.members[0].name
    master_address = next(a for a in next(m for m in membership.members if m.name == master_node).addresses
                          if a.version == 4)
    driver = FakeDriver(FakeRouter(State.BACKUP, master=master_address))
    c = coordinator([(membership, {Family.IPV4: driver})])
    c.ensure(NODE_A_INTERFACES["eth0"])
    # AdminDown (a graceful stop) is not a failure ...
    c._changed(master_address, SessionState.UP, SessionState.DOWN, Diagnostic.NEIGHBOR_DOWN)
    assert driver.lost == [] and c.peers_lost == 0
    # ... an expiry is. (The survivors' sessions are Up: a live member ranked before node-a delays it.)
    for m in membership.members:
        if m.name not in (master_node, "node-a"):
            c._changed(next(a for a in m.addresses if a.version == 4), SessionState.DOWN, SessionState.UP,
                       Diagnostic.NONE)
    c._changed(master_address, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
    assert c.peers_lost == 1 and len(driver.lost) == 1
    survivors = [m.name for m in membership.members if m.name != master_node]
    assert driver.lost[0][0] == survivors.index("node-a") * c.settings.rank_step


class SnapshotDetector(RecordingDetector):
    """A detector with sessions to show: what the worker's change and stats frames would have told it."""

    def __init__(self, interface: str, local: IPAddress, config: object, **kwargs: Any) -> None:
        super().__init__(interface, local, config, **kwargs)
        self.scheduled_realtime = interface == "eth0"

    def snapshot(self) -> dict[IPAddress, SessionView]:
        return {peer: SessionView(state=SessionState.UP if peer == A("198.51.100.12") else SessionState.ADMIN_DOWN,
                                  flaps=2 if peer == A("198.51.100.13") else 0, detection_time=0.05,
                                  longest_silence=0.0123) for peer in self.peers}


def test_the_status_table_shows_each_session_by_interface_and_peer() -> None:
    web = group(["node-a", "node-b", "node-c"], "eth0", 7, v4=["198.51.100.100"])
    drivers = {Family.IPV4: FakeDriver(FakeRouter(State.MASTER))}
    c = Coordinator(LivenessSettings(), asyncio.new_event_loop(), lambda: [(member(web, "node-a"), drivers)],
                    SnapshotDetector)  # type: ignore[arg-type]
    c.ensure(NODE_A_INTERFACES["eth0"])
    c.ensure(NODE_A_INTERFACES["eth1"])  # no group there: no peer needed
    table = c.status_table()
    assert table.title == "liveness"
    assert table.columns == ("INTERFACE", "PEER", "NODE", "SESSION", "DETECT MS", "FLAPS", "LONGEST SILENCE MS",
                             "REALTIME WORKER")
    assert table.rows == (
        ("eth0", "198.51.100.12", "node-b", "up", 50.0, 0, 12.3, "yes"),
        ("eth0", "198.51.100.13", "node-c", "admindown", 50.0, 2, 12.3, "yes"),
        ("eth1", None, None, "no peer needed", None, None, None, "no"),
    )
    from vipcore.backend.host import status_problem

    assert status_problem([table]) is None  # JSON scalars, one per column


class HearingDetector(RecordingDetector):
    """Says how long each peer has been silent, as the worker's change frames let the real one."""

    silences: dict[IPAddress, float] = {}

    def silence(self, peer: IPAddress) -> float | None:
        return self.silences.get(peer)


def test_a_lost_peer_is_counted_from_when_it_was_last_heard() -> None:
    """The failover's detect phase starts at the peer's last packet: the detection time plus however late the
    worker and the event loop were; an implausible measure falls back to the detection time."""
    web = group(["node-a", "node-b", "node-c"], "eth0", 8, v4=["198.51.100.101"])
    membership = member(web, "node-a")
    if membership.members[0].name == "node-a":
        web = group(["node-a", "node-b", "node-c"], "eth0", 7, v4=["198.51.100.100"])
        membership = member(web, "node-a")
    master = membership.members[0]
    address = next(a for a in master.addresses if a.version == 4)
    detect = LivenessSettings().detection_time
    for measured, expected in ((detect + 0.03, detect + 0.03), (None, detect), (detect / 2, detect), (1e6, detect)):
        driver = FakeDriver(FakeRouter(State.BACKUP, master=address))
        c = Coordinator(LivenessSettings(), asyncio.new_event_loop(), lambda: [(membership, {Family.IPV4: driver})],
                        HearingDetector)  # type: ignore[arg-type]
        c.ensure(NODE_A_INTERFACES["eth0"])
        HearingDetector.silences = {} if measured is None else {address: measured}
        c._changed(address, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        assert driver.silent == [pytest.approx(expected)], measured


def test_a_burst_of_transitions_is_one_refresh_in_one_pass_over_the_groups() -> None:
    """255 groups' first transitions at start-up: a refresh per report walked every group per member —
    a core busy for minutes (bench/failover.py --sections cpu --cpu-groups 255: 59 CPU-s/min)."""
    memberships = [(member(group(["node-a", "node-b", "node-c"], "eth0", vrid, v4=[f"198.51.100.{100 + vrid}"]),
                           "node-a"), {Family.IPV4: FakeDriver(FakeRouter(State.MASTER))}) for vrid in range(1, 41)]
    walks = 0

    def groups() -> list[tuple[Membership, Mapping[Family, FakeDriver]]]:
        nonlocal walks
        walks += 1
        return memberships

    loop = asyncio.new_event_loop()
    try:
        c = Coordinator(LivenessSettings(), loop, groups, RecordingDetector)  # type: ignore[arg-type]
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector)
        walks = 0
        for _ in memberships:  # every router reports its transition
            c.schedule_refresh()
        assert walks == 0  # nothing yet: the burst is not over
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert walks == 1  # one refresh, one walk over the groups (not one per group and member)
        assert detector.peers == {A("198.51.100.12"), A("198.51.100.13")}
    finally:
        loop.close()


ADDRESSES = {**{f"node-{c}": A(f"198.51.100.1{i + 1}") for i, c in enumerate("abc")},
             **{f"phantom-{i}": A(f"198.51.100.2{i}") for i in range(5)}}


def _ranked(me: str, order: list[str]) -> Membership:
    """A membership of ``me`` in a group ranked exactly ``order`` (best first), phantoms included: members
    a group names whose agent never ran (a node Ready without its agent, bench/failover.py's phantoms)."""
    addresses = ADDRESSES
    web = group(sorted(order), "eth0", 9, v4=["198.51.100.109"])
    members = tuple(PeerNode(name, 250 - 8 * rank, (addresses[name],)) for rank, name in enumerate(order))
    return Membership(web, me, next(m.priority for m in members if m.name == me), members)


def _up(c: Coordinator, *nodes: str) -> None:
    for node in nodes:
        c._changed(ADDRESSES[node], SessionState.DOWN, SessionState.UP, Diagnostic.NONE)


def test_members_ranked_before_the_dead_master_or_never_heard_do_not_delay_the_takeover() -> None:
    """bench/failover.py's many-groups section: 64 groups on 3 nodes plus phantom members (named by the
    groups, never running). The survivors waited 100-300 ms of rank delay for phantoms (elect 101/205/301 ms
    in /status), so the group's gap was 200-500 ms instead of ~60. A member ranked before the master would
    be master if it were alive (preemption); a member we keep a session with that never came Up is not a
    survivor. Only live members between the master and us delay us."""
    order = ["phantom-1", "node-c", "phantom-2", "node-b", "node-a"]
    master = A("198.51.100.13")
    delays = {}
    for me in ("node-a", "node-b"):
        driver = FakeDriver(FakeRouter(State.BACKUP, master=master))
        c = coordinator([(_ranked(me, order), {Family.IPV4: driver})])
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector)
        # A backup watches its master and the members between it and itself (to know who survives).
        between = {"node-a": {"node-c", "phantom-2", "node-b"}, "node-b": {"node-c", "phantom-2"}}[me]
        assert {c._node_by_address(a) for a in detector.peers} == between
        _up(c, *({"node-c", "node-b", "node-a"} - {me}))  # phantom-2's session never comes up
        c._changed(master, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        delays[me] = driver.lost[0][0]
    assert delays == {"node-b": 0.0, "node-a": c.settings.rank_step}


def test_a_member_between_the_master_and_us_we_cannot_see_counts_as_alive() -> None:
    """Members we keep no session with (more than MAX_RANK_STEPS between the master and us): assumed
    alive, so a deep-ranked backup waits the longest delay rather than racing a better survivor."""
    order = ["node-c", "phantom-0", "phantom-1", "phantom-2", "phantom-3", "node-b", "node-a"]
    driver = FakeDriver(FakeRouter(State.BACKUP, master=A("198.51.100.13")))
    c = coordinator([(_ranked("node-a", order), {Family.IPV4: driver})])
    c.ensure(NODE_A_INTERFACES["eth0"])
    detector = c.detectors["eth0"]
    assert isinstance(detector, RecordingDetector)
    assert {c._node_by_address(a) for a in detector.peers} == {"node-c"}  # too deep: the master alone
    _up(c, "node-c")
    c._changed(A("198.51.100.13"), SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
    assert driver.lost[0][0] == MAX_RANK_STEPS * c.settings.rank_step


def test_a_live_member_ranked_before_the_master_still_counts() -> None:
    """A node back from a drain preempts only the groups it ranks first for: it can be alive and ranked
    before a master it did not take back. Seen Up, it is a survivor."""
    order = ["node-b", "node-c", "node-a"]  # node-c is master although node-b outranks it
    driver = FakeDriver(FakeRouter(State.BACKUP, master=A("198.51.100.13")))
    c = coordinator([(_ranked("node-a", order), {Family.IPV4: driver})])
    c.ensure(NODE_A_INTERFACES["eth0"])
    _up(c, "node-b", "node-c")
    c._changed(A("198.51.100.13"), SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
    assert driver.lost[0][0] == c.settings.rank_step
