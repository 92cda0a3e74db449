"""Controller tests: make ``controller_helpers`` importable; the API server and controller fixtures."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from controller_helpers import CRDS, Controller, Running, settings  # type: ignore[import-not-found]  # noqa: E402

from vipcore.core.settings import Config  # noqa: E402
from vipcore.testing.apiserver import ApiServer  # noqa: E402


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with ApiServer(crds=[CRDS], bookmark_interval=0.5) as srv:
        yield srv


@pytest.fixture
def start(server: ApiServer) -> Iterator[Callable[..., Running]]:
    """``start(identity="c1", **settings)`` runs a controller against ``server``; all stopped at the end."""
    running: list[Running] = []
    clients: list[Any] = []

    def _start(identity: str = "c1", config: Config | None = None, **kwargs: Any) -> Running:
        client = server.client()
        clients.append(client)
        r = Running(Controller(settings(identity, **kwargs), client, config=config))
        running.append(r)
        return r

    yield _start
    for r in running:
        r.stop()
        # A replica "killed" by stopping its loop never stopped its watch
        # threads; stop them so none outlives the test.
        r.controller.source.stop(2.0)
    for client in clients:
        client.close()


