"""``[::]:port`` serves /healthz on IPv4 and IPv6 (the deploy manifests bind metrics and probes so)."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from vipcore.ops.http import Endpoint


def free_port() -> int:
    """A port free on both families (a dual-stack socket held it a moment ago)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        return int(sock.getsockname()[1])


def test_any_v6_address_listens_on_both_families() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def scenario() -> tuple[int, int]:
        port = free_port()
        endpoint = Endpoint(f"[::]:{port}", CollectorRegistry())
        await endpoint.start()
        try:
            def get(host: str) -> int:
                with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as resp:
                    return int(resp.status)
            return await asyncio.to_thread(get, "127.0.0.1"), await asyncio.to_thread(get, "[::1]")
        finally:
            await endpoint.close()

    assert asyncio.run(scenario()) == (200, 200)
