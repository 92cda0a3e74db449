"""Which peers get a liveness session, and what a lost one means (no sockets: a recording detector)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable, Mapping
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
        self.relaxed: set[IPAddress] = set()
        #: Sessions a test brought Up (the worker-backed detector knows its sessions' states).
        self.up: set[IPAddress] = set()

    def start(self) -> None:
        pass

    def set_peers(self, peers: Iterable[IPAddress], relaxed: Iterable[IPAddress] = ()) -> None:
        self.peers = set(peers)
        self.relaxed = set(relaxed)

    def state(self, peer: IPAddress) -> SessionState | None:
        return SessionState.UP if peer in self.up else SessionState.DOWN

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
    #: Set when the work a takeover queued (addresses, announcements) is done; None: nothing pending.
    work_done: asyncio.Event | None = None

    #: Whether the garbage collector was on when told.
    collecting: list[bool] = attrs.Factory(list)

    #: What the coordinator asked of it at the end of a takeover's pass, in order (with ``told``).
    told: list[str] | None = None

    def peer_lost(self, delay: float, what: str, silent_for: float = 0.0,
                  held: list[Callable[[], None]] | None = None) -> None:
        import gc

        self.lost.append((delay, what))
        self.silent.append(silent_for)
        self.collecting.append(gc.isenabled())
        told = self.told
        if told is not None:
            told.append("router" if delay == 0.0 else "ranked")
            if held is not None and delay == 0.0:
                held.append(lambda: told.append("advert"))

    def claim(self, detected: float | None = None) -> bool:
        if self.told is not None:
            self.told.append("claim")
        return self.told is not None

    def announce_claim(self) -> bool:
        if self.told is not None:
            self.told.append("announce claim")
        return True

    def release_claim(self) -> bool:
        return False

    def announce_early(self) -> bool:
        if self.told is not None:
            self.told.append("announce")
        return True

    @property
    def busy(self) -> bool:
        return self.work_done is not None and not self.work_done.is_set()

    async def settled(self) -> None:
        if self.work_done is not None:
            await self.work_done.wait()


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
            address = next(a for a in m.addresses if a.version == 4)
            c.detectors["eth0"].up.add(address)  # type: ignore[attr-defined]
            c._changed(address, SessionState.DOWN, SessionState.UP,
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
                                  longest_silence=0.0123, required_min_rx=1.0, tx_interval=0.01)
                for peer in self.peers}


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
                             "ASKED RX MS", "TX MS", "REALTIME WORKER", "PLANNED VIPS", "WORKER CLAIMS")
    assert table.rows == (
        ("eth0", "198.51.100.12", "node-b", "up", 50.0, 0, 12.3, 1000.0, 10.0, "yes", 0, "0"),
        ("eth0", "198.51.100.13", "node-c", "admindown", 50.0, 2, 12.3, 1000.0, 10.0, "yes", 0, "0"),
        ("eth1", None, None, "no peer needed", None, None, None, None, None, "no", None, None),
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
    """Bring the sessions to ``nodes`` Up, as the worker would report them."""
    for node in nodes:
        for detector in c.detectors.values():
            assert isinstance(detector, RecordingDetector)
            detector.up.add(ADDRESSES[node])
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
        # A backup keeps a session with every member: it knows who of them survives.
        assert {c._node_by_address(a) for a in detector.peers} == set(order) - {me}
        _up(c, *({"node-c", "node-b", "node-a"} - {me}))  # phantom-2's session never comes up
        c._changed(master, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        delays[me] = driver.lost[0][0]
    assert delays == {"node-b": 0.0, "node-a": c.settings.rank_step}


def test_a_member_between_the_master_and_us_we_cannot_see_counts_as_alive() -> None:
    """Members we keep no session with (keepalived peers): assumed alive, at most MAX_RANK_STEPS of them,
    so a deep-ranked backup waits the longest delay rather than racing a better survivor."""
    order = ["node-c", "phantom-0", "phantom-1", "phantom-2", "phantom-3", "node-b", "node-a"]
    driver = FakeDriver(FakeRouter(State.BACKUP, master=A("198.51.100.13")))
    c = coordinator([(_ranked("node-a", order), {Family.IPV4: driver})],
                    keepalived_peers=[f"phantom-{i}" for i in range(4)])
    c.ensure(NODE_A_INTERFACES["eth0"])
    detector = c.detectors["eth0"]
    assert isinstance(detector, RecordingDetector)
    assert {c._node_by_address(a) for a in detector.peers} == {"node-c", "node-b"}  # no keepalived sessions
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


# -- asymmetric rates: fast only from the peers this node must see fail fast (issue 14) ------------

B, C = A("198.51.100.12"), A("198.51.100.13")
ADDRESS = {"node-b": B, "node-c": C}


def groups_held_by(holder: str, count: int = 1) -> list[Membership]:
    """Memberships of node-a in groups (of node-a, node-b, node-c) whose first-ranked member is ``holder``."""
    found = []
    for vrid in range(1, 255):
        web = group(["node-a", "node-b", "node-c"], "eth0", vrid, v4=[f"198.51.100.{vrid}"])
        membership = member(attrs.evolve(web, name=f"{web.name}-{vrid}"), "node-a")  # the name decides the ranking
        if membership.members[0].name == holder:
            found.append(membership)
            if len(found) == count:
                return found
    raise AssertionError(f"no group held by {holder}")


def peers_of(entries: list[tuple[Membership, Mapping[Family, FakeDriver]]]) -> RecordingDetector:
    c = coordinator(entries)
    c.ensure(NODE_A_INTERFACES["eth0"])
    detector = c.detectors["eth0"]
    assert isinstance(detector, RecordingDetector)
    return detector


def test_a_master_asks_its_backups_for_the_slow_rate() -> None:
    """The node holding every group sends fast to its backups (they watch it) and hears them slowly."""
    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.MASTER))}) for m in groups_held_by("node-a", 3)]
    detector = peers_of(entries)
    assert detector.peers == {B, C} and detector.relaxed == {B, C}


def test_a_backup_asks_the_master_for_the_fast_rate_and_keeps_the_other_backups_slow() -> None:
    [held_by_b] = groups_held_by("node-b")
    detector = peers_of([(held_by_b, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))})])
    # node-c is a backup too: its session stays Up, slowly, so that it is sped up by a Poll (not a new
    # handshake at one packet a second) if it becomes this group's master.
    assert detector.peers == {B, C} and detector.relaxed == {C}


def test_fast_wins_when_a_peer_is_a_backup_of_one_group_and_the_master_of_another() -> None:
    [held_by_a], [held_by_b] = groups_held_by("node-a"), groups_held_by("node-b")
    detector = peers_of([(held_by_a, {Family.IPV4: FakeDriver(FakeRouter(State.MASTER))}),
                         (held_by_b, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))})])
    assert detector.peers == {B, C} and detector.relaxed == {C}


def test_a_new_master_is_asked_for_the_fast_rate_and_the_old_one_slowed() -> None:
    [held_by_b] = groups_held_by("node-b")
    router = FakeRouter(State.BACKUP, master=B)
    c = coordinator([(held_by_b, {Family.IPV4: FakeDriver(router)})])
    c.ensure(NODE_A_INTERFACES["eth0"])
    detector = c.detectors["eth0"]
    assert isinstance(detector, RecordingDetector) and detector.relaxed == {C}
    router.master = C  # node-b failed over to node-c (its adverts now come from node-c)
    c.refresh()
    assert detector.peers == {B, C} and detector.relaxed == {B}


def test_a_backup_that_does_not_know_its_master_watches_every_member() -> None:
    [held_by_b] = groups_held_by("node-b")
    detector = peers_of([(held_by_b, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP))})])
    assert detector.peers == {B, C} and detector.relaxed == set()


def test_a_master_that_changes_without_a_transition_here_is_followed() -> None:
    """A failover or a preemption elsewhere changes a backup's master while the backup stays Backup (no
    transition of its own, so no refresh from one): the driver says so (``on_master``, the backend's
    ``schedule_refresh``) and the new master is asked for the fast rate one loop pass later. (It was a
    poll of every router's master every 0.1 s: 0.25 CPU-s/min of the agent at 64 groups.)"""
    [held_by_b] = groups_held_by("node-b")
    router = FakeRouter(State.BACKUP, master=B)
    loop = asyncio.new_event_loop()
    try:
        c = Coordinator(LivenessSettings(), loop, lambda: [(held_by_b, {Family.IPV4: FakeDriver(router)})],
                        RecordingDetector)  # type: ignore[arg-type]
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector) and detector.relaxed == {C}
        router.master = C
        c.schedule_refresh()
        loop.run_until_complete(asyncio.sleep(0))
        assert detector.relaxed == {B}
        c.close(graceful=False)
    finally:
        loop.close()


# -- watchers: only the first backups of a group watch its master fast (issue 14, 16 nodes) --------

from tests.helpers.memberships import NODES  # noqa: E402
from vipcore.core.errors import ConfigError  # noqa: E402
from vipcore.core.model import Node  # noqa: E402

D = A("198.51.100.14")
FOUR = (*NODES, Node("node-d", (D, A("2001:db8:100::14"), A("203.0.113.14"), A("2001:db8:200::14"))))


class UpDetector(RecordingDetector):
    """Says which sessions are Up (all of them unless told otherwise)."""

    down: set[IPAddress] = set()

    def state(self, peer: IPAddress) -> SessionState:
        return SessionState.DOWN if peer in self.down else SessionState.UP


def four_node_group(position: int) -> Membership:
    """node-a's membership in a group of four nodes where it is ranked ``position`` (0 = the master)."""
    for vrid in range(1, 255):
        web = group(["node-a", "node-b", "node-c", "node-d"], "eth0", vrid, v4=[f"198.51.100.{vrid}"])
        membership = member(attrs.evolve(web, name=f"{web.name}-{vrid}"), "node-a", FOUR)
        if [m.name for m in membership.members].index("node-a") == position:
            return membership
    raise AssertionError(f"no group with node-a at {position}")


def watched(position: int, down: set[IPAddress] = frozenset(), watchers: int = 2) -> tuple[IPAddress, bool]:
    membership = four_node_group(position)
    master = membership.members[0]
    address = next(a for a in master.addresses if a.version == 4)
    UpDetector.down = set(down)
    c = Coordinator(LivenessSettings(watchers=watchers), asyncio.new_event_loop(),
                    lambda: [(membership, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=address))})],
                    UpDetector)  # type: ignore[arg-type]
    c.ensure(NODE_A_INTERFACES["eth0"])
    detector = c.detectors["eth0"]
    assert isinstance(detector, UpDetector) and detector.peers == {B, C, D}
    return address, address not in detector.relaxed


def test_the_first_two_backups_watch_the_master_fast_the_others_slowly() -> None:
    assert watched(1)[1] and watched(2)[1]
    assert not watched(3)[1]  # two backups would take over before node-a: it hears the master once a second
    assert watched(3, watchers=3)[1]


def test_a_backup_ahead_without_a_session_up_does_not_count() -> None:
    """A member that is down (or never ran) would not take over: the next ones watch in its place."""
    membership = four_node_group(3)
    second = next(a for a in membership.members[1].addresses if a.version == 4)
    assert watched(3, down={second})[1]


def test_watchers_is_a_setting() -> None:
    assert LivenessSettings().watchers == 2
    assert LivenessSettings.from_mapping({"watchers": 1}).watchers == 1
    for bad in (0, 256, True, "2"):
        with pytest.raises(ConfigError, match="liveness.watchers"):
            LivenessSettings.from_mapping({"watchers": bad})


def test_refreshes_wait_until_the_groups_of_a_lost_peer_have_been_taken() -> None:
    """A refresh walks every group (6 ms at 64 groups on the loaded lab VM); run between a lost peer and
    the takeover's address batch and announcements it delayed every group of the dead node
    (bench/failover.py, many groups). The refreshes the takeover's reports ask for wait until the
    routers that acted are settled (at most ``refresh_hold``), then one runs."""
    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))}) for m in groups_held_by("node-b", 3)]
    walks = 0

    def groups() -> list[tuple[Membership, Mapping[Family, FakeDriver]]]:
        nonlocal walks
        walks += 1
        return entries

    loop = asyncio.new_event_loop()
    try:
        c = Coordinator(LivenessSettings(), loop, groups, RecordingDetector)  # type: ignore[arg-type]
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector)
        detector.up.update({B, C})
        c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
        loop.run_until_complete(asyncio.sleep(0.001))
        for _, drivers in entries:
            drivers[Family.IPV4].work_done = asyncio.Event()
        detector.up.discard(B)
        c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        assert all(d.lost for _, drivers in entries for d in drivers.values())
        before = walks
        c.schedule_refresh()  # what the takeover's reports ask for
        loop.run_until_complete(asyncio.sleep(0.01))
        assert walks == before  # held: the takeover's work is not done
        for _, drivers in entries:
            drivers[Family.IPV4].work_done.set()  # type: ignore[union-attr]
        loop.run_until_complete(asyncio.sleep(0.01))
        assert walks == before + 1  # then one refresh
        # A takeover that never settles holds refreshes for refresh_hold at most.
        c.refresh_hold = 0.02
        detector.up.add(B)
        c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
        loop.run_until_complete(asyncio.sleep(0.001))
        for _, drivers in entries:
            drivers[Family.IPV4].work_done = asyncio.Event()
        detector.up.discard(B)
        c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        before = walks
        loop.run_until_complete(asyncio.sleep(0.005))
        assert walks == before
        loop.run_until_complete(asyncio.sleep(0.05))
        assert walks == before + 1
    finally:
        c.close(graceful=False)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@attrs.define
class BrokenDriver(FakeDriver):
    def peer_lost(self, delay: float, what: str, silent_for: float = 0.0,
                  held: list[Callable[[], None]] | None = None) -> None:
        raise RuntimeError("a bug in one router")


def test_a_router_failing_to_act_on_a_lost_peer_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """The best-ranked survivors decide inside the coordinator's pass (no timer per router to isolate
    them): one router raising must not leave the groups after it in the pass untaken."""
    memberships = groups_held_by("node-b", 3)
    broken = BrokenDriver(FakeRouter(State.BACKUP, master=B))
    entries = [(memberships[0], {Family.IPV4: broken})]
    entries += [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))}) for m in memberships[1:]]
    c = coordinator(entries)  # type: ignore[arg-type]
    c.ensure(NODE_A_INTERFACES["eth0"])
    c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
    c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
    assert all(drivers[Family.IPV4].lost for _, drivers in entries[1:])
    assert "a bug in one router" in caplog.text


def test_no_garbage_collection_while_the_groups_of_a_lost_peer_are_taken() -> None:
    """The collector's young generations took 1-16 ms per run in the takeover's agent (traced in the lab):
    paused from the loss (the pass over the groups included) until the routers that acted are settled, on
    again after (unless it was off), and at once when none of them has work queued."""
    import gc

    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))}) for m in groups_held_by("node-b", 2)]
    loop = asyncio.new_event_loop()
    c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector)  # type: ignore[arg-type]
    try:
        c.ensure(NODE_A_INTERFACES["eth0"])
        detector = c.detectors["eth0"]
        assert isinstance(detector, RecordingDetector)
        for collecting in (True, False):
            (gc.enable if collecting else gc.disable)()
            detector.up.add(B)
            c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
            for _, drivers in entries:
                drivers[Family.IPV4].work_done = asyncio.Event()
            detector.up.discard(B)
            c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
            assert not gc.isenabled()
            assert not any(d.collecting[-1] for _, drivers in entries for d in drivers.values())  # nor in the pass
            loop.run_until_complete(asyncio.sleep(0.005))
            assert not gc.isenabled()  # the routers are still busy
            for _, drivers in entries:
                drivers[Family.IPV4].work_done.set()  # type: ignore[union-attr]
            loop.run_until_complete(asyncio.sleep(0.005))
            assert gc.isenabled() is collecting
    finally:
        gc.enable()
        c.close(graceful=False)
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_the_collector_is_on_again_at_once_when_no_router_has_work_queued() -> None:
    import gc

    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B))}) for m in groups_held_by("node-b", 2)]
    c = coordinator(entries)  # type: ignore[arg-type]
    c.ensure(NODE_A_INTERFACES["eth0"])
    gc.enable()
    c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
    c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
    assert all(not d.collecting[-1] for _, drivers in entries for d in drivers.values())
    assert gc.isenabled()


def test_the_pass_over_a_lost_peers_groups_ends_by_sending_their_addresses() -> None:
    """The routers that take over at once have their VIPs claimed (queued) first; the pass hands that batch
    to the kernel (the backend passes the holder's ``send_queued``), so nothing the loop has ready after it
    (received adverts, periodic adverts) runs before the VIPs are in the kernel. Then, still in the pass,
    every claim's first announcement, the routers' decisions, then the takeover adverts they held back."""
    told: list[str] = []

    def send() -> bool:
        told.append("send")
        return True

    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B), told=told)})
               for m in groups_held_by("node-b", 3)]
    loop = asyncio.new_event_loop()
    c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector,  # type: ignore[arg-type]
                    send_addresses=send)
    try:
        c.ensure(NODE_A_INTERFACES["eth0"])
        c._changed(B, SessionState.DOWN, SessionState.UP, Diagnostic.NONE)
        assert told == []  # a session coming up sends nothing
        c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        assert told == ["claim"] * 3 + ["send"] + ["announce claim"] * 3 + ["router"] * 3 + ["advert"] * 3
    finally:
        c.close(graceful=False)
        loop.close()


def test_groups_another_survivor_ranks_first_are_told_after_the_takeovers_are_on_the_wire() -> None:
    """Of the lost node's groups, those this node takes at once come first: decided, their VIPs sent,
    announced and advertised; only then are the routers that merely arm a rank delay told (a few
    milliseconds later changes nothing for them), with their silence counted up to then."""
    told: list[str] = []
    held_by_b = groups_held_by("node-b", 8)
    ours = [m for m in held_by_b if m.members[1].name == "node-a"]
    theirs = [m for m in held_by_b if m.members[1].name == "node-c"]
    assert ours and theirs
    entries = [(m, {Family.IPV4: FakeDriver(FakeRouter(State.BACKUP, master=B), told=told)}) for m in held_by_b]
    loop = asyncio.new_event_loop()
    c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector,  # type: ignore[arg-type]
                    send_addresses=lambda: told.append("send") is None)
    try:
        c.ensure(NODE_A_INTERFACES["eth0"])
        node_c = next(a for a in theirs[0].members[1].addresses if a.version == 4)
        c.detectors["eth0"].up.add(node_c)  # type: ignore[attr-defined]
        c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
        first = len(ours)
        assert told == (["claim"] * first + ["send"] + ["announce claim"] * first + ["router"] * first
                        + ["advert"] * first + ["ranked"] * len(theirs))
        delays = {m.group.name: drivers[Family.IPV4].lost[0][0] for m, drivers in entries}
        assert all(delays[m.group.name] == 0.0 for m in ours)
        assert all(delays[m.group.name] == c.settings.rank_step for m in theirs)
        taken = min(drivers[Family.IPV4].silent[0] for m, drivers in entries if m in ours)
        assert all(drivers[Family.IPV4].silent[0] >= taken for m, drivers in entries if m in theirs)
        assert c.groups_acted == len(held_by_b)
    finally:
        c.close(graceful=False)
        loop.close()


# -- the zero-delay groups' VIPs in the kernel before their routers decide -------------------------------


class PassHolder:
    """The address holder's side of a takeover's pass, in order: an add or remove is queued when asked and
    answered when sent (``send_queued``, as the kernel answers inside the ``sendmsg``). Each call notes how
    many routers were MASTER at that moment."""

    def __init__(self) -> None:
        self.drivers: list[Any] = []
        self.held: set[IPAddress] = set()
        self.queued: list[tuple[bool, tuple[IPAddress, ...], asyncio.Future[tuple[IPAddress, ...]]]] = []
        self.log: list[tuple[str, tuple[IPAddress, ...], int]] = []

    def _masters(self) -> int:
        return sum(d.router.state is State.MASTER for d in self.drivers)

    def _ask(self, add: bool, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        done: asyncio.Future[tuple[IPAddress, ...]] = asyncio.get_running_loop().create_future()
        self.queued.append((add, tuple(vips), done))
        self.log.append(("add" if add else "remove", tuple(vips), self._masters()))
        return done

    def add(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(True, vips)

    def add_now(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(True, vips)

    def remove(self, interface: str, vips: Iterable[IPAddress]) -> asyncio.Future[tuple[IPAddress, ...]]:
        return self._ask(False, vips)

    def send_queued(self) -> bool:
        if not self.queued:
            return False
        queued, self.queued = self.queued, []
        for add, vips, done in queued:
            (self.held.update if add else self.held.difference_update)(vips)
            done.set_result(vips)
        self.log.append(("send", tuple(v for _, vips, _ in queued for v in vips), self._masters()))
        return True

    def announce_now(self, interface: str, vips: Iterable[IPAddress]) -> bool:
        self.log.append(("announce", tuple(vips), self._masters()))
        return True

    async def announce(self, interface: str, vips: Iterable[IPAddress]) -> None:
        self.announce_now(interface, vips)


class PassLink:
    """Counts the adverts of the routers on it."""

    def __init__(self) -> None:
        from vipcore_native_vrrp.transport import LinkCounters

        self.handlers: dict[int, Any] = {}
        self.counters = LinkCounters()

    def send(self, data: bytes, src: IPAddress, dst: IPAddress) -> bool:
        self.counters.sent += 1
        return True

    def queue(self, send: Any, failed: Callable[[], None]) -> None:
        self.counters.sent += 1


def real_drivers(memberships: list[Membership], holder: Any, loop: asyncio.AbstractEventLoop,
                 router_class: type | None = None, interface: str = "eth0") -> list[tuple[Membership, Mapping[Family, Any]]]:
    """One real RouterDriver (IPv4) per membership, BACKUP and following node-b's adverts."""
    from vipcore.net.addresses import AnnounceSchedule
    from vipcore_native_vrrp.driver import RouterDriver
    from vipcore_native_vrrp.protocol import Advertisement, Router, RouterConfig, encode

    link, dst = PassLink(), A("224.0.0.18")
    entries: list[tuple[Membership, Mapping[Family, Any]]] = []
    for membership in memberships:
        vips = membership.group.vips_v4
        config = RouterConfig(vrid=membership.group.vrid, family=Family.IPV4, primary=A("198.51.100.11"), vips=vips,
                              priority=100, interval_cs=100, destinations=(dst,), sources=None)
        driver = RouterDriver(group=membership.group.name, interface=interface,
                              router=(router_class or Router)(config), link=link,  # type: ignore[arg-type]
                              holder=holder, schedule=AnnounceSchedule(count=1),  # type: ignore[arg-type]
                              report=lambda *a: None, loop=loop)
        driver.start()
        driver._on_packet(encode(Advertisement(membership.group.vrid, 200, 100, vips), B, dst), B, dst, 255)
        assert driver.router.state is State.BACKUP and driver.router.master == B
        if isinstance(holder, PassHolder):
            holder.drivers.append(driver)
        entries.append((membership, {Family.IPV4: driver}))
    return entries


def test_the_zero_delay_groups_vips_are_in_the_kernel_and_announced_before_a_router_decides() -> None:
    """The groups this node takes at once: their VIPs go to the kernel (one batch) and are announced before
    any of their routers' machines runs; then the routers decide, find their VIPs there and their first
    announcement sent (no second add, no second announcement). The groups another survivor ranks first
    are not touched, nor a released router (a drained node) of a group we would take."""
    held_by_b = groups_held_by("node-b", 10)
    ours = [m for m in held_by_b if m.members[1].name == "node-a"]
    theirs = [m for m in held_by_b if m.members[1].name == "node-c"]
    assert len(ours) > 1 and theirs
    drained, ours = ours[0], ours[1:]
    ours_vips = {v for m in ours for v in m.group.vips_v4}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(held_by_b, holder, loop)
        for membership, drivers in entries:
            if membership is drained:
                drivers[Family.IPV4].release("node drained")
        c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued)
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            c.detectors["eth0"].up.add(C)  # type: ignore[attr-defined]
            c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
            # Before the first router became MASTER: every zero-delay group's VIPs sent and announced.
            before = [entry for entry in holder.log if entry[2] == 0]
            sent = {v for kind, vips, _ in before if kind == "send" for v in vips}
            announced = {v for kind, vips, _ in before if kind == "announce" for v in vips}
            assert ours_vips <= sent and ours_vips <= announced
            assert [kind for kind, _, _ in before].count("send") == 1  # one batch
            for membership, drivers in entries:
                expected = State.MASTER if membership in ours else State.BACKUP
                assert drivers[Family.IPV4].router.state is expected
            for _, drivers in entries:
                await drivers[Family.IPV4].settled()
            assert holder.held == ours_vips
            adds = [v for kind, vips, _ in holder.log if kind == "add" for v in vips]
            announcements = [v for kind, vips, _ in holder.log if kind == "announce" for v in vips]
            assert sorted(map(str, adds)) == sorted(map(str, ours_vips))  # asked once each
            assert sorted(map(str, announcements)) == sorted(map(str, ours_vips))  # announced once each
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())


def test_a_router_that_does_not_take_over_gets_its_pre_added_vips_removed_in_the_pass(
        caplog: pytest.LogCaptureFixture) -> None:
    """A zero-delay group whose router fails to decide in the pass (an exception): the VIPs put in the
    kernel for it before the decision are removed, and that removal sent, in the same pass; never a VIP
    held by a non-master. The other groups are taken as usual."""
    from vipcore_native_vrrp.protocol import Router

    ours = [m for m in groups_held_by("node-b", 8) if m.members[1].name == "node-a"][:3]
    assert len(ours) == 3
    broken = ours[1].group.vips_v4

    class BrokenRouter(Router):
        def handle_timer(self, now: float, advance: float = 0.0) -> list[Any]:
            if self.config.vips == broken:
                raise RuntimeError("machine broken")
            return super().handle_timer(now, advance)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(ours, holder, loop, BrokenRouter)
        c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued)
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
            # In the pass: removed from the kernel again.
            assert not set(broken) & holder.held
            assert ("remove", broken, 2) in holder.log
            states = [drivers[Family.IPV4].router.state for _, drivers in entries]
            assert states == [State.MASTER, State.BACKUP, State.MASTER]
            for _, drivers in entries:
                await drivers[Family.IPV4].settled()
            assert holder.held == {v for m in (ours[0], ours[2]) for v in m.group.vips_v4}
            assert entries[1][1][Family.IPV4]._announcer is None
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())



@pytest.mark.lab
def test_with_the_kernel_the_zero_delay_groups_vips_are_held_and_announced_before_the_first_decision() -> None:
    """The same with the real address holder in a namespace: when the first router's machine takes over,
    the kernel already has every zero-delay group's VIPs and each was announced; the pass sent one netlink
    batch, answered in it; the workers neither add nor announce a second time, and each takeover's phases
    are in order (none negative)."""
    import subprocess
    import uuid

    from vipcore.net.addresses import AddressHolder
    from vipcore_native_vrrp.protocol import Router

    ns, dev = f"vcT8{uuid.uuid4().hex[:6]}", "vcT8c0"
    held_by_b = groups_held_by("node-b", 12)
    ours = [m for m in held_by_b if m.members[1].name == "node-a"]
    ours_vips = {str(v) for m in ours for v in m.group.vips_v4}

    def in_kernel() -> set[str]:
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show", "dev", dev], check=True,
                             capture_output=True, text=True).stdout
        return {line.split()[3].split("/")[0] for line in out.splitlines()}

    seen: list[tuple[set[str], int]] = []
    holders: list[AddressHolder] = []

    class WatchedRouter(Router):
        def handle_timer(self, now: float, advance: float = 0.0) -> list[Any]:
            actions = super().handle_timer(now, advance)
            if self.state is State.MASTER and not seen:
                seen.append((in_kernel(), holders[0].counters.garp_sent))
            return actions

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with AddressHolder(netns=ns) as holder:
            holders.append(holder)
            await holder.add(dev, [A("198.51.100.250")])  # the link read once, as a running agent has
            reports: list[Any] = []
            entries = real_drivers(held_by_b, holder, loop, WatchedRouter, interface=dev)
            for _, drivers in entries:
                drivers[Family.IPV4].report = lambda d, change, failover: reports.append(change)
            c = Coordinator(LivenessSettings(), loop, lambda: entries, RecordingDetector,  # type: ignore[arg-type]
                            send_addresses=holder.send_queued)
            try:
                c.ensure(attrs.evolve(NODE_A_INTERFACES["eth0"], name=dev))
                c.detectors[dev].up.add(C)  # type: ignore[attr-defined]
                batches, garps = holder.netlink.batches, holder.counters.garp_sent
                c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
                assert seen, "a router took over"
                kernel, announced = seen[0]
                assert ours_vips <= kernel and announced - garps == len(ours_vips)
                for _, drivers in entries:
                    await drivers[Family.IPV4].settled()
                await asyncio.sleep(0)
                assert in_kernel() - {"198.51.100.250"} == ours_vips
                assert holder.netlink.batches - batches == 1 and holder.netlink.answered_early >= 1
                assert holder.counters.garp_sent - garps == len(ours_vips)  # not a second time
                took = [change for change in reports if change.new is State.MASTER]
                assert len(took) == len(ours)
                for change in took:
                    phases = change.phases
                    assert phases is not None and None not in (phases.elect, phases.address, phases.announce)
                    assert min(phases.elect, phases.address, phases.announce) >= 0.0
            finally:
                c.close(graceful=False)
                for _, drivers in entries:
                    await drivers[Family.IPV4].close()

    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", "vcT8c1"], check=True)
        for name in (dev, "vcT8c1"):
            subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
        asyncio.run(scenario())
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


# -- takeover plans: the worker claims first, the pass adopts its claim ---------------------------------

PLAN_INFO = attrs.evolve(NODE_A_INTERFACES["eth0"], index=2, mac=bytes.fromhex("020000000001"))


def build_plan(interface: str, vips: tuple[IPAddress, ...]) -> Any:
    from vipcore.net.addresses import takeover_plan

    return takeover_plan(attrs.evolve(PLAN_INFO, name=interface), vips)


class PlanningDetector(RecordingDetector):
    """The worker-backed detector's side of takeover plans: the plan it holds per peer (each change noted,
    as the real one writes a frame only then), and the claim its worker reported at an expiry."""

    def __init__(self, interface: str, local: IPAddress, config: object, **kwargs: Any) -> None:
        super().__init__(interface, local, config, **kwargs)
        self.plans: dict[IPAddress, Any] = {}
        self.sent: list[tuple[IPAddress, Any]] = []
        self.claims: dict[IPAddress, Any] = {}

    def set_plan(self, peer: IPAddress, plan: Any) -> None:
        if self.plans.get(peer) != plan:
            self.sent.append((peer, plan))
        if plan is None:
            self.plans.pop(peer, None)
        else:
            self.plans[peer] = plan

    def clear_plans(self) -> None:
        for peer in list(self.plans):
            self.set_plan(peer, None)

    def planned(self, peer: IPAddress) -> Any:
        return self.plans.get(peer)

    def claim_of(self, peer: IPAddress) -> Any:
        return self.claims.pop(peer, None)


def _hear(driver: Any, master: IPAddress, priority: int = 200) -> None:
    """``driver``'s router hears an advert from ``master`` (its master moves there)."""
    from vipcore_native_vrrp.protocol import Advertisement, encode

    dst, vips = A("224.0.0.18"), driver.router.config.vips
    driver._on_packet(encode(Advertisement(driver.vrid, priority, 100, vips), master, dst), master, dst, 255)
    assert driver.router.master == master


def test_each_up_peer_gets_the_plan_of_the_groups_taken_at_once_and_a_moved_master_takes_its_group_out() -> None:
    held_by_b = groups_held_by("node-b", 10)
    ours = [m for m in held_by_b if m.members[1].name == "node-a"]
    assert len(ours) > 1

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(held_by_b, holder, loop)
        c = Coordinator(LivenessSettings(), loop, lambda: entries, PlanningDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued, plan_builder=build_plan)
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            detector = c.detectors["eth0"]
            assert isinstance(detector, PlanningDetector)
            assert detector.plans == {}  # no session Up: no plan
            detector.up |= {B, C}
            c.refresh()
            assert set(detector.plans) == {B}  # node-c masters nothing here
            assert detector.plans[B] == build_plan("eth0", tuple(v for m in ours for v in m.group.vips_v4))
            sent = len(detector.sent)
            c.refresh()
            assert len(detector.sent) == sent  # unchanged: nothing sent again
            # The master of one of our groups moves to node-c: that group is no longer node-b's to lose.
            moved = next(drivers for m, drivers in entries if m is ours[0])[Family.IPV4]
            _hear(moved, C)
            c.refresh()  # (the backend refreshes on a master heard elsewhere: on_master)
            assert detector.plans[B].vips == tuple(v for m in ours[1:] for v in m.group.vips_v4)
            assert C not in detector.plans  # node-b ranks before us there: another survivor takes it
            # node-b's session is not Up any more (a flap): no plan for it, and with node-b not counted
            # ahead of us, the moved group is ours at once if node-c is lost.
            detector.up.discard(B)
            c.refresh()
            assert set(detector.plans) == {C} and detector.plans[C].vips == ours[0].group.vips_v4
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())


def test_the_pass_adopts_the_workers_claim_without_a_second_announcement_and_removes_a_stale_one() -> None:
    """The worker put the planned VIPs in and announced them at the expiry. The pass asks the holder for
    them again (idempotent), announces none of them a second time, and the phases count from the worker's
    times. The plan was stale for one group (its master had moved to node-c after the plan was built):
    that group's VIPs are removed in the pass and its router stays a backup; so is a claimed VIP no group
    has any more (its group left after the plan)."""
    from vipcore_native_vrrp.liveness.detector import WorkerClaim

    held_by_b = groups_held_by("node-b", 10)
    ours = [m for m in held_by_b if m.members[1].name == "node-a"]
    assert len(ours) > 2
    stale, kept = ours[0], ours[1:]
    kept_vips = {v for m in kept for v in m.group.vips_v4}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(held_by_b, holder, loop)
        reports: list[Any] = []
        for _, drivers in entries:
            drivers[Family.IPV4].report = lambda d, change, failover: reports.append(change)
        c = Coordinator(LivenessSettings(), loop, lambda: entries, PlanningDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued, plan_builder=build_plan,
                        remove_addresses=holder.remove)  # type: ignore[arg-type]
        gone = A("198.51.100.250")
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            detector = c.detectors["eth0"]
            assert isinstance(detector, PlanningDetector)
            detector.up |= {B, C}
            c.refresh()
            plan = detector.plans[B]
            # After the plan: the stale group's master moves to node-c, and node-b dies before a refresh.
            _hear(next(drivers for m, drivers in entries if m is stale)[Family.IPV4], C)
            now = loop.time()
            worker = WorkerClaim(expired=now - 0.004, sent=now - 0.0039, acked=now - 0.0035, announced=now - 0.003,
                                 ok=True, vips=plan.vips + (gone,))
            detector.claims[B] = worker
            detector.up.discard(B)
            c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
            # In the pass: the stale group's VIPs removed (sent), its router still a backup.
            assert ("remove", stale.group.vips_v4, len(kept)) in holder.log
            assert ("remove", (gone,), len(kept)) in holder.log
            assert holder.queued == []
            for membership, drivers in entries:
                expected = State.MASTER if membership in kept else State.BACKUP
                assert drivers[Family.IPV4].router.state is expected
            for _, drivers in entries:
                await drivers[Family.IPV4].settled()
            assert holder.held == kept_vips
            adds = [v for kind, vips, _ in holder.log if kind == "add" for v in vips]
            assert sorted(map(str, adds)) == sorted(map(str, kept_vips))  # asked again, once each
            assert [entry for entry in holder.log if entry[0] == "announce"] == []  # the worker's is the first
            took = [change for change in reports if change.new is State.MASTER]
            assert len(took) == len(kept)
            for change in took:
                phases = change.phases
                assert phases is not None
                assert phases.elect == pytest.approx(worker.sent - worker.expired)
                assert phases.address == pytest.approx(worker.acked - worker.sent)
                assert phases.announce == pytest.approx(worker.announced - worker.acked)
                assert phases.detect is not None and phases.detect >= 0.0
            assert detector.plans == {}  # every plan predates this loss: none until the next refresh
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())


def test_a_worker_claim_that_failed_is_done_again_by_the_pass() -> None:
    """The worker's netlink send failed (counted in its claim): the pass claims and announces the usual way."""
    from vipcore_native_vrrp.liveness.detector import WorkerClaim

    ours = [m for m in groups_held_by("node-b", 10) if m.members[1].name == "node-a"]
    ours_vips = {v for m in ours for v in m.group.vips_v4}

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(ours, holder, loop)
        c = Coordinator(LivenessSettings(), loop, lambda: entries, PlanningDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued, plan_builder=build_plan)
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            detector = c.detectors["eth0"]
            assert isinstance(detector, PlanningDetector)
            detector.up |= {B}
            c.refresh()
            now = loop.time()
            detector.claims[B] = WorkerClaim(expired=now, sent=now, acked=None, announced=None, ok=False,
                                             vips=detector.plans[B].vips, error=105)
            c._changed(B, SessionState.UP, SessionState.DOWN, Diagnostic.CONTROL_DETECTION_EXPIRED)
            for _, drivers in entries:
                await drivers[Family.IPV4].settled()
            assert holder.held == ours_vips
            announced = [v for kind, vips, _ in holder.log if kind == "announce" for v in vips]
            assert sorted(map(str, announced)) == sorted(map(str, ours_vips))  # by the pass, once each
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())


def test_the_plans_one_pass_agrees_with_what_a_loss_would_take_for_every_peer() -> None:
    """The plans are computed for every peer in one pass over the groups; a loss computes its own peer's
    groups (``_takeovers``). Both, for groups held by node-b, by node-c, by us, and of unknown master."""
    from vipcore_native_vrrp.protocol import Router

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        holder = PassHolder()
        entries = real_drivers(groups_held_by("node-b", 6), holder, loop)
        entries += real_drivers(groups_held_by("node-c", 6), holder, loop)
        for _, drivers in entries[6:]:
            _hear(drivers[Family.IPV4], C)
        # Groups whose master this node has not heard yet (just joined): the expected master counts.
        from vipcore.net.addresses import AnnounceSchedule
        from vipcore_native_vrrp.driver import RouterDriver
        from vipcore_native_vrrp.protocol import RouterConfig

        for membership in groups_held_by("node-a", 3) + groups_held_by("node-c", 9)[6:]:
            config = RouterConfig(vrid=membership.group.vrid, family=Family.IPV4, primary=A("198.51.100.11"),
                                  vips=membership.group.vips_v4, priority=100, interval_cs=100,
                                  destinations=(A("224.0.0.18"),), sources=None)
            router = Router(config)
            router.start(loop.time())
            driver = RouterDriver(group=membership.group.name, interface="eth0", router=router,
                                  link=PassLink(), holder=holder,  # type: ignore[arg-type]
                                  schedule=AnnounceSchedule(count=1), report=lambda *a: None, loop=loop)
            entries.append((membership, {Family.IPV4: driver}))
        c = Coordinator(LivenessSettings(), loop, lambda: entries, PlanningDetector,  # type: ignore[arg-type]
                        send_addresses=holder.send_queued, plan_builder=build_plan)
        try:
            c.ensure(NODE_A_INTERFACES["eth0"])
            detector = c.detectors["eth0"]
            assert isinstance(detector, PlanningDetector)
            for up in ({B, C}, {B}, {C}):
                detector.up = set(up)
                c.refresh()
                groups = list(c.groups())
                taken = c._taken_at_once(groups, c._up(c._addresses(groups)))
                for node in ("node-b", "node-c"):
                    expected = [d for _, _, backups in c._takeovers(node, []) for d in backups]
                    assert taken.get(("eth0", node), []) == expected, (up, node)
            assert any(taken.values())
        finally:
            c.close(graceful=False)
            for _, drivers in entries:
                await drivers[Family.IPV4].close()

    asyncio.run(scenario())
