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
#: Connections served at once; more are closed at once (a scraper needs one).
MAX_CONNECTIONS = 16
#: Seconds from accepting a connection to having sent the answer, whatever the client does.
REQUEST_TIMEOUT = 5.0
#: Longest request line or header line (asyncio's stream limit), and most header lines.
LINE_LIMIT = 64 * 1024
MAX_HEADERS = 100


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

    Hostile or broken clients cost little and log nothing: each connection
    has ``request_timeout`` seconds in all (slow senders are cut off),
    at most ``max_connections`` are served at once (the rest are closed on
    accept), and an oversized request line or header is answered 414 / 431.
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
        max_connections: int = MAX_CONNECTIONS,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.address = address
        self.registry = registry
        self.ready = ready
        self.healthy = healthy
        self.status = status
        #: Why ``/readyz`` answers 503, for its body (``not ready: <reason>``).
        self.not_ready_reason = not_ready_reason
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self._active = 0
        #: Connections closed for the cap, and requests cut off at the deadline.
        self.turned_away = 0
        self.timed_out = 0
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
            self._server = await asyncio.start_server(self._handle, hosts, port, reuse_address=True, limit=LINE_LIMIT)
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
        if self._active >= self.max_connections:
            self.turned_away += 1
            writer.transport.abort()
            return
        self._active += 1
        try:
            async with asyncio.timeout(self.request_timeout):
                status, ctype, body, method = await self._read_and_route(reader)
                head = (f"HTTP/1.0 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                writer.write(head if method == "HEAD" else head + body)
                await writer.drain()
        except TimeoutError:
            self.timed_out += 1  # a slow or stalled client: cut off, nothing to answer
        except ConnectionError:
            pass  # a scraper that went away
        finally:
            self._active -= 1
            writer.close()
            try:
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            except (ConnectionError, TimeoutError):
                pass

    async def _read_and_route(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, str]:
        """Read the request line and headers (ignored); the answer as (status, content type, body, method)."""
        try:
            request = await reader.readline()
        except ValueError:  # over LINE_LIMIT (asyncio's LimitOverrunError)
            return 414, "text/plain", b"request line too long\n", "GET"
        for _ in range(MAX_HEADERS + 1):
            try:
                line = await reader.readline()
            except ValueError:
                return 431, "text/plain", b"header line too long\n", "GET"
            if line in (b"\r\n", b"\n", b""):
                break
        else:
            return 431, "text/plain", b"too many header lines\n", "GET"
        parts = request.decode("latin-1").split()
        if len(parts) < 2:
            return 400, "text/plain", b"bad request\n", "GET"
        method, target = parts[0], parts[1]
        return (*self._route(method, target.split("?", 1)[0]), method)

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
            414: "URI Too Long", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


__all__ = ["DEFAULT_ADDRESS", "Endpoint", "parse_address"]
