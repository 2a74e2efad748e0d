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
# # Merging every task model: the study's Table 1
#
# All task models are merged into one encoder by each method; its accuracy is the mean over the
# tasks, each read through its own (fixed) head. Hyperparameters are chosen on the validation
# split and reported on the test split, as in the paper: by default one setting per method, the
# best on the validation mean over every training seed (three times the evidence of one seed's
# validation set, which alone is noisy enough to pick a neighbour of the optimum by chance);
# `choose_per_seed: true` lets each seed choose its own. The paper's no-validation defaults (task
# arithmetic λ = 0.4, TIES k = 20 % and λ = 1) are reported too.
# Table 1 gives the mean over seeds with a 95 % interval (seeds and test examples resampled,
# `tiesnb.stats`); the comparisons table says which differences are separated from zero.
# A choice at the edge of its grid is flagged "(edge)" and printed as a warning.
#
# The λ of task arithmetic scales a *sum* of task vectors (λ = 1/n is averaging), the λ of TIES
# scales a *mean* of the agreeing entries: the two are different knobs with different ranges.
#
# Writes `merge_sweep` (every validation result, per seed), `table1`, `comparisons`,
# `sensitivity` (figure), the per-example predictions of Table 1, and the choices the
# `ablations` notebook builds on.

# %% tags=["parameters"]
study: str = "default"  # which study: params/<study>/study.yaml
select_split: str = "val"  # split the hyperparameters are chosen on
report_split: str = "test"  # split Table 1 reports
ta_lams: list[float] = [0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]  # task arithmetic λ grid (scales the sum)
ties_ks: list[float] = [0.05, 0.1, 0.2, 0.3]  # TIES: fraction of each task vector kept
ties_lams: list[float] = [0.6, 0.8, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0]  # TIES λ grid (scales the disjoint mean)
dare_ks: list[float] = [0.1, 0.3]  # DARE: fraction kept (drop rate 1 − k)
dare_lams: list[float] = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5]  # DARE λ grid (scales the sum of rescaled vectors)
dare_seed: int = 0  # seed of DARE's random drop
regmean_alphas: list[float] = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]  # RegMean: scale of the Gram matrices' off-diagonal
default_ta_lam: float = 0.4  # paper default without validation
default_ties_k: float = 0.2  # paper default without validation
default_ties_lam: float = 1.0  # paper default without validation
ties_preset: str = "paper"  # TIES switches: paper | original | fusionbench | mergekit | peft (see the README)
choose_per_seed: bool = False  # False: one setting per method, best on the validation mean over every seed; True: each seed its own
select_seeds: int = 0  # choose on the validation of the first n training seeds only (0: every seed); Table 1 reports every seed

# %%
import pandas as pd

from tiesnb import analysis, paper, plots, progress, stats, tables
from tiesnb.errors import TiesnbError
from tiesnb.io import write_json
from tiesnb.study import MULTITASK, Study

S = Study.load(study)
params = {k: globals()[k] for k in ["study", "select_split", "report_split", "ta_lams", "ties_ks", "ties_lams", "dare_ks",
                                    "dare_lams", "dare_seed", "regmean_alphas", "default_ta_lam", "default_ties_k",
                                    "default_ties_lam", "ties_preset", "choose_per_seed", "select_seeds"]}
if select_seeds and choose_per_seed:
    raise TiesnbError("select_seeds chooses one setting for every seed: it needs choose_per_seed: false")
select = S.seeds[:select_seeds] if select_seeds else S.seeds  # the seeds whose validation chooses
full = S.config.mode == "full"  # Fisher and RegMean need the full encoder's statistics
PRE = S.family.pretrained_label  # the pretrained encoder's row: "probe" (heads fitted on the task) or "zero-shot"
grids = {"task_arithmetic": {"lam": ta_lams}, "ties": {"k": ties_ks, "lam": ties_lams},
         "dare": {"k": dare_ks, "lam": dare_lams}, "regmean": {"alpha": regmean_alphas}}
fixed = {"ties": {"preset": ties_preset}, "dare": {"seed": dare_seed}, "fisher": {"fishers": "auto"},
         "regmean": {"grams": "auto"}}
grid = [("average", {})]
grid += [("task_arithmetic", {"lam": lam}) for lam in ta_lams]
grid += [("ties", {"k": k, "lam": lam, "preset": ties_preset}) for k in ties_ks for lam in ties_lams]
grid += [("dare", {"k": k, "lam": lam, "seed": dare_seed}) for k in dare_ks for lam in dare_lams]
if full:
    grid += [("fisher", {"fishers": "auto"})] + [("regmean", {"grams": "auto", "alpha": a}) for a in regmean_alphas]
LABELS = {"average": "averaging", "task_arithmetic": "task arithmetic", "ties": "TIES", "dare": "DARE",
          "fisher": "Fisher", "regmean": "RegMean"}
NO_VAL_TA = f"task arithmetic (λ = {default_ta_lam:g}, no validation)"
NO_VAL_TIES = f"TIES (k = {default_ties_k:.0%}, λ = {default_ties_lam:g}, no validation)"

# %% [markdown]
# ## The validation sweep and the choices, seed by seed

# %%
sweep_rows, test_rows, val_rows, choices = [], [], [], {}
for Ss in S.each_seed():
    if Ss.seed not in select:
        continue
    for method, hp in progress.bar(grid, desc=f"validation sweep (seed {Ss.seed})"):
        sweep_rows += Ss.evaluate_merge(method, select_split, **hp)
sweep_all = pd.DataFrame(sweep_rows)


def picks_on(sw: pd.DataFrame, seed: int | None) -> list:
    """(method, label, hyperparameters, knobs at the edge of their grid) of each Table 1 row,
    chosen on the validation rows ``sw`` (one seed's, or every seed's: their mean)."""
    picks = [("average", "averaging", {}, [])]
    for method in ["task_arithmetic", "ties", "dare"] + (["regmean"] if full else []):
        hp, edges = analysis.choose(sw[sw.method == method], grids[method], LABELS[method], seed)
        picks.append((method, LABELS[method], {**hp, **fixed.get(method, {})}, edges))
    if full:
        picks.append(("fisher", "Fisher", fixed["fisher"], []))
    picks.append(("task_arithmetic", NO_VAL_TA, {"lam": default_ta_lam}, []))
    picks.append(("ties", NO_VAL_TIES, {"k": default_ties_k, "lam": default_ties_lam, "preset": ties_preset}, []))
    return picks


pooled = None if choose_per_seed else picks_on(sweep_all, None)
for Ss in S.each_seed():
    picks = picks_on(sweep_all[sweep_all.seed == Ss.seed], Ss.seed) if choose_per_seed else pooled
    choices[Ss.seed] = {label: {"method": m, "params": {k: v for k, v in hp.items() if k not in ("fishers", "grams")},
                                "edge": edges} for m, label, hp, edges in picks}
    test = Ss.evaluate_checkpoint(None, S.tasks, report_split, PRE)
    for t in progress.bar(S.tasks, desc=f"fine-tuned models on {report_split} (seed {Ss.seed})"):
        test += Ss.evaluate_checkpoint(t, [t], report_split, "fine-tuned")
    if S.has_multitask:  # (a study of existing task models may have none)
        test += Ss.evaluate_checkpoint(MULTITASK, S.tasks, report_split, "multitask")
    for method, label, hp, _ in progress.bar(picks, desc=f"chosen settings on {report_split} (seed {Ss.seed})"):
        test += Ss.evaluate_merge(method, report_split, label=label, **hp)
        if Ss.seed in select:
            val_rows += Ss.evaluate_merge(method, select_split, label=label, **hp)
    test_rows += test
write_json(S.results_path("choices.json"), {"parameters": params, "choices": {str(s): c for s, c in choices.items()}})
sweep = pd.DataFrame(sweep_rows)
test = pd.DataFrame(test_rows)
val = pd.DataFrame(val_rows)

# %% [markdown]
# ## Every setting tried, on validation (mean over tasks, per seed)

# %%
knobs = [c for c in ["k", "lam", "alpha"] if c in sweep]
per_seed = (sweep.groupby(["method", *knobs, "seed"], dropna=False, sort=False)["accuracy"].mean() * 100).reset_index()
wide = per_seed.set_index(["method", *knobs, "seed"])["accuracy"].unstack("seed")
wide = wide.loc[per_seed.set_index(["method", *knobs]).index.unique()]  # the sweep's order
wide.columns = [f"seed {s}" for s in wide.columns]
wide["mean"] = wide.mean(axis=1)
# each setting's interval (seeds and validation examples resampled; 2,000 draws: a sweep has many rows)
intervals = []
for key, part in sweep.groupby(["method", *knobs], dropna=False, sort=False):
    iv = stats.accuracy(part, S.tasks, select, draws=2000).scaled(100)
    intervals.append((iv.lo, iv.hi))
wide["lo"], wide["hi"] = zip(*intervals)
wide = wide.reset_index()
shown = wide.copy()  # every grid point told apart: k as a percentage, λ and α with all their digits
for knob, fmt in (("k", lambda v: f"{100 * v:g} %"), ("lam", lambda v: f"{v:g}"), ("alpha", lambda v: f"{v:g}")):
    if knob in shown:
        shown[knob] = [fmt(v) if pd.notna(v) else "" for v in shown[knob]]
S.save_table(wide, "merge_sweep", "merge_sweep", params, markdown=tables.plain_markdown(shown.rename(columns={"lam": "λ", "alpha": "α"})),
             caption=f"Mean accuracy (%) over the tasks on the {select_split} split for every setting tried, "
                     f"per training seed and averaged over seeds, with the 95 % interval of that mean (lo, hi).")
wide.sort_values("mean", ascending=False).head(10).round(2)

# %% [markdown]
# ## Table 1: test accuracy of each method at its chosen hyperparameters

# %%
def setting(label):
    per_seed_text = [analysis.setting_text(choices[s][label]["params"], choices[s][label]["edge"])
                     for s in S.seeds if label in choices[s]]
    distinct = list(dict.fromkeys(per_seed_text))
    return distinct[0] if len(distinct) == 1 else " / ".join(per_seed_text)

labels = [PRE, "fine-tuned"] + (["multitask"] if S.has_multitask else []) + list(choices[S.seeds[0]])
table = tables.summary(test, labels, S.tasks, S.seeds, settings={l: setting(l) for l in labels})
edge_rows = [l for l in labels if any(choices[s].get(l, {}).get("edge") for s in S.seeds)]
PAPER_ROW = {"fine-tuned": "fine-tuned", "multitask": "multitask", "averaging": "averaging",
             "task arithmetic": "task arithmetic", "TIES": "TIES", "Fisher": "Fisher", "RegMean": "RegMean",
             NO_VAL_TA: "task arithmetic (no validation)", NO_VAL_TIES: "TIES (no validation)"}
for col in S.family.paper_columns:
    table[f"paper {col}"] = [paper.table1(PAPER_ROW.get(m, ""), col) for m in table.method]
caption = (f"Table 1. Test accuracy (%) of every method merging the {len(S.tasks)} task models: each task's mean over "
           f"{len(S.seeds)} training seeds ({', '.join(map(str, S.seeds))}), and the average over tasks with its 95 % "
           f"interval (bootstrap over seeds and test examples) and the range of the per-seed averages. Hyperparameters "
           f"chosen on {select_split}: "
           + ("by each seed (one setting shown when every seed chose it" if choose_per_seed
              else "one setting per method, the best on the mean over "
                   + ((f"seed {select[0]}'s validation only" if len(select) == 1 else
                       f"the validation of the first {len(select)} seeds") if len(select) < len(S.seeds) else "the seeds")) +
           f"; '(edge)': at the edge of its grid). The paper's columns: its averages with a validation set, {paper.SECOND_HAND}; other models "
           f"and tasks, so only the ordering compares.")
S.save_table(table, "table1", "merge_sweep", params, caption=caption, markdown=tables.markdown(table))
S.save_data(tables.predictions(test, "table1"), "predictions/table1")
if edge_rows:
    print("choices at the edge of their grid:", ", ".join(edge_rows))
table.round(1)

# %% [markdown]
# ## Which differences are real
#
# Paired differences of the test average (points), TIES against each other merge, with the
# 95 % interval of the crossed bootstrap. "Best other method" is the merge (other than TIES) with
# the highest validation average at its chosen setting, chosen without looking at test.

# %%
others = ["averaging", "task arithmetic", "DARE"] + (["Fisher", "RegMean"] if full else [])
val_means = val[val.method.isin(others)].groupby("method")["accuracy"].mean()
best_other = val_means.idxmax()
pairs = [("TIES − task arithmetic", "TIES", "task arithmetic"), ("TIES − averaging", "TIES", "averaging")]
if full:
    pairs.append(("TIES − RegMean", "TIES", "RegMean"))
pairs.append((f"TIES − best other method ({best_other})", "TIES", best_other))
pairs += [("task arithmetic − averaging", "task arithmetic", "averaging"),
          ("TIES − task arithmetic, no validation", NO_VAL_TIES, NO_VAL_TA)]
if S.has_multitask:
    pairs.append(("TIES − multitask", "TIES", "multitask"))
comparisons = tables.compare(test, pairs, S.tasks, S.seeds)
contrib = tables.contributions(test, pairs, S.tasks, S.seeds)
comparisons["holds without any one task"] = comparisons.comparison.map(tables.leave_one_out(contrib))
S.save_table(comparisons, "comparisons", "merge_sweep", params, markdown=tables.markdown(comparisons),
             caption=f"Paired differences of the average {report_split} accuracy (points) over {len(S.seeds)} seeds, "
                     f"with two 95 % intervals: a crossed bootstrap over seeds and test examples (paired), and a "
                     f"seed-level paired t interval over the per-seed differences. A difference is separated only when "
                     f"both exclude 0 ('not separated (seed level)': the bootstrap does, the t interval does not); "
                     f"'holds without any one task': still separated, on the same side, with each task left out in "
                     f"turn (`contributions`). Per-seed differences in the last columns.")
S.save_table(contrib, "contributions", "merge_sweep", params, markdown=tables.markdown(contrib),
             caption=f"Where each difference of `comparisons` comes from: each task's own difference ({report_split}, "
                     f"points, mean over seeds), its contribution to the average difference (own / {len(S.tasks)}) and "
                     f"its share of the whole (%), and the difference averaged over the other tasks — that task left "
                     f"out — with both 95 % intervals (crossed bootstrap; seed-level t).")
comparisons.round(2)

# %% [markdown]
# ## Sensitivity to λ and k (validation)
#
# Left: task arithmetic against its λ (which scales the sum of the task vectors; the dotted line
# is λ = 1/n, where it equals averaging). Middle: TIES against its λ (which scales the disjoint
# mean), one line per k. Right: TIES against k, at the best λ for each k and at λ = 1. Lines are
# means over seeds, bands the range over seeds.

# %%
import seaborn as sns

acc = per_seed.rename(columns={"accuracy": "val"})
head_val = 100 * pd.DataFrame(S.at_seed(select[0]).evaluate_checkpoint(None, S.tasks, select_split, PRE))["accuracy"].mean()
fig, axes = plots.figure(width=7.2, height=2.4, ncols=3, sharey=True)
for ax in axes:
    plots.head_line(ax, head_val, PRE)
ta = acc[acc.method == "task_arithmetic"]
plots.seed_band(axes[0], ta, "lam", "val", color=plots.METHOD_COLORS["task arithmetic"])
axes[0].axvline(1 / len(S.tasks), color="grey", ls=":", lw=0.8)
axes[0].set(xscale="log", xlabel="task arithmetic λ (scales the sum)", ylabel=f"mean accuracy, {select_split} (%)",
            title="Task arithmetic")
plots.legend_below(axes[0], ncol=1)
plots.log_ticks(axes[0], ta_lams)
ties = acc[acc.method == "ties"]
shades = dict(zip(sorted(ties.k.unique()), sns.color_palette("Oranges", ties.k.nunique() + 2)[2:]))
for k, part in ties.groupby("k"):
    plots.seed_band(axes[1], part, "lam", "val", color=shades[k], label=f"k = {100 * k:g} %")
axes[1].set(xlabel="TIES λ (scales the disjoint mean)", title="TIES")
plots.legend_outside(axes[1])
best_k = ties.groupby(["k", "seed"])["val"].max().reset_index()
at_one = ties[ties.lam == 1.0]
plots.seed_band(axes[2], best_k.assign(k=best_k.k * 100), "k", "val", color=plots.METHOD_COLORS["TIES"], label="best λ per k")
plots.seed_band(axes[2], at_one.assign(k=at_one.k * 100), "k", "val", color=plots.METHOD_COLORS["TIES"], ls="--",
                marker="s", label="λ = 1")
axes[2].set(xlabel="k (% of each task vector kept)", title="TIES: trim level")
plots.legend_outside(axes[2])
fig.tight_layout()
sens = pd.concat([ta.assign(panel="task arithmetic λ"), ties.assign(panel="TIES λ"),
                  best_k.assign(panel="TIES k, best λ"), at_one.assign(panel="TIES k, λ = 1")])
S.save_figure(fig, "sensitivity", "merge_sweep", params, data=sens.rename(columns={"val": f"accuracy_{select_split}"}))
