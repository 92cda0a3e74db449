"""Linux inotify on a few folders: a file descriptor that becomes readable when something in them changes.

The manifest source used to stat every file four times a second to notice
an edit: at 255 groups that poll was most of the agent's event-loop
wake-ups (each one a thread hand-off and two passes of the loop) on a node
that otherwise only sends adverts. With inotify the kernel says when to
look, and the source looks only then (and on a slow rescan, for what
inotify cannot see: a network filesystem, a folder created later deep in
the tree before its watch was added).

A :class:`FolderWatch` is only a wake-up hint, never the truth: whoever
reads it compares the files' fingerprints afterwards, so an event too many
costs one ``stat`` per file and an event missed is caught by the rescan.
Folders are watched, not files: editors save by writing a new file and
renaming it over the old one, and a Kubernetes ConfigMap volume swaps a
``..data`` symlink, both of which are events of the folder.

Python has no inotify binding in its standard library; the three calls go
through :mod:`ctypes` to the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# linux/inotify.h
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

#: Every change of a folder's entries or of the files in it (a chmod too: an unreadable file made readable).
FOLDER_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
                 | IN_DELETE_SELF | IN_MOVE_SELF)
READ_SIZE = 65536


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "inotify_init1"):
        return None
    return libc


class FolderWatch:
    """An inotify instance watching folders; :meth:`open` returns None where inotify is unavailable.

    Not thread-safe; meant for one event loop (``add_reader(watch.fileno(), ...)``).
    """

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._libc = libc
        self._fd = fd
        #: Folders with a watch, by the path asked for.
        self.watched: set[str] = set()

    @classmethod
    def open(cls) -> FolderWatch | None:
        """A new watch, or None (not Linux, no C library, or out of inotify instances: poll instead)."""
        libc = _libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            log.debug("inotify unavailable: %s", os.strerror(ctypes.get_errno()))
            return None
        return cls(libc, fd)

    def fileno(self) -> int:
        return self._fd

    def add(self, folders: Iterable[Path]) -> bool:
        """Watch each folder not watched yet; False if one could not be (out of watches: poll instead).

        A folder that does not exist (any more) is skipped: its parent's watch sees it come back.
        """
        ok = True
        for folder in folders:
            key = str(folder)
            if key in self.watched:
                continue
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(key), FOLDER_EVENTS | IN_ONLYDIR)
            if wd < 0:
                code = ctypes.get_errno()
                if code in (errno.ENOENT, errno.ENOTDIR):
                    continue
                log.debug("inotify watch on %s failed: %s", key, os.strerror(code))
                ok = False
                continue
            self.watched.add(key)
        return ok

    def drain(self) -> bool:
        """Read every queued event; True if there was any (or the queue overflowed)."""
        seen = False
        while True:
            try:
                data = os.read(self._fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return seen
            if not data:
                return seen
            seen = True
            # A deleted or moved folder's watch is gone (IN_IGNORED follows): add it again when it is back.
            if _folder_went_away(data):
                self.watched.clear()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: struct inotify_event: int wd; uint32 mask, cookie, len; then ``len`` bytes of name.
_EVENT = struct.Struct("=iIII")


def _folder_went_away(data: bytes) -> bool:
    offset = 0
    while offset + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, offset)
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_Q_OVERFLOW):
            return True
        offset += _EVENT.size + length
    return False


def folders_of(paths: Iterable[Path]) -> list[Path]:
    """The folders to watch for ``paths``: each folder named and the folders under it, each file's parent."""
    folders: list[Path] = []
    for path in paths:
        try:
            if path.is_dir():
                folders.append(path)
                folders.extend(p for p in path.rglob("*") if p.is_dir())
            else:
                folders.append(path.parent)
        except OSError:
            folders.append(path.parent)
    return list(dict.fromkeys(folders))
