"""Config loading: every bad value is one ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipcore.core.errors import ConfigError
from vipcore.core.settings import load_config


def refused(path: Path, field: str, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert f": {field}:" in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize(
    ("text", "field", "needles"),
    [
        ("log_level: LOUD\nmanifests: [x]\n", "log_level", ("DEBUG, INFO",)),
        ("state_dir: [a, b]\nmanifests: [x]\n", "state_dir", ("folder",)),
        ("state_dir: 5\nmanifests: [x]\n", "state_dir", ("folder",)),
        ("vrid: {exclude: [0, 300, -5]}\nmanifests: [x]\n", "vrid.exclude[0]", ("1-255",)),
        ("vrid: {exclude: [7, 300]}\nmanifests: [x]\n", "vrid.exclude[1]", ("1-255",)),
        ("vrid: {exclude: 7}\nmanifests: [x]\n", "vrid.exclude", ("list",)),
        ("vrid: {range: [1, 2]}\nmanifests: [x]\n", "vrid.range", ("1-255",)),
        ("manifests: [[a]]\n", "manifests[0]", ("file or folder",)),
        ("metrics: {address: [1]}\nmanifests: [x]\n", "metrics.address", ("host:port",)),
        ("1: x\nmanifests: [x]\n", "1", ("strings",)),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, field: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    refused(path, field, *needles)


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    (tmp_path / "state").write_text("")
    path.write_text(f"state_dir: {tmp_path / 'state'}\nmanifests: [x]\n")
    refused(path, "state_dir", "not a folder")


def test_non_utf8_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(b"backend: native_vrrp\nnode_name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path, environ={})


def test_alias_bomb_config(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\nmanifests: [x]\n")
    with pytest.raises(ConfigError, match="alias"):
        load_config(path, environ={})


def test_log_level_is_case_insensitive_and_env_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("log_level: debug\nmanifests: [x]\n")
    assert load_config(path, environ={}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="log_level"):
        load_config(path, environ={"VIPCORE_LOG_LEVEL": "LOUD"})


def test_a_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_dir: {tmp_path / 'run'}\nmanifests: [m]\nvrid: {{range: 10-20, exclude: [11, '13-14']}}\n")
    config = load_config(path, environ={})
    assert config.vrid.usable == (10, 12, 15, 16, 17, 18, 19, 20)
    assert config.manifests == (tmp_path / "m",)


# -- fuzz: random bytes and mutated valid configs give a Config or a ConfigError, nothing else ------------

import os  # noqa: E402
import tempfile  # noqa: E402

import yaml  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers.fuzz import mutate  # noqa: E402

SEED = {
    "backend": "native_vrrp", "node_name": "node-a", "source": "manifests", "manifests": ["m"],
    "state_dir": "run", "log_format": "json", "log_level": "INFO", "metrics": {"address": "127.0.0.1:0"},
    "vrid": {"range": "10-200", "exclude": [7, "100-110"], "interfaces": {"eth1": {"range": "1-50"}}},
    "kubernetes": {"kubeconfig": "k"}, "controller": {}, "native_vrrp": {"advert_interval": 0.1, "resign_timeout": 2},
}
FUZZ = settings(max_examples=int(os.environ.get("VIPCORE_FUZZ_EXAMPLES", "40")), deadline=5000,
                suppress_health_check=[HealthCheck.too_slow])


def _load_or_refuse(data: bytes, environ: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_bytes(data)
        try:
            load_config(path, environ=environ or {})
        except ConfigError as exc:
            assert "\n" not in str(exc), str(exc)


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes(data: bytes) -> None:
    _load_or_refuse(data)


@FUZZ
@given(st.data())
def test_fuzz_mutated_config(data: st.DataObject) -> None:
    _load_or_refuse(yaml.safe_dump(mutate(SEED, data, rounds=4)).encode())


@FUZZ
@given(st.dictionaries(st.sampled_from(["VIPCORE_BACKEND", "VIPCORE_LOG_LEVEL", "VIPCORE_STATE_DIR",
                                        "VIPCORE_VRID__EXCLUDE", "VIPCORE_METRICS", "VIPCORE_MANIFESTS"]),
                       st.text(max_size=30), max_size=3))
def test_fuzz_environment_overrides(environ: dict[str, str]) -> None:
    _load_or_refuse(yaml.safe_dump(SEED).encode(), environ)
