"""The evaluation store's key: every part of it, changed, gives a new key (the result is computed
again); a change outside it keeps the key (the cached result is used)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiesnb import paths
from tiesnb.families import family
from tiesnb.study import store


def stub_study(tmp_path, autocast="off", max_len=64, data_fp="d1", heads_fp="h1", model="minilm"):
    fam = family(model)
    data = {"a": SimpleNamespace(fingerprint=data_fp), "b": SimpleNamespace(fingerprint="d2")}
    return SimpleNamespace(
        family=fam, run_dir=tmp_path, data=lambda: data,
        inputs=SimpleNamespace(heads_fingerprint=lambda: heads_fp),
        config=SimpleNamespace(model=model, autocast=autocast, eval_batch_size=32),
        settings=SimpleNamespace(max_len=max_len))


RECIPE = {"method": "ties", "params": {"k": 0.2}, "models": ["m1", "m2"]}


def key(tmp_path, recipe=RECIPE, tasks=("a", "b"), split="val", **study):
    return store.EvaluationStore(stub_study(tmp_path, **study)).key(recipe, list(tasks), split)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the package's files: the code part of the key is read from it."""
    copy = tmp_path / "pkg"
    shutil.copytree(paths.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(store, "PACKAGE", copy)
    return copy


@pytest.mark.parametrize("change", [
    {"recipe": {**RECIPE, "params": {"k": 0.1}}},
    {"recipe": {**RECIPE, "models": ["m1", "m3"]}},
    {"tasks": ("a",)},
    {"split": "test"},
    {"data_fp": "d9"},
    {"heads_fp": "h9"},
    {"max_len": 32},  # the family's evaluation settings
    {"autocast": "bf16"},  # bf16 against float32, as resolved
])
def test_each_part_of_the_key_changes_it(tmp_path, change):
    assert key(tmp_path, **change) != key(tmp_path)


def test_the_runtime_is_in_the_key(tmp_path, monkeypatch):
    from tiesnb import training

    before = key(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert key(tmp_path) != before
    monkeypatch.delenv("WORLD_SIZE")
    assert key(tmp_path) == before
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # on a CPU, the thread count
    assert key(tmp_path) != before
    monkeypatch.undo()
    monkeypatch.setattr(training, "device", lambda: torch.device("cuda"))
    assert key(tmp_path) != before
    monkeypatch.undo()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert key(tmp_path) != before


@pytest.mark.parametrize("edited, counts", [
    ("families/text.py", True),  # the active family
    ("families/base.py", True),  # what every family shares
    ("merge/methods.py", True),
    ("study/merging.py", True),
    ("training.py", True),
    ("data/tasks.py", True),  # the active family's readers
    ("data/sources.py", True),
    ("families/vision.py", False),  # another family
    ("families/seq2seq.py", False),
    ("data/images.py", False),  # another family's readers
    ("data/assets.py", False),  # where files come from: their content is pinned and fingerprinted
    ("tables.py", False),  # reporting
    ("study/outputs.py", False),
])
def test_the_code_in_the_key_is_the_evaluation_path_only(tmp_path, package, edited, counts):
    before = key(tmp_path)
    with open(package / edited, "a") as f:
        f.write("\n# edited\n")
    assert (key(tmp_path) != before) == counts, edited


def test_a_new_key_is_computed_again_and_the_same_key_is_read(tmp_path, package):
    calls = []

    class Evaluator:
        def scores(self, state, task, split):
            calls.append(task)
            return np.array([1, 0]), np.array([1.0, 0.0]), None

    class Text(type(family("minilm"))):
        __module__ = "tiesnb.families.text"  # the family's own module, as the key sees it

        def evaluator(self, study):
            return Evaluator()

    study = stub_study(tmp_path)
    study.family = Text()
    s = store.EvaluationStore(study)
    run = lambda: s.evaluate(lambda: None, RECIPE, ["a"], "val", "dare", 3, lambda x: x, seed=7)  # noqa: E731
    rows = run()
    assert calls == ["a"] and rows[0]["accuracy"] == 0.5 and list(rows[0]["pred"]) == [1, 0]
    assert rows[0]["seed"] == 3 and rows[0]["method_seed"] == 7  # the training seed, and DARE's own
    assert run()[0]["accuracy"] == 0.5 and calls == ["a"]  # read from the store
    for other in ("families/vision.py", "data/images.py"):  # the vision family and its readers, edited
        with open(package / other, "a") as f:
            f.write("\n# edited\n")
    assert run()[0]["accuracy"] == 0.5 and calls == ["a"]  # the text study's cached evaluation is still used
    with open(package / "families/text.py", "a") as f:
        f.write("\n# edited\n")
    run()
    assert calls == ["a", "a"]  # the family's code changed: computed again
