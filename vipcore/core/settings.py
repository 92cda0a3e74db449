"""Agent and controller configuration: a YAML file plus ``VIPCORE_*`` overrides.

Environment overrides use ``__`` for nesting: ``VIPCORE_BACKEND=keepalived``,
``VIPCORE_NATIVE_VRRP__ADVERT_INTERVAL=0.05``. Values are parsed as YAML
scalars, so numbers and booleans work.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vipcore.core import yamldocs
from vipcore.core.errors import ConfigError
from vipcore.core.model import VRID_MAX, VRID_MIN, VridPolicy
from vipcore.core.yamldocs import show

ENV_PREFIX = "VIPCORE_"
SOURCES = ("manifests", "kubernetes")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_METRICS = "127.0.0.1:9641"
DEFAULT_STATE_DIR = Path("/run/vipcore")

_TOP_KEYS = {
    "backend", "node_name", "source", "manifests", "state_dir", "log_format", "log_level",
    "metrics", "vrid", "kubernetes", "controller",
}


def check_number(value: Any, *, source: str | None = None, field: str, low: float, high: float,
                 integer: bool = False) -> float:
    """``value`` as a finite number within ``low..high`` (an int if ``integer``; never a bool, NaN or infinity).

    The one number check for config sections (the core's and the backends'):
    a ConfigError naming ``source`` and ``field`` otherwise.
    """
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"must be {'an integer' if integer else 'a number'}, got {show(value)}",
                          source=source, field=field)
    if not math.isfinite(value) or not low <= value <= high:
        raise ConfigError(f"must be within {low:g}..{high:g}, got {value}", source=source, field=field)
    return float(value)


#: Bounds of an announcement schedule (``garp`` sections): a typo must not make a burst last forever.
GARP_COUNT_MAX = 100
GARP_INTERVAL_MAX = 60.0
GARP_REFRESH_MAX = 86400.0


def check_garp(section: Any, *, source: str | None = None, field: str = "garp") -> None:
    """Check a ``garp: {count, interval, refresh}`` mapping's keys and numbers (``refresh`` 0 or null: never)."""
    if section is None:
        return
    if not isinstance(section, Mapping):
        raise ConfigError("must be a mapping {count, interval, refresh}", source=source, field=field)
    unknown = sorted(str(k) for k in section if k not in ("count", "interval", "refresh"))
    if unknown:
        # Quoted: a key may hold a newline, and the message stays one line.
        keys = ", ".join(map(yamldocs.show, unknown))
        raise ConfigError(f"unknown key(s) {keys}; known keys: count, interval, refresh",
                          source=source, field=field)
    for key, high in (("count", GARP_COUNT_MAX), ("interval", GARP_INTERVAL_MAX), ("refresh", GARP_REFRESH_MAX)):
        value = section.get(key)
        if value is not None and not (key == "refresh" and value == 0 and not isinstance(value, bool)):
            check_number(value, source=source, field=f"{field}.{key}", low=0, high=high, integer=key == "count")


def _parse_vrid_range(text: Any, where: str) -> tuple[int, int]:
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ConfigError(f"must look like '1-255', got {show(text)}", field=where)
    raw = str(text).strip()
    first, sep, last = raw.partition("-")
    try:
        lo = int(first)
        hi = int(last) if sep else lo
    except ValueError:
        raise ConfigError(f"must look like '1-255', got {show(raw)}", field=where) from None
    if not (VRID_MIN <= lo <= hi <= VRID_MAX):
        raise ConfigError(f"must be within {VRID_MIN}-{VRID_MAX} with first <= last, got {show(raw)}", field=where)
    return lo, hi


def parse_vrid_policy(data: Any, where: str = "vrid", *, allow: frozenset[str] = frozenset()) -> VridPolicy:
    """``{range: "1-255", exclude: [7, "100-110"]}`` as a :class:`VridPolicy`."""
    if data is None:
        return VridPolicy()
    if not isinstance(data, Mapping):
        raise ConfigError("must be a mapping with 'range' and 'exclude'", field=where)
    unknown = set(data) - {"range", "exclude"} - allow
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(str(k) for k in unknown)}", field=where)
    lo, hi = _parse_vrid_range(data.get("range", f"{VRID_MIN}-{VRID_MAX}"), f"{where}.range")
    exclude: set[int] = set()
    excluded = data.get("exclude") or []
    if not isinstance(excluded, list):
        raise ConfigError(f"must be a list of VRIDs or ranges, got {show(excluded)}", field=f"{where}.exclude")
    for i, item in enumerate(excluded):
        if isinstance(item, int) and not isinstance(item, bool):
            if not VRID_MIN <= item <= VRID_MAX:
                raise ConfigError(f"must be within {VRID_MIN}-{VRID_MAX}, got {item}", field=f"{where}.exclude[{i}]")
            exclude.add(item)
        else:
            a, b = _parse_vrid_range(item, f"{where}.exclude[{i}]")
            exclude.update(range(a, b + 1))
    try:
        return VridPolicy(first=lo, last=hi, exclude=frozenset(exclude))
    except ValueError as exc:
        raise ConfigError(str(exc), field=where) from None


@attrs.frozen
class Config:
    """The validated configuration."""

    backend: str = "native_vrrp"
    node_name: str = attrs.field(factory=platform.node)
    source: str = "manifests"
    manifests: tuple[Path, ...] = ()
    state_dir: Path = DEFAULT_STATE_DIR
    log_format: str = "text"
    log_level: str = "INFO"
    #: ``host:port`` of the metrics/status endpoint; empty disables it.
    metrics: str = DEFAULT_METRICS
    vrid: VridPolicy = VridPolicy()
    #: Per-interface VRID policies overriding ``vrid``.
    vrid_interfaces: Mapping[str, VridPolicy] = attrs.field(factory=dict, hash=False)
    kubernetes: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    controller: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    #: Every other top-level mapping: one section per backend, passed as is.
    sections: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict, hash=False)
    path: Path | None = None

    def backend_section(self, name: str | None = None) -> Mapping[str, Any]:
        return self.sections.get(name or self.backend, {})

    def vrid_policy(self, interface: str) -> VridPolicy:
        return self.vrid_interfaces.get(interface, self.vrid)


def _env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in sorted(environ.items()):
        if not key.startswith(ENV_PREFIX) or key == "VIPCORE_CONFIG":
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not path:
            continue
        target = data
        for part in path[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = target[part] = {}
            target = nxt
        try:
            docs = yamldocs.load_all(value, source=key) if value else [""]
            target[path[-1]] = docs[0] if len(docs) == 1 else value
        except ConfigError:
            target[path[-1]] = value


def load_config(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Read, override and validate. Every problem is a one-line ConfigError."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", source=source) from None
        documents = [d for d in yamldocs.load_all(yamldocs.decode(raw, source=source), source=source)
                     if d is not None]
        if len(documents) > 1:
            raise ConfigError(f"must be one YAML document, found {len(documents)}", source=source)
        loaded = documents[0] if documents else {}
        if not isinstance(loaded, dict):
            raise ConfigError("must be a YAML mapping", source=source)
        data = loaded
    _env_overrides(data, environ)
    if overrides:
        data.update({k: v for k, v in overrides.items() if v is not None})
    return _validate(data, source, Path(path) if path else None)


def _validate(data: dict[str, Any], source: str, path: Path | None) -> Config:
    def fail(field: str, message: str) -> ConfigError:
        return ConfigError(message, source=source, field=field)

    kwargs: dict[str, Any] = {"path": path}
    sections: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise fail(show(key), "setting names must be strings")
        if key in _TOP_KEYS:
            continue
        if not isinstance(value, Mapping):
            raise fail(key, "unknown setting (backend sections must be mappings)")
        sections[key] = dict(value)
    kwargs["sections"] = sections

    for key in ("backend", "node_name", "source", "log_format", "log_level"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or not value:
                raise fail(key, "must be a non-empty string")
            kwargs[key] = value
    if kwargs.get("source", "manifests") not in SOURCES:
        raise fail("source", f"must be one of {', '.join(SOURCES)}, got {kwargs['source']!r}")
    if kwargs.get("log_format", "text") not in LOG_FORMATS:
        raise fail("log_format", f"must be one of {', '.join(LOG_FORMATS)}")
    if "log_level" in kwargs:
        if kwargs["log_level"].upper() not in LOG_LEVELS:
            raise fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {show(kwargs['log_level'])}")
        kwargs["log_level"] = kwargs["log_level"].upper()

    manifests = data.get("manifests", [])
    if isinstance(manifests, str):
        manifests = [manifests]
    if not isinstance(manifests, list):
        raise fail("manifests", "must be a list of files or folders")
    for i, entry in enumerate(manifests):
        if not isinstance(entry, str) or not entry or "\0" in entry:
            raise fail(f"manifests[{i}]", f"must be a file or folder name, got {show(entry)}")
    base = path.parent if path else Path.cwd()
    kwargs["manifests"] = tuple((base / str(m)) if not Path(str(m)).is_absolute() else Path(str(m)) for m in manifests)
    if kwargs.get("source", "manifests") == "manifests" and not kwargs["manifests"]:
        raise fail("manifests", "source is 'manifests' but no manifest file or folder is listed")

    if "state_dir" in data:
        state_dir = data["state_dir"]
        if not isinstance(state_dir, str) or not state_dir or "\0" in state_dir:
            raise fail("state_dir", f"must be a folder name, got {show(state_dir)}")
        kwargs["state_dir"] = Path(state_dir)
    state: Path = kwargs.get("state_dir", DEFAULT_STATE_DIR)
    if state.exists() and not state.is_dir():
        raise fail("state_dir", f"{str(state)!r} exists and is not a folder")
    if "metrics" in data:
        metrics = data["metrics"]
        address = metrics.get("address", DEFAULT_METRICS) if isinstance(metrics, Mapping) else metrics
        if address is not None and address is not False and not isinstance(address, str):
            raise fail("metrics.address", f"must look like 'host:port' or be empty, got {show(address)}")
        address = address or ""
        if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
            raise fail("metrics.address", f"must look like 'host:port' or be empty, got {address!r}")
        kwargs["metrics"] = address

    vrid = data.get("vrid")
    try:
        kwargs["vrid"] = parse_vrid_policy(vrid, allow=frozenset({"interfaces"}))
        per_interface = vrid.get("interfaces") if isinstance(vrid, Mapping) else None
        if per_interface is not None and not isinstance(per_interface, Mapping):
            raise ConfigError("must map interface names to {range, exclude}", field="vrid.interfaces")
        kwargs["vrid_interfaces"] = {
            str(name): parse_vrid_policy(policy, f"vrid.interfaces.{name}")
            for name, policy in (per_interface or {}).items()
        }
    except ConfigError as exc:
        raise ConfigError(str(exc).split(": ", 1)[-1], source=source, field=exc.field or "vrid") from None

    for key in ("kubernetes", "controller"):
        value = data.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise fail(key, "must be a mapping")
        kwargs[key] = dict(value or {})
    return Config(**kwargs)
