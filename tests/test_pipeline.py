"""The notebooks and their pipeline: parameter cells, strict parameter files, and every notebook
executed by papermill on the smoke study, end to end, with the expected figures and tables."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tiesnb import paths, pipeline, workflow
from tiesnb.errors import TiesnbError
from tiesnb.merge import merge
from tiesnb.study import Study, StudyConfig

NOTEBOOK_FILES = sorted(paths.NOTEBOOKS.glob("*.py"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_each_notebook_has_one_typed_parameters_cell(path):
    params = pipeline.parameters_of(path)
    assert params["study"] == (str, "default")
    assert path.stem in pipeline.NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter(path, caplog):
    """papermill parses the parameters cell line by line (``papermill --help-notebook``, and the
    warnings of a run): a line it cannot read (an ``=`` in the comment did it) is reported as an
    unknown parameter on every run."""
    import jupytext
    from papermill.translators import PythonTranslator

    cell = next(c for c in jupytext.read(path).cells if "parameters" in c.metadata.get("tags", []))
    found = {p.name for p in PythonTranslator.inspect(cell)}
    assert found == set(pipeline.parameters_of(path)), caplog.text


def test_every_parameter_file_matches_its_notebook():
    studies = sorted(str(p.parent.relative_to(paths.PARAMS)) for p in paths.PARAMS.rglob("study.yaml"))
    assert {"default", "smoke", "paper/t5-large", "paper/ia3-t0"} <= set(studies)
    for study in studies:
        for f in sorted((paths.PARAMS / study).glob("*.yaml")):
            if f.stem == "study":
                Study.load(study)
                continue
            pipeline.resolve(f.stem.split("-")[0], f)  # raises on a bad key or type


def test_a_study_can_inherit_another(tmp_path, monkeypatch):
    from tiesnb.study import params_file

    quick = Study.load("quick")
    default = Study.load("default")
    assert quick.seeds == [0] and default.seeds == [0, 1, 2, 3, 4]
    assert quick.tasks == default.tasks and quick.config.n_val == default.config.n_val
    assert quick.figures_dir != default.figures_dir  # never over the committed figures
    assert params_file("quick", "merge_sweep") == paths.PARAMS / "quick" / "merge_sweep.yaml"
    assert params_file("quick", "train-trec") == paths.PARAMS / "default" / "train-trec.yaml"
    frozen = Study.load("ab-frozen")  # the embeddings A/B
    assert frozen.settings.train_embeddings is False and default.settings.train_embeddings is True
    assert frozen.settings.max_len == default.settings.max_len == 64  # the section merges key by key
    monkeypatch.setattr(paths, "PARAMS", tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "study.yaml").write_text("name: a\ninherit: nope\n")
    with pytest.raises(TiesnbError, match="inherit names study 'nope'"):
        Study.load("a")


def test_a_misspelled_or_mistyped_parameter_stops_the_run(tmp_path):
    bad = tmp_path / "merge_sweep.yaml"
    bad.write_text("ties_kz: [0.2]\n")
    with pytest.raises(TiesnbError, match="unknown parameter 'ties_kz'; valid names: study, select_split, .*ties_ks"):
        pipeline.resolve("merge_sweep", bad)
    bad.write_text("ties_ks: 0.2\n")
    with pytest.raises(TiesnbError, match="parameter 'ties_ks' must be list\\[float\\], got 0.2"):
        pipeline.resolve("merge_sweep", bad)
    bad.write_text("lams: [1.0, 'x']\n")
    with pytest.raises(TiesnbError, match="'lams' must be list\\[float\\]"):
        pipeline.resolve("ablations", bad)


def test_study_yaml_is_strict(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "PARAMS", tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "study.yaml").write_text("name: x\ntasks: [trec]\nstepz: 3\n")
    with pytest.raises(TiesnbError, match="unknown parameter 'stepz'; valid names: name, tasks"):
        Study.load("x")
    (tmp_path / "x" / "study.yaml").write_text("name: x\ntasks: [trec]\nautocast: off\n")  # YAML reads off as false
    with pytest.raises(TiesnbError, match="'autocast' must be str, got False"):
        Study.load("x")
    # what a step asks of a machine (tiesnb/workflow.py) is checked when the study loads
    (tmp_path / "x" / "study.yaml").write_text("name: x\ntasks: [trec]\nresources: {train: {gpu: 1}}\n")
    with pytest.raises(TiesnbError, match="study x: resources.train: unknown parameter 'gpu'"):
        Study.load("x")
    with pytest.raises(TiesnbError, match="no study 'y'"):
        Study.load("y")


def test_owner_of_each_output():
    assert pipeline.owner("table1.md") == "merge_sweep"
    assert pipeline.owner("figures/sign_conflicts.png") == "interference"
    with pytest.raises(TiesnbError, match="no notebook writes 'table9'"):
        pipeline.owner("table9")


def test_lambda_sweep_reuse_is_exact(monkeypatch):
    """Study.merge computes τ_m once and scales it; it must equal a direct merge bit for bit."""
    from conftest import make_models

    base, models = make_models(3, seed=4)
    base["embeddings.w"] = torch.randn(5)
    for m in models:
        m["embeddings.w"] = base["embeddings.w"].clone()
    S = Study(StudyConfig(name="t", tasks=["a", "b", "c"]))
    S.models._states = dict(zip("abc", models))
    monkeypatch.setattr(S.merger, "base", lambda: base)
    for method, hp in [("ties", {"k": 0.3}), ("task_arithmetic", {}), ("dare", {"k": 0.5, "seed": 1})]:
        for lam in (0.4, 1.3):
            got = S.merge(method, lam=lam, **hp)
            expected = merge(method, base, models, exclude=["embeddings.*"], lam=lam, **hp)
            assert all(torch.equal(got[n], expected[n]) for n in expected), (method, lam)


# ---------------------------------------------------------------------------------------------
# the whole pipeline on the smoke study


def test_every_notebook_ran_and_recorded_its_parameters(smoke_run):
    for run in ["probe", "train-bbc_news", "evaluate", "merge_sweep", "interference", "ablations", "num_tasks"]:
        record = json.loads((smoke_run / "notebooks" / f"{run}.params.json").read_text())
        assert record["parameters"]["study"] == "smoke"
        assert (smoke_run / "notebooks" / f"{run}.ipynb").exists()
    record = json.loads((smoke_run / "notebooks" / "train-multitask.params.json").read_text())
    assert record["parameters"]["task"] == "multitask"
    for seed in (0, 1):  # every model once per training seed
        for task in ("bbc_news", "rotten_tomatoes", "multitask"):
            ck = smoke_run / f"seed-{seed}" / "checkpoints" / task
            assert (ck / "model.safetensors").exists()
            assert json.loads((ck / "params.json").read_text())["resolved"]["train"]["seed"] == seed


def test_every_figure_and_table_is_written_with_its_data(smoke_run):
    figures = smoke_run / "figures"
    for name in (o for outs in pipeline.OUTPUTS.values() for o in outs):
        exts = ("csv", "md") if name in pipeline.TABLES else ("png", "pdf", "csv")  # every figure has its CSV
        for ext in exts:
            assert (figures / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
        if name not in pipeline.TABLES:
            data = pd.read_csv(figures / f"{name}.csv")
            assert len(data) > 0 and "seed" in data.columns, name  # the plotted numbers, per seed
        prov = json.loads((figures / "provenance" / f"{name}.json").read_text())
        assert prov["study"]["name"] == "smoke" and prov["notebook"] == pipeline.owner(name)
        if (figures / f"{name}.md").exists():
            assert "nan" not in (figures / f"{name}.md").read_text()  # blanks, never nan
    assert not list(figures.rglob(".*tmp*"))  # no half-written outputs


def test_tables_hold_the_expected_rows(smoke_run):
    t1 = pd.read_csv(smoke_run / "figures" / "table1.csv")
    methods = list(t1["method"])
    for m in ["probe", "fine-tuned", "multitask", "averaging", "task arithmetic", "TIES", "DARE", "Fisher", "RegMean"]:
        assert m in methods, m
    assert any(m.startswith("TIES (k = 20%") for m in methods) and any("no validation" in m for m in methods)
    assert set(t1.columns) >= {"bbc_news", "rotten_tomatoes", "average", "average_lo", "average_hi", "paper T5-base"}
    assert ((t1["average"] >= 0) & (t1["average"] <= 100)).all()
    assert (t1["average_lo"] <= t1["average"]).all() and (t1["average"] <= t1["average_hi"]).all()
    # the average is the mean of the per-task means (each the mean over seeds)
    assert t1["average"].to_numpy() == pytest.approx(t1[["bbc_news", "rotten_tomatoes"]].mean(axis=1).to_numpy())
    comp = pd.read_csv(smoke_run / "figures" / "comparisons.csv")
    assert list(comp["comparison"][:3]) == ["TIES − task arithmetic", "TIES − averaging", "TIES − RegMean"]
    assert comp["comparison"].str.startswith("TIES − best other method").any()
    assert ((comp["lo"] <= comp["difference"]) & (comp["difference"] <= comp["hi"])).all()
    # separated: the bootstrap and the seed-level t interval both exclude 0, on one side
    both = ((comp["lo"] > 0) & (comp["t_lo"] > 0)) | ((comp["hi"] < 0) & (comp["t_hi"] < 0))
    assert (comp["separated"] == both).all()
    # the seed-level t interval, computed here from the per-seed differences (2 seeds: t(0.975, 1) = 12.706)
    d = comp[["seed 0", "seed 1"]].to_numpy()
    half = 12.7062047 * d.std(axis=1, ddof=1) / np.sqrt(2)
    close = dict(rel=1e-4, abs=1e-3)  # the CSV keeps 6 significant digits
    assert comp["t_lo"].to_numpy() == pytest.approx(d.mean(1) - half, **close)
    assert comp["t_hi"].to_numpy() == pytest.approx(d.mean(1) + half, **close)
    # where each difference comes from: the tasks' contributions add up to it; with two tasks, the
    # difference without one task is the other task's own difference
    contrib = pd.read_csv(smoke_run / "figures" / "contributions.csv")
    assert len(contrib) == 2 * len(comp)
    for name, part in contrib.groupby("comparison"):
        total = comp.set_index("comparison").loc[name, "difference"]
        assert part["contribution"].sum() == pytest.approx(total, **close)
        assert part["without_task"].to_numpy() == pytest.approx(part["task_difference"].to_numpy()[::-1], **close)
        assert comp.set_index("comparison").loc[name, "holds without any one task"] == bool(part["holds_without"].all())
    abl = pd.read_csv(smoke_run / "figures" / "ablations.csv")
    rows = ["TIES", "without trim", "without elect", "without disjoint mean", "without scaling (λ = 1)",
            "TIES with the multitask model's signs (oracle)"]
    assert list(abl["method"]) == rows * 2 and list(abl["base"].unique()) == ["tuned k", "k = 20%"]
    assert {"average (val)", "vs TIES", "vs TIES t_lo", "paper T5-base (val)"} <= set(abl.columns)
    # the ablation's first TIES is Table 1's tuned TIES; the second is TIES at k = 20 %
    assert abl.loc[0, "average"] == pytest.approx(t1.set_index("method").loc["TIES", "average"])
    assert abl.loc[6, "setting"].startswith("k = 20%")
    ind = pd.read_csv(smoke_run / "figures" / "individual.csv")
    assert list(ind["method"]) == ["probe", "fine-tuned", "multitask"]
    sweep = pd.read_csv(smoke_run / "figures" / "merge_sweep.csv")
    assert len(sweep) == 1 + 2 + 2 + 1 + 1 + 1  # average, TA λ×2, TIES λ×2, DARE, Fisher, RegMean
    assert {"seed 0", "seed 1", "mean"} <= set(sweep.columns)
    # choose_per_seed: false — every seed gets the one setting with the best validation mean over seeds
    chosen = json.loads((smoke_run / "results" / "choices.json").read_text())["choices"]
    ties = sweep[sweep.method == "ties"].reset_index(drop=True)
    top = ties.loc[ties["mean"].idxmax()]
    for s in ("0", "1"):
        assert chosen[s]["TIES"]["params"]["lam"] == pytest.approx(top["lam"])
        assert chosen[s]["TIES"]["params"]["k"] == pytest.approx(top["k"])


def test_per_example_predictions_are_saved_and_agree_with_the_tables(smoke_run):
    pred = pd.read_csv(smoke_run / "figures" / "predictions" / "table1.csv", dtype={"predicted": str, "correct": str})
    assert set(pred["seed"]) == {0, 1}
    for _, r in pred.iterrows():
        assert len(r["predicted"]) == len(r["correct"]) == r["n"]
        assert r["correct"].count("1") / r["n"] == pytest.approx(r["accuracy"])
    t1 = pd.read_csv(smoke_run / "figures" / "table1.csv").set_index("method")
    ties = pred[pred.label == "TIES"].groupby("task")["accuracy"].mean() * 100
    assert ties["bbc_news"] == pytest.approx(t1.loc["TIES", "bbc_news"])


def test_a_rerun_reuses_the_cached_results(smoke_run):
    cache = smoke_run / "cache" / "evaluations"
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")}
    record = json.loads(next(iter(before)).read_text())
    assert all({"accuracy", "pred", "correct2"} <= set(v) for v in record["tasks"].values())  # per example
    # at the thread count the workflow gave the step (on a CPU it is part of the evaluation key)
    threads = next(r for r in workflow.plan("smoke") if r.name == "ablations").resources.threads()
    env = {**os.environ, "TIESNB_RUNS": str(smoke_run.parent), "PYTHONWARNINGS": "ignore", "TIESNB_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", "ablations", "--study", "smoke", "--quiet"],
                       env=env, capture_output=True, text=True, cwd=paths.ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.json")} == before  # nothing evaluated again


def test_a_failing_notebook_keeps_its_output_and_leaves_no_executed_notebook(smoke_run, tmp_path):
    bad = tmp_path / "train-nope.yaml"
    bad.write_text("task: nope\n")
    env = {**os.environ, "TIESNB_RUNS": str(smoke_run.parent), "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", "train", "--study", "smoke", "--quiet", "--params", str(bad)],
                       env=env, capture_output=True, text=True, cwd=paths.ROOT)
    assert r.returncode == 2
    assert "notebook train (train-nope) failed" in r.stderr and "TiesnbError" in r.stderr
    assert (smoke_run / "notebooks" / "train-nope.failed.ipynb").exists()
    assert not (smoke_run / "notebooks" / "train-nope.ipynb").exists()  # the workflow's output: absent
    assert not (smoke_run / "notebooks" / "train-nope.params.json").exists()


def test_the_lab_opens_and_saves_the_sources_unchanged(tmp_path):
    """JupyterLab's view of a notebook (jupytext's contents manager with the committed
    jupytext.toml): every .py source opens as a notebook, with its parameters cell tagged, and
    saving it writes the same bytes; no .ipynb appears beside it."""
    import shutil

    from jupyter_server.services.contents.largefilemanager import LargeFileManager
    from jupytext.sync_contentsmanager import build_sync_jupytext_contents_manager_class

    shutil.copytree(paths.NOTEBOOKS, tmp_path / "notebooks")
    shutil.copy(paths.ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    cm = build_sync_jupytext_contents_manager_class(LargeFileManager)(root_dir=str(tmp_path))
    sources = sorted((tmp_path / "notebooks").glob("*.py"))
    assert len(sources) == len(pipeline.NOTEBOOKS)
    for path in sources:
        before = path.read_bytes()
        model = cm.get(f"notebooks/{path.name}", type="notebook", content=True)
        assert model["type"] == "notebook"
        assert sum("parameters" in c["metadata"].get("tags", []) for c in model["content"]["cells"]) == 1, path.name
        cm.save(model, f"notebooks/{path.name}")
        assert path.read_bytes() == before, path.name
    assert sorted(p.name for p in (tmp_path / "notebooks").iterdir()) == [p.name for p in sources]


def test_notebook_runs_talk_to_their_kernel_over_ipc():
    """No TCP port, so no "running over TCP without encryption" warning to hide."""
    km = pipeline._ipc_kernel_manager()()
    assert km.transport == "ipc" and os.path.isdir(os.path.dirname(km.ip))
    km.cleanup_resources()
    assert not os.path.exists(os.path.dirname(km.ip))
