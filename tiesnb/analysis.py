"""The paper's analyses as functions: redundancy, sign conflicts, magnitudes, hyperparameter
selection on validation, normalized accuracy. Pure computations on task vectors and result
tables; the notebooks plot what they return."""

from __future__ import annotations

import itertools
import random
from typing import Mapping, Sequence

import pandas as pd
import torch

from .merge import TaskVector
from .merge.kernels import elect_mass, rowsum
from .merge.select import cut_of_tensor, top_count


def trimmed(flat: torch.Tensor, k: float) -> torch.Tensor:
    """``flat`` with all but its top-``k`` fraction of magnitudes set to 0 (exactly int(k·d)
    entries, ties by position: the engine's paper rule)."""
    K = top_count(k, flat.numel(), "floor")
    cut = cut_of_tensor(flat.abs(), K, "index")
    keep = flat.abs() >= cut.value if cut.inclusive else flat.abs() > cut.value
    out = flat * keep
    if cut.extra:
        idx = torch.nonzero(flat.abs() == cut.value).flatten()[: cut.extra]
        out[idx] = flat[idx]
    return out


def keep_top(tv: TaskVector, k: float) -> TaskVector:
    """A task vector keeping only its top-``k`` fraction of entries over the whole model."""
    names = sorted(tv)
    flat = trimmed(tv.flatten(), k)
    out, i = {}, 0
    for n in names:
        m = tv[n].numel()
        out[n] = flat[i:i + m].reshape(tv[n].shape)
        i += m
    return TaskVector(out)


def subsets(items: Sequence[str], size: int, limit: int, seed: int = 0) -> list[tuple[str, ...]]:
    """All subsets of a size, or a seeded sample of ``limit`` of them."""
    combos = list(itertools.combinations(items, size))
    if len(combos) <= limit:
        return combos
    return sorted(random.Random(f"{seed}:{size}").sample(combos, limit))


def balanced_subsets(items: Sequence[str], size: int, rounds: int = 1, seed: int = 0) -> list[tuple[str, ...]]:
    """Subsets of ``size`` in which every item appears equally often: per round, the ``n`` windows
    of ``size`` consecutive items (wrapping around) of a seeded order of the items — each item in
    ``size`` of them. A subset drawn twice is kept twice (it keeps the design balanced; its
    evaluation is cached), except the one subset of all n items; items keep their given order
    inside a subset."""
    n = len(items)
    if not 1 <= size <= n:
        raise ValueError(f"subset size {size} outside 1..{n}")
    rng = random.Random(f"{seed}:{size}")
    out: list[tuple[str, ...]] = []
    for _ in range(rounds):
        order = list(items)
        rng.shuffle(order)
        for i in range(n):
            window = {order[(i + j) % n] for j in range(size)}
            out.append(tuple(x for x in items if x in window))
    return out[:1] if size == n else out


def sign_conflicts(flat_trimmed: Mapping[str, torch.Tensor], sizes: Sequence[int], limit: int = 20,
                   seed: int = 0) -> pd.DataFrame:
    """For subsets of models of each size: the fraction of parameters on which their trimmed task
    vectors disagree in sign (a positive and a negative entry), among the parameters some model
    of the subset keeps, and among all parameters."""
    rows = []
    names = sorted(flat_trimmed)
    for size in sizes:
        for combo in subsets(names, size, limit, seed):
            pos = torch.zeros_like(flat_trimmed[combo[0]], dtype=torch.bool)
            neg = torch.zeros_like(pos)
            for t in combo:
                pos |= flat_trimmed[t] > 0
                neg |= flat_trimmed[t] < 0
            kept = int((pos | neg).sum())
            conflict = int((pos & neg).sum())
            rows.append({"n_models": size, "models": "+".join(combo), "conflicts": conflict, "kept_by_any": kept,
                         "fraction_of_kept": conflict / max(kept, 1), "fraction_of_all": conflict / pos.numel()})
    return pd.DataFrame(rows)


def magnitudes(flat_tvs: Mapping[str, torch.Tensor], k: float = 0.2, sample: int = 200_000,
               seed: int = 0) -> pd.DataFrame:
    """On influential parameters (in the top-``k`` of at least one model), the magnitude of the
    merged value relative to the influential entries' mean magnitude: for a plain mean of the
    task vectors (shrunk by the models that do not care and by cancelling signs) and for TIES's
    trim + elect + disjoint mean (which keeps it)."""
    names = sorted(flat_tvs)
    T = torch.stack([trimmed(flat_tvs[t], k) for t in names])  # (n, d)
    kept = T.ne(0).sum(0)
    influential = torch.nonzero(kept > 0).flatten()
    g = torch.Generator().manual_seed(seed)
    if influential.numel() > sample:
        influential = influential[torch.randperm(influential.numel(), generator=g)[:sample]].sort().values
    T = T[:, influential]
    D = torch.stack([flat_tvs[t][influential] for t in names])
    reference = T.abs().sum(0) / kept[influential]
    plain = (rowsum(D) / len(names)).abs()
    s = elect_mass(T)
    agree = (T * s).clamp_min(0)
    ties = rowsum(agree) / agree.sign().sum(0).clamp_min(1)
    m = len(influential)
    return pd.DataFrame({
        "merge": ["mean of task vectors"] * m + ["TIES: trim, elect, disjoint mean"] * m,
        "ratio": torch.cat([plain / reference, ties / reference]).numpy(),
        "models_keeping": torch.cat([kept[influential], kept[influential]]).numpy(),
    })


def best(rows: pd.DataFrame, by: Sequence[str], metric: str = "accuracy") -> dict:
    """The hyperparameters (columns ``by``) with the highest mean ``metric`` over tasks; ties go
    to the first in the table's order (stable)."""
    means = rows.groupby(list(by), sort=False, dropna=False)[metric].mean()
    top = means.idxmax()
    return dict(zip(by, top if isinstance(top, tuple) else (top,)))


def choose(rows: pd.DataFrame, grid: Mapping[str, Sequence[float]], what: str, seed: int | None = None,
           metric: str = "accuracy") -> tuple[dict, list[str]]:
    """:func:`best` over the knobs of ``grid``, and the knobs whose choice lies at the edge of its
    grid (:func:`tiesnb.stats.at_edge`) — each also announced as a warning, since the optimum may
    then lie outside what was tried."""
    from . import progress, stats

    chosen = best(rows, list(grid), metric)
    chosen = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in chosen.items()}
    edges = stats.at_edge(chosen, grid)
    for knob in edges:
        values = sorted(grid[knob])
        msg = (f"warning: {what}{'' if seed is None else f' (seed {seed})'}: the chosen {knob} = {chosen[knob]:g} "
               f"is at the edge of its grid [{values[0]:g} … {values[-1]:g}]")
        print(msg)
        progress.note(msg)
    return chosen, edges


def setting_text(hp: Mapping[str, float], edges: Sequence[str] = ()) -> str:
    """``k = 20%, λ = 1.4`` (``(edge)`` after a value at the edge of its grid)."""
    shown = {"k": lambda v: f"k = {100 * v:.3g}%", "lam": lambda v: f"λ = {v:g}", "alpha": lambda v: f"α = {v:g}"}
    return ", ".join(shown[k](v) + (" (edge)" if k in edges else "") for k, v in hp.items() if k in shown)


def normalized(rows: pd.DataFrame, reference: Mapping) -> pd.Series:
    """Accuracy divided by the individual fine-tuned model's accuracy on the same task and split
    (``reference`` keyed by task, or by ``(seed, task)`` to normalize each seed by its own model)."""
    keys = next(iter(reference)) if reference else None
    if isinstance(keys, tuple):
        return rows["accuracy"] / pd.Series([reference[(s, t)] for s, t in zip(rows["seed"], rows["task"])],
                                            index=rows.index)
    return rows["accuracy"] / rows["task"].map(reference)
