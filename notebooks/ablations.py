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
# # Ablations and the oracle sign
#
# * **Ablation** — as the paper's: built on *tuned* TIES (each seed's k and λ chosen on
#   validation by `merge_sweep`), then one step removed at a time, each variant with its λ chosen
#   again on validation: without trimming (k = 100 %), without the sign election (the mean over
#   all non-zero entries, whatever their sign), without the disjoint mean (the agreeing entries
#   summed and divided by all n models — its λ grid is the others' times n, the same range of
#   effective scales), and without scaling (tuned k, λ = 1). Reported on test and validation,
#   each row's difference from TIES with its 95 % interval.
# * **Oracle sign** — tuned TIES with the sign vector of the multitask model's task vector
#   instead of the elected one (λ chosen again): how much a better sign would buy.
#
# Writes `ablations` (table) and the per-example predictions of its test rows.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
select_split: str = "val"  # split λ is chosen on
report_split: str = "test"  # split the ablation table reports
lams: list[float] = [0.8, 1.0, 1.4, 2.0, 2.8, 4.0]  # λ grid of the variants (× n for "without disjoint mean")

# %%
import json

import pandas as pd

from tiesnb import analysis, paper, progress, tables
from tiesnb.errors import TiesnbError
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {k_: globals()[k_] for k_ in ["study", "select_split", "report_split", "lams"]}
choices_file = S.results_path("choices.json")
if not choices_file.exists():
    raise TiesnbError(f"{choices_file} is missing: run `make merge_sweep STUDY={study}` first (the ablation builds on tuned TIES)")
choices = json.loads(choices_file.read_text())["choices"]
n = len(S.tasks)

# %% [markdown]
# ## Ablation and oracle sign, seed by seed

# %%
TIES = "TIES"
ORACLE = "TIES with the multitask model's signs (oracle)"
variants = {  # name: (fixed switches, λ grid or None for a fixed λ)
    "without trim": ({"k": 1.0}, lams),
    "without elect": ({"elect": "none"}, lams),
    "without disjoint mean": ({"disjoint": "mean_all"}, [lam * n for lam in lams]),
    "without scaling (λ = 1)": ({}, None),
    ORACLE: ({"signs": MULTITASK}, lams),
}
rows, lam_choice = [], {}
for Ss in S.each_seed():
    tuned = choices[str(Ss.seed)][TIES]["params"]  # k, λ, preset
    k = tuned["k"]
    for split in (report_split, select_split):
        rows += Ss.evaluate_merge("ties", split, label=TIES, **tuned)
    lam_choice[(TIES, Ss.seed)] = (tuned["lam"], choices[str(Ss.seed)][TIES]["edge"])
    for name, (switches, grid) in progress.bar(variants.items(), desc=f"ablations (seed {Ss.seed})"):
        hp = {"preset": tuned["preset"], "k": k, **switches}
        if grid is None:
            lam, edges = 1.0, []
        else:
            val = pd.DataFrame(sum((Ss.evaluate_merge("ties", select_split, label=name, lam=l, **hp) for l in grid), []))
            chosen, edges = analysis.choose(val, {"lam": grid}, name, Ss.seed)
            lam = chosen["lam"]
        lam_choice[(name, Ss.seed)] = (lam, edges)
        for split in (report_split, select_split):
            rows += Ss.evaluate_merge("ties", split, label=name, lam=lam, **hp)
abl = pd.DataFrame(rows)

# %%
order = [TIES, "without trim", "without elect", "without disjoint mean", "without scaling (λ = 1)", ORACLE]


def chosen_text(name):
    texts = []
    for s in S.seeds:
        lam, edges = lam_choice[(name, s)]
        hp = {"k": choices[str(s)][TIES]["params"]["k"] if name != "without trim" else 1.0, "lam": lam}
        texts.append(analysis.setting_text(hp, edges))
    distinct = list(dict.fromkeys(texts))
    return distinct[0] if len(distinct) == 1 else " / ".join(texts)


test_part = abl[abl.split == report_split]
val_part = abl[abl.split == select_split]
table = tables.summary(test_part, order, S.tasks, S.seeds, settings={m: chosen_text(m) for m in order})
valsum = tables.summary(val_part, order, S.tasks, S.seeds)
table[f"average ({select_split})"] = valsum["average"].values
diff = tables.compare(test_part, [(m, m, TIES) for m in order[1:]], S.tasks, S.seeds)
table["vs TIES"] = [None] + list(diff.difference)
table["vs TIES lo"] = [None] + list(diff.lo)
table["vs TIES hi"] = [None] + list(diff.hi)
table["verdict"] = [""] + ["not separated" if not sep else ("above TIES" if d > 0 else "below TIES")
                           for sep, d in zip(diff.separated, diff.difference)]
table[f"paper T5-base ({select_split})"] = [paper.ablation(m, "T5-base") for m in table.method]
table[f"paper IA3 ({select_split})"] = [paper.ablation(m, "IA3") for m in table.method]
table["paper IA3 oracle vs TIES (Table 1)"] = [paper.ORACLE.get(m) for m in table.method]

md = table.copy()
at = list(md.columns).index("verdict")
md.insert(at, "vs TIES [95% CI]", ["" if pd.isna(d) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                                   for d, lo, hi in zip(table["vs TIES"], table["vs TIES lo"], table["vs TIES hi"])])
md = md.drop(columns=["vs TIES", "vs TIES lo", "vs TIES hi"])
caption = (f"TIES without each step, and with the multitask model's signs: {report_split} accuracy (%), mean over "
           f"{len(S.seeds)} seeds, average with its 95 % interval; the {select_split} average beside it; each row's "
           f"paired difference from tuned TIES with its interval. Each variant keeps its seed's tuned k and has its λ "
           f"chosen on {select_split} ('(edge)': at the edge of its grid). The paper's ablation columns are averages on "
           f"its *validation* sets, its oracle numbers are IA3 test averages (Table 1 setting); {paper.SECOND_HAND}.")
S.save_table(table, "ablations", "ablations", params, caption=caption, markdown=tables.markdown(md))
S.save_data(tables.predictions(test_part, "ablations"), "predictions/ablations")
table.round(1)
