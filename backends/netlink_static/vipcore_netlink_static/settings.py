"""The ``netlink_static`` section of the agent config, validated once at start.

::

    netlink_static:
      garp: {count: 5, interval: 0.2, refresh: null}   # burst, then optional periodic refresh
      verify_interval: 5.0                              # re-add missing VIPs, retry faulted groups
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from vipcore.net.addresses import AnnounceSchedule
from vipcore.core.errors import ConfigError
from vipcore.core.settings import check_garp

SECTION = "netlink_static"
#: Gratuitous ARPs / unsolicited NAs sent when a node starts holding.
DEFAULT_ANNOUNCE_COUNT = 5
#: Seconds between the announcements of the burst.
DEFAULT_ANNOUNCE_INTERVAL = 0.2
#: Seconds between checks that held VIPs are still there (a link flap
#: flushes IPv6 addresses) and retries of groups in FAULT.
DEFAULT_VERIFY_INTERVAL = 5.0

VERIFY_INTERVAL_MAX = 86400.0

_KEYS = frozenset({"garp", "verify_interval"})


@attrs.frozen
class Settings:
    """What the backend reads from its config section."""

    announce: AnnounceSchedule = AnnounceSchedule(DEFAULT_ANNOUNCE_COUNT, DEFAULT_ANNOUNCE_INTERVAL, None)
    #: None disables the periodic check.
    verify_interval: float | None = DEFAULT_VERIFY_INTERVAL

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> "Settings":
        """Validate the section; unknown keys and bad values raise ConfigError naming them."""
        section = dict(section or {})
        unknown = set(section) - _KEYS
        if unknown:
            raise ConfigError(
                f"unknown keys {sorted(map(str, unknown))}; expected {', '.join(sorted(_KEYS))}", field=SECTION
            )
        check_garp(section.get("garp"), field=f"{SECTION}.garp")
        garp = {"count": DEFAULT_ANNOUNCE_COUNT, "interval": DEFAULT_ANNOUNCE_INTERVAL, "refresh": None}
        given = section.get("garp") or {}
        if not isinstance(given, Mapping):
            raise ConfigError("must be a mapping {count, interval, refresh}", field=f"{SECTION}.garp")
        garp.update(given)
        announce = AnnounceSchedule.from_config(garp, field=f"{SECTION}.garp")
        verify: float | None = DEFAULT_VERIFY_INTERVAL
        if "verify_interval" in section:
            raw = section["verify_interval"]
            try:
                verify = None if raw in (None, 0, "") else float(raw)
            except (TypeError, ValueError):
                verify = -1.0
            # NaN and infinity would never verify (or crash the timer): finite, at most a day.
            if verify is not None and not 0 < verify <= VERIFY_INTERVAL_MAX:
                raise ConfigError(f"must be a number of seconds > 0 or null, got {raw!r}",
                                  field=f"{SECTION}.verify_interval")
        return cls(announce=announce, verify_interval=verify)
