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
# # Fine-tune one task (or the multitask model)
#
# The encoder is trained on one task with that task's probe head frozen — or, for
# `task = "multitask"`, on all tasks at once (the paper's multitask row, and the source of the
# oracle sign vector). The pipeline runs this notebook once per task. A checkpoint made with the
# same resolved parameters is reused, not retrained.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
task: str = "bbc_news"  # a task of the study, or "multitask"

# %%
import json

import matplotlib.pyplot as plt

from tiesnb import plots
from tiesnb.study import Study

S = Study.load(study)
checkpoint = S.train(task)
record = json.loads((checkpoint / "params.json").read_text())
record["resolved"]["train"]

# %% [markdown]
# Training loss per step (a running mean over 20 steps).

# %%
import pandas as pd

loss = pd.Series(record.get("metrics", {}).get("loss", []), dtype=float)
fig, ax = plots.figure()
ax.plot(loss.index, loss, alpha=0.3, lw=0.8)
ax.plot(loss.index, loss.rolling(20, min_periods=1).mean(), lw=1.5)
ax.set(xlabel="step", ylabel="cross-entropy", title=f"{task} ({record['resolved']['train']['mode']})")
plt.show()
