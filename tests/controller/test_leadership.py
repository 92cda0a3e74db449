"""Never two leaders: two controller replicas, one of them cut off by a black hole; the server records who wrote.

The test API server records every answered request with the client's
User-Agent (``vipcore-controller/<identity>``). "At most one writer at any
moment" is checked there: every write of the replica that lost the Lease
comes before the first write of the one that took it over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import FAST, Running, lb_ips, node, service, vippool, wait_for

from vipcore.testing.apiserver import ApiServer, RequestRecord

WRITES = ("POST", "PUT", "PATCH", "DELETE")


def writes(server: ApiServer, identity: str) -> list[RequestRecord]:
    """Answered 2xx writes of one replica, Leases excluded."""
    return [r for r in server.requests if r.client == f"vipcore-controller/{identity}" and r.method in WRITES
            and 200 <= r.code < 300 and "/leases/" not in r.path and not r.path.endswith("/leases")]


def record_leadership(running: Running, log: list[tuple[float, str, bool]]) -> None:
    identity = running.controller.settings.identity
    running.controller.elector.on_change.append(lambda leading: log.append((time.monotonic(), identity, leading)))


def leaders_at_once(log: list[tuple[float, str, bool]]) -> int:
    """The most replicas that believed they led at the same moment."""
    leading: set[str] = set()
    most = 0
    for _, identity, now in sorted(log):
        (leading.add if now else leading.discard)(identity)
        most = max(most, len(leading))
    return most


def two_replicas(server: ApiServer, start: Callable[..., Running]) -> tuple[Running, Running,
                                                                            list[tuple[float, str, bool]]]:
    for name in ("node-a", "node-b"):
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.60"))
    log: list[tuple[float, str, bool]] = []
    a = start("c1")
    wait_for(lambda: a.leading, what="c1 leads")
    log.append((time.monotonic(), "c1", True))  # its first term began before the recorder could be attached
    record_leadership(a, log)
    b = start("c2")
    record_leadership(b, log)
    time.sleep(0.3)
    assert not b.leading
    return a, b, log


def test_black_holed_leader_stops_at_the_renew_deadline_and_one_writer_at_a_time(
        server: ApiServer, start: Callable[..., Running]) -> None:
    a, b, log = two_replicas(server, start)
    server.create(service("before"))
    wait_for(lambda: lb_ips(server, "before"), what="c1 allocates")
    with server.black_hole("vipcore-controller/c1"):
        holed = time.monotonic()
        server.create(service("during"))
        wait_for(lambda: not a.leading, timeout=5, what="c1 gives up")
        assert time.monotonic() - holed <= FAST.renew_deadline + 0.3
        wait_for(lambda: b.leading, timeout=10, what="c2 takes over")
        wait_for(lambda: lb_ips(server, "during"), what="c2 allocates")
    time.sleep(1.0)  # c1 reconnects: a candidate again, it must not write
    assert not a.leading and b.leading
    assert leaders_at_once(log) == 1
    first_b = min(r.at for r in writes(server, "c2"))
    assert writes(server, "c1") and max(r.at for r in writes(server, "c1")) < first_b
    assert a.controller.healthy() and b.controller.healthy()


def test_leader_whose_lease_hangs_stops_writing_though_it_still_could(
        server: ApiServer, start: Callable[..., Running]) -> None:
    """Only c1's Lease requests hang: its other writes would still go through, so only the fence stops them."""
    a, b, log = two_replicas(server, start)
    with server.black_hole("vipcore-controller/c1", path="/leases/"):
        holed = time.monotonic()
        names = []
        while not b.leading and time.monotonic() - holed < 10:
            names.append(f"svc{len(names)}")
            server.create(service(names[-1]))  # a steady stream of work for whoever leads
            time.sleep(0.1)
        assert b.leading
        wait_for(lambda: all(lb_ips(server, n) for n in names), what="every Service allocated")
    assert leaders_at_once(log) == 1
    c1, c2 = writes(server, "c1"), writes(server, "c2")
    assert c1 and c2, "both replicas were expected to write in their own term"
    assert max(r.at for r in c1) < min(r.at for r in c2)
    # c1 wrote nothing after its renew deadline: its last renewal began before the hole.
    assert max(r.at for r in c1) < holed + FAST.renew_deadline
    ips = [lb_ips(server, n)[0] for n in names]
    assert len(set(ips)) == len(ips)


def test_healthz_fails_once_the_lease_is_overdue(server: ApiServer, start: Callable[..., Any]) -> None:
    a, _, _ = two_replicas(server, start)
    elector = a.controller.elector
    assert a.controller.healthy()
    real = elector.monotonic
    elector.monotonic = lambda: real() + FAST.duration + 1  # a leader whose loop was stuck past its Lease
    try:
        assert not a.controller.healthy()
        assert a.controller.status()["leader"] is False
    finally:
        elector.monotonic = real
