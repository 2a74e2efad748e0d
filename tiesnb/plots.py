"""One look for every figure of the study: paper-sized, readable fonts, colour-blind palette,
and one colour per method across figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = sns.color_palette("colorblind")
METHOD_COLORS = {
    "average": PALETTE[7], "task arithmetic": PALETTE[0], "TIES": PALETTE[3], "Fisher": PALETTE[4],
    "RegMean": PALETTE[2], "DARE": PALETTE[1], "multitask": PALETTE[5], "fine-tuned": PALETTE[9],
    "zero-shot": PALETTE[8],
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
