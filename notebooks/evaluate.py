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
# # The individual models: the pretrained encoder, fine-tuned, multitask
#
# The upper rows of the study's Table 1: each task's accuracy with the pretrained encoder
# (through its fixed heads: the "probe" row where they are linear probes, "zero-shot" where they need no training data), with the model fine-tuned on that task, and with the
# multitask model — each task's mean over the training seeds, and the average over tasks with
# its 95 % interval. Then how each fine-tuned model does on the *other* tasks — what a merge has
# to preserve.
#
# Writes `individual` and `gains` (tables) and `cross_task` (figure, with its data).

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
split: str = "test"  # split of the table
cross_split: str = "test"  # split of the cross-task matrix (every model on every task)

# %%
import pandas as pd
import seaborn as sns

from tiesnb import plots, progress, tables
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {"study": study, "split": split, "cross_split": cross_split}
PRE = S.family.pretrained_label  # "probe": the pretrained encoder through heads fitted on the task
rows, cross = [], []
for Ss in S.each_seed():
    rows += Ss.evaluate_checkpoint(None, S.tasks, split, PRE)
    for t in progress.bar(S.tasks, desc=f"each model on every task (seed {Ss.seed})"):
        rows += Ss.evaluate_checkpoint(t, [t], split, "fine-tuned")
        cross += [dict(r, trained_on=t) for r in Ss.evaluate_checkpoint(t, S.tasks, cross_split, "fine-tuned")]
    if S.has_multitask:  # (a study of existing task models may have none)
        rows += Ss.evaluate_checkpoint(MULTITASK, S.tasks, split, "multitask")
    cross += Ss.evaluate_checkpoint(None, S.tasks, cross_split, PRE)
rows = pd.DataFrame(rows)
table = tables.summary(rows, [PRE, "fine-tuned"] + (["multitask"] if S.has_multitask else []), S.tasks, S.seeds)
S.save_table(table, "individual", "evaluate", params, markdown=tables.markdown(table),
             caption=f"Accuracy (%) on the {split} split of each task, mean over {len(S.seeds)} training seeds: "
                     f"pretrained encoder with its heads ({PRE}), the model fine-tuned on the task, and the "
                     f"multitask model; the average over tasks with its 95 % interval (bootstrap over seeds and test "
                     f"examples) and the range of the per-seed averages.")
table.round(1)

# %% [markdown]
# Does fine-tuning beat the pretrained encoder on every task? The paired difference fine-tuned − probe per
# task (points), with its 95 % interval (seeds and test examples resampled, paired).

# %%
gains = pd.concat([tables.compare(rows[rows.task == t], [(t, "fine-tuned", PRE)], [t], S.seeds)
                   for t in S.tasks] +
                  [tables.compare(rows, [("average over tasks", "fine-tuned", PRE)], S.tasks, S.seeds)])
gains = gains.rename(columns={"comparison": "task"}).drop(columns=["a", "b"])
gains["verdict"] = [v.replace(t, "fine-tuned") for v, t in zip(gains.verdict, gains.task)]
S.save_table(gains, "gains", "evaluate", params, markdown=tables.markdown(gains),
             caption=f"Fine-tuned − {PRE} (the pretrained encoder with its heads), {split} accuracy in points, per "
                     f"task and averaged, mean over {len(S.seeds)} seeds with two paired 95 % intervals (crossed "
                     f"bootstrap; seed-level t); per seed in the last columns.")
gains.round(2)

# %% [markdown]
# Each fine-tuned model on every task (rows: the task it was trained on), as accuracy gained
# over the pretrained encoder: mean over seeds (the CSV has each seed).

# %%
cross = pd.DataFrame(cross).drop(columns=["pred", "correct"])
zero = cross[cross.method == PRE].groupby("task")["accuracy"].mean()
cross = cross[cross.method == "fine-tuned"].copy()
cross["gain (points)"] = (cross["accuracy"] - cross["task"].map(zero)) * 100
matrix = cross.groupby(["trained_on", "task"])["gain (points)"].mean().unstack().loc[S.tasks, S.tasks]
fig, ax = plots.figure(width=4.6, height=3.8)
sns.heatmap(matrix, annot=True, fmt=".0f", center=0, cmap="RdBu", cbar_kws={"label": "accuracy gain (points)"},
            annot_kws={"size": 6.5}, ax=ax)
ax.set(xlabel="evaluated on", ylabel="fine-tuned on",
       title=f"Fine-tuned models on every task ({cross_split}), vs the {PRE}\n(mean over {len(S.seeds)} seeds)")
S.save_figure(fig, "cross_task", "evaluate", params,
              data=cross[["trained_on", "task", "seed", "split", "accuracy", "gain (points)"]])
