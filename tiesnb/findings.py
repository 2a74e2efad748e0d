"""The README's findings, generated from the committed CSVs: numbers that cannot drift.

Every table and every number of the README's result sections is rendered here from a study's
``figures/`` CSVs and written between markers::

    <!-- findings:<study>:<block> -->
    ...generated...
    <!-- /findings -->

``<study>`` is ``default``, ``vision`` (``figures/`` and ``figures/vision/``) or ``all`` (the
``claims`` block: the paper's claims, study beside study). ``tiesnb findings`` rewrites the
blocks in place (``make study`` runs it after the default and the vision study); a test renders
them again from the committed CSVs and fails if the README differs.
Prose around the blocks may explain, but carries no number of its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from . import paths
from .errors import TiesnbError
from .io import atomic_path

MARK = re.compile(r"<!-- findings:(?P<study>[\w-]+):(?P<block>[\w-]+) -->\n.*?<!-- /findings -->", re.S)


def _num(v, digits: int = 1, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return f"{v:{'+' if sign else ''}.{digits}f}"


def _ci(mean, lo, hi, sign: bool = False) -> str:
    return f"{_num(mean, sign=sign)} [{_num(lo, sign=sign)}, {_num(hi, sign=sign)}]"


def _t(row) -> str:
    lo, hi = row.get("t_lo", np.nan), row.get("t_hi", np.nan)
    return "" if pd.isna(lo) else f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def _md(rows: list[list[str]], header: list[str], align: str) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


class Findings:
    """One study's CSVs, and the README blocks made of them."""

    def __init__(self, folder: Path):
        self.folder = folder

    def has(self, name: str) -> bool:
        return (self.folder / f"{name}.csv").exists()

    def csv(self, name: str) -> pd.DataFrame:
        path = self.folder / f"{name}.csv"
        if not path.exists():
            raise TiesnbError(f"{path} is missing: run the notebook that writes it (make fig-{name})")
        return pd.read_csv(path)

    def seeds(self, table: str = "comparisons") -> list[str]:
        return [c for c in self.csv(table).columns if c.startswith("seed ")]

    # ---------------------------------------------------------------- blocks
    def table1(self) -> str:
        t = self.csv("table1")
        # the paper's columns the family put beside its table (Family.paper_columns), IA3 aside: its
        # tasks are not the study's kind
        paper = [c for c in t.columns if c.startswith("paper ") and "IA3" not in c]
        rows = []
        for _, r in t.iterrows():
            name = f"**{r['method']}**" if r["method"] == "TIES" else r["method"]
            rows.append([name, "" if pd.isna(r.get("setting")) else str(r["setting"]),
                         _ci(r.average, r.average_lo, r.average_hi), f"{_num(r.seed_min)}–{_num(r.seed_max)}",
                         *(_num(r[c]) for c in paper)])
        return _md(rows, ["method", "chosen on validation", "test accuracy (%) [95 % CI]", "seeds (min–max)", *paper],
                   "llrr" + "r" * len(paper))

    def comparisons(self) -> str:
        c = self.csv("comparisons")
        rows = []
        for _, r in c.iterrows():
            per_seed = " / ".join(_num(r[s], sign=True) for s in self.seeds())
            loo = r.get("holds without any one task")
            rows.append([r.comparison, _ci(r.difference, r.lo, r.hi, sign=True), _t(r), per_seed, r.verdict,
                         "" if pd.isna(loo) else ("yes" if loo else "no")])
        return _md(rows, ["comparison", "difference (points) [95 % CI, bootstrap]", "seed-level t [95 % CI]",
                          "per seed", "verdict", "holds without any one task"], "lrrlll")

    def ablations(self) -> str:
        a = self.csv("ablations")
        has_base = "base" in a
        rows = []
        for _, r in a.iterrows():
            vs = "" if pd.isna(r.get("vs TIES")) else _ci(r["vs TIES"], r["vs TIES lo"], r["vs TIES hi"], sign=True)
            t = "" if pd.isna(r.get("vs TIES t_lo", np.nan)) else f"[{_num(r['vs TIES t_lo'], sign=True)}, {_num(r['vs TIES t_hi'], sign=True)}]"
            rows.append(([r.base] if has_base else []) + [r.method, str(r.setting), _ci(r.average, r.average_lo, r.average_hi),
                                                          vs, t, "" if pd.isna(r.verdict) else r.verdict])
        head = (["base"] if has_base else []) + ["variant", "chosen", "test [95 % CI]", "− TIES [95 % CI, bootstrap]",
                                                  "seed-level t", "verdict"]
        return _md(rows, head, ("l" if has_base else "") + "llrrrl")

    def gains(self) -> str:
        g = self.csv("gains")
        ind = self.csv("individual").set_index("method")
        pre = ind.index[0]
        rows = []
        for _, r in g.iterrows():
            task = r.task
            probe = ind.loc[pre, task] if task in ind.columns else ind.loc[pre, "average"]
            ft = ind.loc["fine-tuned", task] if task in ind.columns else ind.loc["fine-tuned", "average"]
            per_seed = [r[s] for s in self.seeds("gains")]
            rows.append([task, _num(probe), _num(ft), _ci(r.difference, r.lo, r.hi, sign=True), _t(r),
                         f"{_num(min(per_seed), sign=True)} / {_num(max(per_seed), sign=True)}", r.verdict])
        return _md(rows, ["task", pre, "fine-tuned", "gain [95 % CI, bootstrap]", "seed-level t",
                          "lowest / highest seed", "verdict"], "lrrrrrl")

    def recovered(self) -> str:
        """The share of the fine-tuning gain over the pretrained encoder's heads that each model
        keeps, (model − head) / (fine-tuned − head), per seed from the test predictions (averages
        over tasks), with its seed-level t interval, beside the paper's ViT-B/32 share."""
        from . import paper, stats

        pred = pd.read_csv(self.folder / "predictions" / "table1.csv", usecols=["label", "seed", "task", "accuracy"])
        avg = pred.groupby(["label", "seed"])["accuracy"].mean().unstack("seed") * 100  # label × seed
        order = list(dict.fromkeys(pred.label))
        head, rest = order[0], [m for m in order[1:] if m != "fine-tuned"]
        gain = avg.loc["fine-tuned"] - avg.loc[head]
        rows = []
        for m in rest:
            share = (avg.loc[m] - avg.loc[head]) / gain * 100
            iv = stats.t_interval(share.to_numpy())
            ref = paper.recovered(m.split(" (")[0] if "no validation" not in m else "")
            rows.append([m, _ci(iv.mean, iv.lo, iv.hi), f"{_num(share.min())} / {_num(share.max())}",
                         "" if ref is None else f"~{ref:.0f}"])
        return _md(rows, [f"model (the reference: {head}, {_num(avg.loc[head].mean())} %; fine-tuned "
                          f"{_num(avg.loc['fine-tuned'].mean())} %)", "share of the gain kept (%) [95 % CI, seed-level t]",
                          "lowest / highest seed", "paper ViT-B/32 (zero-shot ~48)"], "lrrr")

    def tasks(self) -> str:
        """The data table: each task's source (and fallbacks), license, size, and what fine-tuning gains."""
        from .data.assets import ASSETS
        from .data.images import IMAGE_TASKS
        from .data.tasks import TASKS

        ind = self.csv("individual").set_index("method")
        gains = self.csv("gains").set_index("task")
        pre = ind.index[0]
        rows = []
        for task in [c for c in ind.columns if c in TASKS or c in IMAGE_TASKS]:
            spec = TASKS[task] if task in TASKS else IMAGE_TASKS[task]
            asset = ASSETS[spec.asset]
            kind, size = (spec.kind, spec.n_examples) if task in TASKS else (spec.what, spec.images)
            first, *rest = asset.sources
            source = f"{first.registry}: `{first.package}` {first.version}" + (
                "; fallback " + ", ".join(f"`{s.package}` {s.version}" for s in rest) if rest else "; no same-content fallback")
            g = gains.loc[task]
            per_seed = [g[s] for s in self.seeds("gains")]
            rows.append([task, kind, source, first.license, f"{size:,}", str(len(spec.labels)),
                         _num(ind.loc[pre, task]), _num(ind.loc["fine-tuned", task]),
                         f"{_ci(g.difference, g.lo, g.hi, sign=True)}; t {_t(g)}", _num(min(per_seed), sign=True)])
        return _md(rows, ["task", "kind", "source", "license (as the package states it)", "examples", "classes", pre,
                          "fine-tuned", "gain [95 % CI]; seed-level t", "lowest seed's gain"], "lllllrrrrr")

    def contributions(self) -> str:
        c = self.csv("contributions")
        rows = []
        for name, part in c.groupby("comparison", sort=False):
            top = part.sort_values("share", ascending=False).head(2)
            # the left-out task that moves the difference most towards 0
            weakest = part.loc[(part["without_task"] * np.sign(part["without_task"].mean())).idxmin()]
            rows.append([name, ", ".join(f"{t} {_num(s, 0)} %" for t, s in zip(top.task, top.share)),
                         f"{_ci(weakest.without_task, weakest.lo, weakest.hi, sign=True)}, t {_t(weakest)} "
                         f"(without {weakest.task})", "yes" if part.holds_without.all() else "no"])
        return _md(rows, ["comparison", "largest shares of the difference", "weakest with one task left out",
                          "holds without any one task"], "llll")


# the paper's claims: (claim, table, row, the sign the paper reports: +1 the difference is positive)
CLAIMS = [
    ("TIES beats task arithmetic", "comparisons", "TIES − task arithmetic", +1),
    ("TIES beats averaging", "comparisons", "TIES − averaging", +1),
    ("TIES beats task arithmetic without validation", "comparisons", "TIES − task arithmetic, no validation", +1),
    ("TIES beats RegMean", "comparisons", "TIES − RegMean", +1),
    ("task arithmetic beats averaging", "comparisons", "task arithmetic − averaging", +1),
    ("the multitask model is above TIES", "comparisons", "TIES − multitask", -1),
    ("trimming matters (ablation)", "ablations", "without trim", -1),
    ("the sign election matters (ablation)", "ablations", "without elect", -1),
    ("the disjoint mean matters (ablation)", "ablations", "without disjoint mean", -1),
    ("scaling matters (ablation)", "ablations", "without scaling (λ = 1)", -1),
    ("a better sign helps (oracle)", "ablations", "TIES with the multitask model's signs (oracle)", +1),
]


def claim_cell(diff, lo, hi, t_lo, t_hi, expected: int, holds=None, why_no_t: str = "one seed") -> str:
    """``yes: +5.1 [+2.4, +8.5]`` when both intervals exclude 0 on the paper's side, ``no:`` on
    the other side, ``not separated:`` otherwise; ``(not without every task)`` when it does not
    survive leaving one task out."""
    boot_sep = lo > 0 or hi < 0
    t_sep = not pd.isna(t_lo) and (t_lo > 0 or t_hi < 0)
    same = (lo > 0 and (pd.isna(t_lo) or t_lo > 0)) or (hi < 0 and (pd.isna(t_hi) or t_hi < 0))
    if boot_sep and t_sep and same:
        word = "yes" if np.sign(diff) == expected else "no, the reverse"
    elif boot_sep and pd.isna(t_lo):
        word = ("yes" if np.sign(diff) == expected else "no, the reverse") + f" ({why_no_t})"
    else:
        word = "not separated"
    text = f"{word}: {_ci(diff, lo, hi, sign=True)}"
    if holds is False and word.startswith(("yes", "no")):
        text += ", not with every task left out"
    return text


def _claims_of(f: "Findings") -> dict[str, str]:
    comp = f.csv("comparisons").set_index("comparison")
    abl = f.csv("ablations") if f.has("ablations") else pd.DataFrame(columns=["method"])  # not run yet: blank cells
    why = "one seed" if "t_lo" in comp.columns else "bootstrap only: made before the seed-level test"
    bases = list(abl["base"].unique()) if "base" in abl else [None]
    out = {}
    for claim, table, row, sign in CLAIMS:
        if table == "comparisons":
            if row not in comp.index:
                continue
            r = comp.loc[row]
            holds = r.get("holds without any one task")
            out[claim] = claim_cell(r.difference, r.lo, r.hi, r.get("t_lo", np.nan), r.get("t_hi", np.nan), sign,
                                    None if pd.isna(holds) else bool(holds), why)
        else:
            cells = []
            for b in bases:
                part = abl if b is None else abl[abl.base == b]
                r = part[part.method == row]
                if r.empty:
                    continue
                r = r.iloc[0]
                cell = claim_cell(r["vs TIES"], r["vs TIES lo"], r["vs TIES hi"], r.get("vs TIES t_lo", np.nan),
                                  r.get("vs TIES t_hi", np.nan), sign, why_no_t=why)
                cells.append(cell if b is None else f"{b}: {cell}")
            out[claim] = "<br>".join(cells)
    return out


def _figure_claims(f: "Findings") -> dict[str, str]:
    """The claims read off the figures' data: more tasks, redundancy, sign conflicts (means over
    seeds, with the range over seeds)."""
    out = {}  # a figure not run yet leaves its cell blank
    if f.has("num_tasks"):
        nt = f.csv("num_tasks")
        top = nt[nt.n_models == nt.n_models.max()].groupby(["method", "seed"])["normalized"].mean().unstack("seed")
        best = top.mean(1).idxmax()
        ties = top.loc["TIES"]
        others = ", ".join(f"{m} {_num(top.loc[m].mean())}" for m in top.index if m != "TIES")
        out["TIES degrades least with more tasks (paper defaults)"] = (
            f"{'yes' if best == 'TIES' else f'no: {best} does'}: TIES keeps {_num(ties.mean())} % "
            f"(seeds {_num(ties.min())}–{_num(ties.max())}) at {nt.n_models.max()} tasks; {others}")
    if not f.has("redundancy") or not f.has("sign_conflicts"):
        return out
    red = f.csv("redundancy")
    per_seed = red.groupby(["k", "seed"])["accuracy"].mean().unstack("seed")
    if 20 in per_seed.index and 100 in per_seed.index:
        k20, full = per_seed.loc[20], per_seed.loc[100]
        gap = (k20 - full)
        probe = f" (k = 0: {_num(per_seed.loc[0].mean())})" if 0 in per_seed.index else ""
        out["task vectors are redundant (top 20 % keeps the gain)"] = (
            f"top 20 % {_num(k20.mean())} of {_num(full.mean())}{probe}; per seed {_num(gap.min(), sign=True)} to "
            f"{_num(gap.max(), sign=True)}")
    sc = f.csv("sign_conflicts")
    col = "% of parameters some model keeps"
    by = sc.groupby(["n_models", "seed"])[col].mean().unstack("seed")
    lo, hi = by.loc[by.index.min()], by.loc[by.index.max()]
    out["sign conflicts grow with the number of models"] = (
        f"{'yes' if hi.min() > lo.max() else 'not on every seed'}: {_num(lo.mean(), 0)} % → {_num(hi.mean(), 0)} % of the "
        f"kept entries ({by.index.min()} → {by.index.max()} models)")
    return out


FIGURE_CLAIMS = ["TIES degrades least with more tasks (paper defaults)",
                 "task vectors are redundant (top 20 % keeps the gain)", "sign conflicts grow with the number of models"]


def claims_table(studies: dict[str, "Findings"]) -> str:
    per = {name: {**_claims_of(f), **_figure_claims(f)} for name, f in studies.items()}
    rows = [[claim] + [per[name].get(claim, "") for name in studies] for claim in [c for c, *_ in CLAIMS] + FIGURE_CLAIMS]
    return _md(rows, ["the paper's claim"] + list(studies), "l" + "l" * len(studies))


BLOCKS: dict[str, Callable[[Findings], str]] = {
    "claims": lambda f: claims_table({NAMES.get(f.folder.name, f.folder.name): f}),
    "tasks": Findings.tasks,
    "table1": Findings.table1, "comparisons": Findings.comparisons, "ablations": Findings.ablations,
    "gains": Findings.gains, "contributions": Findings.contributions, "recovered": Findings.recovered}


NAMES = {"figures": "text (MiniLM)", "vision": "vision (EfficientNet-Lite0)"}  # a study's column, by its folder


def study_folder(study: str) -> Path:
    return paths.FIGURES if study == "default" else paths.FIGURES / study


def render(text: str) -> str:
    """``text`` with every findings block rendered again from its study's CSVs."""
    cache: dict[str, Findings] = {}

    def fill(m: re.Match) -> str:
        study, block = m.group("study"), m.group("block")
        if study == "all" and block == "claims":  # the studies side by side
            both = {NAMES[study_folder(x).name]: cache.setdefault(x, Findings(study_folder(x))) for x in ("default", "vision")}
            return f"<!-- findings:all:claims -->\n{claims_table(both)}\n<!-- /findings -->"
        if block not in BLOCKS:
            raise TiesnbError(f"unknown findings block {block!r}; known: {', '.join(BLOCKS)}")
        f = cache.setdefault(study, Findings(study_folder(study)))
        return f"<!-- findings:{study}:{block} -->\n{BLOCKS[block](f)}\n<!-- /findings -->"

    return MARK.sub(fill, text)


def write(readme: Path | None = None) -> Path:
    readme = readme or paths.ROOT / "README.md"
    new = render(readme.read_text())
    with atomic_path(readme) as tmp:
        tmp.write_text(new)
    return readme
