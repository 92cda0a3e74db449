"""The HTTP endpoint of the agent and the controller: ``/metrics``, ``/healthz``, ``/readyz``, ``/status``.

A small asyncio server on the caller's own loop: scrape-time collection reads
state from the thread that owns it; each request is tiny and non-blocking.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from vipcore.core.errors import ConfigError

log = logging.getLogger("vipcore.ops.http")

DEFAULT_ADDRESS = "127.0.0.1:9641"


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` too) as (host, port); a ConfigError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"must look like 'host:port', got {address!r}", field="metrics.address")
    return host.strip("[]") or "127.0.0.1", int(port)


class Endpoint:
    """``/metrics``, ``/healthz``, ``/readyz`` and ``/status`` on one asyncio server.

    ``ready``, ``healthy`` and ``status`` are called on the event loop for every
    request; they must be quick and must not block. ``/healthz`` answers 503
    while ``healthy()`` is False (the controller: its Lease is overdue).
    """

    def __init__(
        self,
        address: str,
        registry: CollectorRegistry,
        *,
        ready: Callable[[], bool] = lambda: True,
        status: Callable[[], Mapping[str, Any]] | None = None,
        healthy: Callable[[], bool] = lambda: True,
        not_ready_reason: Callable[[], str | None] | None = None,
    ) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self.healthy = healthy
        self.status = status
        #: Why ``/readyz`` answers 503, for its body (``not ready: <reason>``).
        self.not_ready_reason = not_ready_reason
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        assert self._server is not None and self._server.sockets, "endpoint not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host, _ = parse_address(self.address)
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        host, port = parse_address(self.address)
        # "[::]:port" means every address of both families (asyncio makes IPv6 sockets IPv6-only).
        hosts: str | list[str] = ["::", "0.0.0.0"] if host == "::" else host
        try:
            self._server = await asyncio.start_server(self._handle, hosts, port, reuse_address=True)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.address}: {exc.strerror or exc} "
                              "(set metrics.address to a free host:port, or '' to disable)",
                              field="metrics.address") from None
        log.info("metrics endpoint listening on %s", self.url, extra={"event": "metrics_listening", "url": self.url})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> "Endpoint":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5.0)
            # Headers are read and ignored; a blank line ends them.
            while True:
                line = await asyncio.wait_for(reader.readline(), 5.0)
                if line in (b"\r\n", b"\n", b""):
                    break
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method, target = parts[0], parts[1]
                status, ctype, body = self._route(method, target.split("?", 1)[0])
            head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeDecodeError):
            pass  # a scraper that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    def _route(self, method: str, path: str) -> tuple[int, str, bytes]:
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            try:
                return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            except Exception as exc:  # a collector bug must not kill the server
                log.error("metrics collection failed: %s: %s", type(exc).__name__, exc,
                          extra={"event": "metrics_error"})
                return 500, "text/plain", f"collection failed: {exc}\n".encode()
        if path == "/healthz":
            return (200, "text/plain", b"ok\n") if self.healthy() else (503, "text/plain", b"unhealthy\n")
        if path == "/readyz":
            if self.ready():
                return 200, "text/plain", b"ready\n"
            reason = self.not_ready_reason() if self.not_ready_reason is not None else None
            return 503, "text/plain", (f"not ready: {reason}\n" if reason else "not ready\n").encode()
        if path == "/status" and self.status is not None:
            return 200, "application/json", json.dumps(self.status(), indent=2).encode() + b"\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz, /readyz, /status\n"


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


__all__ = ["DEFAULT_ADDRESS", "Endpoint", "parse_address"]
