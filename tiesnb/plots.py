"""One look for every figure of the study: paper-sized, readable fonts, colour-blind palette,
and one colour per method across figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {
    "average": PALETTE[7], "task arithmetic": PALETTE[0], "TIES": PALETTE[3], "Fisher": PALETTE[4],
    "RegMean": PALETTE[2], "DARE": PALETTE[1], "multitask": PALETTE[5], "fine-tuned": PALETTE[9],
    "zero-shot": PALETTE[8], "probe": PALETTE[8], "prototype head": PALETTE[8],
}
WIDTH = 3.4  # inches: one column of a two-column paper


def style() -> None:
    """Seaborn's paper context, white grid, and fonts embedded as text in PDFs."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.0)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 200, "pdf.fonttype": 42, "ps.fonttype": 42,
                         "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7.5,
                         "xtick.labelsize": 8, "ytick.labelsize": 8})


def figure(width: float = WIDTH, height: float = 2.4, ncols: int = 1, **kw):
    """A styled figure: one column wide by default (pass ``width=7`` for two columns)."""
    style()
    return plt.subplots(1, ncols, figsize=(width, height), **kw)


def seed_band(ax, df, x: str, y: str, color=None, label: str | None = None, ls: str = "-", marker: str = "o",
              seed: str = "seed"):
    """A line of the mean of ``y`` over seeds at each ``x``, and a band from the lowest to the
    highest seed: how far a rerun with another seed could move it."""
    g = df.groupby(x)[y]
    mean, lo, hi = g.mean(), g.min(), g.max()
    ax.plot(mean.index, mean.values, ls=ls, marker=marker, markersize=3, lw=1.2, color=color, label=label)
    if df[seed].nunique() > 1:
        ax.fill_between(mean.index, lo.values, hi.values, color=color, alpha=0.18, lw=0)
    return mean


def head_line(ax, value: float, label: str) -> None:
    """The pretrained encoder through its heads (the family's ``pretrained_label``) as a dotted
    horizontal reference line: what every merge is measured against."""
    ax.axhline(value, color=METHOD_COLORS.get(label, "grey"), ls=":", lw=1.0, label=f"{label} (pretrained)")


def legend_outside(ax, **kw) -> None:
    """The legend beside the axes (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False, **kw)


def legend_below(ax, ncol: int = 3, **kw) -> None:
    """The legend under the axes (never over the data)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=ncol, frameon=False, **kw)


def log_ticks(ax, values, min_ratio: float = 1.6) -> None:
    """Ticks of a log axis at the grid's own values, plainly labelled, each at least
    ``min_ratio`` times the previous one (no overprinted labels)."""
    import matplotlib.ticker as mticker

    shown = []
    for v in sorted(set(values)):
        if not shown or v / shown[-1] >= min_ratio:
            shown.append(v)
    ax.xaxis.set_major_locator(mticker.FixedLocator(shown))
    ax.xaxis.set_major_formatter(mticker.FixedFormatter([f"{v:g}" for v in shown]))
    ax.xaxis.set_minor_locator(mticker.NullLocator())
