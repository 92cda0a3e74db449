"""The ``native_vrrp`` config section, validated.

Every problem raises :class:`vipcore.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vipcore.net.addresses import AnnounceSchedule
from vipcore.core.errors import ConfigError
from vipcore_native_vrrp.liveness.coordinator import LivenessSettings
from vipcore_native_vrrp.protocol.auth import MIN_KEY_LENGTH
from vipcore.core.settings import check_garp, check_number
from vipcore.core.yamldocs import show
from vipcore_native_vrrp.protocol.packet import MAX_INTERVAL_CS

SECTION = "native_vrrp"
DEFAULT_GARP = AnnounceSchedule(count=5, interval=0.2, refresh=None)
#: A typo such as ``.inf`` must not make SIGTERM last forever.
RESIGN_TIMEOUT_MAX = 600.0
KEYS = ("advert_interval", "preempt", "unicast", "check_source", "garp", "resign_timeout", "check_priority",
        "keepalived_peers", "auth_key_file", "liveness")


#: The default advert interval when VRRP's timers detect failures (Master_Down_Interval about 0.3 s).
TIMERS_INTERVAL_CS = 10


@attrs.frozen
class NativeVrrpConfig:
    #: Advertisement interval in centiseconds (``advert_interval`` in seconds). RFC 5798's default, 1 s,
    #: while liveness detects failures (the default); :meth:`from_mapping` picks 0.1 s when VRRP's own
    #: timers must (liveness off, or keepalived members, which have no session).
    interval_cs: int = 100
    preempt: bool = True
    unicast: bool = False
    check_source: bool = True
    garp: AnnounceSchedule = DEFAULT_GARP
    #: Bound on a graceful hand-over; None: Master_Down_Interval of a priority-1 router.
    resign_timeout: float | None = None
    #: Node-level liveness (BFD) between vipcore nodes; see docs/native-vrrp.md.
    liveness: LivenessSettings = LivenessSettings()
    #: Drop adverts whose priority the sending member would never advertise.
    check_priority: bool = True
    #: Peers (node names or addresses) exempt from the priority check:
    #: keepalived with hand-set priorities.
    keepalived_peers: frozenset[str] = frozenset()
    #: Authenticated mode: the shared key (read from ``auth_key_file``).
    auth_key: bytes | None = attrs.field(default=None, repr=False)

    @property
    def advert_interval(self) -> float:
        return self.interval_cs / 100.0

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None) -> "NativeVrrpConfig":
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"must be a mapping, got {show(section)}", source=SECTION)
        section = dict(section or {})
        unknown = sorted(str(k) for k in set(section) - set(KEYS))
        if unknown:
            # Quoted: a key may hold a newline, and the message stays one line.
            raise ConfigError(f"unknown key(s) {', '.join(map(show, unknown))}; known keys: {', '.join(KEYS)}",
                              source=SECTION)
        kwargs: dict[str, Any] = {}
        if "advert_interval" in section:
            kwargs["interval_cs"] = _interval(section["advert_interval"])
        for key in ("preempt", "unicast", "check_source", "check_priority"):
            if key in section:
                if not isinstance(section[key], bool):
                    raise ConfigError(f"must be true or false, got {section[key]!r}", source=SECTION, field=key)
                kwargs[key] = section[key]
        if "garp" in section:
            garp = section["garp"]
            if garp is not None and not isinstance(garp, Mapping):
                raise ConfigError("must be a mapping {count, interval, refresh}", source=SECTION, field="garp")
            check_garp(garp, source=SECTION)
            defaults = {"count": DEFAULT_GARP.count, "interval": DEFAULT_GARP.interval, "refresh": DEFAULT_GARP.refresh}
            try:
                kwargs["garp"] = AnnounceSchedule.from_config({**defaults, **(garp or {})})
            except ConfigError as exc:
                raise ConfigError(str(exc), source=SECTION) from None
        if section.get("resign_timeout") is not None:
            value = _number(section["resign_timeout"], "resign_timeout", 0.0, RESIGN_TIMEOUT_MAX)
            if value <= 0:
                raise ConfigError(f"must be a number of seconds > 0, got {value}", source=SECTION,
                                  field="resign_timeout")
            kwargs["resign_timeout"] = float(value)
        if "liveness" in section:
            kwargs["liveness"] = LivenessSettings.from_mapping(section["liveness"], source=SECTION)
        if section.get("keepalived_peers") is not None:
            kwargs["keepalived_peers"] = _peers(section["keepalived_peers"])
        if section.get("auth_key_file") is not None:
            kwargs["auth_key"] = _key(section["auth_key_file"])
            if kwargs.get("keepalived_peers"):
                raise ConfigError("keepalived cannot authenticate: leave keepalived_peers empty in authenticated "
                                  "mode (auth_key_file)", source=SECTION, field="keepalived_peers")
        if "interval_cs" not in kwargs:
            liveness = kwargs.get("liveness", LivenessSettings())
            if not liveness.enabled or kwargs.get("keepalived_peers"):
                kwargs["interval_cs"] = TIMERS_INTERVAL_CS
        return cls(**kwargs)


def _number(value: object, field: str, low: float, high: float, *, integer: bool = False) -> float:
    return check_number(value, source=SECTION, field=field, low=low, high=high, integer=integer)


def _interval(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"must be a number of seconds, got {show(value)}", source=SECTION, field="advert_interval")
    cs = round(value * 100)
    if abs(cs - value * 100) > 1e-6:
        raise ConfigError(f"{value} s is not a whole number of centiseconds (VRRPv3 resolution is 0.01 s)",
                          source=SECTION, field="advert_interval")
    if not 1 <= cs <= MAX_INTERVAL_CS:
        raise ConfigError(f"must be 0.01..{MAX_INTERVAL_CS / 100} s, got {value}", source=SECTION,
                          field="advert_interval")
    return cs


def _peers(value: object) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"must be a list of node names or addresses, got {value!r}", source=SECTION,
                          field="keepalived_peers")
    return frozenset(v.strip() for v in value)


def _key(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"must be the path of a file holding the shared key, got {value!r}", source=SECTION,
                          field="auth_key_file")
    try:
        key = Path(value).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {value}: {exc.strerror}", source=SECTION, field="auth_key_file") from None
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{value} holds {len(key)} bytes; the key needs at least {MIN_KEY_LENGTH} "
                          "(e.g. head -c 32 /dev/urandom | base64)", source=SECTION, field="auth_key_file")
    return key


def keepalived_addresses(names: frozenset[str]) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The entries of ``keepalived_peers`` that are addresses (the rest are node names)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for name in names:
        try:
            found.add(ipaddress.ip_address(name))
        except ValueError:
            continue
    return frozenset(found)
