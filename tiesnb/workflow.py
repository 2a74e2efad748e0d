"""The study as a workflow: its notebook runs, what each one reads, and what each asks of a machine.

``workflow/Snakefile`` builds the study's DAG from :func:`plan`; ``tiesnb workflow`` (what
``make study`` calls) runs it with Snakemake, here or through a cluster profile
(``workflow/profiles/<executor>``)::

    tiesnb workflow --study default                  # this machine
    tiesnb workflow --study paper/t5-base --executor slurm

A run is one notebook execution (``tiesnb run``); its output is the executed notebook,
``runs/<study>/notebooks/<run>.ipynb``, and it is redone when its notebook, its parameter file,
the study's settings, the package or a run it follows changed (Snakemake's rerun triggers).

What a run asks for (``resources:`` in study.yaml, per step kind, over the family's defaults)::

    resources:
      default: {cpus: 8, gpus: 1, mem_gb: 40, hours: 4}   # every step
      train: {hours: 12}                                   # one kind: over the default
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from . import paths
from .config import dataclass_from
from .errors import TiesnbError

# the study's notebook runs by kind, in the order they run: one probe, one train run per model,
# the four notebooks that read every model, and the ablations (which reuse the merge sweep's choices)
STEP_KINDS = ("probe", "train", "evaluate", "merge_sweep", "interference", "num_tasks", "ablations")
AFTER_MODELS = ("evaluate", "merge_sweep", "interference", "num_tasks")
EXECUTORS = ("local", "slurm", "kubernetes")
WORKFLOW = paths.ROOT / "workflow"


# each family's defaults (a study's resources: go over them): the embedded families (minilm,
# vision) take Resources()'s, a CPU share, 8 GB and 2 hours at most per step; the paper-scale ones one
# GPU per step (T0-3B's (IA)³ and T5-large ask for more in their study.yaml). Kept here, not in
# the families' modules, whose code is part of every cached evaluation's key.
FAMILY_RESOURCES: dict[str, dict[str, dict[str, Any]]] = {
    "seq2seq": {"default": {"cpus": 8, "gpus": 1, "mem_gb": 64, "hours": 12}, "train": {"hours": 24}},
    "clip": {"default": {"cpus": 8, "gpus": 1, "mem_gb": 32, "hours": 4}, "train": {"hours": 8}},
}


@dataclass
class Resources:
    """What one run asks of a machine (a Slurm job's request; locally, its share of the cores)."""

    cpus: int = 0  # torch threads; 0: half this machine's cores, so two runs share it as make did
    gpus: int = 0
    mem_gb: float = 8.0  # smoke and vision steps peak under 3 GB (runs/<study>/benchmarks); room for the rest
    hours: float = 2.0  # wall-clock limit of a cluster job

    def threads(self) -> int:
        return self.cpus or max(1, (os.cpu_count() or 1) // 2)

    def snakemake(self) -> dict[str, int]:
        """The rule's ``resources:`` (names the Slurm and Kubernetes executors read)."""
        return {"mem_mb": int(self.mem_gb * 1024), "runtime": max(1, round(self.hours * 60)), "gpu": self.gpus}


def resources(study_name: str, kind: str, configured: Mapping[str, Any] | None = None,
              family_defaults: Mapping[str, Mapping[str, Any]] | None = None) -> Resources:
    """A step kind's resources: the family's defaults (its ``default``, then the kind's), then the
    study's ``resources:`` likewise; unknown kinds or fields are errors naming the valid ones."""
    if kind not in STEP_KINDS:
        raise TiesnbError(f"unknown step kind {kind!r}; kinds: {', '.join(STEP_KINDS)}")
    merged: dict[str, Any] = {}
    for where, layer in (("the family's defaults", family_defaults or {}), (f"study {study_name}", configured or {})):
        unknown = sorted(set(layer) - {"default", *STEP_KINDS})
        if unknown:
            raise TiesnbError(f"{where}: resources names {', '.join(map(repr, unknown))}; "
                              f"valid: default, {', '.join(STEP_KINDS)}")
        for key in ("default", kind):
            part = layer.get(key) or {}
            if not isinstance(part, Mapping):
                raise TiesnbError(f"{where}: resources.{key} must be a mapping (cpus, gpus, mem_gb, hours), got {part!r}")
            merged.update(part)
    res = dataclass_from(Resources, merged, f"study {study_name}: resources.{kind}")
    if res.cpus < 0 or res.gpus < 0 or not res.mem_gb > 0 or not res.hours > 0:
        raise TiesnbError(f"study {study_name}: resources.{kind} must have cpus, gpus >= 0 and mem_gb, hours > 0, "
                          f"got {asdict(res)}")
    return res


@dataclass
class Run:
    """One notebook run of the study's workflow."""

    name: str  # the run's name: probe, train-trec, merge_sweep, ...
    notebook: str  # notebooks/<notebook>.py
    params: Path  # its parameter file
    after: tuple[str, ...]  # the runs whose outputs it reads
    resources: Resources


def plan(study: str) -> list[Run]:
    """Every run of a study, in an order that respects ``after``: the study's own train-*.yaml
    files, else its parent's (``inherit``), the multitask model first (the longest run)."""
    from .study.config import StudyConfig, params_file, study_settings

    settings = study_settings(study)
    config = StudyConfig.parse(settings, paths.PARAMS / study / "study.yaml")
    res = {kind: resources(study, kind, config.resources, FAMILY_RESOURCES.get(config.model)) for kind in STEP_KINDS}
    folder = paths.PARAMS / study
    trains = sorted(folder.glob("train-*.yaml"))
    if not trains and config.inherit:
        trains = sorted((paths.PARAMS / config.inherit).glob("train-*.yaml"))
    trains.sort(key=lambda p: p.stem != "train-multitask")
    runs = [Run("probe", "probe", params_file(study, "probe"), (), res["probe"])]
    runs += [Run(p.stem, "train", p, ("probe",), res["train"]) for p in trains]
    models = tuple(p.stem for p in trains)
    runs += [Run(k, k, params_file(study, k), models, res[k]) for k in AFTER_MODELS]
    runs.append(Run("ablations", "ablations", params_file(study, "ablations"), ("merge_sweep",), res["ablations"]))
    return runs


def settings_files(study: str) -> list[Path]:
    """study.yaml and, for a derived study, its parent's: a change to either reruns every step."""
    from .study.config import study_settings

    own = paths.PARAMS / study / "study.yaml"
    parent = study_settings(study).get("inherit")
    return [own] + ([paths.PARAMS / str(parent) / "study.yaml"] if parent else [])


def package_files() -> list[Path]:
    """The package's sources: a change reruns every step (what the cached evaluations then keep)."""
    return sorted(paths.PACKAGE.rglob("*.py")) + [paths.ROOT / "pyproject.toml"]


def workdir(study: str) -> Path:
    """Where Snakemake keeps the study's workflow state (.snakemake/: metadata, locks, cluster
    logs): inside the study's run folder, so studies never lock each other."""
    return paths.RUNS / study


def command(study: str, executor: str = "local", extra: list[str] | None = None) -> list[str]:
    """The snakemake command line that runs the study: here with every core and GPU as resources
    (each run asks for its share), or through a cluster profile; ``extra`` goes to Snakemake."""
    if executor not in EXECUTORS:
        raise TiesnbError(f"unknown executor {executor!r}; executors: {', '.join(EXECUTORS)}")
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake) if snakemake.exists() else "snakemake", "--config", f"study={study}",
           "--quiet", "host", "reason"]  # a line per job started and finished; each run prints its own progress
    if executor == "local":
        cmd += ["--cores", str(os.cpu_count() or 1), "--resources", f"gpu={gpu_count()}"]
    else:
        cmd += ["--profile", str(WORKFLOW / "profiles" / executor)]
    # one-value options last, so that a target (a rule name) after them is read as a target, and
    # the caller's own options (--cores 1, ...) come after ours and win
    cmd += ["--snakefile", str(WORKFLOW / "Snakefile"), "--directory", str(workdir(study))]
    return cmd + list(extra or [])


def gpu_count() -> int:
    """The GPUs this machine has (0 without nvidia-smi): a local run holds them as resources, so
    the steps that ask for one run one per GPU."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


@contextlib.contextmanager
def claimed_gpus(n: int, count: int | None = None, folder: Path | None = None, wait_s: float = 600):
    """Hold ``n`` of this machine's GPUs for one run and point ``CUDA_VISIBLE_DEVICES`` at them:
    Snakemake counts GPUs as a resource but does not say which one a job gets, so each run takes
    the first free ones by a lock file per GPU (released when the run ends, or its process dies).
    Nothing to do when a scheduler already chose (``CUDA_VISIBLE_DEVICES`` is set) or n is 0."""
    if n <= 0 or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        yield None
        return
    import fcntl

    count = gpu_count() if count is None else count
    if n > count:
        raise TiesnbError(f"the run asks for {n} GPU(s), this machine has {count}")
    folder = folder or paths.RUNS / ".gpus"
    folder.mkdir(parents=True, exist_ok=True)
    deadline, held = time.monotonic() + wait_s, []
    while True:
        for i in range(count):
            if len(held) == n:
                break
            f = open(folder / f"{i}.lock", "w")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append((i, f))
            except BlockingIOError:
                f.close()
        if len(held) == n:
            break
        for _, f in held:
            f.close()
        held = []
        if time.monotonic() > deadline:
            raise TiesnbError(f"no {n} free GPU(s) of {count} after {wait_s:.0f} s (lock files in {folder})")
        time.sleep(1)
    ids = ",".join(str(i) for i, _ in held)
    os.environ["CUDA_VISIBLE_DEVICES"] = ids
    try:
        yield ids
    finally:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        for _, f in held:
            f.close()


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="tiesnb workflow", description="run a study's notebooks as a Snakemake workflow; "
                                 "arguments it does not know go to Snakemake (--cores 1, --set-resources ..., a rule name)")
    ap.add_argument("--study", default="default")
    ap.add_argument("--executor", default=os.environ.get("EXECUTOR") or "local", choices=EXECUTORS,
                    help="where the runs go: this machine, or a cluster through workflow/profiles/<executor>")
    ap.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    args, extra = ap.parse_known_args(argv)
    plan(args.study)  # a bad study or resources section stops here, with its message, not in Snakemake
    cmd = command(args.study, args.executor, extra + (["--dry-run"] if args.dry_run else []))
    workdir(args.study).mkdir(parents=True, exist_ok=True)
    print("+", shlex.join(cmd), file=sys.stderr, flush=True)
    return subprocess.call(cmd, cwd=paths.ROOT)
