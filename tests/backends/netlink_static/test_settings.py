"""The netlink_static section: numbers finite and in range, named when wrong."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vipcore.core.errors import ConfigError
from vipcore_netlink_static.settings import Settings


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"verify_interval": math.inf}, "verify_interval"),
        ({"verify_interval": math.nan}, "verify_interval"),
        ({"garp": {"interval": math.inf}}, "garp.interval"),
        ({"garp": {"count": 10**9}}, "garp.count"),
        ({"garp": {1: 2}}, "garp"),
    ],
)
def test_bad_numbers_name_the_key(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_config(section)
    assert f"netlink_static.{field}" in str(info.value), str(info.value)
