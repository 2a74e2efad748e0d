# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The number of tasks merged
#
# Normalized accuracy (per task: merged / that task's fine-tuned model of the same seed,
# averaged over the subset's tasks, as the paper) of averaging, task arithmetic and TIES at the
# paper's no-validation defaults, against the number of tasks merged: every subset of a size
# when there are at most `subsets_per_size`, a seeded sample of that many otherwise — the same
# subsets for every seed. On test (`test[:n]`: its first n examples of each task).
#
# Writes `num_tasks` (figure, with its data: every subset, seed and method).

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
rounds: int = 1  # each round: n subsets per size, every task in equally many (n: the number of tasks)
split: str = "test"  # split of the experiment (test, or test[:n] for its first n examples per task)
n_seeds: int = 0  # the first n training seeds (0: every seed of the study)
ta_lam: float = 0.4  # task arithmetic λ (paper default without validation)
ties_k: float = 0.2  # TIES k (paper default without validation)
ties_lam: float = 1.0  # TIES λ (paper default without validation)
seed: int = 0  # seed of the subset sample

# %%
import pandas as pd

from tiesnb import analysis, plots, progress
from tiesnb.errors import TiesnbError
from tiesnb.study import Study

S = Study.load(study)
params = {k_: globals()[k_] for k_ in ["study", "rounds", "split", "ta_lam", "ties_k", "ties_lam", "seed", "n_seeds"]}
seeds = S.seeds[:n_seeds] if n_seeds else S.seeds
n = len(S.tasks)

# %%
methods = [("average", "averaging", {}), ("task_arithmetic", "task arithmetic", {"lam": ta_lam}),
           ("ties", "TIES", {"k": ties_k, "lam": ties_lam})]
combos = {size: analysis.balanced_subsets(S.tasks, size, rounds, seed) for size in range(2, n + 1)}
nt_rows, head_rows = [], []
for Ss in S.each_seed():
    if Ss.seed not in seeds:
        continue
    reference = {(Ss.seed, r["task"]): r["accuracy"]
                 for t in S.tasks for r in Ss.evaluate_checkpoint(t, [t], split, "fine-tuned")}
    zero = [t for (_, t), acc in reference.items() if acc == 0]
    if zero:  # normalized accuracy divides by it
        raise TiesnbError(f"seed {Ss.seed}: the fine-tuned model of {', '.join(zero)} scores 0 on {split}: "
                          f"normalized accuracy is undefined")
    head_rows += [dict(r, seed=Ss.seed, normalized=100 * r["accuracy"] / reference[(Ss.seed, r["task"])])
                  for r in Ss.evaluate_checkpoint(None, S.tasks, split, S.family.pretrained_label)]
    todo = [(size, draw, c) for size in combos for draw, c in enumerate(combos[size])]
    for size, draw, combo in progress.bar(todo, desc=f"number of tasks (seed {Ss.seed})"):
        for method, label, hp in methods:
            r = Ss.evaluate_merge(method, split, tasks=list(combo), label=label, **hp)
            nt_rows += [dict(x, subset="+".join(combo), draw=draw, normalized=x["accuracy"] / reference[(Ss.seed, x["task"])])
                        for x in r]
nt = pd.DataFrame(nt_rows).drop(columns=["pred", "correct"])
nt["normalized"] *= 100
per_subset = nt.groupby(["method", "n_models", "draw", "subset", "seed"], sort=False)["normalized"].mean().reset_index()
per_seed = per_subset.groupby(["method", "n_models", "seed"], sort=False)["normalized"].mean().reset_index()

fig, ax = plots.figure(height=2.5)
for label in ["averaging", "task arithmetic", "TIES"]:
    plots.seed_band(ax, per_seed[per_seed.method == label], "n_models", "normalized",
                    color=plots.METHOD_COLORS[label if label != "averaging" else "average"], label=label)
plots.head_line(ax, pd.DataFrame(head_rows)["normalized"].mean(), S.family.pretrained_label)
ax.set(xlabel="number of tasks merged", ylabel="normalized accuracy (%)",
       title=f"Merging more tasks ({'whole test split' if split == 'test' else split.replace('test[:', 'first ').rstrip(']') + ' test examples'}"
             f" per task; mean over subsets, {len(seeds)} seeds)")
plots.legend_outside(ax)
S.save_figure(fig, "num_tasks", "num_tasks", params, data=per_subset)
per_seed.groupby(["method", "n_models"], sort=False)["normalized"].agg(["mean", "min", "max"]).unstack(0).round(1)
