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
# # Linear probes: one fixed head per task
#
# Every encoder of the study — pretrained, fine-tuned, multitask, merged — is read through the
# same linear head per task. The heads are fitted here, once, on the frozen pretrained encoder
# (multinomial logistic regression on mean-pooled sentence embeddings), as the paper's ViT
# protocol keeps fixed classification heads. Their accuracy with the pretrained encoder is the
# study's "probe" row (the family's `pretrained_label`). (A seq2seq study scores answer choices by
# rank classification and needs no heads: this step then only measures the pretrained model,
# zero-shot; CLIP's heads come from its text tower, zero-shot too.)

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml

# %%
import pandas as pd

from tiesnb.study import Study

S = Study.load(study)
S.data_summary()

# %%
heads = S.fit_heads()
PRE = S.family.pretrained_label
rows = S.evaluate_checkpoint(None, S.tasks, "val", PRE) + S.evaluate_checkpoint(None, S.tasks, "test", PRE)
probe = pd.DataFrame(rows)
path = S.results_path("probe.csv")
path.parent.mkdir(parents=True, exist_ok=True)
probe.to_csv(path, index=False)
probe.pivot(index="task", columns="split", values="accuracy").round(3)
