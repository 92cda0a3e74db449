"""The control channel between the agent and its liveness worker process: newline-delimited JSON, sans-IO.

One frame is one JSON object on one line (UTF-8, at most :data:`MAX_FRAME` bytes).
The agent sends ``op`` frames, the worker sends ``ev`` frames:

* agent -> worker: ``{"op": "peers", "peers": ["198.51.100.2", ...], "relaxed": [...]}`` (the whole
  set each time; ``relaxed``, optional, the peers asked to send slowly),
  ``{"op": "plan", "peer", "ups", "interface", "netlink": [hex], "frames": [hex], "vips": [...]}`` (what
  the worker claims if that peer's session expires; ``"netlink": []`` drops it),
  ``{"op": "close", "graceful": true}``;
* worker -> agent: ``{"ev": "ready", ...}`` once, ``{"ev": "change", "peer", "old", "new", "diag", "heard"}``
  per session state change (``heard``: ``time.monotonic()`` of the last packet from the peer, or
  null; after an expiry with a plan, ``claim``: ``expired``, ``sent``, ``acked``, ``announced``,
  ``ok``, ``vips``, ``error``), ``{"ev": "stats", ...}`` periodically (counters and the sessions, for
  metrics and ``vipcore status``), ``{"ev": "log", "level", "message"}``, and ``{"ev": "closed"}``
  after a graceful close has sent every AdminDown.

A frame that is not a JSON object with the expected key, or is too long, is
counted in :attr:`FrameReader.bad` and skipped: neither side ever stops on one.
This module imports only the standard library (the worker must start fast).
"""

from __future__ import annotations

import json
from typing import Any

#: Longest frame accepted (a peers frame of a few thousand addresses fits).
MAX_FRAME = 1 << 20

Frame = dict[str, Any]


def encode(frame: Frame) -> bytes:
    """One frame, newline-terminated (``json.dumps`` escapes any newline inside strings)."""
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


class FrameReader:
    """Split a byte stream into frames carrying ``key`` (``"op"`` or ``"ev"``); count the bad ones."""

    def __init__(self, key: str, max_frame: int = MAX_FRAME) -> None:
        self.key = key
        self.max_frame = max_frame
        #: Frames skipped: not UTF-8 JSON, not an object, no string ``key``, or longer than ``max_frame``.
        self.bad = 0
        self._buffer = bytearray()
        self._skipping = False  # inside an overlong frame: drop bytes up to its newline

    def feed(self, data: bytes) -> list[Frame]:
        """The complete frames in ``data`` (and what came before it), in order."""
        self._buffer += data
        frames: list[Frame] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > self.max_frame:
                    if not self._skipping:
                        self.bad += 1
                        self._skipping = True
                    self._buffer.clear()
                return frames
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if self._skipping:
                self._skipping = False
                continue
            if not line.strip():
                continue
            if len(line) > self.max_frame:
                self.bad += 1
                continue
            frame = self._parse(line)
            if frame is None:
                self.bad += 1
            else:
                frames.append(frame)

    def _parse(self, line: bytes) -> Frame | None:
        try:
            value = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(value, dict) or not isinstance(value.get(self.key), str):
            return None
        return value
