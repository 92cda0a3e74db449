"""The ``keepalived:`` section of the agent configuration, validated.

Every key is optional; the defaults match the native_vrrp backend's so that a
group can mix keepalived and native_vrrp nodes (same advert interval, same
preempt behaviour). Every problem is a :class:`~vipcore.core.errors.ConfigError`
naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from vipcore.core.errors import ConfigError
from vipcore.core.settings import check_number

SECTION = "keepalived"

#: VRRPv3 carries the advert interval in centiseconds in 12 bits.
ADVERT_MIN = 0.01
ADVERT_MAX = 40.95
#: Bounds of the integer GARP settings: a typo must not make keepalived announce forever.
GARP_INT_MAX = {"count": 100, "delay": 3600, "refresh": 86400}


@attrs.frozen
class GarpSettings:
    """Gratuitous ARP / unsolicited NA on becoming master (keepalived's own knobs).

    Linux ignores an ARP update for a neighbour entry younger than its
    ``locktime`` (1 s): a client that resolved the VIP just before a
    hand-over ignores the whole first burst. The default second burst comes
    1 s later (keepalived's is 5 s) so such a client follows within a
    second. The burst itself stays back to back: keepalived's
    ``vrrp_garp_interval`` spaces *every* announcement on an interface, so
    with many VIPs a spaced burst would delay the last VIPs' first
    announcement by seconds. ``None`` leaves keepalived's default.
    """

    #: Announcements per burst (``garp_master_repeat``).
    count: int | None = 5
    #: Seconds between any two announcements on an interface (global ``vrrp_garp_interval``,
    #: ``vrrp_gna_interval``); keepalived's default 0 when None.
    interval: float | None = None
    #: Seconds before the second burst (``garp_master_delay``; 0 = no second burst).
    delay: int | None = 1
    #: Seconds between periodic refresh bursts while master (``garp_master_refresh``).
    refresh: int | None = None

    @classmethod
    def from_config(cls, data: Any) -> "GarpSettings":
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("must be a mapping with count, interval, delay, refresh", source=SECTION, field="garp")
        unknown = set(data) - {"count", "interval", "delay", "refresh"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected count, interval, delay, refresh",
                              source=SECTION, field="garp")
        kwargs: dict[str, Any] = {}
        for key in ("count", "delay", "refresh"):
            if data.get(key) is not None:
                kwargs[key] = _int(data[key], f"garp.{key}", minimum=0, maximum=GARP_INT_MAX[key])
        if data.get("interval") is not None:
            kwargs["interval"] = _float(data["interval"], "garp.interval", 0.0, 60.0)
        return cls(**kwargs)


@attrs.frozen
class KeepalivedSettings:
    """What the keepalived backend is configured with."""

    #: Seconds between adverts; keepalived accepts hundredths with VRRPv3.
    advert_interval: float = 0.1
    #: A higher-priority node takes the group back when it returns.
    preempt: bool = True
    #: Send adverts to the other members' addresses instead of multicast.
    unicast: bool = False
    garp: GarpSettings = GarpSettings()
    #: keepalived's ``router_id``; the node name when None.
    router_id: str | None = None
    #: The keepalived executable (a name looked up in PATH, or a path).
    binary: str = "keepalived"
    #: Run keepalived and address operations inside this network namespace (labs).
    netns: str | None = None
    #: Seconds to wait after SIGTERM before SIGKILL.
    stop_timeout: float = 5.0
    #: Restarts in a row (each dying within ``stable_after`` s) before giving up.
    restart_attempts: int = 5
    #: Longest wait between two restarts, seconds (exponential backoff up to it).
    restart_backoff_max: float = 5.0
    #: A keepalived that ran this long before dying resets the restart count.
    stable_after: float = 10.0

    @classmethod
    def from_config(cls, data: Mapping[str, Any] | None) -> "KeepalivedSettings":
        data = dict(data or {})
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; known keys: {', '.join(sorted(known))}",
                              source=SECTION)
        kwargs: dict[str, Any] = {}
        if data.get("advert_interval") is not None:
            value = _float(data["advert_interval"], "advert_interval", ADVERT_MIN, ADVERT_MAX)
            if abs(round(value * 100) - value * 100) > 1e-6:
                raise ConfigError(f"must be a multiple of 0.01 s (VRRPv3 centiseconds), got {value}",
                                  source=SECTION, field="advert_interval")
            kwargs["advert_interval"] = round(value, 2)
        for key in ("preempt", "unicast"):
            if data.get(key) is not None:
                if not isinstance(data[key], bool):
                    raise ConfigError(f"must be true or false, got {data[key]!r}", source=SECTION, field=key)
                kwargs[key] = data[key]
        kwargs["garp"] = GarpSettings.from_config(data.get("garp"))
        for key in ("router_id", "binary", "netns"):
            if data.get(key) is not None:
                value = data[key]
                if not isinstance(value, str) or not value or any(c.isspace() or c in '"{}#!' for c in value):
                    raise ConfigError(f"must be a non-empty word, got {value!r}", source=SECTION, field=key)
                kwargs[key] = value
        if data.get("stop_timeout") is not None:
            kwargs["stop_timeout"] = _float(data["stop_timeout"], "stop_timeout", 0.1, 600.0)
        if data.get("restart_attempts") is not None:
            kwargs["restart_attempts"] = _int(data["restart_attempts"], "restart_attempts", minimum=1, maximum=1000)
        if data.get("restart_backoff_max") is not None:
            kwargs["restart_backoff_max"] = _float(data["restart_backoff_max"], "restart_backoff_max", 0.0, 600.0)
        if data.get("stable_after") is not None:
            kwargs["stable_after"] = _float(data["stable_after"], "stable_after", 0.0, 3600.0)
        return cls(**kwargs)


def _float(value: Any, field: str, low: float, high: float) -> float:
    return check_number(value, source=SECTION, field=field, low=low, high=high)


def _int(value: Any, field: str, *, minimum: int, maximum: int = 1_000_000) -> int:
    return int(check_number(value, source=SECTION, field=field, low=minimum, high=maximum, integer=True))
