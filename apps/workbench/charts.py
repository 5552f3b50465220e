"""Charts of the client view, drawn on the server as SVG with matplotlib (object API, no pyplot state, so
requests in threads do not share a figure). Text stays text (``svg.fonttype: none``): the browser draws it
in the page's fonts, Chinese included, and a screen reader or a search finds it.

Each chart is served as its own ``image/svg+xml`` response and shown with an ``<img alt=...>``; the page
also gives the same numbers as a table (a chart is never the only way to read a figure).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from datetime import timedelta

import matplotlib

matplotlib.use("Agg")
from matplotlib import font_manager, rcParams  # noqa: E402
from matplotlib.backends.backend_svg import FigureCanvasSVG  # noqa: E402
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter, PercentFormatter  # noqa: E402

rcParams["svg.fonttype"] = "none"
# Text is drawn by the browser (fonttype none); fonts here only size the labels: a CJK one where installed.
_CJK = ("Noto Sans CJK SC", "WenQuanYi Zen Hei", "Source Han Sans SC")
rcParams["font.family"] = ["DejaVu Sans", *[n for n in _CJK if n in {f.name for f in font_manager.fontManager.ttflist}]]
rcParams["svg.hashsalt"] = "nba-workbench"  # stable ids: the same data gives the same bytes

INK, MUTED, ASSETS, LIABS, HEALTH, CHURN = "#1f2933", "#52606d", "#1b6ca8", "#b44a3c", "#2f7d32", "#a4461b"


def _figure(height: float = 2.6) -> Figure:
    fig = Figure(figsize=(6.4, height), dpi=100, layout="constrained")
    fig.patch.set_alpha(0)
    return fig


def _dates(ax) -> None:
    # Numbers only (2026-03, 03-15): month names would be English on a Chinese page.
    locator = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(
        locator, formats=["%Y", "%m", "%m-%d", "%H:%M", "%H:%M", "%S.%f"],
        zero_formats=["", "%Y", "%Y-%m", "%m-%d", "%H:%M", "%H:%M"],
        offset_formats=["", "%Y", "%Y-%m", "%Y-%m-%d", "%Y-%m-%d", "%Y-%m-%d %H:%M"], show_offset=False))


def _empty(fig: Figure, ax, text: str) -> bytes:
    """A chart with no data: the ``text`` alone, no axes."""
    ax.text(0.5, 0.5, text, ha="center", va="center", color=MUTED, transform=ax.transAxes)
    ax.set_axis_off()
    return _svg(fig)


def _one_date(ax, x) -> None:
    if len(set(x)) == 1:  # one date: a month either side, not matplotlib's years
        ax.set_xlim(x[0] - timedelta(days=30), x[0] + timedelta(days=30))


def _style(ax, ylabel: str | None = None) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=8)
    ax.grid(axis="y", color="#d9e2ec", linewidth=0.6)
    if ylabel:
        ax.set_ylabel(ylabel, color=MUTED, fontsize=8)


def _svg(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Without a CJK font matplotlib warns per glyph while sizing labels; the browser draws them.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        FigureCanvasSVG(fig).print_svg(buf, metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def balance_svg(points: Sequence[dict], labels: dict[str, str]) -> bytes:
    """Assets and liabilities at month ends: ``points`` [{"date", "assets", "liabilities"}] (currency),
    ``labels``: assets, liabilities, empty (shown when there are no points)."""
    fig = _figure()
    ax = fig.add_subplot()
    if not points:
        return _empty(fig, ax, labels["empty"])
    x = [p["date"] for p in points]
    ax.plot(x, [p["assets"] for p in points], color=ASSETS, linewidth=2, marker="o", markersize=3,
            label=labels["assets"])
    if any(p["liabilities"] for p in points):
        ax.plot(x, [p["liabilities"] for p in points], color=LIABS, linewidth=2, marker="s", markersize=3,
                linestyle="--", label=labels["liabilities"])
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 1.5k, 2M: as many digits as the ticks need
    values = [p["assets"] for p in points] + [p["liabilities"] for p in points]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.1 * max(abs(hi), abs(lo)), 100.0)  # flat or zero: a readable range, no milli-units
    ax.set_ylim(max(0.0, lo - 0.1 * span) if lo >= 0 else lo - 0.1 * span, hi + 0.1 * span)
    ax.legend(frameon=False, fontsize=8, labelcolor=INK)
    _one_date(ax, x)
    _dates(ax)
    _style(ax)
    return _svg(fig)


def state_svg(points: Sequence[dict], labels: dict[str, str]) -> bytes:
    """Relationship health (0-100, left axis) and churn risk (probability, right axis) over time:
    ``points`` [{"date", "health_score", "churn_risk" (None when unknown)}]; ``labels``: health, churn, empty."""
    fig = _figure()
    ax = fig.add_subplot()
    if not points:
        return _empty(fig, ax, labels["empty"])
    x = [p["date"] for p in points]
    h = [p["health_score"] for p in points]
    ax.plot(x, h, color=HEALTH, linewidth=2, marker="o", markersize=4, label=labels["health"])
    ax.set_ylim(0, 100)
    _style(ax, labels["health"])
    churn = [(p["date"], p["churn_risk"]) for p in points if p.get("churn_risk") is not None]
    handles, names = ax.get_legend_handles_labels()
    if churn:
        ax2 = ax.twinx()
        ax2.plot([c[0] for c in churn], [c[1] for c in churn], color=CHURN, linewidth=2, marker="D", markersize=4,
                 linestyle="--", label=labels["churn"])
        ax2.set_ylim(0, 1)
        ax2.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax2.tick_params(colors=MUTED, labelsize=8)
        ax2.spines["top"].set_visible(False)
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, frameon=False, fontsize=8, labelcolor=INK, loc="lower left")
    _one_date(ax, x)
    _dates(ax)
    return _svg(fig)


def contacts_svg(per_channel: dict[str, dict[str, int]], channel_names: dict[str, str],
                 labels: dict[str, str]) -> bytes:
    """Contacts per channel, inbound and outbound stacked: ``per_channel`` channel -> {"inbound", "outbound"}
    (counts); ``labels``: inbound, outbound, empty."""
    fig = _figure(2.2)
    ax = fig.add_subplot()
    chans = list(per_channel)
    if not chans or not any(sum(v.values()) for v in per_channel.values()):
        return _empty(fig, ax, labels["empty"])
    names = [channel_names.get(c, c) for c in chans]
    inbound = [per_channel[c].get("inbound", 0) for c in chans]
    outbound = [per_channel[c].get("outbound", 0) for c in chans]
    ax.barh(names, inbound, color=ASSETS, label=labels["inbound"])
    ax.barh(names, outbound, left=inbound, color="#9fb3c8", hatch="//", edgecolor="white", label=labels["outbound"])
    ax.invert_yaxis()
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(frameon=False, fontsize=8, labelcolor=INK, loc="lower right")
    _style(ax)
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#d9e2ec", linewidth=0.6)
    return _svg(fig)
