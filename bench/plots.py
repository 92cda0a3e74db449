"""Pictures of the failover bench: what the client saw, per backend, and how failover times spread.

``failover_figures(data, folder)`` writes two PNGs from the measurements
``bench/failover.py`` collects (or re-reads with ``--from-json``):

* ``failover-replies.png``: for each advert interval and event, one row per
  backend: every reply the client got around the failure of the median trial
  (a tick per reply, time 0 = the failure), so the gap is the white space;
* ``failover-times.png``: every trial's longest reply gap per backend, side
  by side (box plot with the individual trials on top), one panel per
  (event, advert interval), IPv4 and IPv6 pooled.

matplotlib is optional (``pip install -e '.[bench]'``); without it the bench
still prints its tables and says why no picture was drawn.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

EVENTS = {"hard": "hard failure (SIGKILL, links down)", "graceful": "graceful stop (SIGTERM)"}
COLORS = {"native_vrrp": "#1f77b4", "plain-keepalived": "#7f7f7f", "keepalived": "#ff7f0e",
          "netlink_static": "#2ca02c"}


def _cells(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(event, advert key, backend) present in the data, in a stable order."""
    keys = sorted({tuple(k.split("@", 1)) for k in data.get("failover", {})}, key=lambda k: (k[1] == "-", k[1], k[0]))
    return [(event, advert, backend) for event in EVENTS for backend, advert in keys]


def _median_trial(trials: list[dict[str, Any]], family: str) -> dict[str, Any] | None:
    good = [t[family] for t in trials if "error" not in t and family in t and t[family].get("replies_ms")]
    if not good:
        return None
    middle = statistics.median_low([t["gap_ms"] for t in good])
    return next(t for t in good if t["gap_ms"] == middle)


#: A silence shorter than this is ping jitter (the client pings every 10 ms), not an outage.
QUIET_MS = 50.0


def gap_end(replies_ms: list[float]) -> float:
    """When replies came back after the longest silence that ends after the failure (ms; 0 if no outage)."""
    pairs = [(a, b) for a, b in zip(replies_ms, replies_ms[1:]) if b > 0]
    start, end = max(pairs, key=lambda p: p[1] - p[0]) if pairs else (0.0, 0.0)
    return end if end - start >= QUIET_MS else 0.0


def failover_figures(data: dict[str, Any], folder: Path, labels: dict[str, str]) -> list[Path]:
    """Write the two pictures into ``folder``; returns their paths (none if there is nothing to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    failover: dict[str, dict[str, list[dict[str, Any]]]] = data.get("failover", {})
    if not failover:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    adverts = sorted({k.split("@", 1)[1] for k in failover if not k.endswith("@-")}, key=float, reverse=True)
    panels = [(event, advert) for event in EVENTS for advert in adverts]
    if any(k.endswith("@-") for k in failover):
        panels += [(event, "-") for event in EVENTS]

    # 1. What the client saw around the failure (median trial per cell).
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.1 + 0.55 * 4 * len(panels)), squeeze=False)
    for ax, (event, advert) in zip(axes[:, 0], panels):
        rows = []
        for key in sorted(failover):
            backend, interval = key.split("@", 1)
            if interval != advert:
                continue
            for family in ("IPv4", "IPv6"):
                trial = _median_trial(failover[key].get(event, []), family)
                if trial is not None:
                    rows.append((f"{labels.get(backend, backend)} {family}", backend, trial))
        for index, (name, backend, trial) in enumerate(rows):
            ax.eventplot([trial["replies_ms"]], lineoffsets=index, linelengths=0.7, linewidths=0.8,
                         colors=COLORS.get(backend, "black"))
            ax.text(1.005, index, f"{trial['gap_ms']:.0f} ms, {trial['lost']} lost", va="center", fontsize=8,
                    transform=ax.get_yaxis_transform())
        ax.axvline(0, color="red", linewidth=1)
        # One time axis per panel: past the latest recovery, but not past any row's last recorded reply
        # (each trial keeps replies until 300 ms after its own gap: a blank there would look like loss).
        latest = max([0.0] + [gap_end(r[2]["replies_ms"]) for r in rows])
        recorded = min([r[2]["replies_ms"][-1] for r in rows if r[2]["replies_ms"]], default=latest + 300)
        ax.set_xlim(-300, max(latest + 100, min(latest + 300, recorded)))
        ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
        ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
        ax.invert_yaxis()
        where = "control plane" if advert == "-" else f"adverts every {advert} s"
        ax.set_title(f"{EVENTS[event]}, {where}: client replies (one tick each), median trial", fontsize=9,
                     loc="left")
        ax.set_xlabel("ms from the failure (red)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path = folder / "failover-replies.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    written.append(path)

    # 2. Failover time distributions, side by side: a row per event, a column per interval.
    columns = [a for a in [*adverts, "-"] if any(p[1] == a for p in panels)]
    fig, axes = plt.subplots(len(EVENTS), len(columns), figsize=(3.4 * len(columns), 7.6), squeeze=False)
    for (row, event), (col, advert) in ((r, c) for r in enumerate(EVENTS) for c in enumerate(columns)):
        ax = axes[row][col]
        names, series, colors = [], [], []
        for key in sorted(failover):
            backend, interval = key.split("@", 1)
            if interval != advert:
                continue
            gaps = [t[f]["gap_ms"] for t in failover[key].get(event, []) if "error" not in t
                    for f in ("IPv4", "IPv6") if f in t]
            if gaps:
                names.append(labels.get(backend, backend).replace(" (", "\n("))
                series.append(gaps)
                colors.append(COLORS.get(backend, "black"))
        if not series:
            ax.set_visible(False)
            continue
        ax.boxplot(series, widths=0.5, showfliers=False)
        for index, (gaps, color) in enumerate(zip(series, colors), start=1):
            spread = [index + (i % 5 - 2) * 0.04 for i in range(len(gaps))]
            ax.scatter(spread, gaps, s=10, color=color, alpha=0.7, zorder=3)
        values = [g for gaps in series for g in gaps]
        if max(values) > 10 * statistics.median(values):
            ax.set_yscale("log")  # one slow outlier must not flatten the others
        else:
            ax.set_ylim(bottom=0)
        ax.set_xticks(range(1, len(names) + 1), names, fontsize=7)
        ax.set_ylabel("longest reply gap, ms", fontsize=8)
        where = "control plane" if advert == "-" else f"adverts {advert} s"
        ax.set_title(f"{event}, {where}", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    fig.suptitle(f"Failover as the client sees it ({data.get('trials', '?')} trials per cell, IPv4 and IPv6)",
                 fontsize=10)
    fig.tight_layout()
    path = folder / "failover-times.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    written.append(path)
    return written
