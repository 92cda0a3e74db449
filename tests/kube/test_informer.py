"""The Kubernetes source against the test API server, with faults injected."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import objects as o
from vipcore.core.model import DesiredState, Family
from vipcore.kube import ALL_KINDS, ApiUnavailableError, KubernetesSource, ObjectChange
from vipcore.testing.apiserver import ApiServer


class Recorder:
    """Every ObjectChange a source emits, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.changes: list[ObjectChange] = []

    def __call__(self, change: ObjectChange) -> None:
        with self.lock:
            self.changes.append(change)

    def of(self, kind: str, key: str) -> list[str]:
        with self.lock:
            return [c.type for c in self.changes if c.kind == kind and c.key == key]

    def versions(self) -> Counter[tuple[str, str, str, str]]:
        with self.lock:
            return Counter((c.kind, c.key, c.type, c.resource_version) for c in self.changes)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def make_source(server: ApiServer, **kwargs: object) -> KubernetesSource:
    options: dict[str, object] = dict(watch_timeout=30, backoff_initial=0.05, backoff_max=0.5, healthy_after=0.2,
                                      request_timeout=5)
    options.update(kwargs)
    return KubernetesSource(server.client(), **options)  # type: ignore[arg-type]


@pytest.fixture
def populated(server: ApiServer) -> ApiServer:
    server.create(o.node("node-a", "198.51.100.1"))
    server.create(o.node("node-b", "198.51.100.2", ready=False))
    server.create(o.service("web"))
    server.create(o.service("other-class", cls="example.com/lb"))
    server.create(o.service("no-class", cls=None))
    server.create(o.service("openelb", cls=None, annotations={"lb.kubesphere.io/v1alpha1": "openelb"}))
    server.create(o.endpoint_slice("web", ["node-a"]))
    server.create(o.vip_pool("lan", ["198.51.100.100-198.51.100.149"], default=True))
    server.create(o.eip("legacy", "203.0.113.0/28"))
    server.create(o.eip("bgp-pool", "203.0.113.64/28", protocol="bgp"))
    server.create(o.vip_group("abc-eth0", 42))
    return server


@pytest.fixture
def source(populated: ApiServer) -> Iterator[tuple[KubernetesSource, Recorder]]:
    src = make_source(populated)
    recorder = Recorder()
    src.on_object_change.append(recorder)
    src.start()
    assert src.wait_synced(10)
    try:
        yield src, recorder
    finally:
        src.stop()


def test_first_state_is_converted_and_filtered(source: tuple[KubernetesSource, Recorder]) -> None:
    src, _ = source
    state = src.state()
    assert [(n.name, n.ready) for n in state.nodes] == [("node-a", True), ("node-b", False)]
    assert [s.key for s in state.services] == ["default/openelb", "default/web"]
    assert [(s.service, s.ready_nodes) for s in state.endpoint_slices] == [("web", frozenset({"node-a"}))]
    assert [p.name for p in state.pools] == ["lan", "legacy"]
    assert state.vrids == {"abc-eth0": 42}
    # The VipGroups' Services: a renamed group inherits the VRID of the one it replaces, on every agent.
    assert state.lineage == {"abc-eth0": ("default/web",)}
    connection = src.connection()
    assert connection.connected and connection.synced and connection.relists == 0
    metrics = {(m.name, m.labels): m.value for m in src.metrics()}
    assert metrics[("vipcore_kubernetes_connected", ())] == 1.0
    assert metrics[("vipcore_kubernetes_cached_objects", (("kind", "services"),))] == 4


def test_default_class_serves_services_without_a_class(populated: ApiServer) -> None:
    src = make_source(populated, default_class=True, openelb=False)
    src.start()
    try:
        assert src.wait_synced(10)
        assert [s.key for s in src.state().services] == ["default/no-class", "default/openelb", "default/web"]
    finally:
        src.stop()


def test_invalid_objects_are_skipped_not_fatal(source: tuple[KubernetesSource, Recorder],
                                               populated: ApiServer) -> None:
    src, recorder = source
    populated.create(o.vip_pool("broken", ["198.51.100.9-198.51.100.1"]))
    wait_for(lambda: recorder.of("vippools", "broken") == ["ADDED"])
    assert [p.name for p in src.state().pools] == ["lan", "legacy"]
    assert "vippools/broken" in src.invalid and "ends before it starts" in src.invalid["vippools/broken"]


def test_changes_arrive_in_asyncio(populated: ApiServer) -> None:
    async def scenario() -> list[DesiredState]:
        src = make_source(populated)
        seen: list[DesiredState] = []
        changed = asyncio.Event()

        async def on_change(state: DesiredState) -> None:
            seen.append(state)
            changed.set()

        first = await src.initial(timeout=10)
        assert [s.key for s in first.services] == ["default/openelb", "default/web"]
        task = asyncio.create_task(src.watch(on_change))
        try:
            await asyncio.to_thread(populated.create, o.service("api"))
            await asyncio.wait_for(changed.wait(), 5)
            changed.clear()
            await asyncio.to_thread(populated.patch, "v1", "Service", "api",
                                    {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.100"}]}}},
                                    namespace="default", subresource="status")
            await asyncio.wait_for(changed.wait(), 5)
            # A change that does not alter the desired state is not dispatched.
            changed.clear()
            await asyncio.to_thread(populated.patch, "v1", "Service", "other-class",
                                    {"metadata": {"labels": {"x": "y"}}}, namespace="default")
            await asyncio.sleep(0.3)
            assert not changed.is_set()
        finally:
            task.cancel()
            src.stop()
        return seen

    seen = asyncio.run(scenario())
    assert [s.key for s in seen[0].services] == ["default/api", "default/openelb", "default/web"]
    api = [s for s in seen[-1].services if s.name == "api"][0]
    assert api.vips == (ipaddress.ip_address("198.51.100.100"),)


def test_initial_raises_a_clear_error_when_the_api_is_unreachable(tmp_path: object) -> None:
    server = ApiServer(crds=[o.__file__.replace("tests/helpers/objects.py", "deploy/crds")]).start()
    server.stop()  # the port is now closed
    src = make_source(server)

    async def scenario() -> None:
        with pytest.raises(ApiUnavailableError, match="no complete state"):
            await src.initial(timeout=0.5)

    try:
        asyncio.run(scenario())
        assert not src.connection().connected
        assert src.connection().errors >= 1
    finally:
        src.stop()


def _no_duplicates(recorder: Recorder) -> None:
    duplicated = {k: n for k, n in recorder.versions().items() if n > 1}
    assert not duplicated, f"changes emitted twice: {duplicated}"


def test_watch_drop_resumes_without_missing_or_repeating(source: tuple[KubernetesSource, Recorder],
                                                         populated: ApiServer) -> None:
    src, recorder = source
    for round_ in range(3):
        populated.close_watches()
        populated.create(o.service(f"svc-{round_}"))
        populated.patch("v1", "Service", "web", {"metadata": {"labels": {"round": str(round_)}}}, namespace="default")
    populated.delete("v1", "Service", "svc-0", namespace="default")
    wait_for(lambda: recorder.of("services", "default/svc-0") == ["ADDED", "DELETED"])
    wait_for(lambda: src.objects("services")["default/web"]["metadata"]["labels"] == {"round": "2"})
    assert recorder.of("services", "default/svc-1") == ["ADDED"]
    assert recorder.of("services", "default/svc-2") == ["ADDED"]
    assert recorder.of("services", "default/web") == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED"]
    _no_duplicates(recorder)
    assert src.connection().relists == 0  # resumed from the resourceVersion, no re-list needed


def test_410_relists_and_emits_missed_deletions(source: tuple[KubernetesSource, Recorder],
                                                populated: ApiServer) -> None:
    src, recorder = source
    with populated.hold_watches():
        populated.delete("v1", "Service", "web", namespace="default")
        populated.delete("vipcore.io/v1alpha1", "VipGroup", "abc-eth0")
        populated.create(o.service("late"))
        populated.patch("v1", "Node", "node-b", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                        subresource="status")
        populated.expire()
    wait_for(lambda: src.connection().relists == len(ALL_KINDS))
    wait_for(lambda: recorder.of("services", "default/late") == ["ADDED"])
    deleted = [c for c in recorder.changes if c.type == "DELETED"]
    assert {(c.kind, c.key) for c in deleted} == {("services", "default/web"), ("vipgroups", "abc-eth0")}
    assert all(c.relisted for c in deleted)
    assert recorder.of("nodes", "node-b") == ["ADDED", "MODIFIED"]
    state = src.state()
    assert [s.key for s in state.services] == ["default/late", "default/openelb"]
    assert state.vrids == {} and all(n.ready for n in state.nodes)
    _no_duplicates(recorder)
    # Changes after the re-list flow through the new watch.
    populated.delete("v1", "Service", "late", namespace="default")
    wait_for(lambda: recorder.of("services", "default/late") == ["ADDED", "DELETED"])
    _no_duplicates(recorder)


def test_5xx_burst_backs_off_and_recovers_without_losing_changes(source: tuple[KubernetesSource, Recorder],
                                                                 populated: ApiServer) -> None:
    src, recorder = source
    populated.fail_next(10_000, code=503)
    outage_start = time.monotonic()
    populated.close_watches()
    populated.create(o.service("during-outage"))
    populated.delete("v1", "Node", "node-b")
    wait_for(lambda: not src.connection().connected, timeout=5)
    assert src.connection().disconnected_since is not None
    time.sleep(2.0)
    populated.clear_failures()
    outage = time.monotonic() - outage_start
    failed = [r for r in populated.requests_since(outage_start) if r.code == 503]
    kinds = len(ALL_KINDS)
    # Exponential backoff (0.05 s doubling to 0.5 s, jittered): about 7 attempts per kind in 2 s,
    # where the official watch would reconnect hundreds of times a second.
    assert kinds <= len(failed) <= kinds * 9, f"{len(failed)} failed requests in {outage:.1f}s"
    per_kind = Counter(r.path.split("?")[0] for r in failed)
    print(f"{len(failed)} failed requests in {outage:.1f}s: {dict(per_kind)}")
    assert max(per_kind.values()) <= 9
    wait_for(lambda: src.connection().connected, timeout=5)
    wait_for(lambda: recorder.of("services", "default/during-outage") == ["ADDED"])
    wait_for(lambda: recorder.of("nodes", "node-b") == ["ADDED", "DELETED"])
    connection = src.connection()
    metrics = {m.name: m.value for m in src.metrics()}
    assert metrics["vipcore_kubernetes_errors_total"] == connection.errors
    assert connection.reconnects >= kinds and connection.errors >= len(failed) - kinds
    assert connection.disconnected_since is None and "503" in (connection.last_error or "")
    _no_duplicates(recorder)


def test_refused_connections_are_survived(source: tuple[KubernetesSource, Recorder], populated: ApiServer) -> None:
    src, recorder = source
    populated.refuse_connections(0.8)
    populated.create(o.service("while-refused"))
    wait_for(lambda: not src.connection().connected, timeout=5)
    wait_for(lambda: recorder.of("services", "default/while-refused") == ["ADDED"], timeout=10)
    wait_for(lambda: src.connection().connected, timeout=5)
    _no_duplicates(recorder)


def test_optional_eips_missing_do_not_block_sync(tmp_path: object) -> None:
    crds = o.__file__.replace("tests/helpers/objects.py", "deploy/crds")
    with ApiServer() as server:
        server.load_crds(f"{crds}/vipcore.io_vippools.yaml")
        server.load_crds(f"{crds}/vipcore.io_vipgroups.yaml")
        server.create(o.vip_pool("lan", ["198.51.100.100/30"]))
        src = make_source(server)
        src.start()
        try:
            assert src.wait_synced(10)
            assert [p.name for p in src.state().pools] == ["lan"]
            assert src.connection().connected
        finally:
            src.stop()


def test_state_families_come_from_the_api_defaults(source: tuple[KubernetesSource, Recorder]) -> None:
    src, _ = source
    web = [s for s in src.state().services if s.name == "web"][0]
    assert web.families == (Family.IPV4,)


def test_replayed_changes_are_not_emitted_twice(source: tuple[KubernetesSource, Recorder],
                                                populated: ApiServer) -> None:
    src, recorder = source
    populated.create(o.service("one"))
    populated.patch("v1", "Service", "one", {"metadata": {"labels": {"v": "2"}}}, namespace="default")
    wait_for(lambda: recorder.of("services", "default/one") == ["ADDED", "MODIFIED"])
    populated.replay_next_watch(5)
    populated.close_watches()
    populated.create(o.service("two"))
    wait_for(lambda: recorder.of("services", "default/two") == ["ADDED"])
    replays = [r for r in populated.requests if r.method == "WATCH" and "/services?" in r.path]
    assert len(replays) >= 2
    assert recorder.of("services", "default/one") == ["ADDED", "MODIFIED"]
    _no_duplicates(recorder)


def test_the_agent_finds_its_kubernetes_source(server: ApiServer, tmp_path: object) -> None:
    from pathlib import Path

    from vipcore.agent.runtime import make_source
    from vipcore.core.settings import load_config
    from vipcore.sources.kubernetes import KubernetesAgentSource

    kubeconfig = server.write_kubeconfig(Path(str(tmp_path)) / "kubeconfig.yaml")
    config = load_config(overrides={"source": "kubernetes", "node_name": "node-a",
                                    "kubernetes": {"kubeconfig": str(kubeconfig)}})
    source = make_source(config)
    assert isinstance(source, KubernetesAgentSource)
    if source.holder_status is not None:
        source.holder_status.close()


# ---------------------------------------------------------------- paged lists

def _service_lists(server: ApiServer) -> list[tuple[str, int]]:
    return [(r.path, r.code) for r in server.requests if r.method == "GET" and "/services" in r.path
            and "watch=true" not in r.path]


def test_lists_come_in_pages_of_page_size(server: ApiServer) -> None:
    for i in range(7):
        server.create(o.service(f"s{i}"))
    src = make_source(server, page_size=3)
    src.start()
    try:
        assert src.wait_synced(10)
        assert len(src.objects("services")) == 7
        lists = _service_lists(server)
        # 7 objects, 3 a page: three requests, all with limit=3, the last two continuing.
        assert len(lists) == 3 and all("limit=3" in path and code == 200 for path, code in lists)
        assert ["continue=" in path for path, _ in lists] == [False, True, True]
        # The watch resumes from the paged list's resourceVersion: a change after it arrives.
        server.create(o.service("after"))
        wait_for(lambda: "default/after" in src.objects("services"))
    finally:
        src.stop()


def test_a_continue_that_expires_mid_list_restarts_the_list(server: ApiServer) -> None:
    for i in range(7):
        server.create(o.service(f"s{i}"))
    compacted = threading.Event()

    def compact_after_first_page(obj: dict[str, object]) -> dict[str, object]:
        # Runs between pages: a write and a compaction make the first page's continue token too old.
        if not compacted.is_set() and (obj.get("metadata") or {}).get("name") == "s2":  # type: ignore[union-attr]
            compacted.set()
            server.create(o.service("late"))
            server.compact()
        return obj

    src = make_source(server, page_size=3, keep={"services": compact_after_first_page})
    src.start()
    try:
        assert src.wait_synced(10)
        assert set(src.objects("services")) == {f"default/s{i}" for i in range(7)} | {"default/late"}
        codes = [code for path, code in _service_lists(server) if "continue=" in path]
        assert 410 in codes and codes[-1] == 200
        assert src.connection().errors == 0  # restarted at once, not backed off as a failure
    finally:
        src.stop()


# ------------------------------------------------------------------ Wakeup: one wake-up per burst


def test_a_burst_of_wakeups_from_a_thread_wakes_the_loop_once() -> None:
    """A watch thread delivering many events while the loop is busy sends one wake-up, not one each."""
    from vipcore.kube import Wakeup

    async def main() -> tuple[int, bool]:
        wake = Wakeup()
        wake.bind()
        def burst() -> None:
            for _ in range(100):
                wake.set()

        thread = threading.Thread(target=burst)
        thread.start()
        thread.join()  # the loop is blocked here: none of the wake-ups has arrived yet
        woken = await wake.wait(1.0)
        return wake.crossed, woken

    crossed, woken = asyncio.run(main())
    assert woken
    assert crossed == 1


def test_a_wakeup_after_the_waiter_cleared_is_not_lost() -> None:
    """Each burst after the waiter took the last one wakes it again; a set left unread wakes nothing more."""
    from vipcore.kube import Wakeup

    async def main() -> tuple[int, int]:
        wake = Wakeup()
        wake.bind()
        passes = 0
        for _ in range(3):
            thread = threading.Thread(target=wake.set)
            thread.start()
            assert await wake.wait(2.0)
            wake.clear()
            passes += 1
            thread.join()
        # Nobody clears it now (a Wakeup nobody waits for): later sets cross to the loop no more.
        threading.Thread(target=wake.set).start()
        await asyncio.sleep(0.05)
        before = wake.crossed
        threads = [threading.Thread(target=wake.set) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await asyncio.sleep(0.01)
        return passes, wake.crossed - before

    passes, crossed_after = asyncio.run(main())
    assert passes == 3
    assert crossed_after == 0
