"""Shared test configuration: lab tests need root and iproute2."""

from __future__ import annotations

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
