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
# # The same models, evaluated another way (vision: BatchNorm statistics)
#
# A family may evaluate a model in more than one way (`Family.evaluation_variants`). The vision
# family's BatchNorm running statistics are either **kept** — merged like any other tensor (with
# BatchNorm frozen while fine-tuning, every model has the pretrained ones) — or **re-estimated**
# on unlabelled training images of every task, the usual repair of an interpolated CNN. Every
# row of Table 1 at the setting `merge_sweep` chose (with the study's own statistics), under each
# variant, and the paired difference between them with its 95 % interval (seeds and test
# examples resampled together). A family with one way to evaluate (text, seq2seq) writes nothing.
#
# Writes `batchnorm` (table) for the vision family.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
split: str = "test"  # split the variants are compared on

# %%
import json

import pandas as pd

from tiesnb import progress, tables
from tiesnb.errors import TiesnbError
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {"study": study, "split": split}
variants = S.family.evaluation_variants(S)
if not variants:
    print(f"the {S.config.model} family evaluates its models one way: nothing to compare")

# %%
if variants:
    choices_file = S.results_path("choices.json")
    if not choices_file.exists():
        raise TiesnbError(f"{choices_file} is missing: run `make merge_sweep STUDY={study}` first")
    choices = json.loads(choices_file.read_text())["choices"]
    AUX = {"fisher": {"fishers": "auto"}, "regmean": {"grams": "auto"}}  # the statistics, as merge_sweep passed them
    PRE = S.family.pretrained_label
    labels = [PRE, "fine-tuned"] + (["multitask"] if S.has_multitask else []) + list(choices[str(S.seeds[0])])
    rows = []
    for name, overrides in variants.items():
        V = S.variant(**overrides)
        for Vs in V.each_seed():
            part = Vs.evaluate_checkpoint(None, S.tasks, split, PRE)
            for t in S.tasks:
                part += Vs.evaluate_checkpoint(t, [t], split, "fine-tuned")
            if S.has_multitask:
                part += Vs.evaluate_checkpoint(MULTITASK, S.tasks, split, "multitask")
            for label, c in progress.bar(list(choices[str(Vs.seed)].items()), desc=f"{name} (seed {Vs.seed})"):
                part += Vs.evaluate_merge(c["method"], split, label=label, **c["params"], **AUX.get(c["method"], {}))
            rows += [{**r, "method": f"{r['method']} [{name}]"} for r in part]
    rows = pd.DataFrame(rows)
    names = list(variants)
    parts = [tables.summary(rows, [f"{l} [{v}]" for l in labels], S.tasks, S.seeds).assign(method=labels, variant=v)
             for v in names]
    diff = tables.compare(rows, [(l, f"{l} [{names[1]}]", f"{l} [{names[0]}]") for l in labels], S.tasks, S.seeds)
    wide = pd.DataFrame({"method": labels})
    for part, v in zip(parts, names):
        wide[f"{v} [95% CI]"] = [f"{m:.1f} [{lo:.1f}, {hi:.1f}]" for m, lo, hi in
                                 zip(part.average, part.average_lo, part.average_hi)]
    wide[f"{names[1]} − {names[0]} [95% CI]"] = [f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" + ("" if sep else " (not separated)")
                                                for d, lo, hi, sep in zip(diff.difference, diff.lo, diff.hi, diff.separated)]  # separated: both intervals
    data = pd.concat([p[["method", "variant", "average", "average_lo", "average_hi"]] for p in parts]).merge(
        diff.rename(columns={"comparison": "method"})[["method", "difference", "lo", "hi"]], on="method", how="left")
    S.save_table(data, S.family.variants_name, "variants", params, markdown=tables.plain_markdown(wide),
                 caption=S.family.variants_caption(S) + f" Mean {split} accuracy (%) over the tasks and {len(S.seeds)} "
                         f"seeds with 95 % intervals; the difference is paired (bootstrap over seeds and test examples; "
                         f"'not separated' unless the seed-level t interval excludes 0 too). "
                         f"Every row at its Table 1 setting, chosen on validation with the study's own statistics.")
    print(wide.to_string(index=False))
