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
# # Interference: redundant parameters, conflicting signs, shrinking magnitudes
#
# The paper's three observations about why merges lose accuracy, measured on the study's task
# vectors (θ_t − θ0 over the fine-tuned parameters):
#
# 1. **Redundancy** — a fine-tuned model keeps most of its accuracy when only the top-k % of its
#    task vector (by magnitude, over the whole model) is kept.
# 2. **Sign conflicts** — after trimming, more and more parameters get a positive value from one
#    model and a negative value from another as more models are merged.
# 3. **Magnitudes** — a plain mean of task vectors shrinks the influential parameters; trimming,
#    electing a sign and averaging only the agreeing entries keeps their magnitude.
#
# Writes `redundancy`, `sign_conflicts` and `magnitudes` (figures).

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

from tiesnb import analysis, plots
from tiesnb.study import Study

S = Study.load(study)
params = {k: globals()[k] for k in ["study", "split", "keep_fractions", "trim_k", "max_subsets", "seed"]}
tvs = S.task_vectors()

# %% [markdown]
# ## Redundancy

# %%
rows = []
for t in S.tasks:
    for k in keep_fractions:
        def state(t=t, k=k):
            return S.apply(analysis.keep_top(tvs[t], k))

        recipe = {"analysis": "keep_top", "model": S.checkpoint_fingerprint(t), "k": k}
        rows += S.evaluate(state, recipe, [t], split, "keep top-k", k=k, model=t)
red = pd.DataFrame(rows)
full_acc = red[red.k == 1.0].set_index("task")["accuracy"]
red["relative"] = red["accuracy"] / red["task"].map(full_acc)
fig, ax = plots.figure(height=2.5)
sns.lineplot(red, x=red.k * 100, y="accuracy", hue="task", marker="o", markersize=3, lw=0.8, alpha=0.6, ax=ax, legend=False)
mean = red.groupby("k")["accuracy"].mean()
ax.plot(mean.index * 100, mean.values, color="black", lw=2, marker="o", markersize=4, label="mean over tasks")
ax.set(xlabel="task-vector entries kept (top-k %, whole model)", ylabel=f"accuracy on own task ({split})",
       title="Redundancy: most of a task vector can be dropped")
ax.legend(loc="lower right")
S.save_figure(fig, "redundancy", "interference", params)
red.pivot(index="task", columns="k", values="accuracy").round(3)

# %% [markdown]
# ## Sign conflicts

# %%
flat = {t: analysis.trimmed(tvs[t].flatten(), trim_k) for t in S.tasks}
conf = analysis.sign_conflicts(flat, range(2, len(S.tasks) + 1), limit=max_subsets, seed=seed)
fig, ax = plots.figure(height=2.4)
sns.lineplot(conf, x="n_models", y=conf.fraction_of_kept * 100, marker="o", errorbar="sd", ax=ax,
             label="of parameters some model keeps")
sns.lineplot(conf, x="n_models", y=conf.fraction_of_all * 100, marker="s", errorbar="sd", ax=ax,
             label="of all parameters")
ax.set(xlabel="number of models merged", ylabel="parameters with a sign conflict (%)",
       title=f"Sign conflicts after keeping the top {trim_k:.0%}")
S.save_figure(fig, "sign_conflicts", "interference", params)
conf.groupby("n_models")[["fraction_of_kept", "fraction_of_all"]].mean().round(3)

# %% [markdown]
# ## Magnitudes of influential parameters

# %%
mag = analysis.magnitudes({t: tvs[t].flatten() for t in S.tasks}, k=trim_k, seed=seed)
fig, ax = plots.figure(height=2.4)
sns.histplot(mag, x="ratio", hue="merge", bins=60, binrange=(0, 1.5), stat="percent", common_norm=False,
             element="step", ax=ax)
ax.axvline(1.0, color="black", lw=0.8, ls="--")
ax.set(xlabel="|merged value| / mean |influential entries|", ylabel="% of influential parameters",
       title="A plain mean shrinks what matters")
S.save_figure(fig, "magnitudes", "interference", params)
mag.groupby("merge")["ratio"].describe()[["mean", "25%", "50%", "75%"]].round(3)
