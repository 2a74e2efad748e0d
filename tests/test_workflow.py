"""The study's workflow (tiesnb/workflow.py, workflow/Snakefile): its plan, the resources each
step asks for, a rerun that does nothing, and the smoke study through a real Slurm cluster
(.ci/slurm-up) with outputs equal to the local run's, bit for bit."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tiesnb import paths, workflow
from tiesnb.errors import TiesnbError

from conftest import run_workflow


def test_the_plan_follows_the_parameter_files():
    runs = {r.name: r for r in workflow.plan("smoke")}
    trains = sorted(p.stem for p in (paths.PARAMS / "smoke").glob("train-*.yaml"))
    assert list(runs)[:2] == ["probe", "train-multitask"]  # the longest training first
    assert set(runs) == {"probe", *trains, "evaluate", "merge_sweep", "interference", "num_tasks", "ablations"}
    assert runs["train-bbc_news"].notebook == "train" and runs["train-bbc_news"].after == ("probe",)
    assert set(runs["merge_sweep"].after) == set(trains)
    assert runs["ablations"].after == ("merge_sweep",)
    # a derived study without train files trains its parent's models; its own notebook files win
    quick = {r.name: r for r in workflow.plan("quick")}
    assert {n for n in quick if n.startswith("train-")} == {p.stem for p in (paths.PARAMS / "default").glob("train-*.yaml")}
    assert quick["merge_sweep"].params == paths.PARAMS / "quick" / "merge_sweep.yaml"
    assert quick["train-trec"].params == paths.PARAMS / "default" / "train-trec.yaml"


def test_resources_layer_over_the_family_defaults():
    family = {"default": {"cpus": 8, "gpus": 1, "mem_gb": 64, "hours": 12}, "train": {"hours": 24}}
    study = {"default": {"mem_gb": 80}, "merge_sweep": {"gpus": 0, "hours": 3}}
    train = workflow.resources("s", "train", study, family)
    assert (train.cpus, train.gpus, train.mem_gb, train.hours) == (8, 1, 80, 24)
    sweep = workflow.resources("s", "merge_sweep", study, family)
    assert (sweep.gpus, sweep.mem_gb, sweep.hours) == (0, 80, 3)
    assert sweep.snakemake() == {"mem_mb": 80 * 1024, "runtime": 180, "gpu": 0}
    assert workflow.resources("s", "probe", {}, {}).threads() == max(1, os.cpu_count() // 2)  # cpus 0: half
    with pytest.raises(TiesnbError, match="resources names 'trian'; valid: default, probe, train"):
        workflow.resources("s", "train", {"trian": {"hours": 1}})
    with pytest.raises(TiesnbError, match="unknown parameter 'memory'; valid names: cpus, gpus, mem_gb, hours"):
        workflow.resources("s", "train", {"train": {"memory": 3}})
    with pytest.raises(TiesnbError, match="mem_gb, hours > 0"):
        workflow.resources("s", "train", {"train": {"hours": 0}})


def test_each_family_and_study_declares_what_a_step_needs():
    t5 = {r.name: r.resources for r in workflow.plan("paper/t5-base")}
    assert t5["train-paws"].gpus == 1 and t5["train-paws"].hours >= t5["evaluate"].hours
    assert all(r.resources.gpus == 0 for r in workflow.plan("default"))  # the embedded study: CPU only
    ia3 = {r.name: r.resources for r in workflow.plan("paper/ia3-t0")}  # its study.yaml asks for longer
    assert ia3["evaluate"].hours == 24 > t5["evaluate"].hours and ia3["train-rte"].hours == 36
    released = {r.name: r.resources for r in workflow.plan("paper/ia3-t0-released")}  # inherited
    assert released["evaluate"] == ia3["evaluate"]


def test_the_cli_names_a_bad_executor():
    with pytest.raises(TiesnbError, match="unknown executor 'lsf'; executors: local, slurm, kubernetes"):
        workflow.command("smoke", "lsf")


def test_a_second_run_with_nothing_changed_does_nothing(smoke_run):
    notebooks = smoke_run / "notebooks"
    before = {p.name: p.stat().st_mtime_ns for p in notebooks.glob("*.ipynb")}
    t0 = time.time()
    r = run_workflow("smoke", smoke_run.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Nothing to be done" in r.stdout + r.stderr
    assert time.time() - t0 < 60
    assert {p.name: p.stat().st_mtime_ns for p in notebooks.glob("*.ipynb")} == before
    bench = (smoke_run / "benchmarks" / "merge_sweep.tsv").read_text().splitlines()
    assert bench[0].split("\t")[:3] == ["s", "h:m:s", "max_rss"]  # each step's time and peak memory


def _planned(r) -> list[str]:
    """The jobs a dry run plans, from Snakemake's job table."""
    out = r.stdout + r.stderr
    if "Nothing to be done" in out:
        return []
    table = out.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    return sorted(line.split()[0] for line in table if line.strip())


def test_an_edited_parameter_file_reruns_its_step_and_what_follows(smoke_run):
    """Touching a file is no change (Snakemake compares contents); an edited parameter file
    reruns its step (ablations: nothing follows it); an edited notebook, the same."""
    ablations, interference = paths.PARAMS / "smoke" / "ablations.yaml", paths.NOTEBOOKS / "interference.py"
    saved = {p: p.read_bytes() for p in (ablations, interference)}
    try:
        os.utime(ablations)
        assert _planned(run_workflow("smoke", smoke_run.parent, "--dry-run")) == []
        ablations.write_bytes(saved[ablations] + b"# edited\n")
        assert _planned(run_workflow("smoke", smoke_run.parent, "--dry-run")) == ["ablations", "all"]
        interference.write_bytes(saved[interference] + b"\n# edited\n")
        assert _planned(run_workflow("smoke", smoke_run.parent, "--dry-run")) == ["ablations", "all", "interference"]
    finally:
        for p, data in saved.items():
            p.write_bytes(data)


# ---------------------------------------------------------------------------------------------
# a real Slurm cluster: .ci/slurm-up starts one on this machine (CI runs it; elsewhere, run it as
# root to include this test)


def _slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("sacct"):
        return False
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return r.returncode == 0 and any(state in r.stdout for state in ("idle", "mix", "alloc"))


def _digests(root):
    """SHA-256 of every output a study writes, except the executed notebooks and run records
    (they hold times and paths): checkpoints, caches of evaluations, figures, tables, results."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in ("notebooks", "benchmarks", ".snakemake", "data") \
                and p.suffix not in (".png", ".pdf") and p.name != "params.json":
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.skipif(bool(os.environ.get("TIESNB_NO_SLURM")),
                    reason=f"Slurm could not start here: {os.environ.get('TIESNB_NO_SLURM')}")
@pytest.mark.skipif(not _slurm_up() and not os.environ.get("CI"), reason="no Slurm cluster here (.ci/slurm-up starts one)")
def test_the_smoke_study_on_slurm_equals_the_local_run(smoke_run, tmp_path):
    assert _slurm_up(), "CI runs .ci/slurm-up first: a Slurm cluster should be up"
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 5))
    r = run_workflow("smoke", tmp_path, "--slurm-init-seconds-before-status-checks", "1",
                     "--default-resources", "slurm_account=tiesnb", executor="slurm")
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    # every step ran as a Slurm job, asking for what the plan says
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-S", start, "-o", "Comment,State,ReqCPUS,ReqMem,Timelimit"],
                           capture_output=True, text=True, check=True).stdout
    jobs = {}
    for line in sacct.splitlines():
        comment, state, cpus, mem, limit = line.split("|")
        if comment.startswith("rule_"):
            jobs[comment.removeprefix("rule_")] = (state, int(cpus), mem, limit)
    plan = workflow.plan("smoke")
    assert set(jobs) == {r.name.replace("-", "_") for r in plan}, sacct
    for run in plan:
        state, cpus, mem, limit = jobs[run.name.replace("-", "_")]
        res = run.resources
        assert state == "COMPLETED" and cpus == res.threads()
        assert mem.rstrip("M") == str(res.snakemake()["mem_mb"]) or mem == f"{res.mem_gb:g}G", mem
        h, m = divmod(res.snakemake()["runtime"], 60)
        assert limit == f"{h:02d}:{m:02d}:00", limit
    # the same outputs as the local run, bit for bit
    local, slurm = _digests(smoke_run), _digests(tmp_path / "smoke")
    assert local and set(local) == set(slurm), sorted(set(local) ^ set(slurm))[:10]
    differ = [k for k in local if local[k] != slurm[k]]
    assert not differ, differ[:10]


def test_concurrent_runs_hold_different_gpus(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with workflow.claimed_gpus(1, count=2, folder=tmp_path) as first:
        assert first == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        # another process (a second job) gets the other one, then finds none left
        code = ("import os, sys; sys.path.insert(0, {root!r}); from pathlib import Path\n"
                "from tiesnb import workflow\n"
                "with workflow.claimed_gpus(1, count=2, folder=Path({folder!r})) as ids:\n"
                "    print(ids)\n"
                "    del os.environ['CUDA_VISIBLE_DEVICES']  # as a third job would see it\n"
                "    try:\n"
                "        with workflow.claimed_gpus(1, count=2, folder=Path({folder!r}), wait_s=0): pass\n"
                "    except Exception as e: print(type(e).__name__)\n")
        env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
        out = subprocess.run([sys.executable, "-c", code.format(root=str(paths.ROOT), folder=str(tmp_path))],
                             capture_output=True, text=True, env=env, check=True).stdout.split()
        assert out == ["1", "TiesnbError"]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with workflow.claimed_gpus(2, count=2, folder=tmp_path) as both:  # both free again
        assert both == "0,1"
    with pytest.raises(TiesnbError, match="asks for 3 GPU"):
        with workflow.claimed_gpus(3, count=2, folder=tmp_path):
            pass
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # a scheduler chose: left alone
    with workflow.claimed_gpus(1, count=2, folder=tmp_path) as ids:
        assert ids is None and os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_one_step_runs_with_what_it_needs(tmp_path):
    """`make merge_sweep` (a rule name after tiesnb workflow's options) plans that step and its
    upstream runs only; the caller's own Snakemake options come after ours and win."""
    r = run_workflow("smoke", tmp_path, "merge_sweep", "--cores", "1", "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    trains = [p.stem.replace("-", "_") for p in (paths.PARAMS / "smoke").glob("train-*.yaml")]
    assert _planned(r) == sorted(["merge_sweep", "probe", *trains])
