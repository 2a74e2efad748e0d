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
# # Ablations and the oracle sign
#
# * **Ablation** — as the paper's: built on *tuned* TIES (the k and λ `merge_sweep` chose on
#   validation), then one step removed at a time, each variant with its λ chosen
#   again on validation: without trimming (k = 100 %, its own λ grid: keeping everything wants a
#   smaller λ than the tuned sparse trim), without the sign election (the mean over all non-zero
#   entries, whatever their sign), without the disjoint mean (the agreeing entries summed and
#   divided by all n models instead of the few that agree, so its λ grid is n times larger), and
#   without scaling (tuned k, λ = 1). The grids of the variants that keep the tuned k are centred
#   on the tuned λ (TIES's best λ moves with k, from 1.4 at k = 2 % to 4 at 0.5 %), so a
#   variant's optimum is not cut off by a grid made for another k. Reported on test and
#   validation, each row's difference from TIES with its 95 % interval.
# * **Oracle sign** — tuned TIES with the sign vector of the multitask model's task vector
#   instead of the elected one (λ chosen again): how much a better sign would buy.
# * **Two bases** — the whole ablation is run twice: on TIES at its tuned k, and on TIES at the
#   paper's k = 20 % (its λ chosen on validation among merge_sweep's λ grid). At a sparse tuned k
#   the kept entries of different tasks rarely meet, so there is little for the sign election to
#   decide; at 20 % they meet often.
#
# Every difference from TIES has two intervals (crossed bootstrap; seed-level paired t) and is
# called separated only when both exclude 0.
#
# Writes `ablations` (table) and the per-example predictions of its test rows.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
select_split: str = "val"  # split λ is chosen on
report_split: str = "test"  # split the ablation table reports
lams: list[float] = [1.0, 1.4, 2.0, 2.8, 4.0]  # λ grid of TIES without trim (k: 100 %)
relative_lams: list[float] = [0.5, 0.7, 1.0, 1.4, 2.0]  # × the seed's tuned λ: "without elect", the oracle
mean_all_relative: list[float] = [0.35, 0.5, 0.7, 1.0, 1.4]  # × n × the tuned λ: "without disjoint mean"
paper_k: float = 0.2  # the second base: TIES at the paper's k (its λ chosen on merge_sweep's grid)

# %%
import json

import pandas as pd

from tiesnb import analysis, paper, progress, tables
from tiesnb.errors import TiesnbError
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {k_: globals()[k_] for k_ in ["study", "select_split", "report_split", "lams", "relative_lams",
                                      "mean_all_relative", "paper_k"]}
choices_file = S.results_path("choices.json")
if not choices_file.exists():
    raise TiesnbError(f"{choices_file} is missing: run `make merge_sweep STUDY={study}` first (the ablation builds on tuned TIES)")
recorded = json.loads(choices_file.read_text())
choices = recorded["choices"]
# the variants' λ is chosen as merge_sweep chose TIES's: per seed, or once on the mean over seeds
# (over merge_sweep's select_seeds, when it chose on the first few seeds only)
per_seed = bool(recorded["parameters"].get("choose_per_seed", True))
select = S.seeds[:recorded["parameters"].get("select_seeds", 0)] or S.seeds
n = len(S.tasks)

# %% [markdown]
# ## Ablation and oracle sign, on both bases

# %%
TIES = "TIES"
ORACLE = "TIES with the multitask model's signs (oracle)"
BASES = ["tuned k", f"k = {paper_k:.0%}"]


def scaled(factors, by):
    return [float(f"{f * by:.4g}") for f in factors]  # 4 digits: 2.8 × 0.7 is 1.96, not 1.9599999999999997


variants = {  # name: (fixed switches, λ grid from the base's λ, or None for λ = 1)
    "without trim": ({"k": 1.0}, lambda lam: list(lams)),
    "without elect": ({"elect": "none"}, lambda lam: scaled(relative_lams, lam)),
    "without disjoint mean": ({"disjoint": "mean_all"}, lambda lam: scaled(mean_all_relative, n * lam)),
    "without scaling (λ = 1)": ({}, None),
    ORACLE: ({"signs": MULTITASK}, lambda lam: scaled(relative_lams, lam)),
}
if not S.has_multitask:  # a study of existing task models without a multitask model: no oracle sign
    del variants[ORACLE]
groups = [[s] for s in S.seeds] if per_seed else [list(select)]
tuned = {s: choices[str(s)][TIES]["params"] for s in S.seeds}  # k, λ, preset
base_edges = {(BASES[0], s): choices[str(s)][TIES]["edge"] for s in S.seeds}
# the second base: TIES at paper_k, its λ chosen on validation over merge_sweep's λ grid (cached)
sweep_lams = recorded["parameters"]["ties_lams"]
paper_rows = {s: [] for s in S.seeds}
for Ss in S.each_seed():
    if Ss.seed not in select:
        continue
    for lam in sweep_lams:
        paper_rows[Ss.seed] += Ss.evaluate_merge("ties", select_split, label=BASES[1], k=paper_k, lam=lam,
                                                 preset=tuned[Ss.seed]["preset"])
base = {(BASES[0], s): tuned[s] for s in S.seeds}
for group in groups:
    chosen, edges = analysis.choose(pd.DataFrame(sum((paper_rows[s] for s in group), [])), {"lam": sweep_lams},
                                    BASES[1], group[0] if per_seed else None)
    for s in (group if per_seed else S.seeds):
        base[(BASES[1], s)] = {"k": paper_k, "lam": chosen["lam"], "preset": tuned[s]["preset"]}
        base_edges[(BASES[1], s)] = edges


def switches_of(b, name, seed):
    return {"preset": base[(b, seed)]["preset"], "k": base[(b, seed)]["k"], **variants[name][0]}


rows, lam_choice, sweeps = [], {}, {}
for Ss in S.each_seed():  # the validation sweeps
    if Ss.seed not in select:
        continue
    for b in BASES:
        for name, (switches, grid_of) in progress.bar(variants.items(), desc=f"ablations at {b} on {select_split} (seed {Ss.seed})"):
            if grid_of is not None and not (b != BASES[0] and name == "without trim"):  # k = 100 %: one sweep
                sweeps[(b, name, Ss.seed)] = sum(
                    (Ss.evaluate_merge("ties", select_split, label=name, lam=l, **switches_of(b, name, Ss.seed))
                     for l in grid_of(base[(b, Ss.seed)]["lam"])), [])
# each variant's λ, chosen as merge_sweep chose TIES's: by each seed, or once for all seeds on the
# mean over them (their grids are then the same, since so is the base's λ)
for b in BASES:
    for name, (switches, grid_of) in variants.items():
        for group in groups:
            if grid_of is None:
                lam, edges = 1.0, []
            elif b != BASES[0] and name == "without trim":
                lam, edges = lam_choice[(BASES[0], name, group[0])]
            else:
                val = pd.DataFrame(sum((sweeps[(b, name, s)] for s in group), []))
                chosen, edges = analysis.choose(val, {"lam": grid_of(base[(b, group[0])]["lam"])}, name,
                                                group[0] if per_seed else None)
                lam = chosen["lam"]
            lam_choice.update({(b, name, s): (lam, edges) for s in (group if per_seed else S.seeds)})
for Ss in S.each_seed():  # test and validation at the chosen settings
    for b in BASES:
        lam_choice[(b, TIES, Ss.seed)] = (base[(b, Ss.seed)]["lam"], base_edges[(b, Ss.seed)])
        splits = (report_split, select_split) if Ss.seed in select else (report_split,)
        for split in splits:
            rows += [dict(r, base=b) for r in Ss.evaluate_merge("ties", split, label=TIES, **base[(b, Ss.seed)])]
        for name in progress.bar(variants, desc=f"ablations at {b} on {report_split} (seed {Ss.seed})"):
            for split in splits:
                rows += [dict(r, base=b) for r in Ss.evaluate_merge("ties", split, label=name,
                                                                   lam=lam_choice[(b, name, Ss.seed)][0],
                                                                   **switches_of(b, name, Ss.seed))]
abl = pd.DataFrame(rows)

# %%
order = [TIES, "without trim", "without elect", "without disjoint mean", "without scaling (λ = 1)"] + \
    ([ORACLE] if ORACLE in variants else [])


def chosen_text(b, name):
    texts = []
    for s in S.seeds:
        lam, edges = lam_choice[(b, name, s)]
        hp = {"k": base[(b, s)]["k"] if name != "without trim" else 1.0, "lam": lam}
        texts.append(analysis.setting_text(hp, edges))
    distinct = list(dict.fromkeys(texts))
    return distinct[0] if len(distinct) == 1 else " / ".join(texts)


parts, preds = [], []
for b in BASES:
    part = abl[abl.base == b]
    test_part = part[part.split == report_split]
    val_part = part[part.split == select_split]
    table = tables.summary(test_part, order, S.tasks, S.seeds, settings={m: chosen_text(b, m) for m in order})
    table.insert(0, "base", b)
    valsum = tables.summary(val_part, order, S.tasks, select)
    table[f"average ({select_split})"] = valsum["average"].values
    diff = tables.compare(test_part, [(m, m, TIES) for m in order[1:]], S.tasks, S.seeds)
    for col in ("difference", "lo", "hi", "t_lo", "t_hi"):
        table[f"vs TIES {col}".replace(" difference", "")] = [None] + list(diff[col])
    table["verdict"] = [""] + ["not separated" if not sep else ("above TIES" if d > 0 else "below TIES")
                               for sep, d in zip(diff.separated, diff.difference)]
    for col in S.family.paper_ablation_columns:
        table[f"paper {col} ({select_split})"] = [paper.ablation(m, col) for m in table.method]
    if "IA3" in S.family.paper_ablation_columns:
        table["paper IA3 oracle vs TIES (Table 1)"] = [paper.ORACLE.get(m) for m in table.method]
    parts.append(table)
    preds.append(tables.predictions(test_part.assign(method=[f"{m} [{b}]" for m in test_part.method]), "ablations"))
table = pd.concat(parts, ignore_index=True)

md = tables.as_saved(table)  # format from the values the CSV keeps, so the Markdown and the README round alike
at = list(md.columns).index("verdict")
md.insert(at, "vs TIES [95% CI]", ["" if pd.isna(d) else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]"
                                   for d, lo, hi in zip(md["vs TIES"], md["vs TIES lo"], md["vs TIES hi"])])
md.insert(at + 1, "seed-level t [95% CI]", ["" if pd.isna(lo) else f"[{lo:+.1f}, {hi:+.1f}]"
                                            for lo, hi in zip(md["vs TIES t_lo"], md["vs TIES t_hi"])])
md = md.drop(columns=["vs TIES", "vs TIES lo", "vs TIES hi", "vs TIES t_lo", "vs TIES t_hi"])
caption = (f"TIES without each step, and with the multitask model's signs, on two bases: TIES at its tuned k and at "
           f"the paper's k = {paper_k:.0%}. {report_split} accuracy (%), mean over {len(S.seeds)} seeds, average with "
           f"its 95 % interval; the {select_split} average beside it; each row's paired difference from its base TIES "
           f"with two 95 % intervals (crossed bootstrap over seeds and test examples; seed-level paired t), 'below' or "
           f"'above' only when both exclude 0. Each variant keeps its base's k and has its λ chosen on {select_split} "
           f"as TIES's was ({'by each seed' if per_seed else 'once, on the mean over the seeds'}; '(edge)': at the edge "
           f"of its grid). The paper's ablation columns are averages on its *validation* sets, its oracle numbers are "
           f"IA3 test averages (Table 1 setting); {paper.SECOND_HAND}.")
S.save_table(table, "ablations", "ablations", params, caption=caption, markdown=tables.markdown(md))
S.save_data(pd.concat(preds, ignore_index=True), "predictions/ablations")
table.round(1)
