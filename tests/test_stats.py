"""Intervals and comparisons against hand-worked examples, the edge flag, and the result tables."""

import math

import numpy as np
import pandas as pd
import pytest

from tiesnb import stats, tables
from tiesnb.errors import TiesnbError


def binomial_quantile(n: int, p: float, q: float) -> float:
    """The q-quantile of Binomial(n, p) / n, summed by hand (the smallest x with CDF(x) >= q)."""
    cdf = 0.0
    for x in range(n + 1):
        cdf += math.comb(n, x) * p ** x * (1 - p) ** (n - x)
        if cdf >= q:
            return x / n
    return 1.0


def test_one_seed_one_task_is_the_binomial_interval():
    # One seed and one task: resampling N examples with replacement makes the resampled accuracy
    # Binomial(N, p) / N, so the percentile interval is the binomial's 2.5 % and 97.5 % quantiles.
    N, right = 100, 70
    x = np.array([1.0] * right + [0.0] * (N - right))
    iv = stats.crossed_bootstrap([x[None, :]], draws=40_000)
    assert iv.mean == pytest.approx(0.70)
    assert iv.lo == pytest.approx(binomial_quantile(N, 0.7, 0.025), abs=0.011)
    assert iv.hi == pytest.approx(binomial_quantile(N, 0.7, 0.975), abs=0.011)
    # by hand: 0.7 ± 1.96·sqrt(0.7·0.3/100) = [0.610, 0.790]
    assert 0.60 <= iv.lo <= 0.62 and 0.78 <= iv.hi <= 0.80


def test_seeds_alone_give_the_enumerated_distribution():
    # Three seeds with one example each, scores 0, 0, 1: a draw picks 3 seeds with replacement, so
    # the resampled mean is k/3 with k ~ Binomial(3, 1/3): P = 8/27, 12/27, 6/27, 1/27 for k = 0..3.
    # Its 2.5 % quantile is 0; its 97.5 % quantile is 1 (P(k <= 2) = 26/27 < 0.975).
    x = np.array([[0.0], [0.0], [1.0]])
    iv = stats.crossed_bootstrap([x], draws=40_000)
    assert iv.mean == pytest.approx(1 / 3)
    assert iv.lo == 0.0 and iv.hi == 1.0
    # and with the level at 90 %: the 95 % quantile is 2/3 (P(k <= 1) = 20/27 < 0.95 <= 26/27)
    assert stats.crossed_bootstrap([x], draws=40_000, level=0.90).hi == pytest.approx(2 / 3)


def test_a_constant_difference_has_no_width_and_is_separated():
    a = [np.ones((3, 50)), np.ones((3, 40))]
    b = [np.zeros((3, 50)), np.zeros((3, 40))]
    iv = stats.crossed_bootstrap([x - y for x, y in zip(a, b)])
    assert (iv.mean, iv.lo, iv.hi) == (1.0, 1.0, 1.0) and iv.separated and iv.verdict() == "ahead"


def test_identical_methods_differ_by_exactly_zero_and_are_not_separated():
    g = np.random.default_rng(0)
    x = (g.random((3, 80)) < 0.6).astype(float)
    iv = stats.crossed_bootstrap([x - x])
    assert (iv.mean, iv.lo, iv.hi) == (0.0, 0.0, 0.0) and not iv.separated and iv.verdict() == "not separated"


def test_the_mean_is_over_tasks_then_examples():
    # task A: 10 examples all right; task B: 1000 examples all wrong: the mean over tasks is 0.5,
    # not the pooled 10/1010
    iv = stats.crossed_bootstrap([np.ones((1, 10)), np.zeros((1, 1000))])
    assert iv.mean == 0.5 and iv.lo == 0.5 and iv.hi == 0.5


def test_same_inputs_same_interval_and_pairing_narrows_it():
    g = np.random.default_rng(1)
    base = (g.random((3, 400)) < 0.7).astype(float)
    flip = g.random((3, 400)) < 0.05
    other = np.where(flip, 1 - base, base)  # a method that agrees with `base` on 95 % of examples
    a = stats.crossed_bootstrap([base - other])
    assert a == stats.crossed_bootstrap([base - other])  # fixed generator: reproducible
    # the paired interval of the difference is far narrower than either accuracy's interval
    width = lambda iv: iv.hi - iv.lo  # noqa: E731
    assert width(a) < 0.5 * width(stats.crossed_bootstrap([base]))


def test_bad_inputs_are_named():
    with pytest.raises(TiesnbError, match="NaN"):
        stats.crossed_bootstrap([np.array([[1.0, np.nan]])])
    with pytest.raises(TiesnbError, match="same seeds"):
        stats.crossed_bootstrap([np.ones((3, 4)), np.ones((2, 4))])
    rows = [{"task": "a", "seed": 0, "correct": [1, 0]}]
    with pytest.raises(TiesnbError, match="no evaluation of task 'a' for seed\\(s\\) \\[1\\]"):
        stats.scores_by_task(rows, ["a"], [0, 1])
    with pytest.raises(TiesnbError, match="two evaluations for task 'a', seed 0"):
        stats.scores_by_task(rows + rows, ["a"], [0])


def test_edge_flag():
    grid = {"lam": [0.1, 0.2, 0.4], "k": [0.1, 0.2, 1.0], "alpha": [0.5, 1.0]}
    assert stats.at_edge({"lam": 0.1}, grid) == ["lam"]
    assert stats.at_edge({"lam": 0.4}, grid) == ["lam"]
    assert stats.at_edge({"lam": 0.2}, grid) == []
    assert stats.at_edge({"k": 0.1}, grid) == ["k"]
    assert stats.at_edge({"k": 1.0}, grid) == []  # k = 1 is the end of what k can be, not of the grid
    assert stats.at_edge({"alpha": 1.0}, grid) == []  # α = 1 is plain RegMean
    assert stats.at_edge({"alpha": 0.5}, grid) == ["alpha"]
    assert stats.at_edge({"lam": 0.5}, {"lam": [0.5]}) == []  # a single value is not a search


def test_choose_flags_and_announces_an_edge(capsys):
    from tiesnb import analysis

    rows = pd.DataFrame({"lam": [0.1, 0.1, 0.2, 0.2, 0.4, 0.4], "task": list("abababab"[:6]),
                         "accuracy": [0.9, 0.8, 0.7, 0.7, 0.5, 0.6]})
    chosen, edges = analysis.choose(rows, {"lam": [0.1, 0.2, 0.4]}, "task arithmetic", seed=2)
    assert chosen == {"lam": 0.1} and edges == ["lam"]
    assert "task arithmetic (seed 2): the chosen lam = 0.1 is at the edge of its grid [0.1 … 0.4]" in capsys.readouterr().out
    assert analysis.setting_text({"k": 0.2, "lam": 0.1}, edges) == "k = 20%, λ = 0.1 (edge)"
    assert analysis.setting_text({"k": 0.005, "lam": 4.0}) == "k = 0.5%, λ = 4"  # not rounded to 0 %


def test_choice_on_the_mean_over_seeds_is_not_any_one_seeds_choice():
    """merge_sweep's default (choose_per_seed: false) hands every seed's validation rows to
    choose(): the setting with the best mean over seeds and tasks wins. Worked by hand: seed 0
    prefers λ = 0.1 (0.80 vs 0.76 vs 0.60), seed 1 prefers λ = 0.4 (0.82 vs 0.80 vs 0.60); the means
    are 0.70, 0.78 and 0.71, so λ = 0.2 (interior) is chosen although neither seed chose it."""
    from tiesnb import analysis

    acc = {(0, 0.1): 0.80, (0, 0.2): 0.76, (0, 0.4): 0.60, (1, 0.1): 0.60, (1, 0.2): 0.80, (1, 0.4): 0.82}
    rows = pd.DataFrame([{"seed": s, "lam": lam, "task": t, "accuracy": a} for (s, lam), a in acc.items() for t in "ab"])
    grid = {"lam": [0.1, 0.2, 0.4]}
    assert analysis.choose(rows[rows.seed == 0], grid, "x")[0] == {"lam": 0.1}
    assert analysis.choose(rows[rows.seed == 1], grid, "x")[0] == {"lam": 0.4}
    assert analysis.choose(rows, grid, "x") == ({"lam": 0.2}, [])


def _rows(method, acc_by_seed, tasks=("a", "b"), n=20):
    out = []
    for s, p in acc_by_seed.items():
        for t in tasks:
            correct = np.array([1.0] * int(round(p * n)) + [0.0] * (n - int(round(p * n))))
            out.append({"method": method, "task": t, "seed": s, "accuracy": correct.mean(), "correct": correct,
                        "pred": correct.astype(int), "n": n, "split": "test"})
    return out


def test_summary_and_comparison_tables():
    rows = pd.DataFrame(_rows("x", {0: 0.5, 1: 0.7}) + _rows("y", {0: 0.5, 1: 0.5}))
    summ = tables.summary(rows, ["x", "y"], ["a", "b"], [0, 1])
    assert list(summ["a"]) == pytest.approx([60.0, 50.0])
    assert summ.loc[0, "seed_min"] == pytest.approx(50.0) and summ.loc[0, "seed_max"] == pytest.approx(70.0)
    assert summ.loc[0, "average_lo"] <= 60.0 <= summ.loc[0, "average_hi"]
    comp = tables.compare(rows, [("x − y", "x", "y")], ["a", "b"], [0, 1])
    assert comp.loc[0, "difference"] == pytest.approx(10.0)
    assert comp.loc[0, "seed 0"] == pytest.approx(0.0) and comp.loc[0, "seed 1"] == pytest.approx(20.0)
    md = tables.markdown(comp)
    assert "+10.0 [" in md and "nan" not in md
    pred = tables.predictions(rows, "t")
    assert set(pred.columns) >= {"table", "label", "seed", "task", "predicted", "correct"}
    assert pred.loc[0, "correct"] == "1" * 10 + "0" * 10


def _bootstrap_uncached(per_task, draws=stats.DRAWS, rng_seed=0):
    """The crossed bootstrap written out plainly: a fresh generator, the seeds' draw, then each
    task's, in order (what ``stats.crossed_bootstrap`` did before it reused its draws)."""
    S = per_task[0].shape[0]
    rng = np.random.default_rng(rng_seed)
    seed_w = rng.multinomial(S, np.full(S, 1.0 / S), size=draws).astype(np.float64) / S
    total = np.zeros(draws)
    for x in per_task:
        N = x.shape[1]
        counts = rng.multinomial(N, np.full(N, 1.0 / N), size=draws).astype(np.float64)
        total += (counts @ x.T / N * seed_w).sum(1)
    total /= len(per_task)
    alpha = (1 - 0.95) / 2  # as stats computes it (0.025000000000000022)
    return tuple(np.quantile(total, [alpha, 1 - alpha]))


def test_reused_draws_give_the_plain_bootstrap_bit_for_bit():
    rng = np.random.default_rng(3)
    sets = {name: [rng.integers(0, 2, (3, n)).astype(float) for n in sizes]
            for name, sizes in {"four": (40, 25, 40, 31), "three": (40, 25, 31), "one": (300,)}.items()}
    # interleaved, so that each call finds the other shape's draws kept, or its own
    for name in ["four", "three", "four", "four", "one", "three"]:
        iv = stats.crossed_bootstrap(sets[name], draws=2000)
        assert (iv.lo, iv.hi) == _bootstrap_uncached(sets[name], draws=2000), name
    # another generator seed is another set of draws, not the kept one
    assert (stats.crossed_bootstrap(sets["four"], draws=2000, rng_seed=1).lo
            == _bootstrap_uncached(sets["four"], draws=2000, rng_seed=1)[0])


def test_contributions_leave_each_task_out_in_pair_then_task_order():
    rows = pd.DataFrame(_rows("x", {0: 0.6, 1: 0.8}) + _rows("y", {0: 0.5, 1: 0.5}) + _rows("z", {0: 0.4, 1: 0.6}))
    pairs = [("x − y", "x", "y"), ("y − z", "y", "z")]
    c = tables.contributions(rows, pairs, ["a", "b"], [0, 1])
    assert list(zip(c.comparison, c.task)) == [("x − y", "a"), ("x − y", "b"), ("y − z", "a"), ("y − z", "b")]
    for _, r in c.iterrows():  # without task a, the difference is task b's alone, and vice versa
        other = "b" if r.task == "a" else "a"
        alone = tables.compare(rows, [(r.comparison, *r.comparison.split(" − "))], [other], [0, 1]).iloc[0]
        assert (r.without_task, r.lo, r.hi, r.t_lo, r.t_hi) == (alone.difference, alone.lo, alone.hi, alone.t_lo, alone.t_hi)


def test_seed_level_t_interval_by_hand():
    from tiesnb.stats import Interval, separated, t_interval

    iv = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.302653
    assert iv.mean == 2.0 and iv.lo == pytest.approx(2 - 4.302653 / 3 ** 0.5) and iv.hi == pytest.approx(2 + 4.302653 / 3 ** 0.5)
    one = t_interval([0.7])  # one seed: no interval, never separated
    assert one.mean == 0.7 and not separated(one) and not separated(Interval(1, 0.5, 2), one)
    assert separated(Interval(1, 0.5, 2), Interval(1, 0.1, 3)) and not separated(Interval(1, 0.5, 2), Interval(1, -0.1, 3))
    assert separated(Interval(-1, -2, -0.5), Interval(-1, -3, -0.1)) and not separated(Interval(1, 0.5, 2), Interval(-1, -3, -0.1))


def test_balanced_subsets_use_every_task_equally_often():
    from collections import Counter

    from tiesnb.analysis import balanced_subsets

    tasks = [f"t{i}" for i in range(8)]
    for size in range(2, 9):
        subsets = balanced_subsets(tasks, size, rounds=1, seed=0)
        assert len(subsets) == (8 if size < 8 else 1) and all(len(c) == size and len(set(c)) == size for c in subsets)
        counts = Counter(t for c in subsets for t in c)
        assert set(counts) == set(tasks) and len(set(counts.values())) == 1, (size, counts)
        assert balanced_subsets(tasks, size, rounds=1, seed=0) == subsets  # seeded
    two = balanced_subsets(tasks, 3, rounds=2, seed=0)
    assert len(set(Counter(t for c in two for t in c).values())) == 1
