"""The keepalived section: numbers finite and in range, named when wrong."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vipcore.core.errors import ConfigError
from vipcore_keepalived.settings import KeepalivedSettings


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"advert_interval": math.nan}, "advert_interval"),
        ({"stop_timeout": math.inf}, "stop_timeout"),
        ({"garp": {"count": 10**9}}, "garp.count"),
        ({"garp": {"refresh": 10**12}}, "garp.refresh"),
        ({"restart_attempts": 10**9}, "restart_attempts"),
        ({"restart_attempts": 2.0}, "restart_attempts"),
    ],
)
def test_bad_numbers_name_the_key(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeepalivedSettings.from_config(section)
    assert f"keepalived: {field}:" in str(info.value), str(info.value)


def test_unknown_keys_of_any_type_are_one_error() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        KeepalivedSettings.from_config({1: 2, "x": 3})  # type: ignore[dict-item]
