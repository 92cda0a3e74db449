"""The agent's state folder, locked for one agent at a time.

Two agents given the same ``state_dir`` (several agents on one host, a
copied config) would overwrite each other's files, keepalived's config
among them. The first agent holds an exclusive ``flock`` on
``<state_dir>/agent.lock`` for its lifetime; the kernel drops it when the
process dies, however it dies, so a stale lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from vipcore.core.errors import ConfigError

LOCK_NAME = "agent.lock"


class StateDirLock:
    """An exclusive lock on a state folder; :meth:`acquire` raises one ConfigError if another agent holds it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot use {str(self.state_dir)!r}: {exc.strerror}", field="state_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{str(self.state_dir)!r} is in use by another vipcore agent (pid {holder}); "
                              "give each agent its own state_dir", field="state_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "StateDirLock":
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


__all__ = ["LOCK_NAME", "StateDirLock"]
