"""The HTTP endpoint under hostile clients: oversized requests answered quietly, slow ones cut off, a connection cap."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry

from vipcore.ops.http import Endpoint


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


def test_normal_requests_still_work() -> None:
    async def scenario() -> None:
        async with Endpoint("127.0.0.1:0", CollectorRegistry()) as endpoint:
            answer = await _request(endpoint.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"ok\n")

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 500 + b"\r\n", b"431"),
        (b"\xff\xfe\r\n\r\n", b"400"),
    ],
)
def test_oversized_or_garbage_requests_are_answered_without_a_traceback(
    raw: bytes, status: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> bytes:
        async with Endpoint("127.0.0.1:0", CollectorRegistry()) as endpoint:
            answers = [await _request(endpoint.port, raw) for _ in range(3)]
            # Still serving afterwards.
            assert (await _request(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.0 200")
            return answers[0]

    with caplog.at_level(logging.DEBUG):
        answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.0 " + status), answer[:80]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text


def test_slowloris_connections_are_cut_at_the_request_deadline_and_capped() -> None:
    async def scenario() -> tuple[float, int]:
        async with Endpoint("127.0.0.1:0", CollectorRegistry(), max_connections=4, request_timeout=0.5) as endpoint:
            conns = [await asyncio.open_connection("127.0.0.1", endpoint.port) for _ in range(20)]
            start = time.monotonic()

            async def dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
                # One header line every 0.1 s: each line beats a per-line timeout, never the overall one.
                writer.write(b"GET /metrics HTTP/1.1\r\n")
                try:
                    for i in range(60):
                        if reader.at_eof():
                            break
                        writer.write(f"X-Slow-{i}: 1\r\n".encode())
                        await writer.drain()
                        try:
                            await asyncio.wait_for(reader.read(1 << 16), 0.1)
                        except asyncio.TimeoutError:
                            continue
                except ConnectionError:
                    pass
                writer.close()
                return time.monotonic() - start

            closed_after = await asyncio.gather(*(dribble(r, w) for r, w in conns))
            served = await _request(endpoint.port, b"GET /healthz HTTP/1.0\r\n\r\n")
            assert served.startswith(b"HTTP/1.0 200")
            return max(closed_after), sum(1 for t in closed_after if t < 0.3)

    slowest, early = asyncio.run(scenario())
    assert slowest < 3.0, slowest  # every one cut off by the 0.5 s deadline, none held for the dribble's 6 s
    assert early >= 16, early  # beyond the cap of 4, turned away at once
