"""The manifest source: hostile files give one ManifestError, the agent keeps its last good state, parsing is off-loop."""

from __future__ import annotations

import asyncio
import os
import codecs
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from vipcore.core.errors import ManifestError
from vipcore.core.model import DesiredState
from vipcore.core.objects import StateBuilder, state_from_objects
from vipcore.sources import manifests
from vipcore.sources.manifests import (MAX_PIECES, PIECE, SPLIT_ABOVE, ManifestSource, _objects, _parse, _Piece, _pieces,
                                      _placed, _read_parallel, _read_piece, load_manifests)

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}],
                   "addresses": [{"type": "InternalIP", "address": "198.51.100.11"}]}}
POOL = {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipPool", "metadata": {"name": "lan"},
        "spec": {"interface": "eth0", "addresses": ["203.0.113.0/28"]}}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}


def write(path: Path, *docs: Any) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def refused(path: Path, *needles: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifests([path])
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_valid_manifest_loads(tmp_path: Path) -> None:
    state = load_manifests([write(tmp_path / "m.yaml", NODE, POOL, SERVICE)])
    assert [s.key for s in state.services] == ["default/web"]
    assert [p.name for p in state.pools] == ["lan"]


def test_binary_junk_is_one_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.yaml"
    path.write_bytes(b"kind: Node\n" + bytes(range(128, 256)) * 20)
    refused(path, "not UTF-8", "offset 11")


def test_utf16_with_a_bom_is_read_and_without_one_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump_all([NODE, POOL, SERVICE])
    with_bom = tmp_path / "bom.yaml"
    with_bom.write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    assert [s.key for s in load_manifests([with_bom]).services] == ["default/web"]
    without = tmp_path / "nobom.yaml"
    without.write_bytes(text.encode("utf-16-le"))
    refused(without, "invalid YAML")


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        ({"kind": "List", "items": [1]}, ("items[0]", "mapping")),
        ({"kind": "List", "items": 5}, ("items", "must be a list")),
        ({"kind": "Service", "metadata": {"name": 5, "namespace": ["a"]}, "spec": {"type": "LoadBalancer"}},
         ("metadata.name", "must be a string")),
        ({"kind": "Service", "metadata": {"name": "s", "namespace": ["a"]}, "spec": {"type": "LoadBalancer"}},
         ("Service s", "metadata.namespace", "must be a string")),
        ({"kind": "Node", "metadata": {"name": "n", "namespace": ["a"]}}, ()),
        ({"kind": "Service", "metadata": {"name": "s"}, "spec": "x"}, ("Service s", "spec", "mapping")),
        ({"kind": "Eip", "metadata": {"name": "e"}, "spec": "x"}, ("Eip e", "spec", "mapping")),
        ({"kind": "Service", "metadata": {"name": "s", "annotations": "x"}, "spec": {"type": "LoadBalancer"}},
         ("metadata.annotations", "mapping")),
        ({"kind": "Service", "metadata": {"name": "s", "annotations": {"vipcore.io/ip": [[1]]}},
          "spec": {"type": "LoadBalancer"}}, ("vipcore.io/ip", "must be a string")),
        ({"kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 70000}]}},
         ("spec.ports[0].port", "1..65535")),
        ({"kind": "Node", "metadata": {"name": "n"}, "status": {"addresses": [{"type": "InternalIP", "address": 5}]}},
         ("status.addresses[0].address", "must be an IP address")),
        ({"kind": "EndpointSlice", "metadata": {"name": "e", "labels": {"kubernetes.io/service-name": "s"}},
          "endpoints": [{"nodeName": ["a"]}]}, ("endpoints[0].nodeName", "must be a string")),
        ({"kind": "VipPool", "metadata": {"name": "p"}, "spec": {"interface": "eth0", "adresses": ["203.0.113.1"]}},
         ("VipPool p", "unknown key", "'adresses' (did you mean 'addresses'?)")),
        ({"kind": "VipPool", "metadata": {"name": "p"}, "spec": {"interface": "eth0", "addresses": ["203.0.113.5/28"]}},
         ("spec.addresses[0]", "host bits set", "did you mean 203.0.113.0/28")),
        ({"kind": "VipPool", "metadata": {"name": "p"},
          "spec": {"interface": "eth0", "addresses": ["203.0.113.1"], "disabled": "false"}},
         ("spec.disabled", "true or false")),
        ({"kind": "VipPool", "metadata": {"name": "p"}, "spec": {"interface": "eth0", "addresses": [{"a": 1}]}},
         ("spec.addresses[0]", "a string")),
    ],
)
def test_wrong_types_name_the_object_and_field(tmp_path: Path, doc: dict[str, Any], needles: tuple[str, ...]) -> None:
    path = write(tmp_path / "m.yaml", doc)
    if not needles:  # the namespace of a cluster-scoped object is not read: no error
        load_manifests([path])
        return
    refused(path, *needles)


def test_duplicate_service_is_refused(tmp_path: Path) -> None:
    refused(write(tmp_path / "m.yaml", POOL, SERVICE, SERVICE), "Service default/web is defined twice",
            "document 3", "first in")


@pytest.mark.parametrize("style", ["flow", "block", "block-list"])
def test_5000_deep_nesting_is_refused(tmp_path: Path, style: str) -> None:
    path = tmp_path / "deep.yaml"
    if style == "flow":
        path.write_text("kind: Node\nmetadata: " + "[" * 5000 + "]" * 5000 + "\n")
    elif style == "block":
        path.write_text("".join("  " * i + "a:\n" for i in range(5000)) + "  " * 5000 + "b\n")
    else:
        path.write_text("".join("  " * i + "-\n" for i in range(5000)))
    refused(path, "invalid YAML")


def test_moderate_nesting_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    # 500 levels: within libyaml's own limit, beyond vipcore's; with an alias so the walk runs.
    path = tmp_path / "deep.yaml"
    path.write_text("x: &x 1\ny: *x\nkind: Node\nmetadata: {name: n, labels: " + "[" * 500 + "]" * 500 + "}\n")
    refused(path, "nested deeper than")


def test_alias_bomb_is_refused_quickly_and_small(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("kind: Service\nmetadata: {name: bomb, annotations: {x: *a9}}\nspec: {type: LoadBalancer}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    refused(path, "aliases expand to more than")


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("kind: Node\nmetadata: &m {name: n, labels: {x: *m}}\n")
    refused(path, "alias refers to the node that contains it")


def test_a_few_honest_aliases_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text(
        "kind: VipPool\nmetadata: {name: p}\nspec: {interface: eth0, addresses: &a [203.0.113.1], namespaces: [x]}\n"
        "---\nkind: VipPool\nmetadata: {name: q}\nspec: {interface: eth1, addresses: [203.0.113.9]}\n"
        "---\nkind: List\nitems:\n- {kind: Node, metadata: {name: n, labels: &l {zone: a}}}\n"
        "- {kind: Node, metadata: {name: m, labels: *l}}\n")
    state = load_manifests([path])
    assert {n.name: dict(n.labels) for n in state.nodes} == {"n": {"zone": "a"}, "m": {"zone": "a"}}


def test_huge_integer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "int.yaml"
    path.write_text("kind: VipGroup\nmetadata: {name: g}\nspec: {vrid: " + "9" * 5000 + "}\n")
    refused(path, "invalid YAML")


# -- the source in an agent -----------------------------------------------------------------


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _metrics(source: ManifestSource) -> dict[str, float]:
    return {s.name: s.value for s in source.vipcore_collect_metrics()}


def test_junk_while_running_keeps_the_last_good_state(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = write(folder / "all.yaml", NODE, POOL, SERVICE)
    source = ManifestSource([folder], poll_interval=0.01)
    seen: list[DesiredState] = []

    async def on_change(state: DesiredState) -> None:
        seen.append(state)

    async def scenario() -> None:
        first = await source.initial()
        assert [s.key for s in first.services] == ["default/web"]
        watcher = asyncio.create_task(source.watch(on_change))
        try:
            for _ in range(3):  # several junk writes: one log line, no state change, the watch keeps going
                path.write_bytes(b"\xff\xfe\x00junk" + bytes(range(256)) * 10 + str(time.monotonic()).encode())
                await _until(lambda: source.failures >= 1)
                await asyncio.sleep(0.05)
            assert not watcher.done()
            assert seen == []
            assert _metrics(source)["vipcore_manifests_stale"] == 1.0
            write(path, NODE, POOL, SERVICE, {**SERVICE, "metadata": {"name": "api", "namespace": "default"}})
            await _until(lambda: bool(seen))
            assert sorted(s.key for s in seen[-1].services) == ["default/api", "default/web"]
            assert _metrics(source)["vipcore_manifests_stale"] == 0.0
        finally:
            watcher.cancel()

    asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert 1 <= len(errors) <= 3, [r.getMessage() for r in errors]
    assert all(str(path) in r.getMessage() and "keeping the last good state" in r.getMessage() for r in errors)
    assert not any(r.exc_info for r in caplog.records)


def test_junk_at_start_is_one_manifest_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ManifestError, match="junk.yaml"):
        asyncio.run(ManifestSource([path]).initial())


def big_manifest(path: Path, services: int) -> Path:
    head = yaml.safe_dump_all([NODE, {**POOL, "spec": {"interface": "eth0", "addresses": ["2001:db8::/64"]}}])
    service = ("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: default\n"
               "  labels: {{app: s{i}, tier: web}}\nspec:\n  type: LoadBalancer\n  ports:\n"
               "  - {{port: 80, protocol: TCP}}\n  - {{port: 443}}\n")
    path.write_text(head + "".join(service.format(i=i) for i in range(services)))
    return path


def test_parsing_a_big_file_does_not_stall_the_event_loop(tmp_path: Path) -> None:
    path = big_manifest(tmp_path / "big.yaml", 2000)
    source = ManifestSource([path])

    async def scenario() -> tuple[float, float]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        start = time.monotonic()
        state = await source.initial()
        took = time.monotonic() - start
        task.cancel()
        assert len(state.services) == 2000
        gaps = [b - a for a, b in zip(ticks, ticks[1:])]
        return took, max(gaps)

    took, worst = asyncio.run(scenario())
    # Parsing on the loop would stall it for the whole parse; off-loop, the GIL hands it back every 5 ms.
    assert worst < took / 2, (took, worst)


# -- fuzz: random bytes and mutated valid documents give a state or a ManifestError, nothing else ---------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers.fuzz import hostile_values, mutate  # noqa: E402

SEEDS: list[dict[str, Any]] = [
    NODE, POOL, SERVICE,
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-x", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
     "endpoints": [{"nodeName": "node-a", "conditions": {"ready": True}}]},
    {"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip", "metadata": {"name": "eip"},
     "spec": {"address": "203.0.113.64/28", "protocol": "vip", "interface": "eth1", "disable": False}},
    {"apiVersion": "vipcore.io/v1alpha1", "kind": "VipGroup", "metadata": {"name": "g"}, "spec": {"vrid": 7}},
    {"apiVersion": "v1", "kind": "List", "items": [{**SERVICE, "metadata": {"name": "api", "namespace": "x",
                                                                           "annotations": {"vipcore.io/ip": "203.0.113.3"}},
                                                    "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                                                             "ipFamilies": ["IPv4"], "loadBalancerIP": "203.0.113.3"}}]},
]
SEED_TEXT = yaml.safe_dump_all(SEEDS).encode()
FUZZ = settings(max_examples=int(os.environ.get("VIPCORE_FUZZ_EXAMPLES", "40")), deadline=5000, suppress_health_check=[HealthCheck.too_slow])


def _load_or_refuse(data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.yaml"
        path.write_bytes(data)
        try:
            load_manifests([path])
        except ManifestError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes(data: bytes) -> None:
    _load_or_refuse(data)


@FUZZ
@given(st.data())
def test_fuzz_mutated_bytes_of_a_valid_file(data: st.DataObject) -> None:
    text = bytearray(SEED_TEXT)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(text) - 1))
        action = data.draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = data.draw(st.sampled_from(list(b"\x00\xff:-[]{}&*!|>'\"#\n \t5xY") + [data.draw(st.integers(0, 255))]))
        if action == "replace":
            text[at] = byte
        elif action == "insert":
            text.insert(at, byte)
        else:
            del text[at]
    _load_or_refuse(bytes(text))


@FUZZ
@given(st.data())
def test_fuzz_mutated_objects(data: st.DataObject) -> None:
    docs = [mutate(doc, data) for doc in SEEDS]
    _load_or_refuse(yaml.safe_dump_all(docs).encode())


@FUZZ
@given(st.lists(hostile_values(), max_size=4))
def test_fuzz_hostile_documents(docs: list[Any]) -> None:
    _load_or_refuse(yaml.safe_dump_all(docs).encode())


def test_eip_cidr_with_host_bits_is_read_as_its_network_as_openelb_does(tmp_path: Path) -> None:
    eip = {"apiVersion": "network.kubesphere.io/v1alpha2", "kind": "Eip", "metadata": {"name": "eip"},
           "spec": {"address": "203.0.113.5/28", "protocol": "vip", "interface": "eth1"}}
    (pool,) = load_manifests([write(tmp_path / "m.yaml", eip)]).pools
    assert [(str(a), str(b)) for a, b in pool.ranges] == [("203.0.113.1", "203.0.113.14")]


def test_a_failed_read_is_retried_without_a_change(tmp_path: Path) -> None:
    path = write(tmp_path / "all.yaml", NODE, POOL, SERVICE)

    class FlakyDisk(ManifestSource):
        """A read that fails once (EIO on a flaky disk), then works: the files themselves never change."""

        failed = False

        def load(self) -> DesiredState:
            if self.last_error is None and not self.failed and self.loads == 1:
                self.failed = True
                self._fingerprint = self._snapshot()
                self.failures += 1
                self.last_error = f"{path}: cannot read: Input/output error"
                raise ManifestError("cannot read: Input/output error", source=str(path))
            return super().load()

    source = FlakyDisk([path], poll_interval=0.01, retry_interval=0.1)
    seen: list[DesiredState] = []

    async def on_change(state: DesiredState) -> None:
        seen.append(state)

    async def scenario() -> None:
        await source.initial()
        source._fingerprint = ()  # as if the files had just changed
        watcher = asyncio.create_task(source.watch(on_change))
        try:
            await _until(lambda: source.failed)
            assert _metrics(source)["vipcore_manifests_stale"] == 1.0
            await _until(lambda: bool(seen))  # retried although nothing changed on disk
            assert _metrics(source)["vipcore_manifests_stale"] == 0.0
        finally:
            watcher.cancel()

    asyncio.run(scenario())


def _large_manifest(count: int) -> str:
    docs = [{"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": f"s{i}", "namespace": f"ns{i % 7}", "annotations": {"team": "web", "n": i}},
             "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}],
                      "externalTrafficPolicy": "Cluster"}} for i in range(count)]
    text = yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
    assert len(text) > SPLIT_ABOVE
    return text


def _serial(text: str, source: str = "m.yaml") -> DesiredState:
    """The state the serial read gives."""
    return state_from_objects((None, obj) for _, obj in _objects(_parse(text, source), source))


def _halves(text: str) -> DesiredState | None:
    return _state(_read_parallel(text, "m.yaml", frozenset({"vipcore.io/vip"}), True))


def _state(read: list[_Piece] | None) -> DesiredState | None:
    if read is None:
        return None
    builder = StateBuilder()
    _placed(read, "m.yaml", builder)
    return builder.state()


def _whole(text: str, source: str, classes: frozenset[str], default_class: bool) -> StateBuilder:
    """``text`` read as one piece (a piece that has a problem is a failed test)."""
    piece = _read_piece(text, 0, len(text), source, classes, default_class)
    assert piece.problem is None and piece.builder is not None, piece
    return piece.builder


def test_a_large_manifest_read_on_two_processes_is_the_serial_read(tmp_path: Path) -> None:
    text = _large_manifest(5000)
    serial = _serial(text)
    # The child's pieces come back converted (builders of model values), merged in the pieces' order.
    assert _halves(text) == serial and len(serial.services) == 5000
    # Empty documents and explicit document ends change nothing.
    odd = "---\n" + text.replace("\n---\n", "\n...\n---\n---\n", 3)
    assert _halves(odd) == _serial(odd)
    assert _halves("%YAML 1.1\n" + text) is None  # directives: read serially
    middle = text.index("\n---\n", len(text) // 2)
    assert _halves(text[:middle] + "\n%TAG !e! tag:example.com,2000:\n" + text[middle:]) is None
    percent = text.replace("team: web", "team: 100% web", 1)  # a % inside a line is no directive
    assert _halves(percent) == _serial(percent)
    # And through load_manifests, as `vipcore resolve -f` calls it (a List and a second file too).
    path = tmp_path / "m.yaml"
    path.write_text(text)
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extra", "namespace": "ns1"},
         "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}}]}))
    assert load_manifests([path, more], jobs=2) == load_manifests([path, more])
    assert load_manifests([path], jobs=2) == state_from_objects((None, o) for o in yaml.safe_load_all(text))


#: A document that makes the file invalid, by what is wrong with it.
BAD = {"yaml": "kind: [unclosed\n",
       "field": "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: ns1}\n"
                "spec: {type: LoadBalancer, ports: [{port: not-a-port}]}\n",
       "not a mapping": "- just\n- a list\n",
       "list item": "apiVersion: v1\nkind: List\nitems: [{kind: Node, metadata: {name: x}}, just text]\n",
       # Ends its piece, unclosed: the whole file fails at the next document's start, so must the piece.
       "quote at the cut": "kind: 'unclosed\n",
       "flow at the cut": "kind: [unclosed, \n",
       "deep": "a: " + "[" * 120 + "]" * 120 + "\n"}


def _with_bad(tmp_path: Path, problem: str, *, at: float = 0.75, crlf: bool = False) -> tuple[Path, str]:
    """The large manifest with one bad document about ``at`` of the way in, placed so that it ends a piece
    (a long comment first: the point where the piece is cut falls inside it)."""
    text = _large_manifest(5000)
    bad_doc = "---\n# " + "x" * 1000 + "\n" + BAD[problem]
    size = len(text) + len(bad_doc)
    count = min(MAX_PIECES, max(2, size // PIECE))
    point = size * max(1, min(count - 1, round(count * at))) // count
    where = text.rindex("\n---\n", 0, point - 2) + 1
    bad = text[:where] + bad_doc + text[where:]
    if crlf:  # and line breaks that are not "\n" before it (the line counts from the file's start)
        bad = bad.replace("\n", "\r\n").replace("team: web", "team: \"w\u2028b\"", 3)
    else:
        assert where + len(bad_doc) in {end for _, end in _pieces(bad)}, "the bad document ends a piece"
    path = tmp_path / "m.yaml"
    path.write_bytes(bad.encode())
    return path, bad


@pytest.mark.parametrize("problem", sorted(BAD))
def test_an_error_in_a_large_manifest_is_the_serial_reads_from_the_first_read(tmp_path: Path, problem: str) -> None:
    path, text = _with_bad(tmp_path, problem)
    with pytest.raises(ManifestError) as serial:
        load_manifests([path])
    before = attrs.evolve(manifests.counts)
    with pytest.raises(ManifestError) as parallel:
        load_manifests([path], jobs=2)
    # The same words as the serial read's (file, line or document, object, field)...
    assert str(parallel.value) == str(serial.value)
    assert ("line" if problem in ("yaml", "quote at the cut", "flow at the cut", "deep") else "document") in str(serial.value)
    # ... from one read of the file: opened once, no character parsed twice (both processes counted).
    assert manifests.counts.files - before.files == 1
    assert 0 < manifests.counts.characters - before.characters <= len(text)


@pytest.mark.parametrize("problem", ["yaml", "field"])
def test_a_large_manifests_error_names_the_serial_reads_line_and_document_early_and_with_other_line_breaks(
        tmp_path: Path, problem: str) -> None:
    for at, crlf in ((0.1, False), (0.5, True), (1.0, False)):
        path, text = _with_bad(tmp_path, problem, at=at, crlf=crlf)
        with pytest.raises(ManifestError) as serial:
            load_manifests([path])
        before = attrs.evolve(manifests.counts)
        with pytest.raises(ManifestError) as parallel:
            load_manifests([path], jobs=2)
        assert str(parallel.value) == str(serial.value), (at, crlf)
        assert manifests.counts.files - before.files == 1


def test_an_object_defined_twice_in_a_large_manifest_is_read_again_serially(tmp_path: Path) -> None:
    # The one error the pieces cannot word alone: the serial read names both documents.
    text = _large_manifest(5000)
    cut = text.rindex("\n---\n", 0, len(text) * 3 // 4)
    twice = yaml.safe_dump(yaml.safe_load(text[:text.index("\n---\n")]))
    path = tmp_path / "m.yaml"
    path.write_text(text[:cut] + "\n---\n" + twice + text[cut + 1:])
    with pytest.raises(ManifestError) as serial:
        load_manifests([path])
    before = attrs.evolve(manifests.counts)
    with pytest.raises(ManifestError) as parallel:
        load_manifests([path], jobs=2)
    assert str(parallel.value) == str(serial.value) and "defined twice (first in" in str(serial.value)
    assert manifests.counts.files - before.files == 2


def test_errors_across_files_keep_the_serial_reads_order(tmp_path: Path) -> None:
    # A bad object in the first file beats bad YAML in the second (files are read in turn); within a file
    # bad YAML anywhere beats a bad object (the serial read parses the whole file before converting).
    first, _ = _with_bad(tmp_path, "field")
    second = tmp_path / "n.yaml"
    second.write_text(BAD["yaml"])
    for files in ([first, second], [second, first]):
        with pytest.raises(ManifestError) as serial:
            load_manifests(files)
        with pytest.raises(ManifestError) as parallel:
            load_manifests(files, jobs=2)
        assert str(parallel.value) == str(serial.value)
    text = _large_manifest(5000)
    both = tmp_path / "both.yaml"
    cut = text.rindex("\n---\n", 0, len(text) // 10)
    late = text.rindex("\n---\n", 0, len(text) * 9 // 10)
    both.write_text(text[:cut] + "\n---\n" + BAD["field"] + text[cut + 1:late] + "\n---\n" + BAD["yaml"] + text[late + 1:])
    with pytest.raises(ManifestError) as serial:
        load_manifests([both])
    with pytest.raises(ManifestError) as parallel:
        load_manifests([both], jobs=2)
    assert str(parallel.value) == str(serial.value) and "invalid YAML" in str(serial.value)


def _dies_in_child(parent: int) -> Any:
    def work(text: str, *args: Any) -> Any:
        if os.getpid() != parent:
            os._exit(9)  # the forked child killed mid-read (the OOM killer, a signal)
        return _read_piece(text, *args)
    return work


def _answers_big(parent: int) -> Any:
    def work(text: str, *args: Any) -> Any:
        if os.getpid() != parent:
            marked = StateBuilder()
            marked.vrids["x" * (1 << 20)] = 1  # more than a pipe holds: the child blocks until read
            return _Piece(marked, 0)
        return _Piece(StateBuilder(), 0)
    return work


def _answers_what_cannot_be_sent(parent: int) -> Any:
    def work(text: str, *args: Any) -> Any:
        piece = _read_piece(text, *args)
        if os.getpid() != parent:
            piece.builder.vrids["x"] = lambda: 1  # pickle refuses it: the child fails
        return piece
    return work


def test_a_child_that_dies_without_answering_means_a_serial_read() -> None:
    text = _large_manifest(5000)
    assert _read_parallel(text, "m.yaml", frozenset({"vipcore.io/vip"}), True, work=_dies_in_child(os.getpid())) is None
    assert _read_parallel(text, "m.yaml", frozenset({"vipcore.io/vip"}), True,
                          work=_answers_what_cannot_be_sent(os.getpid())) is None
    # An answer bigger than the pipe's buffer arrives whole, and the child is reaped (no zombie left).
    state = _state(_read_parallel(text, "m.yaml", frozenset({"vipcore.io/vip"}), True, work=_answers_big(os.getpid())))
    assert state is not None and state.vrids == {"x" * (1 << 20): 1}
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_large_manifest_is_cut_into_pieces_at_document_starts() -> None:
    text = "---\n" + _large_manifest(5000).replace("\n---\n", "\n...\n--- # a comment\n", 50)
    pieces = _pieces(text)
    assert len(pieces) == len(text) // PIECE and pieces[0][0] == 0 and pieces[-1][1] == len(text)
    assert all(end == start for (_, end), (start, _) in zip(pieces, pieces[1:]))
    assert all(text.startswith("---", start) and text[start - 1] == "\n" for start, _ in pieces[1:])
    assert _pieces("kind: Node\n" * 100_000) == [(0, 1_100_000)]  # one document: nothing to cut at
    assert _read_parallel("kind: Node\n" * 100_000, "m.yaml", frozenset(), True) is None


def test_the_faster_process_reads_more_of_a_large_manifest() -> None:
    """The pieces between the first (the parent's) and the last (the child's) go to whichever process
    asks first: a child slowed down (its CPU shared with other work) leaves most of them to the parent,
    and the answer is still the serial read's."""
    text = _large_manifest(5000)
    parent = os.getpid()
    read_here: list[int] = []

    def work(whole: str, start: int, end: int, *args: Any) -> Any:
        if os.getpid() == parent:
            read_here.append(end - start)
        else:
            time.sleep(0.5)
        return _read_piece(whole, start, end, *args)

    assert _state(_read_parallel(text, "m.yaml", frozenset({"vipcore.io/vip"}), True, work=work)) == _serial(text)
    assert len(read_here) >= 4 and sum(read_here) > len(text) * 3 // 4


# -- how the source notices edits (inotify, not a 4 Hz poll) ------------------------------------------


class CountingSource(ManifestSource):
    """Counts the looks at the files' fingerprints (a stat of every file each, in a thread)."""

    snapshots = 0

    def _snapshot(self) -> tuple[tuple[str, int, int, int], ...]:
        self.snapshots += 1
        return super()._snapshot()


def _watching(source: ManifestSource, scenario: Any) -> list[DesiredState]:
    seen: list[DesiredState] = []

    async def on_change(state: DesiredState) -> None:
        seen.append(state)

    async def run() -> None:
        await source.initial()
        watcher = asyncio.create_task(source.watch(on_change))
        try:
            await scenario(seen)
            assert not watcher.done()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    asyncio.run(run())
    return seen


def _services(state: DesiredState) -> list[str]:
    return sorted(s.key for s in state.services)


API = {**SERVICE, "metadata": {"name": "api", "namespace": "default"}}


def test_an_idle_watch_does_not_look_at_the_files_again_and_again(tmp_path: Path) -> None:
    # The 4 Hz poll was most of an idle agent's loop wake-ups at 255 groups (a thread hand-off each).
    folder = tmp_path / "m"
    folder.mkdir()
    write(folder / "all.yaml", NODE, POOL, SERVICE)
    source = CountingSource([folder])

    async def idle(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.3)
        before = source.snapshots
        await asyncio.sleep(1.2)
        assert source.snapshots - before == 0

    assert _watching(source, idle) == []


def test_an_edit_is_seen_at_once_with_a_slow_rescan(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = write(folder / "all.yaml", NODE, POOL, SERVICE)
    source = ManifestSource([folder], poll_interval=30.0, rescan_interval=30.0)

    async def edit(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.1)
        write(path, NODE, POOL, SERVICE, API)
        await _until(lambda: bool(seen), timeout=2.0)

    seen = _watching(source, edit)
    assert _services(seen[-1]) == ["default/api", "default/web"]


def test_a_file_saved_by_rename_is_seen(tmp_path: Path) -> None:
    # Editors (and `kubectl` style tools) write a new file and rename it over the one named.
    path = write(tmp_path / "all.yaml", NODE, POOL, SERVICE)
    source = ManifestSource([path], rescan_interval=30.0)

    async def save(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.1)
        write(tmp_path / ".all.yaml.swp", NODE, POOL, SERVICE, API)
        os.replace(tmp_path / ".all.yaml.swp", path)
        await _until(lambda: bool(seen), timeout=2.0)

    assert _services(_watching(source, save)[-1]) == ["default/api", "default/web"]


def test_a_file_in_a_new_subfolder_is_seen(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write(folder / "all.yaml", NODE, POOL, SERVICE)
    source = ManifestSource([folder], rescan_interval=30.0)

    async def grow(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.1)
        (folder / "team").mkdir()
        await asyncio.sleep(0.2)  # the new folder's watch is added at the look its creation caused
        write(folder / "team" / "api.yaml", API)
        await _until(lambda: bool(seen) and len(seen[-1].services) == 2, timeout=2.0)

    assert _services(_watching(source, grow)[-1]) == ["default/api", "default/web"]


def test_a_configmap_volume_update_is_seen(tmp_path: Path) -> None:
    # kubelet's atomic writer: files are symlinks through ..data, which is swapped by a rename.
    folder = tmp_path / "cm"
    folder.mkdir()
    first = folder / "..2026_11_30_1"
    first.mkdir()
    write(first / "all.yaml", NODE, POOL, SERVICE)
    (folder / "..data").symlink_to(first.name)
    (folder / "all.yaml").symlink_to("..data/all.yaml")
    source = ManifestSource([folder / "all.yaml"], rescan_interval=30.0)

    async def update(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.1)
        second = folder / "..2026_11_30_2"
        second.mkdir()
        write(second / "all.yaml", NODE, POOL, SERVICE, API)
        (folder / "..data_tmp").symlink_to(second.name)
        os.replace(folder / "..data_tmp", folder / "..data")
        await _until(lambda: bool(seen), timeout=2.0)

    assert _services(_watching(source, update)[-1]) == ["default/api", "default/web"]


def test_without_inotify_the_files_are_polled(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    path = write(folder / "all.yaml", NODE, POOL, SERVICE)
    source = CountingSource([folder], poll_interval=0.05, notify=False)

    async def edit(seen: list[DesiredState]) -> None:
        await asyncio.sleep(0.3)
        assert source.snapshots >= 3
        write(path, NODE, POOL, SERVICE, API)
        await _until(lambda: bool(seen), timeout=2.0)

    assert _services(_watching(source, edit)[-1]) == ["default/api", "default/web"]


def test_the_childs_pickler_sends_model_values_that_load_as_they_were() -> None:
    """The child pickles Nodes, Services and EndpointSlices as their class and field values; loaded, the
    state is the one it built (a model class that gains a field not given to ``__init__`` would be
    pickled attrs' way again: the list below says which are sent the short way)."""
    import io
    import pickle

    from vipcore.core.model import EndpointSlice, Node, Service
    from vipcore.sources.manifests import _Pickler

    assert set(_Pickler.FIELDS) == {Node, Service, EndpointSlice}
    text = _large_manifest(5000).replace("team: web", "vipcore.io/ip: 198.51.100.7, 2001:db8::7", 1)
    extra = ("---\napiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {a: b}}\n"
             "status: {conditions: [{type: Ready, status: 'True'}], addresses: [{type: InternalIP, address: 2001:db8::1}]}\n"
             "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
             "metadata: {name: s1-x, namespace: ns1, labels: {kubernetes.io/service-name: s1}}\n"
             "endpoints: [{nodeName: n1, conditions: {ready: true}}]\n")
    builder = _whole(text + extra, "m.yaml", frozenset({"vipcore.io/vip"}), True)
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(builder)
    loaded = pickle.loads(buffer.getvalue())
    assert loaded.state() == builder.state()
    assert loaded.state().services[0].requested_ips and loaded.state().nodes[0].addresses
