"""The native_vrrp section: every number finite, in range and named when wrong."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vipcore.core.errors import ConfigError
from vipcore_native_vrrp.config import NativeVrrpConfig


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"resign_timeout": math.inf}, "resign_timeout"),
        ({"resign_timeout": math.nan}, "resign_timeout"),
        ({"resign_timeout": 0}, "resign_timeout"),
        ({"resign_timeout": "10"}, "resign_timeout"),
        ({"advert_interval": math.nan}, "advert_interval"),
        ({"advert_interval": math.inf}, "advert_interval"),
        ({"advert_interval": -math.inf}, "advert_interval"),
        ({"garp": {"interval": math.inf}}, "garp.interval"),
        ({"garp": {"count": 10**9}}, "garp.count"),
        ({"garp": {"count": 2.5}}, "garp.count"),
        ({"garp": {"refresh": math.nan}}, "garp.refresh"),
    ],
)
def test_non_finite_or_out_of_range_numbers_name_the_key(section: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        NativeVrrpConfig.from_mapping(section)
    message = str(info.value)
    assert f"native_vrrp: {field}:" in message, message


def test_sane_numbers_pass() -> None:
    cfg = NativeVrrpConfig.from_mapping({"resign_timeout": 2.5, "advert_interval": 0.05,
                                         "garp": {"count": 3, "interval": 0.1, "refresh": 0}})
    assert cfg.resign_timeout == 2.5 and cfg.interval_cs == 5 and cfg.garp.refresh is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers.fuzz import mutate  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fuzz_mutated_sections_give_a_config_or_a_config_error(data: st.DataObject) -> None:
    seed = {"advert_interval": 0.1, "preempt": True, "unicast": False, "check_source": True,
            "garp": {"count": 5, "interval": 0.2, "refresh": 30}, "resign_timeout": 2.0}
    section = mutate(seed, data, rounds=3)
    try:
        NativeVrrpConfig.from_mapping(section)
    except ConfigError as exc:
        assert "\n" not in str(exc)
