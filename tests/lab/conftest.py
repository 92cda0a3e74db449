"""Fixtures of the lab's own tests: namespaces prefixed ``vcL``, always removed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vipcore.lab.topology import Lab


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A three-node lab, torn down after the test whatever happens."""
    with Lab(prefix="vcLt") as the_lab:
        yield the_lab
