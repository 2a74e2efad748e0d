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
# # Interference: redundant parameters, conflicting signs, shrinking magnitudes
#
# The paper's three observations about why merges lose accuracy, measured on the study's task
# vectors (θ_t − θ0 over the fine-tuned parameters), for every training seed:
#
# 1. **Redundancy** — a fine-tuned model keeps most of its accuracy when only the top-k % of its
#    task vector (by magnitude, over the whole model) is kept.
# 2. **Sign conflicts** — after trimming, more and more parameters get a positive value from one
#    model and a negative value from another as more models are merged.
# 3. **Magnitudes** — a plain mean of task vectors shrinks the influential parameters; trimming,
#    electing a sign and averaging only the agreeing entries keeps their magnitude.
#
# Writes `redundancy`, `sign_conflicts` and `magnitudes` (figures, each with its data).

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
split: str = "test"  # split the redundancy curve is measured on
keep_fractions: list[float] = [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]  # k of the redundancy curve
trim_k: float = 0.2  # k of the trim before counting sign conflicts and comparing magnitudes
max_subsets: int = 20  # subsets of models per size for the sign conflicts (all when fewer)
seed: int = 0  # seed of the subset sample

# %%
import pandas as pd
import seaborn as sns

from tiesnb import analysis, plots, progress
from tiesnb.study import Study

S = Study.load(study)
params = {k: globals()[k] for k in ["study", "split", "keep_fractions", "trim_k", "max_subsets", "seed"]}

red_rows, conf_parts, mag_parts = [], [], []
for Ss in S.each_seed():
    tvs = Ss.task_vectors()
    for t in progress.bar(S.tasks, desc=f"redundancy (seed {Ss.seed})"):
        for k in keep_fractions:
            def state(t=t, k=k, Ss=Ss):
                return Ss.apply(analysis.keep_top(tvs[t], k))

            recipe = {"analysis": "keep_top", "model": Ss.checkpoint_fingerprint(t), "k": k}
            red_rows += Ss.evaluate(state, recipe, [t], split, "keep top-k", k=k, model=t)
    flat = {t: tvs[t].flatten() for t in S.tasks}
    trimmed = {t: analysis.trimmed(v, trim_k) for t, v in flat.items()}
    progress.note(f"sign conflicts and magnitudes (seed {Ss.seed})")
    conf_parts.append(analysis.sign_conflicts(trimmed, range(2, len(S.tasks) + 1), limit=max_subsets, seed=seed)
                      .assign(seed=Ss.seed))
    mag_parts.append(analysis.magnitudes(flat, k=trim_k, seed=seed).assign(seed=Ss.seed))
    del tvs, flat, trimmed

# %% [markdown]
# ## Redundancy

# %%
red = pd.DataFrame(red_rows).drop(columns=["pred", "correct"])
red["accuracy"] *= 100
red["k"] *= 100
per_task = red.groupby(["task", "k"], sort=False)["accuracy"].mean().reset_index()
mean = red.groupby(["k", "seed"])["accuracy"].mean().reset_index()
fig, ax = plots.figure(width=4.8, height=2.6)
palette = dict(zip(S.tasks, sns.color_palette("tab10", len(S.tasks))))
for t in S.tasks:
    part = per_task[per_task.task == t]
    ax.plot(part.k, part.accuracy, lw=0.8, alpha=0.75, marker="o", markersize=2, color=palette[t], label=t)
plots.seed_band(ax, mean, "k", "accuracy", color="black", label="mean over tasks")
PRE = S.family.pretrained_label
plots.head_line(ax, 100 * pd.DataFrame(S.at_seed(S.seeds[0]).evaluate_checkpoint(None, S.tasks, split, PRE))["accuracy"].mean(), PRE)
ax.set(xlabel="task-vector entries kept (top-k %, whole model)", ylabel=f"accuracy on own task, {split} (%)",
       title=f"Redundancy: most of a task vector can be dropped\n(mean over {len(S.seeds)} seeds; band: range over seeds)")
plots.legend_outside(ax)
S.save_figure(fig, "redundancy", "interference", params, data=red[["model", "seed", "k", "split", "accuracy"]])
red.pivot_table(index="task", columns="k", values="accuracy").round(1)

# %% [markdown]
# ## Sign conflicts

# %%
conf = pd.concat(conf_parts, ignore_index=True)
conf["% of parameters some model keeps"] = conf.fraction_of_kept * 100
conf["% of all parameters"] = conf.fraction_of_all * 100
per_seed = conf.groupby(["n_models", "seed"])[["% of parameters some model keeps", "% of all parameters"]].mean().reset_index()
fig, ax = plots.figure(height=2.4)
for col, marker, color in [("% of parameters some model keeps", "o", plots.PALETTE[0]), ("% of all parameters", "s", plots.PALETTE[1])]:
    plots.seed_band(ax, per_seed, "n_models", col, color=color, marker=marker, label=col)
ax.set(xlabel="number of models merged", ylabel="parameters with a sign conflict (%)",
       title=f"Sign conflicts after keeping the top {100 * trim_k:g} %\n(mean over subsets; band: range over {len(S.seeds)} seeds)")
plots.legend_below(ax, ncol=2)
S.save_figure(fig, "sign_conflicts", "interference", params,
              data=conf.drop(columns=["fraction_of_kept", "fraction_of_all"]))
per_seed.groupby("n_models").mean().drop(columns="seed").round(1)

# %% [markdown]
# ## Magnitudes of influential parameters

# %%
import numpy as np

mag = pd.concat(mag_parts, ignore_index=True)
mag["ratio (%)"] = mag.ratio * 100
edges = np.linspace(0, 150, 61)
hist = []
for (merge, s), part in mag.groupby(["merge", "seed"], sort=False):
    counts, _ = np.histogram(part["ratio (%)"].clip(upper=edges[-1]), bins=edges)
    hist += [{"merge": merge, "seed": s, "bin_lo": lo, "bin_hi": hi, "percent": 100 * c / len(part)}
             for lo, hi, c in zip(edges[:-1], edges[1:], counts)]
hist = pd.DataFrame(hist)
fig, ax = plots.figure(height=2.4)
colors = dict(zip(mag["merge"].unique(), [plots.METHOD_COLORS["average"], plots.METHOD_COLORS["TIES"]]))
for merge, part in hist.groupby("merge", sort=False):
    pooled = part.groupby("bin_lo")["percent"].mean()
    ax.stairs(pooled.values, edges, color=colors[merge], lw=1.2, label=merge)
ax.axvline(100, color="black", lw=0.8, ls="--")
ax.set(xlabel="|merged value| / mean |influential entries| (%, last bin: ≥ 150)", ylabel="% of influential parameters",
       title=f"A plain mean shrinks what matters (mean over {len(S.seeds)} seeds)")
plots.legend_below(ax, ncol=1)
S.save_figure(fig, "magnitudes", "interference", params, data=hist)
mag.groupby(["merge", "seed"])["ratio (%)"].describe()[["mean", "25%", "50%", "75%"]].round(1)
