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
