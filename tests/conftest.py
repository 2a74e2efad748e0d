"""Shared fixtures: small models with the structure of real ones (several tensors of different
scales, an integer buffer), kept tiny so the whole suite runs in minutes on a CPU."""

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# remembered checksums go to a throw-away place, not the repository's cache
os.environ.setdefault("TIESNB_CHECKSUM_CACHE", os.path.join(tempfile.mkdtemp(prefix="tiesnb-test-"), "checksums.json"))

SHAPES = {"embed.weight": (40, 12), "layer0.w": (12, 12), "layer0.b": (12,), "layer1.w": (6, 12), "norm.w": (12,)}


def make_models(n=4, seed=0, shapes=SHAPES, scale=(0.02, 0.3)):
    """A base and n fine-tuned state dicts whose task vectors differ in scale per tensor and
    conflict in sign, plus an integer buffer that must be copied, never merged."""
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    base["position_ids"] = torch.arange(7)
    models = []
    for _ in range(n):
        m = {}
        for k, v in base.items():
            if v.is_floating_point():
                s = scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g)
                m[k] = v + s * torch.randn(v.shape, generator=g)
            else:
                m[k] = v.clone()
        models.append(m)
    return base, models


@pytest.fixture
def small():
    return make_models()


def run_workflow(study: str, runs, *extra: str, executor: str = "local"):
    """``tiesnb workflow`` (the study's Snakemake DAG) into the run folder ``runs``."""
    import subprocess
    import sys

    from tiesnb import paths

    env = {**os.environ, "TIESNB_RUNS": str(runs), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "tiesnb.cli", "workflow", "--study", study, "--executor", executor,
                           *extra], env=env, capture_output=True, text=True, cwd=paths.ROOT)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke study run end to end by its workflow on this machine, once per test session
    (the pipeline's tests read it; the Slurm test compares its own run against it)."""
    runs = tmp_path_factory.mktemp("runs")
    r = run_workflow("smoke", runs)
    assert r.returncode == 0, f"the smoke workflow failed:\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return runs / "smoke"
