# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Ablations, the oracle sign, the number of tasks, and sensitivity
#
# * **Ablation** — TIES without each of its steps: without trimming (k = 100 %), without the
#   sign election (the disjoint mean over all non-zero entries, whatever their sign), without
#   the disjoint mean (the agreeing entries summed and divided by the number of models), without
#   scaling (λ = 1). λ is chosen on validation for each variant but the last.
# * **Oracle sign** — TIES with the sign vector of the multitask model's task vector instead of
#   the elected one: how much a better sign would buy.
# * **Number of tasks** — normalized accuracy (merged / individual fine-tuned, per task) of
#   averaging, task arithmetic and TIES against the number of tasks merged, on seeded subsets,
#   at the paper's no-validation defaults.
# * **Sensitivity** — validation accuracy against λ and against k, from the sweep of the
#   `merge_sweep` notebook.
#
# Writes `ablations` (table), `num_tasks` and `sensitivity` (figures).

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
select_split: str = "val"  # split λ is chosen on
report_split: str = "test"  # split the ablation table reports
lams: list[float] = [0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0]  # λ grid of the variants
k: float = 0.2  # TIES trim for the ablation and the oracle
subsets_per_size: int = 3  # seeded task subsets per number of tasks
subset_split: str = "val"  # split of the number-of-tasks experiment
ta_lam: float = 0.4  # task arithmetic λ in the number-of-tasks experiment (paper default)
ties_lam: float = 1.0  # TIES λ in the number-of-tasks experiment (paper default)
seed: int = 0  # seed of the subset sample

# %%
import pandas as pd
import seaborn as sns
from tqdm.auto import tqdm

from tiesnb import analysis, paper, plots
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {k_: globals()[k_] for k_ in ["study", "select_split", "report_split", "lams", "k", "subsets_per_size",
                                      "subset_split", "ta_lam", "ties_lam", "seed"]}

# %% [markdown]
# ## Ablation and oracle sign

# %%
variants = {
    "TIES": {"k": k},
    "without trim": {"k": 1.0},
    "without elect": {"k": k, "elect": "none"},
    "without disjoint mean": {"k": k, "disjoint": "mean_all"},
    "TIES with the multitask model's signs (oracle)": {"k": k, "signs": MULTITASK},
}
rows = []
for name, hp in tqdm(variants.items(), desc="ablations"):
    val = pd.DataFrame(sum((S.evaluate_merge("ties", select_split, label=name, lam=lam, **hp) for lam in lams), []))
    lam = analysis.best(val, ["lam"])["lam"]
    rows += S.evaluate_merge("ties", report_split, label=name, lam=lam, **hp)
rows += S.evaluate_merge("ties", report_split, label="without scaling (λ = 1)", lam=1.0, k=k)
abl = pd.DataFrame(rows)
table = abl.groupby("method", sort=False).agg(lam=("lam", "first"), average=("accuracy", "mean")).reset_index()
table["average"] *= 100
table["paper T5-base"] = [paper.ABLATION.get(m, {}).get("T5-base") for m in table.method]
table["paper IA3"] = [paper.ABLATION.get(m, {}).get("IA3") for m in table.method]
per_task = abl.pivot(index="method", columns="task", values="accuracy")[S.tasks].loc[table.method] * 100
table = pd.concat([table.set_index("method"), per_task], axis=1).reset_index()
S.save_table(table, "ablations", "ablations", params,
             caption=f"TIES without each step, and with the multitask model's signs: mean {report_split} accuracy (%); "
                     f"λ chosen on {select_split} (k = {k:.0%}). The paper's oracle number is for IA3, where its "
                     f"TIES scored 66.4.")
table.round(1)

# %% [markdown]
# ## Number of tasks

# %%
reference = {r["task"]: r["accuracy"] for t in S.tasks for r in S.evaluate_checkpoint(t, [t], subset_split, "fine-tuned")}
methods = [("average", "averaging", {}), ("task_arithmetic", "task arithmetic", {"lam": ta_lam}),
           ("ties", "TIES", {"k": k, "lam": ties_lam})]
rows = []
sizes = range(2, len(S.tasks) + 1)
for size in tqdm(sizes, desc="subsets"):
    for combo in analysis.subsets(S.tasks, size, subsets_per_size, seed):
        for method, label, hp in methods:
            r = S.evaluate_merge(method, subset_split, tasks=list(combo), label=label, **hp)
            rows += [dict(x, subset="+".join(combo)) for x in r]
nt = pd.DataFrame(rows)
nt["normalized"] = analysis.normalized(nt, reference) * 100
per_subset = nt.groupby(["method", "n_models", "subset"], sort=False)["normalized"].mean().reset_index()
fig, ax = plots.figure(height=2.5)
sns.lineplot(per_subset, x="n_models", y="normalized", hue="method", marker="o", errorbar="sd",
             palette={"averaging": plots.METHOD_COLORS["average"], "task arithmetic": plots.METHOD_COLORS["task arithmetic"],
                      "TIES": plots.METHOD_COLORS["TIES"]}, ax=ax)
ax.set(xlabel="number of tasks merged", ylabel="normalized accuracy (%)",
       title=f"Merging more tasks ({subset_split}, {subsets_per_size} subsets per size)")
S.save_figure(fig, "num_tasks", "ablations", params)
per_subset.groupby(["method", "n_models"], sort=False)["normalized"].mean().unstack(0).round(1)

# %% [markdown]
# ## Sensitivity to λ and k (from the validation sweep)

# %%
sweep = pd.read_csv(S.output("merge_sweep.csv"))
acc = [c for c in sweep.columns if c.startswith("mean accuracy")][0]
fig, axes = plots.figure(width=7, height=2.5, ncols=2)
ta = sweep[sweep.method == "task_arithmetic"]
axes[0].plot(ta.lam, ta[acc], marker="o", color=plots.METHOD_COLORS["task arithmetic"], label="task arithmetic")
ks = sorted(sweep[sweep.method == "ties"].k.unique())
shades = sns.color_palette("Oranges", len(ks) + 2)[2:]
for shade, (kk, part) in zip(shades, sweep[sweep.method == "ties"].groupby("k")):
    axes[0].plot(part.lam, part[acc], marker="o", color=shade, label=f"TIES k = {kk:.0%}")
axes[0].set(xlabel="λ", ylabel=acc, title="Sensitivity to λ")
axes[0].legend()
ties = sweep[sweep.method == "ties"]
best_per_k = ties.loc[ties.groupby("k")[acc].idxmax()]
axes[1].plot(best_per_k.k * 100, best_per_k[acc], marker="o", color=plots.METHOD_COLORS["TIES"], label="TIES, best λ per k")
at_one = ties[ties.lam == 1.0]
axes[1].plot(at_one.k * 100, at_one[acc], marker="s", ls="--", color=plots.METHOD_COLORS["TIES"], label="TIES, λ = 1")
axes[1].set(xlabel="k (% of each task vector kept)", title="Sensitivity to k")
axes[1].legend()
S.save_figure(fig, "sensitivity", "ablations", params)
