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
# # The individual models: zero-shot, fine-tuned, multitask
#
# The upper rows of the study's Table 1: each task's accuracy with the pretrained encoder
# (through the probe head, "zero-shot"), with the model fine-tuned on that task, and with the
# multitask model. Then how each fine-tuned model does on the *other* tasks — what a merge has to
# preserve.
#
# Writes `individual` (table) and `cross_task` (figure).

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
split: str = "test"  # split of the table
cross_split: str = "val"  # split of the cross-task matrix (8 × 8 evaluations)

# %%
import pandas as pd

from tiesnb import plots
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {"study": study, "split": split, "cross_split": cross_split}
rows = S.evaluate_checkpoint(None, S.tasks, split, "zero-shot")
for t in S.tasks:
    rows += S.evaluate_checkpoint(t, [t], split, "fine-tuned")
rows += S.evaluate_checkpoint(MULTITASK, S.tasks, split, "multitask")
individual = pd.DataFrame(rows).pivot(index="method", columns="task", values="accuracy")[S.tasks] * 100
individual = individual.loc[["zero-shot", "fine-tuned", "multitask"]]
individual["average"] = individual.mean(axis=1)
table = individual.reset_index()
S.save_table(table, "individual", "evaluate", params,
             caption=f"Accuracy (%) on the {split} split of each task: pretrained encoder with the probe head "
                     f"(zero-shot), the model fine-tuned on the task, and the multitask model.")
table.round(1)

# %% [markdown]
# Each fine-tuned model on every task (rows: the task it was trained on), as accuracy gained
# over the zero-shot encoder.

# %%
zero = {r["task"]: r["accuracy"] for r in S.evaluate_checkpoint(None, S.tasks, cross_split, "zero-shot")}
cross = []
for t in S.tasks:
    cross += [dict(r, trained_on=t) for r in S.evaluate_checkpoint(t, S.tasks, cross_split, "fine-tuned")]
cross = pd.DataFrame(cross)
cross["gain"] = (cross["accuracy"] - cross["task"].map(zero)) * 100
matrix = cross.pivot(index="trained_on", columns="task", values="gain").loc[S.tasks, S.tasks]

import seaborn as sns

fig, ax = plots.figure(width=4.6, height=3.8)
sns.heatmap(matrix, annot=True, fmt=".0f", center=0, cmap="RdBu", cbar_kws={"label": "accuracy gain (points)"},
            annot_kws={"size": 6.5}, ax=ax)
ax.set(xlabel="evaluated on", ylabel="fine-tuned on",
       title=f"Fine-tuned models on every task ({cross_split}), vs zero-shot")
S.save_figure(fig, "cross_task", "evaluate", params)
