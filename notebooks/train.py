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
# # Fine-tune one task (or the multitask model)
#
# The encoder is trained on one task with that task's probe head frozen — or, for
# `task = "multitask"`, on all tasks at once (the paper's multitask row, and the source of the
# oracle sign vector) — once for every training seed of the study. The pipeline runs this
# notebook once per task. A checkpoint made with the same resolved parameters is reused, not
# retrained.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
task: str = "bbc_news"  # a task of the study, or "multitask"

# %%
import json

import matplotlib.pyplot as plt

from tiesnb import plots
from tiesnb.study import Study

S = Study.load(study)
records = {}
for Ss in S.each_seed():
    checkpoint = Ss.train(task)  # an existing model (task_models) is read, not trained: no record
    if checkpoint is not None and (checkpoint / "params.json").exists() and not Ss.models.existing(task):
        records[Ss.seed] = json.loads((checkpoint / "params.json").read_text())
records[S.seeds[0]]["resolved"]["train"] if records else "nothing trained here"

# %% [markdown]
# Training loss per step (a running mean over 20 steps), one line per seed.

# %%
import pandas as pd

fig, ax = plots.figure()
for s, record in records.items():  # (none for an existing model: the plot stays empty)
    loss = pd.Series(record.get("metrics", {}).get("loss", []), dtype=float)
    ax.plot(loss.index, loss.rolling(20, min_periods=1).mean(), lw=1.2, label=f"seed {s}")
ax.set(xlabel="step", ylabel="cross-entropy", title=f"{task} ({S.config.mode})")
plots.legend_outside(ax)
plt.show()
