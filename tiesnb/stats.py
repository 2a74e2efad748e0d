"""How sure the study is: 95 % intervals over training seeds and test examples, and which
differences between methods are separated from zero.

The quantity every table reports is the accuracy averaged over tasks (each task's accuracy is
the mean over its test examples) and over training seeds. Two things would change it on a rerun:
the seeds (which models training produced) and the test examples (which sample of each task we
happened to draw). The intervals resample both — a *crossed* bootstrap, because every seed is
evaluated on the same test examples: one draw picks seeds with replacement and, independently,
each task's examples with replacement, and recomputes the average. A difference between two
methods is resampled the same way on the per-example differences (the same seeds, the same
examples for both: a paired bootstrap), so what the methods share cancels. Intervals are the
2.5 and 97.5 percentiles of 10,000 draws, from a fixed generator: the same inputs give the same
interval, bit for bit.

The crossed bootstrap alone can overstate how sure we are when there are few seeds: with five
seeds its seed part can only produce 126 seed multisets, and the example part smooths over how
far apart the seeds really are. So every difference also gets a **seed-level paired t
interval**: the per-seed differences of the averages, their mean ± t(0.975, S − 1) × sd / √S.
A difference is *separated* only when both intervals exclude 0 (:func:`separated`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import TiesnbError

DRAWS = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean with its percentile interval, in the units of the data (fractions for accuracy)."""

    mean: float
    lo: float
    hi: float

    @property
    def separated(self) -> bool:
        """Whether the interval excludes 0 (meaningful for a difference)."""
        return self.lo > 0 or self.hi < 0

    def scaled(self, factor: float) -> "Interval":
        return Interval(self.mean * factor, self.lo * factor, self.hi * factor)

    def text(self, digits: int = 1, sign: bool = False) -> str:
        """``71.2 [69.8, 72.5]`` (``+1.9 [+0.4, +3.3]`` with ``sign``)."""
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        return f"{f.format(self.mean)} [{f.format(self.lo)}, {f.format(self.hi)}]"

    def verdict(self) -> str:
        """For a difference A − B: which is ahead, or that the data do not separate them."""
        if self.lo > 0:
            return "ahead"
        if self.hi < 0:
            return "behind"
        return "not separated"


def _as_matrices(per_task: Sequence[np.ndarray]) -> list[np.ndarray]:
    mats = []
    for i, x in enumerate(per_task):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] == 0:
            raise TiesnbError(f"task {i}: expected a (seeds × examples) array of scores, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise TiesnbError(f"task {i}: scores contain NaN or infinity")
        mats.append(x)
    seeds = {m.shape[0] for m in mats}
    if len(seeds) != 1:
        raise TiesnbError(f"every task needs the same seeds; got {sorted(seeds)} seeds across tasks")
    return mats


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of per-seed values with its Student t interval (S − 1 degrees of freedom); with
    one value the interval is undefined (NaN bounds, never separated)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise TiesnbError(f"a t interval needs finite per-seed values, got {values!r}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, float("nan"), float("nan"))
    from scipy.stats import t

    half = float(t.ppf(1 - (1 - level) / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return Interval(mean, mean - half, mean + half)


def separated(*intervals: Interval) -> bool:
    """Whether every interval excludes 0, on the same side (a NaN bound never separates)."""
    return all(i.lo > 0 for i in intervals) or all(i.hi < 0 for i in intervals)


_LAST_DRAWS: dict = {}


def _draws(S: int, Ns: Sequence[int], draws: int, rng_seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The resampling weights of a crossed bootstrap: seeds (draws, S) as fractions, and each
    task's example counts (draws, N). They depend only on the shape of the data, so every table
    row and every comparison over the same tasks reuses them: drawing them is 90 % of a
    bootstrap's cost. The last shape's draws are kept (64 MB for 8 tasks of 400 examples), so
    callers that group their calls by task set (``tables.contributions``) draw each set once.
    Drawn in the order they always were (seeds, then each task): the intervals do not change."""
    key = (S, tuple(Ns), draws, rng_seed)
    hit = _LAST_DRAWS.get(key)
    if hit is None:
        rng = np.random.default_rng(rng_seed)
        seed_w = rng.multinomial(S, np.full(S, 1.0 / S), size=draws).astype(np.float64) / S
        counts = [rng.multinomial(N, np.full(N, 1.0 / N), size=draws).astype(np.min_scalar_type(N)) for N in Ns]
        seed_w.flags.writeable = False
        for c in counts:
            c.flags.writeable = False
        _LAST_DRAWS.clear()
        hit = _LAST_DRAWS[key] = (seed_w, counts)
    return hit


def crossed_bootstrap(per_task: Sequence[np.ndarray], draws: int = DRAWS, level: float = LEVEL,
                      rng_seed: int = 0) -> Interval:
    """The mean over tasks of each task's mean score (over seeds and examples), with a percentile
    interval from resampling seeds and, independently, each task's examples.

    ``per_task``: one array per task of shape (seeds, examples) — correctness (0/1) for an
    accuracy, or the per-example difference of two methods' correctness for a paired difference.
    The same seed rows must be in the same order in every task."""
    mats = _as_matrices(per_task)
    seed_w, counts = _draws(mats[0].shape[0], [x.shape[1] for x in mats], draws, rng_seed)
    total = np.zeros(draws)
    for x, c in zip(mats, counts):
        N = x.shape[1]
        per_seed = c.astype(np.float64) @ x.T / N  # (draws, S): each seed's mean on the resampled examples
        total += (per_seed * seed_w).sum(1)
    total /= len(mats)
    mean = float(np.mean([x.mean() for x in mats]))
    alpha = (1 - level) / 2
    lo, hi = np.quantile(total, [alpha, 1 - alpha])
    return Interval(mean, float(lo), float(hi))


def scores_by_task(rows, tasks: Sequence[str], seeds: Sequence[int], column: str = "correct") -> list[np.ndarray]:
    """From evaluation rows (dicts or a DataFrame with ``task``, ``seed`` and an array column),
    one (seeds × examples) array per task, seeds in the given order. A missing (task, seed) is an
    error naming it."""
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    index = {}
    for r in records:
        key = (r["task"], int(r["seed"]))
        if key in index:
            raise TiesnbError(f"two evaluations for task {key[0]!r}, seed {key[1]}: select one setting first")
        index[key] = np.asarray(r[column], dtype=np.float64)
    out = []
    for t in tasks:
        missing = [s for s in seeds if (t, s) not in index]
        if missing:
            raise TiesnbError(f"no evaluation of task {t!r} for seed(s) {missing}")
        lengths = {index[(t, s)].shape[0] for s in seeds}
        if len(lengths) != 1:
            raise TiesnbError(f"task {t!r}: the seeds were evaluated on different numbers of examples {sorted(lengths)}")
        out.append(np.stack([index[(t, s)] for s in seeds]))
    return out


def accuracy(rows, tasks: Sequence[str], seeds: Sequence[int], **kw) -> Interval:
    """Mean accuracy over ``tasks`` and ``seeds`` with its interval (fractions)."""
    return crossed_bootstrap(scores_by_task(rows, tasks, seeds), **kw)


def difference(rows_a, rows_b, tasks: Sequence[str], seeds: Sequence[int], **kw) -> Interval:
    """Paired difference A − B of mean accuracy, with its interval (fractions). Both must be
    evaluated on the same examples for every (task, seed)."""
    a = scores_by_task(rows_a, tasks, seeds)
    b = scores_by_task(rows_b, tasks, seeds)
    for t, x, y in zip(tasks, a, b):
        if x.shape != y.shape:
            raise TiesnbError(f"task {t!r}: the two methods were evaluated on different examples ({x.shape} vs {y.shape})")
    return crossed_bootstrap([x - y for x, y in zip(a, b)], **kw)


def per_task(rows, tasks: Sequence[str], seeds: Sequence[int], **kw) -> Mapping[str, Interval]:
    """Each task's accuracy with its own interval."""
    mats = scores_by_task(rows, tasks, seeds)
    return {t: crossed_bootstrap([m], **kw) for t, m in zip(tasks, mats)}


# ----------------------------------------------------------------------------------------------
# hyperparameters chosen on a grid


# Values a knob cannot go beyond: an optimum there is not "at the edge of the grid" but at the
# edge of what the method allows (α = 1 is plain RegMean, k = 1 keeps everything).
DOMAIN = {"k": (0.0, 1.0), "alpha": (0.0, 1.0)}


def at_edge(chosen: Mapping[str, float], grid: Mapping[str, Sequence[float]]) -> list[str]:
    """The knobs whose chosen value is the smallest or largest of their grid (with more than one
    value), unless that value is also the bound of the knob's domain."""
    out = []
    for knob, value in chosen.items():
        values = sorted(set(grid.get(knob, [])))
        if len(values) < 2 or value is None:
            continue
        lo_bound, hi_bound = DOMAIN.get(knob, (float("-inf"), float("inf")))
        if (value == values[0] and value > lo_bound) or (value == values[-1] and value < hi_bound):
            out.append(knob)
    return out
