"""Shared test configuration: lab tests need root and iproute2; the shared fixtures.

Fixtures (one name, one meaning, everywhere):

* ``server``: a fresh test API server (``vipcore.testing.apiserver.ApiServer``) with the CRDs;
  ``cluster``: the same (or a real cluster, with ``VIPCORE_TEST_KUBECONFIG``) wrapped for contract tests;
  ``fake_only``: the test server, skipping on a real cluster (fault injection);
* ``start``: runs controller replicas against ``server``;
* ``example_backend``: the out-of-tree example backend pip-installed for the session.

Helpers are imported as ``from tests.helpers.<module> import ...``.
"""

from __future__ import annotations

pytest_plugins = ["tests.helpers.apiserver", "tests.helpers.cluster", "tests.helpers.plugins"]

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0 and shutil.which("ip"):
        return
    skip = pytest.mark.skip(reason="lab tests need root and iproute2 (ip netns)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Name threads a test left running: a daemon thread still writing at
    interpreter shutdown can abort the process after a green run."""
    import threading

    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if lingering:
        names = ", ".join(sorted(f"{t.name}{' (daemon)' if t.daemon else ''}" for t in lingering))
        print(f"\nthreads still running after the tests: {names}")
