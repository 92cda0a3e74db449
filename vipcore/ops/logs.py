"""Logging set-up: one line per event, key=value text or JSON.

Fields given with ``extra=`` become keys of their own in both formats, so a
transition line carries ``event=transition group=... family=IPv4 vrid=7
old=backup new=master reason="..."`` that a log pipeline can filter on
without parsing the message.

Stack traces are printed only for *unexpected* errors: a record at ERROR or
above that carries ``exc_info`` whose exception is not a
:class:`~vipcore.core.errors.VipcoreError` (those have a message that says what to
do; a trace would only hide it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from vipcore.core.errors import VipcoreError

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, in the order they were given."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _wants_trace(record: logging.LogRecord) -> bool:
    if not record.exc_info or record.levelno < logging.ERROR:
        return False
    exc = record.exc_info[1]
    return not isinstance(exc, VipcoreError)


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra=`` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            data.setdefault(key, _scalar(value))
        if _wants_trace(record):
            data["exc"] = self.formatException(record.exc_info)  # type: ignore[arg-type]
        elif record.exc_info and record.exc_info[1] is not None:
            data.setdefault("error", str(record.exc_info[1]))
        return json.dumps(data, default=str)


def _text_value(value: Any) -> str:
    """Bare when safe, JSON-quoted when it has spaces, quotes or ``=``, or is empty."""
    if value is None:
        return "-"
    text = str(value) if not isinstance(value, bool) else str(value).lower()
    if text and not any(c.isspace() or c in '"=\\' for c in text):
        return text
    return json.dumps(text)


class TextFormatter(logging.Formatter):
    """``ts=... level=... logger=... msg="..." key=value ...`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={json.dumps(record.getMessage())}"]
        parts += [f"{key}={_text_value(value)}" for key, value in extra_fields(record).items()]
        if _wants_trace(record):
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))  # type: ignore[arg-type]
        elif record.exc_info and record.exc_info[1] is not None:
            parts.append("error=" + json.dumps(str(record.exc_info[1])))
        return " ".join(parts)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Route vipcore's logs to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The kubernetes client and pyroute2 are chatty at INFO.
    for noisy in ("kubernetes", "urllib3", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
