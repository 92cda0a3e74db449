"""Kubernetes source: API write -> DesiredState notification latency, and reconnects during a 503 outage.

    .venv/bin/python bench/kubernetes_source.py [--writes 200] [--outage 3]

Runs the test API server in-process (HTTP on 127.0.0.1), writes Services
through the official client, and times each write until the source's
``watch`` callback runs in asyncio. Then injects a 503 outage and counts
requests: vipcore's source (tenacity backoff) against a loop around the
official ``kubernetes.watch.Watch`` as its docs suggest (no backoff).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import kubernetes.client as k8s
from kubernetes import watch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vipcore.core.model import DesiredState  # noqa: E402
from vipcore.kube import ALL_KINDS, KubernetesSource  # noqa: E402
from vipcore.testing.apiserver import ApiServer  # noqa: E402


def service(name: str) -> dict[str, object]:
    return {"metadata": {"name": name},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "vipcore.io/vip", "ports": [{"port": 80}]}}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def latency(server: ApiServer, writes: int) -> tuple[list[float], list[float]]:
    source = KubernetesSource(server.client())
    core = k8s.CoreV1Api(server.client())
    await source.initial()
    arrived: asyncio.Queue[tuple[float, DesiredState]] = asyncio.Queue()

    async def on_change(state: DesiredState) -> None:
        arrived.put_nowait((time.perf_counter(), state))

    task = asyncio.create_task(source.watch(on_change))
    from_call, from_return = [], []
    try:
        for i in range(writes):
            name = f"svc-{i}"
            started = time.perf_counter()
            await asyncio.to_thread(core.create_namespaced_service, "default", service(name))
            returned = time.perf_counter()
            while True:
                at, state = await asyncio.wait_for(arrived.get(), 5)
                if any(s.name == name for s in state.services):
                    break
            from_call.append((at - started) * 1000)
            from_return.append((at - returned) * 1000)
    finally:
        task.cancel()
        source.stop()
    return from_call, from_return


def naive_watch_requests(server: ApiServer, seconds: float) -> int:
    """Requests made by a retry loop around the official Watch during ``seconds`` of 503s."""
    core = k8s.CoreV1Api(server.client())
    core.api_client.configuration.retries = False
    stop = time.monotonic() + seconds
    server.fail_next(1_000_000)
    before = len(server.requests)
    while time.monotonic() < stop:
        try:
            for _ in watch.Watch().stream(core.list_service_for_all_namespaces, timeout_seconds=5):
                pass
        except Exception:
            continue  # what the client's docs leave to the caller: try again
    server.clear_failures()
    return len(server.requests) - before


def vipcore_requests(server: ApiServer, seconds: float) -> tuple[int, int]:
    source = KubernetesSource(server.client())
    source.start()
    source.wait_synced(10)
    server.fail_next(1_000_000)
    before = len(server.requests)
    server.close_watches()
    time.sleep(seconds)
    made = len(server.requests) - before
    server.clear_failures()
    deadline = time.monotonic() + 30
    while not source.connection().connected and time.monotonic() < deadline:
        time.sleep(0.01)
    recovered = source.connection().connected
    source.stop()
    return made, int(recovered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--outage", type=float, default=3.0)
    args = parser.parse_args()
    with ApiServer(crds=[ROOT / "deploy" / "crds"]) as server:
        from_call, from_return = asyncio.run(latency(server, args.writes))
    print(f"API write -> on_change(DesiredState), {args.writes} Service creates over HTTP (ms)")
    print(f"{'measured from':<28}{'p50':>8}{'p95':>8}{'max':>8}{'mean':>8}")
    for label, values in (("create call start", from_call), ("create call return", from_return)):
        print(f"{label:<28}{pct(values, .5):8.2f}{pct(values, .95):8.2f}{max(values):8.2f}"
              f"{statistics.mean(values):8.2f}")
    with ApiServer(crds=[ROOT / "deploy" / "crds"]) as server:
        naive = naive_watch_requests(server, args.outage)
    with ApiServer(crds=[ROOT / "deploy" / "crds"]) as server:
        ours, recovered = vipcore_requests(server, args.outage)
    print(f"\nrequests during a {args.outage:.0f} s 503 outage")
    print(f"{'client':<44}{'requests':>10}{'per s':>10}")
    print(f"{'official Watch in a retry loop (1 kind)':<44}{naive:>10}{naive / args.outage:>10.0f}")
    print(f"{f'vipcore KubernetesSource ({len(ALL_KINDS)} kinds)':<44}{ours:>10}{ours / args.outage:>10.1f}")
    print(f"vipcore recovered after the outage: {'yes' if recovered else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
