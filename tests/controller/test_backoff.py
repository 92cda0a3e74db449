"""Per-object backoff: one object the API server keeps refusing waits on its own schedule, the others do not.

The controller against the test API server, with the real client over HTTP;
the server refuses every write to one Service (:meth:`ApiServer.reject`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.helpers.cluster import lb_ips, node, service, vippool, wait_for

from vipcore.testing.apiserver import ApiServer

POISON = "/api/v1/namespaces/default/services/poison"


def refusals(server: ApiServer) -> list[float]:
    """When the poisoned Service's writes were refused."""
    return [r.at for r in server.requests if r.code == 422 and r.path.split("?")[0].startswith(POISON)]


def test_one_refused_service_backs_off_alone_and_delays_none_of_100_others(
    server: ApiServer, start: Callable[..., Any]
) -> None:
    for name in ("node-a", "node-b", "node-c"):
        server.create(node(name))
    server.create(vippool("lan", "203.0.113.10-203.0.113.250"))
    server.create(service("poison"))
    with server.reject(POISON, 422):
        start(qps=0)  # no client-side limit: this test is about backoff alone
        wait_for(lambda: len(refusals(server)) >= 5, timeout=20, what="five refusals of the poisoned Service")
        names = [f"svc-{i:03}" for i in range(100)]
        for name in names:
            server.create(service(name))
        wait_for(lambda: all(lb_ips(server, n) for n in names), timeout=60, what="every good Service allocated")
        written = [r.at for r in server.requests if r.method == "PATCH" and r.code == 200
                   and r.path.split("?")[0].endswith("/status") and "/services/svc-" in r.path]
        assert len(written) == 100
        # Every good Service was written while the poisoned one was waiting out its backoff: before the
        # refusal that follows the fifth (its next try is 1.6 s after the fifth). With one global backoff,
        # that next pass would have started with the poisoned Service and carried the good ones after it.
        at = refusals(server)
        fifth = at[4]
        later = [t for t in at if t > fifth]
        assert not later or max(written) < later[0], (max(written) - fifth, [t - fifth for t in later])
        # A user can act on a refused write (an admission webhook, a quota): one Warning Event says so,
        # once, however many tries were refused.
        wait_for(lambda: len(refusals(server)) >= 6, timeout=20, what="a sixth refusal")
        (warning,) = [e for e in server.objects("v1", "Event", "default")
                      if e["involvedObject"]["name"] == "poison"]
        assert (warning["type"], warning["reason"], warning["count"]) == ("Warning", "WriteFailed", 1)
        assert "HTTP 422" in warning["message"]
        at = refusals(server)
    wait_for(lambda: lb_ips(server, "poison"), timeout=30, what="the poisoned Service, once accepted")
    # Its tries were spaced ever wider (0.1, 0.2, 0.4, 0.8 s ... after each failure; lower bounds only).
    gaps = [b - a for a, b in zip(at, at[1:])]
    for i, gap in enumerate(gaps[:5]):
        assert gap >= 0.1 * 2 ** i * 0.9, gaps
    assert len(set(ip for n in names + ["poison"] for ip in lb_ips(server, n))) == 101
