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
# # The fixed heads: one per task
#
# Every encoder of the study — pretrained, fine-tuned, multitask, merged — is read through the
# same head per task, built here once on the frozen pretrained encoder, as the paper's ViT protocol
# keeps fixed classification heads. The family decides what a head is: the text family fits a
# linear probe (multinomial logistic regression on mean-pooled sentence embeddings); the vision
# family builds prototype heads (normalised mean embeddings of a few labelled images per class, no
# fitting); CLIP's come from its text tower; a seq2seq study scores answer choices by rank
# classification and needs none. The pretrained encoder's accuracy through them is the study's
# reference row, named by the family (`pretrained_label`: "probe", "prototype head", "zero-shot").

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
