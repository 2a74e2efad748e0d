"""Result tables that say how sure they are.

Evaluation rows (one per method, seed and task, each with its per-example ``correct`` scores)
become tables of the mean over seeds per task, and the average over tasks with its 95 % interval
(:mod:`tiesnb.stats`); comparisons become paired differences with two intervals (crossed bootstrap,
seed-level t) and a verdict, and where a difference comes from, task by task.
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


def _difference(ra: pd.DataFrame, rb: pd.DataFrame, tasks: Sequence[str], seeds: Sequence[int]):
    """The paired difference a − b over ``tasks`` (points): its crossed-bootstrap interval, its
    seed-level t interval, and the per-seed differences."""
    boot = stats.difference(ra, rb, tasks, seeds).scaled(100)
    sa = ra[ra.task.isin(tasks)].groupby("seed")["accuracy"].mean()
    sb = rb[rb.task.isin(tasks)].groupby("seed")["accuracy"].mean()
    per_seed = [(sa.get(s, np.nan) - sb.get(s, np.nan)) * 100 for s in seeds]
    return boot, stats.t_interval(per_seed), per_seed


def verdict(name: str, boot: stats.Interval, seed_t: stats.Interval) -> str:
    """"TIES ahead" / "TIES behind" when both intervals exclude 0 on one side; else why not."""
    first = name.split(" − ")[0]  # "TIES − averaging": the verdict speaks of TIES
    if stats.separated(boot, seed_t):
        return f"{first} {boot.verdict()}"
    if not boot.separated:
        return "not separated"
    if np.isnan(seed_t.lo):  # one seed: no seed-level interval to confirm it
        return f"{first} {boot.verdict()} on these examples (one seed: not tested across seeds)"
    return "not separated (seed level)"


def compare(rows: pd.DataFrame, pairs: Sequence[tuple[str, str, str]], tasks: Sequence[str],
            seeds: Sequence[int], column: str = "method") -> pd.DataFrame:
    """Paired differences ``a − b`` of the average accuracy (points), for ``(name, a, b)`` triples:
    the crossed-bootstrap interval (``lo``, ``hi``), the seed-level paired t interval (``t_lo``,
    ``t_hi``), whether both exclude 0 (``separated``), and the difference per seed."""
    out = []
    for name, a, b in pairs:
        boot, seed_t, per_seed = _difference(_select(rows, a, column), _select(rows, b, column), tasks, seeds)
        row = {"comparison": name, "a": a, "b": b, "difference": boot.mean, "lo": boot.lo, "hi": boot.hi,
               "t_lo": seed_t.lo, "t_hi": seed_t.hi, "separated": stats.separated(boot, seed_t),
               "verdict": verdict(name, boot, seed_t)}
        row.update({f"seed {s}": d for s, d in zip(seeds, per_seed)})
        out.append(row)
    return pd.DataFrame(out)


def contributions(rows: pd.DataFrame, pairs: Sequence[tuple[str, str, str]], tasks: Sequence[str],
                  seeds: Sequence[int], column: str = "method") -> pd.DataFrame:
    """Where each difference comes from: for every ``(name, a, b)``, one row per task with its
    contribution to the average difference (its own difference / number of tasks, points), its
    share of the whole (%), and the difference over the other tasks — the task left out — with
    both intervals and whether it is still separated, on the same side as with every task."""
    sel = [(name, _select(rows, a, column), _select(rows, b, column)) for name, a, b in pairs]
    whole = [_difference(ra, rb, tasks, seeds)[:2] for _, ra, rb in sel]
    out = {}
    for task in tasks:  # task set by task set, every pair: the bootstrap draws each set once
        rest = [t for t in tasks if t != task]
        for i, (name, ra, rb) in enumerate(sel):
            w, w_t = whole[i]
            own = (ra[ra.task == task]["accuracy"].mean() - rb[rb.task == task]["accuracy"].mean()) * 100
            boot, seed_t, _ = _difference(ra, rb, rest, seeds)
            same_side = stats.separated(boot, seed_t) and np.sign(boot.mean) == np.sign(w.mean)
            out[(i, task)] = {"comparison": name, "task": task, "task_difference": own, "contribution": own / len(tasks),
                              "share": 100 * own / len(tasks) / w.mean if w.mean else np.nan,
                              "without_task": boot.mean, "lo": boot.lo, "hi": boot.hi, "t_lo": seed_t.lo,
                              "t_hi": seed_t.hi, "separated_without": stats.separated(boot, seed_t),
                              "holds_without": bool(same_side and stats.separated(w, w_t))}
    return pd.DataFrame([out[(i, task)] for i in range(len(sel)) for task in tasks])


def leave_one_out(contrib: pd.DataFrame) -> pd.Series:
    """Per comparison: whether it stays separated, on its side, with any one task left out."""
    return contrib.groupby("comparison", sort=False)["holds_without"].all()


def as_saved(df: pd.DataFrame) -> pd.DataFrame:
    """Every float as the CSV keeps it (6 significant digits), so that a number printed from the
    table and one printed from its CSV round the same way (8.649999… and 8.65 do not)."""
    df = df.copy()
    for c in df.columns:
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = [float(f"{v:.6g}") if pd.notna(v) else v for v in df[c]]
    return df


def markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """Markdown of a summary or comparison table: intervals folded into ``mean [lo, hi]``,
    blanks (never ``nan``) where a value is missing; numbers rounded from their saved values."""
    df = as_saved(df)
    f = f"{{:.{digits}f}}"
    if {"average", "average_lo", "average_hi"} <= set(df.columns):
        at = list(df.columns).index("average")
        df.insert(at, "average [95% CI]", [f"{f.format(m)} [{f.format(lo)}, {f.format(hi)}]"
                                           for m, lo, hi in zip(df.average, df.average_lo, df.average_hi)])
        df.insert(at + 1, "seeds (min–max)", [f"{f.format(a)}–{f.format(b)}" for a, b in zip(df.seed_min, df.seed_max)])
        df = df.drop(columns=["average", "average_lo", "average_hi", "seed_min", "seed_max"])
    g = f"{{:+.{digits}f}}"
    for mean, title in (("difference", "difference [95% CI]"), ("without_task", "without the task [95% CI]")):
        if {mean, "lo", "hi"} <= set(df.columns):
            at = list(df.columns).index(mean)
            df.insert(at, title, [f"{g.format(m)} [{g.format(lo)}, {g.format(hi)}]"
                                  for m, lo, hi in zip(df[mean], df.lo, df.hi)])
            if {"t_lo", "t_hi"} <= set(df.columns):
                df.insert(at + 1, "seed-level t [95% CI]", [_t_text(lo, hi, g) for lo, hi in zip(df.t_lo, df.t_hi)])
                df = df.drop(columns=["t_lo", "t_hi"])
            df = df.drop(columns=[c for c in (mean, "lo", "hi", "separated") if c in df.columns])
    return plain_markdown(df, digits)


def _t_text(lo: float, hi: float, g: str) -> str:
    return "" if np.isnan(lo) else f"[{g.format(lo)}, {g.format(hi)}]"


def plain_markdown(df: pd.DataFrame, digits: int = 1) -> str:
    """``df`` as Markdown, numbers with ``digits`` decimals (rounded from their saved values),
    missing values blank (never ``nan``)."""
    df = as_saved(df).astype(object).where(df.notna(), None)
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
