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
# # Merging every task model: the study's Table 1
#
# All task models are merged into one encoder by each method; its accuracy is the mean over the
# tasks, each read through its own (fixed) head. Hyperparameters are chosen on the validation
# split and reported on the test split, as in the paper; the paper's no-validation defaults
# (task arithmetic λ = 0.4, TIES k = 20 % and λ = 1) are reported too. The paper's own averages
# stand beside ours for reference — other models and tasks, so only the ordering compares.
#
# Writes `merge_sweep` (every validation result) and `table1`.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
select_split: str = "val"  # split the hyperparameters are chosen on
report_split: str = "test"  # split Table 1 reports
ta_lams: list[float] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # task arithmetic λ grid
ties_ks: list[float] = [0.1, 0.2, 0.3]  # TIES: fraction of each task vector kept
ties_lams: list[float] = [0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.5, 3.0]  # TIES λ grid
dare_ks: list[float] = [0.1, 0.3]  # DARE: fraction kept (drop rate 1 − k)
dare_lams: list[float] = [0.2, 0.3, 0.4, 0.5, 0.7]  # DARE λ grid
dare_seed: int = 0  # seed of DARE's random drop
regmean_alphas: list[float] = [0.5, 0.9, 1.0]  # RegMean: scale of the Gram matrices' off-diagonal
default_ta_lam: float = 0.4  # paper default without validation
default_ties_k: float = 0.2  # paper default without validation
default_ties_lam: float = 1.0  # paper default without validation
ties_preset: str = "paper"  # TIES switches: paper | original | fusionbench | mergekit | peft (see the README)

# %%
import pandas as pd
from tqdm.auto import tqdm

from tiesnb import analysis, paper
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {k: globals()[k] for k in ["study", "select_split", "report_split", "ta_lams", "ties_ks", "ties_lams", "dare_ks",
                                    "dare_lams", "dare_seed", "regmean_alphas", "default_ta_lam", "default_ties_k",
                                    "default_ties_lam", "ties_preset"]}
full = S.config.mode == "full"  # Fisher and RegMean need the full encoder's statistics
grid = [("average", {})]
grid += [("task_arithmetic", {"lam": lam}) for lam in ta_lams]
grid += [("ties", {"k": k, "lam": lam, "preset": ties_preset}) for k in ties_ks for lam in ties_lams]
grid += [("dare", {"k": k, "lam": lam, "seed": dare_seed}) for k in dare_ks for lam in dare_lams]
if full:
    grid += [("fisher", {"fishers": "auto"})] + [("regmean", {"grams": "auto", "alpha": a}) for a in regmean_alphas]
rows = []
for method, hp in tqdm(grid, desc="validation sweep"):
    rows += S.evaluate_merge(method, select_split, **hp)
sweep = pd.DataFrame(rows)
knobs = [c for c in ["k", "lam", "alpha"] if c in sweep]
summary = (sweep.groupby(["method", *knobs], dropna=False, sort=False)["accuracy"].mean() * 100).reset_index()
S.save_table(summary.rename(columns={"accuracy": f"mean accuracy ({select_split})"}), "merge_sweep", "merge_sweep", params,
             caption=f"Mean accuracy (%) over the tasks on the {select_split} split for every setting tried.")
summary.sort_values("accuracy", ascending=False).head(10).round(2)

# %% [markdown]
# ## Test accuracy of each method at its chosen hyperparameters

# %%
def chosen(method, by):
    return analysis.best(sweep[sweep.method == method], by)

picks = [("average", "averaging", {})]
picks.append(("task_arithmetic", "task arithmetic", chosen("task_arithmetic", ["lam"])))
picks.append(("task_arithmetic", f"task arithmetic (λ = {default_ta_lam}, no validation)", {"lam": default_ta_lam}))
picks.append(("ties", "TIES", {**chosen("ties", ["k", "lam"]), "preset": ties_preset}))
picks.append(("ties", f"TIES (k = {default_ties_k:.0%}, λ = {default_ties_lam:g}, no validation)",
              {"k": default_ties_k, "lam": default_ties_lam, "preset": ties_preset}))
picks.append(("dare", "DARE", {**chosen("dare", ["k", "lam"]), "seed": dare_seed}))
if full:
    picks.append(("fisher", "Fisher", {"fishers": "auto"}))
    picks.append(("regmean", "RegMean", {**chosen("regmean", ["alpha"]), "grams": "auto"}))

test = S.evaluate_checkpoint(None, S.tasks, report_split, "zero-shot")
for t in S.tasks:
    test += S.evaluate_checkpoint(t, [t], report_split, "fine-tuned")
test += S.evaluate_checkpoint(MULTITASK, S.tasks, report_split, "multitask")
for method, label, hp in picks:
    test += S.evaluate_merge(method, report_split, label=label, **hp)
test = pd.DataFrame(test)

def setting(label):
    hp = dict(next((h for _, lab, h in picks if lab == label), {}))
    shown = {"k": lambda v: f"k = {v:.0%}", "lam": lambda v: f"λ = {v:g}", "alpha": lambda v: f"α = {v:g}"}
    return ", ".join(shown[k](v) for k, v in hp.items() if k in shown)

table = test.pivot(index="method", columns="task", values="accuracy")[S.tasks] * 100
order = ["zero-shot", "fine-tuned", "multitask"] + [label for _, label, _ in picks]
table = table.loc[order]
table.insert(0, "chosen on " + select_split, [setting(m) for m in table.index])
table["average"] = table[S.tasks].mean(axis=1)
paper_name = {"fine-tuned": "fine-tuned", "multitask": "multitask", "task arithmetic": "task arithmetic",
              "TIES": "TIES", "Fisher": "Fisher", "RegMean": "RegMean"}
for col in ["T5-base", "ViT-B/32", "IA3 / T0-3B"]:
    table[f"paper {col}"] = [paper.TABLE1.get(paper_name.get(m, ""), {}).get(col) for m in table.index]
table1 = table.reset_index().rename(columns={"method": "method"})
S.save_table(table1, "table1", "merge_sweep", params,
             caption=f"Table 1. Test accuracy (%) of every method merging the {len(S.tasks)} task models "
                     f"(hyperparameters chosen on {select_split}); the paper's averages beside them.")
table1.round(1)
