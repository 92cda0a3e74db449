"""The state folder lock: one agent per state_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from vipcore.core.errors import ConfigError
from vipcore.ops.statedir import StateDirLock


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    import os

    with StateDirLock(tmp_path / "state"):
        with pytest.raises(ConfigError) as info:
            StateDirLock(tmp_path / "state").acquire()
        message = str(info.value)
        assert message.startswith("state_dir: ") and f"pid {os.getpid()}" in message and "\n" not in message
    with StateDirLock(tmp_path / "state"):  # released: free again
        pass


def test_state_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="state_dir: cannot use"):
        StateDirLock(tmp_path / "file" / "state").acquire()
