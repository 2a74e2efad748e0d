"""The study as a static site a reader can open: ``make report`` → ``runs/report/index.html``.

Built with MkDocs (pure Python, installed into ``.venv`` by ``make setup``; ``mkdocs-jupyter``
renders the executed notebooks, the Material theme gives navigation and search). The pages are
generated from the committed ``figures/`` — no study run is needed — into ``runs/report-src/``:

* ``index.md`` — the findings: the paper's claims, text beside vision, and both Table 1s, rendered
  from the CSVs by :mod:`tiesnb.findings` (the README's own blocks);
* one page per study — its tables (Table 1 with its intervals, the comparisons, ...) with a link
  to each CSV, every figure with its caption and its CSV, and each output's provenance: the
  notebook and parameters that made it, the seeds, the commit that last changed it, the pinned
  content fingerprints of the data it read;
* the executed notebooks of each study, where ``make study`` ran here (else a page saying so).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from . import paths
from .errors import TiesnbError
from .io import atomic_dir

STUDIES = {"default": ("The text study", "figures", "MiniLM-L6 fine-tuned on 8 text tasks, 5 seeds"),
           "vision": ("The vision study", "figures/vision", "EfficientNet-Lite0 fine-tuned on 6 image tasks, 3 seeds")}
# the tables of a study's page, in reading order, each with its heading
TABLES = [("table1", "Table 1"), ("comparisons", "Which differences are real"),
          ("contributions", "Where each difference comes from"), ("ablations", "Ablations"),
          ("individual", "The individual models"), ("gains", "What fine-tuning gains"),
          ("merge_sweep", "Every setting tried")]
# each figure's caption (the figure's own title says what is plotted; this says how to read it)
CAPTIONS = {
    "cross_task": "Every fine-tuned model on every task (validation accuracy, mean over seeds): the diagonal is "
                  "each model on its own task; off the diagonal, how much a task's model keeps or loses elsewhere.",
    "sensitivity": "Validation accuracy over each method's hyperparameter grid (mean over the selection seeds): "
                   "how sharply each merge depends on λ and k; the chosen setting is marked.",
    "redundancy": "Keeping only the top-k % largest entries of each task vector: accuracy against k. The paper's "
                  "claim is that a small top-k keeps most of the gain.",
    "sign_conflicts": "The share of kept entries whose sign disagrees between models, as more models are merged "
                      "(mean over seeds, with their spread).",
    "magnitudes": "The magnitude of the entries whose signs conflict against those that agree.",
    "num_tasks": "Normalized accuracy (merged over fine-tuned, per task) against the number of tasks merged, at the "
                 "paper's no-validation settings; each point the mean over balanced subsets and seeds.",
}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _fingerprints(study: str) -> list[tuple[str, str, str]]:
    """``(task, pinned content fingerprint, source)`` for every task the study reads."""
    from .data.images import IMAGE_TASKS, READERS
    from .data.tasks import TASKS
    from .study.config import study_settings

    rows = []
    for task in study_settings(study).get("tasks", []):
        if task in TASKS:
            rows.append((task, TASKS[task].fingerprint[:16], TASKS[task].asset))
        elif task in IMAGE_TASKS:
            source = READERS[IMAGE_TASKS[task].source]  # the pinned fingerprint is the source's
            rows.append((task, source.fingerprint[:16], source.asset))
    return rows


def _table_section(folder: Path, rel: str, name: str, title: str) -> str:
    md = (folder / f"{name}.md").read_text().strip()
    caption, _, table = md.partition("\n\n") if not md.startswith("|") else ("", "", md)
    out = [f"## {title}", ""]
    if caption:
        out += [f"*{caption}*", ""]
    out += [table or caption, "", f"[{name}.csv]({rel}/{name}.csv)" + _provenance_line(folder, rel, name), ""]
    return "\n".join(out)


def _provenance_line(folder: Path, rel: str, name: str) -> str:
    """`` · made by … · seeds … · last changed in commit … · parameters`` for one output."""
    path = folder / "provenance" / f"{name}.json"
    if not path.exists():
        return ""
    prov = json.loads(path.read_text())
    commit = _git("log", "-1", "--format=%h %cs", "--", str(folder / f"{name}.csv"))
    study = prov.get("study", {})
    seeds = study.get("seeds") if isinstance(study, dict) else None
    bits = [f"made by `notebooks/{prov.get('notebook', '?')}.py`"]
    if seeds:
        bits.append(f"seeds {', '.join(map(str, seeds))}")
    if commit:
        bits.append(f"last changed in commit {commit}")
    bits.append(f"[parameters]({rel}/provenance/{name}.json)")
    return " · " + " · ".join(bits)


def _study_page(study: str, notebooks: list[str]) -> str:
    title, rel_folder, about = STUDIES[study]
    folder = paths.ROOT / rel_folder
    rel = f"data/{study}"
    out = [f"# {title}", "", f"{about}. Every number below is read from `{rel_folder}/` (the committed CSVs); "
           f"each table and figure links to its CSV and to the parameters that made it.", ""]
    for name, heading in TABLES:
        if (folder / f"{name}.md").exists():
            out.append(_table_section(folder, rel, name, heading))
    figures = sorted(p.stem for p in folder.glob("*.png"))
    if figures:
        out += ["## Figures", ""]
    for name in figures:
        out += [f"### {name.replace('_', ' ')}", "", f"![{name}]({rel}/{name}.png)", ""]
        if name in CAPTIONS:
            out += [f"*{CAPTIONS[name]}*", ""]
        out += [f"[{name}.csv]({rel}/{name}.csv) · [{name}.pdf]({rel}/{name}.pdf)"
                + _provenance_line(folder, rel, name), ""]
    out += ["## The data it read", "", "Each task's pinned content fingerprint (SHA-256 over its examples, checked on "
            "every read) and the asset it comes from (`tiesnb data check` asks the registries for each):", "",
            "| task | fingerprint | asset |", "|---|---|---|"]
    out += [f"| {t} | `{fp}` | {a} |" for t, fp, a in _fingerprints(study)] + [""]
    out += ["## The executed notebooks", ""]
    if notebooks:
        out += [f"* [{n}](notebooks/{study}/{n}.ipynb)" for n in notebooks]
    else:
        out += [f"Not executed here: `make study STUDY={study}` runs them, then `make report` includes them."]
    out += _steps_section(study)
    return "\n".join(out) + "\n"


def _steps_section(study: str) -> list[str]:
    """Each workflow step's wall time and peak memory as Snakemake measured them (its
    ``benchmark:`` files, runs/<study>/benchmarks/), where the study ran here."""
    rows = []
    for tsv in sorted((paths.RUNS / study / "benchmarks").glob("*.tsv")):
        lines = tsv.read_text().splitlines()
        if len(lines) < 2:
            continue
        rec = dict(zip(lines[0].split("\t"), lines[-1].split("\t")))
        try:
            rows.append((tsv.stem, float(rec["s"]), float(rec["max_rss"]), float(rec.get("cpu_time") or "nan")))
        except (KeyError, ValueError):
            continue
    if not rows:
        return []
    out = ["", "## The steps: time and memory", "",
           "Snakemake's measurement of the last run of each step here (`runs/" + study + "/benchmarks/`): "
           "wall time, CPU time, and the peak resident memory of the step's processes.", "",
           "| step | wall (s) | CPU (s) | peak RSS (MB) |", "|---|---:|---:|---:|"]
    out += [f"| {name} | {s:.0f} | {cpu:.0f} | {rss:.0f} |" for name, s, rss, cpu in rows]
    return out


def _index_page() -> str:
    from .findings import render

    head = _git("rev-parse", "--short", "HEAD")
    text = ["# tiesnb: TIES-Merging, rerun", "",
            "A reproducible study of TIES-Merging (Yadav et al., NeurIPS 2023) on a 2-core CPU: the paper's claims "
            "tested with seed-level intervals and with every task left out in turn. Each cell says whether the "
            "claim holds here (both 95 % intervals exclude 0), with the difference in points and its bootstrap "
            "interval.", "", "## The paper's claims, text beside vision", "",
            "<!-- findings:all:claims -->\n<!-- /findings -->", "",
            "## Table 1, text study", "", "<!-- findings:default:table1 -->\n<!-- /findings -->", "",
            "## Table 1, vision study", "", "<!-- findings:vision:table1 -->\n<!-- /findings -->", "",
            "Pages: [the text study](default.md) · [the vision study](vision.md)."
            + (f" Built from commit `{head}`." if head else ""), ""]
    return render("\n".join(text))


def build(out: Path | None = None, quiet: bool = True) -> Path:
    """Write the site's sources to ``runs/report-src`` and build it into ``out`` (default
    ``runs/report``); returns the entry page."""
    out = Path(out or paths.RUNS / "report")
    src = paths.RUNS / "report-src"
    shutil.rmtree(src, ignore_errors=True)
    docs = src / "docs"
    docs.mkdir(parents=True)
    nav = [{"Findings": "index.md"}]
    for study, (title, rel_folder, _) in STUDIES.items():
        folder = paths.ROOT / rel_folder
        if not (folder / "table1.csv").exists():
            continue
        data = docs / "data" / study
        shutil.copytree(folder, data, ignore=shutil.ignore_patterns("vision", "archive", "predictions"))
        notebooks = []
        run_nbs = paths.RUNS / study / "notebooks"
        from .pipeline import NOTEBOOKS
        from .study.config import study_settings

        runs = set(NOTEBOOKS) | {f"train-{t}" for t in study_settings(study).get("tasks", []) + ["multitask"]}
        for nb in sorted(run_nbs.glob("*.ipynb")) if run_nbs.exists() else []:
            if nb.stem not in runs:  # (a failed run, or a run of tasks the study no longer has)
                continue
            (docs / "notebooks" / study).mkdir(parents=True, exist_ok=True)
            shutil.copy(nb, docs / "notebooks" / study / nb.name)
            notebooks.append(nb.stem)
        (docs / f"{study}.md").write_text(_study_page(study, notebooks))
        entry = {title: f"{study}.md"}
        nav.append(entry if not notebooks else
                   {title: [{"Results": f"{study}.md"}] + [{n: f"notebooks/{study}/{n}.ipynb"} for n in notebooks]})
    (docs / "index.md").write_text(_index_page())
    (docs / "wide.css").write_text(".md-grid { max-width: 92rem; }\n")  # Table 1 fits without scrolling
    config = {"site_name": "tiesnb — TIES-Merging, rerun", "docs_dir": str(docs), "site_dir": "",
              "use_directory_urls": False, "theme": {"name": "material", "font": False, "features": ["navigation.sections"]},
              "plugins": ["search", {"mkdocs-jupyter": {"include_source": False, "ignore_h1_titles": True}}],
              "markdown_extensions": ["tables", "attr_list"], "extra_css": ["wide.css"], "nav": nav}
    with atomic_dir(out, overwrite=True) as tmp:
        config["site_dir"] = str(tmp)
        (src / "mkdocs.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
        r = subprocess.run([str(Path(__import__("sys").executable).with_name("mkdocs")), "build", "-q" if quiet else "-v",
                            "-f", str(src / "mkdocs.yml")], capture_output=True, text=True)
        if r.returncode != 0:
            last = ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1]
            raise TiesnbError(f"mkdocs build of {src / 'mkdocs.yml'} failed: {last}")
    return out / "index.html"
