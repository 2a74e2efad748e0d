"""The README's findings, generated from the committed CSVs: numbers that cannot drift.

Every table and every number of the README's result sections is rendered here from a study's
``figures/`` CSVs and written between markers::

    <!-- findings:<study>:<block> -->
    ...generated...
    <!-- /findings -->

``tiesnb findings`` rewrites the blocks in place (``make study`` runs it after the default and the
vision study); a test renders them again from the committed CSVs and fails if the README differs.
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
        if not (folder / "table1.csv").exists():
            raise TiesnbError(f"{folder} has no table1.csv: run the study first")

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.folder / f"{name}.csv")

    @property
    def seeds(self) -> list[str]:
        return [c for c in self.csv("comparisons").columns if c.startswith("seed ")]

    # ---------------------------------------------------------------- blocks
    def table1(self) -> str:
        t = self.csv("table1")
        rows = []
        for _, r in t.iterrows():
            name = f"**{r['method']}**" if r["method"] == "TIES" else r["method"]
            rows.append([name, "" if pd.isna(r.get("setting")) else str(r["setting"]),
                         _ci(r.average, r.average_lo, r.average_hi), f"{_num(r.seed_min)}–{_num(r.seed_max)}",
                         _num(r.get("paper T5-base")), _num(r.get("paper ViT-B/32"))])
        return _md(rows, ["method", "chosen on validation", "test accuracy (%) [95 % CI]", "seeds (min–max)",
                          "paper T5-base", "paper ViT-B/32"], "llrrrr")

    def comparisons(self) -> str:
        c = self.csv("comparisons")
        rows = []
        for _, r in c.iterrows():
            per_seed = " / ".join(_num(r[s], sign=True) for s in self.seeds)
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
            per_seed = [r[s] for s in self.seeds if s in r]
            rows.append([task, _num(probe), _num(ft), _ci(r.difference, r.lo, r.hi, sign=True), _t(r),
                         f"{_num(min(per_seed), sign=True)} / {_num(max(per_seed), sign=True)}", r.verdict])
        return _md(rows, ["task", pre, "fine-tuned", "gain [95 % CI, bootstrap]", "seed-level t",
                          "lowest / highest seed", "verdict"], "lrrrrrl")

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


def _tasks(self) -> str:
    """The data table: each task's source (and fallbacks), license, size, and what fine-tuning gains."""
    from .data.assets import ASSETS
    from .data.tasks import TASKS

    ind = self.csv("individual").set_index("method")
    gains = self.csv("gains").set_index("task")
    pre = ind.index[0]
    rows = []
    for task in [c for c in ind.columns if c in TASKS]:
        spec, asset = TASKS[task], ASSETS[TASKS[task].asset]
        first, *rest = asset.sources
        source = f"{first.registry}: `{first.package}` {first.version}" + (
            "; fallback " + ", ".join(f"`{s.package}` {s.version}" for s in rest) if rest else "; no same-content fallback")
        g = gains.loc[task]
        per_seed = [g[s] for s in self.seeds if s in g]
        rows.append([task, spec.kind, source, first.license, f"{spec.n_examples:,}", str(len(spec.labels)),
                     _num(ind.loc[pre, task]), _num(ind.loc["fine-tuned", task]),
                     f"{_ci(g.difference, g.lo, g.hi, sign=True)}; t {_t(g)}", _num(min(per_seed), sign=True)])
    return _md(rows, ["task", "kind", "source", "license (as the package states it)", "examples", "classes", pre,
                      "fine-tuned", "gain [95 % CI]; seed-level t", "lowest seed's gain"], "lllllrrrrr")


BLOCKS: dict[str, Callable[[Findings], str]] = {
    "tasks": _tasks,
    "table1": Findings.table1, "comparisons": Findings.comparisons, "ablations": Findings.ablations,
    "gains": Findings.gains, "contributions": Findings.contributions}


def study_folder(study: str) -> Path:
    return paths.FIGURES if study == "default" else paths.FIGURES / study


def render(text: str) -> str:
    """``text`` with every findings block rendered again from its study's CSVs."""
    cache: dict[str, Findings] = {}

    def fill(m: re.Match) -> str:
        study, block = m.group("study"), m.group("block")
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
