"""The out-of-tree example backend, installed as a user would (a fixture)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE_BACKEND = Path(__file__).resolve().parents[2] / "examples" / "vipcore-example-backend"


@pytest.fixture(scope="session")
def example_backend() -> Iterator[str]:
    """Install the out-of-tree example backend into the venv, as a user would; remove it after."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(EXAMPLE_BACKEND)],
                   check=True, capture_output=True, timeout=300)
    try:
        yield "example_file"
    finally:
        subprocess.run([*pip, "uninstall", "-y", "vipcore-example-backend"], capture_output=True, timeout=120)
