"""Result tables that say how sure they are.

Evaluation rows (one per method, seed and task, each with its per-example ``correct`` scores)
become tables of the mean over seeds per task, and the average over tasks with its 95 % interval
(:mod:`tiesnb.stats`); comparisons become paired differences with their interval and a verdict.
Numbers are percentages. The CSV keeps every number in its own column; the Markdown shows
``mean [lo, hi]``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from . import stats
from .errors import TiesnbError


def _select(rows: pd.DataFrame, label: str, column: str = "method") -> pd.DataFrame:
    part = rows[rows[column] == label]
    if part.empty:
        raise TiesnbError(f"no evaluation rows for {label!r}; have: {', '.join(map(str, rows[column].unique()))}")
    return part


def summary(rows: pd.DataFrame, labels: Sequence[str], tasks: Sequence[str], seeds: Sequence[int],
            column: str = "method", settings: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per label: each task's accuracy (mean over seeds, %), then the average over tasks
    with its interval (``average``, ``average_lo``, ``average_hi``) and the spread of the average
    over seeds (``seed_min``, ``seed_max``). ``settings``: an optional text per label (the chosen
    hyperparameters), shown in a ``setting`` column."""
    out = []
    for label in labels:
        part = _select(rows, label, column)
        iv = stats.accuracy(part, tasks, seeds).scaled(100)
        per_seed = part.groupby("seed")["accuracy"].mean() * 100
        row = {column: label}
        if settings is not None:
            row["setting"] = settings.get(label, "")
        for t in tasks:
            row[t] = part[part.task == t]["accuracy"].mean() * 100
        row.update(average=iv.mean, average_lo=iv.lo, average_hi=iv.hi,
                   seed_min=per_seed.min(), seed_max=per_seed.max())
        out.append(row)
    return pd.DataFrame(out)


def compare(rows: pd.DataFrame, pairs: Sequence[tuple[str, str, str]], tasks: Sequence[str],
            seeds: Sequence[int], column: str = "method") -> pd.DataFrame:
    """Paired differences ``a − b`` of the average accuracy (points), for ``(name, a, b)`` triples,
    with the interval and whether it excludes 0; per seed too."""
    out = []
    for name, a, b in pairs:
        ra, rb = _select(rows, a, column), _select(rows, b, column)
        iv = stats.difference(ra, rb, tasks, seeds).scaled(100)
        sa = ra.groupby("seed")["accuracy"].mean()
        sb = rb.groupby("seed")["accuracy"].mean()
        first = name.split(" − ")[0]  # "TIES − averaging": the verdict speaks of TIES
        row = {"comparison": name, "a": a, "b": b, "difference": iv.mean, "lo": iv.lo, "hi": iv.hi,
               "separated": iv.separated, "verdict": f"{first} {iv.verdict()}" if iv.separated else "not separated"}
        for s in seeds:
            row[f"seed {s}"] = (sa.get(s, np.nan) - sb.get(s, np.nan)) * 100
        out.append(row)
    return pd.DataFrame(out)


def markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """Markdown of a summary or comparison table: intervals folded into ``mean [lo, hi]``,
    blanks (never ``nan``) where a value is missing."""
    df = df.copy()
    f = f"{{:.{digits}f}}"
    if {"average", "average_lo", "average_hi"} <= set(df.columns):
        at = list(df.columns).index("average")
        df.insert(at, "average [95% CI]", [f"{f.format(m)} [{f.format(lo)}, {f.format(hi)}]"
                                           for m, lo, hi in zip(df.average, df.average_lo, df.average_hi)])
        df.insert(at + 1, "seeds (min–max)", [f"{f.format(a)}–{f.format(b)}" for a, b in zip(df.seed_min, df.seed_max)])
        df = df.drop(columns=["average", "average_lo", "average_hi", "seed_min", "seed_max"])
    if {"difference", "lo", "hi"} <= set(df.columns):
        g = f"{{:+.{digits}f}}"
        at = list(df.columns).index("difference")
        df.insert(at, "difference [95% CI]", [f"{g.format(m)} [{g.format(lo)}, {g.format(hi)}]"
                                              for m, lo, hi in zip(df.difference, df.lo, df.hi)])
        df = df.drop(columns=["difference", "lo", "hi", "separated"])
    return plain_markdown(df, digits)


def plain_markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """``df`` as Markdown, numbers with ``digits`` decimals, missing values blank (never ``nan``)."""
    df = df.astype(object).where(df.notna(), None)
    return df.to_markdown(index=False, floatfmt=f".{digits}f", missingval="")


def predictions(rows: pd.DataFrame, table: str, column: str = "method") -> pd.DataFrame:
    """Per-example predictions of reported evaluations, one line per (label, seed, task), examples
    in the split's order: the predicted label of each as a string of digits, and whether each was
    right (1 / 0; ``h`` for half, a tie between two middle prompt templates)."""
    def digits(a):
        a = np.asarray(a)
        return "".join(map(str, a.tolist())) if a.size and a.min() >= 0 and a.max() <= 9 else " ".join(map(str, a.tolist()))

    out = rows[[column, "seed", "split", "task", "n", "accuracy"]].copy()
    out.insert(0, "table", table)
    out["predicted"] = [digits(p) for p in rows["pred"]]
    out["correct"] = ["".join("1" if v == 1 else "0" if v == 0 else "h" for v in np.asarray(c)) for c in rows["correct"]]
    return out.rename(columns={column: "label"})
