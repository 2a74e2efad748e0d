"""The paper-scale path on a tiny randomly initialised T5 and fixtures in each real dataset's
schema: readers, rank classification against a hand computation, the median over templates,
T5's tied embedding in merges, (IA)³ on T5, and the whole pipeline end to end."""

import json
import os
import shutil
import statistics
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from tiesnb import paths, seq2seq
from tiesnb.data.paper import DATASETS, MIXTURES, PaperTaskData, RankExample, load_paper_task, records
from tiesnb.errors import TiesnbError
from tiesnb.merge import merge
from tiesnb.merge.reference import flatten, ties_original, trim_original, elect_original, disjoint_original

from paper_fixtures import all_texts, write_fixtures


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    data = write_fixtures(root / "data")
    model = seq2seq.make_tiny_t5(root / "tiny-t5", all_texts(data))
    return root, data, model


def test_mixtures_cover_the_seed_readme():
    assert MIXTURES["t5_mixture"] == ["paws", "qasc", "quartz", "story_cloze", "wiki_qa", "winogrande", "wsc"]
    assert len(MIXTURES["T0_held_out"]) == 11 and set(sum(MIXTURES.values(), [])) <= set(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_reads_and_templates(fixtures, name):
    _, data, _ = fixtures
    d = load_paper_task(name, n_train=10, n_val=4, n_test=100, seed=42, data_dir=data)
    assert (len(d.train), len(d.val), len(d.test)) == (10, 4, 10)
    assert len(d.templates) >= 3
    for t in range(len(d.templates)):
        for ex in d.examples("val", t):
            assert 0 <= ex.label < len(ex.choices) and ex.input
    again = load_paper_task(name, n_train=10, n_val=4, n_test=100, seed=42, data_dir=data)
    assert again.val == d.val and again.fingerprint == d.fingerprint  # seeded: the same split
    assert PaperTaskData.from_json(name, json.loads(json.dumps(d.to_json()))) == d  # the run folder's cache


def test_labels_map_to_the_right_answer(fixtures):
    _, data, _ = fixtures
    rte = DATASETS["rte"].templates[0]({"premise": "a", "hypothesis": "b", "label": 0})
    assert rte.choices[rte.label] == "Yes"  # 0 = entailment
    anli = DATASETS["anli_r1"].templates[0]({"premise": "a", "hypothesis": "b", "label": 2})
    assert anli.choices[anli.label] == "No"  # 2 = contradiction
    wino = DATASETS["winogrande"].templates[1]({"sentence": "_ ran", "option1": "x", "option2": "y", "answer": "2"})
    assert wino.choices[wino.label] == "y"
    qasc = records("qasc", "train", data)[3]
    ex = DATASETS["qasc"].templates[0](qasc)
    assert ex.choices[ex.label] == qasc["choices"]["text"][qasc["choices"]["label"].index(qasc["answerKey"])]


def test_bad_datasets(tmp_path):
    with pytest.raises(TiesnbError, match="story_cloze needs a manual download: set story_cloze_dir"):
        records("story_cloze", "validation")
    with pytest.raises(TiesnbError, match="no local copy .*rte/train.jsonl"):
        records("rte", "train", tmp_path)
    with pytest.raises(TiesnbError, match="unknown dataset 'rtee'"):
        records("rtee", "train")
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text(json.dumps({"sentence": "x", "label": 0}) + "\n")
    (tmp_path / "rte" / "validation.jsonl").write_text("".join(json.dumps({"sentence": "x", "label": 0}) + "\n" for _ in range(40)))
    with pytest.raises(TiesnbError, match="rte: a record does not have the dataset's schema"):
        load_paper_task("rte", 10, data_dir=tmp_path)


def test_rank_classification_scores_by_hand(fixtures):
    _, _, path = fixtures
    model, tok = seq2seq.load_seq2seq(path)
    examples = [RankExample("the cat sleeps", ("Yes", "No"), 0), RankExample("the dog runs then", ("the car stops", "No", "Maybe"), 2)]
    scores = seq2seq.choice_scores(model, tok, examples, batch_size=2)
    for ex, s in zip(examples, scores):
        for c, got in zip(ex.choices, s):
            # by hand: one choice at a time, the sum of its tokens' log-probabilities (with </s>)
            ids = tok([ex.input], return_tensors="pt")
            target = tok([c], return_tensors="pt").input_ids
            with torch.no_grad():
                logits = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask, labels=target).logits
            expected = sum(float(logits[0, i].log_softmax(-1)[target[0, i]]) for i in range(target.shape[1]))
            assert got.item() == pytest.approx(expected, abs=1e-4)
    acc = seq2seq.rank_accuracy(model, tok, examples, batch_size=1)
    assert acc == sum(int(torch.argmax(s)) == ex.label for s, ex in zip(scores, examples)) / 2


def test_median_over_templates(fixtures):
    _, data, path = fixtures
    d = {"cb": load_paper_task("cb", 10, 4, 10, data_dir=data)}
    ev = seq2seq.RankEvaluator(str(path), d, batch_size=4, autocast="off", progress=False)
    per = ev.template_accuracies(None, "cb", "test")
    assert len(per) == 3 and ev.accuracy(None, "cb", "test") == statistics.median(per)


def test_t5_tied_embedding_merges_once_and_the_original_counts_it_twice(fixtures):
    _, _, path = fixtures
    base = seq2seq.pretrained_state(path)
    g = torch.Generator().manual_seed(0)
    models = []
    for _ in range(3):
        m = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        for alias in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
            m[alias] = m["shared.weight"]  # tied, as in a loaded T5
        models.append(m)
    groups = seq2seq.tied_groups(path)
    assert groups == [["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]]
    out = merge("ties", base, models, tied=groups)
    assert all(torch.equal(out[a], out["shared.weight"]) for a in groups[0])
    # the original: embed_tokens dropped, shared and lm_head both in the flattened vector
    names = sorted(n for n in base if n not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"))
    ref = ties_original(base, models, k=0.2, names=names)
    orig = merge("ties", base, models, preset="original", tied=groups, multiplicity=seq2seq.original_multiplicity(path))
    assert all(torch.equal(orig[n], ref[n]) for n in names)
    paper = merge("ties", base, models, tied=groups)
    assert not torch.equal(paper["shared.weight"], orig["shared.weight"])  # counting once changes the merge


def test_ia3_on_t5(fixtures):
    _, data, path = fixtures
    d = {"rte": load_paper_task("rte", 10, 4, 10, data_dir=data)}
    cfg = seq2seq.Seq2SeqTrainConfig(tasks=["rte"], mode="ia3", steps=2, batch_size=4, lr=0.05, autocast="off",
                                     model_path=str(path), max_len=32, max_target_len=8)
    vectors = seq2seq.finetune(cfg, d, progress=False)
    assert vectors and all(k.endswith("ia3_l") for k in vectors)
    assert any("EncDecAttention.k" in k for k in vectors) and any("DenseReluDense.wo" in k for k in vectors)
    assert any(not torch.equal(v, torch.ones_like(v)) for v in vectors.values())
    full = seq2seq.finetune(seq2seq.Seq2SeqTrainConfig(tasks=["rte"], steps=1, batch_size=4, autocast="off",
                                                       model_path=str(path), max_len=32, max_target_len=8), d, progress=False)
    assert set(full) == set(seq2seq.pretrained_state(path))


# ---------------------------------------------------------------------------------------------
# the whole paper-scale path through the same notebooks and pipeline


def _study(root, name, mode, tasks, model_path, data_dir):
    folder = root / "params" / name
    folder.mkdir(parents=True)
    study = {"name": name, "model": "seq2seq", "model_path": str(model_path), "data_dir": str(data_dir), "tasks": tasks,
             "mode": mode, "n_train": 16, "n_val": 4, "n_test": 10, "max_len": 48, "max_target_len": 8,
             "autocast": "off", "eval_batch_size": 8, "steps": 2, "multitask_steps": 2, "batch_size": 4,
             "lr": 0.01 if mode == "ia3" else 1e-3, "fisher_examples": 2, "gram_examples": 4, "figures_dir": ""}
    (folder / "study.yaml").write_text(yaml.safe_dump(study))
    for f in (paths.PARAMS / "smoke").glob("*.yaml"):
        if f.stem not in ("study",) and not f.stem.startswith("train-"):
            shutil.copy(f, folder / f.name)
    for t in tasks + ["multitask"]:
        (folder / f"train-{t}.yaml").write_text(f"task: {t}\n")
    return folder


@pytest.mark.parametrize("mode, tasks, notebooks", [
    ("full", ["paws", "qasc", "wiki_qa"], ["probe", "train", "evaluate", "merge_sweep", "interference", "ablations",
                                           "num_tasks"]),
    ("ia3", ["rte", "copa"], ["probe", "train", "evaluate", "merge_sweep"]),
])
def test_paper_path_end_to_end_on_a_tiny_t5(fixtures, tmp_path, mode, tasks, notebooks):
    root, data, model = fixtures
    name = f"tiny-{mode}"
    params = _study(tmp_path, name, mode, tasks, model, data)
    env = {**os.environ, "TIESNB_RUNS": str(tmp_path / "runs"), "TIESNB_PARAMS": str(tmp_path / "params"),
           "PYTHONWARNINGS": "ignore"}
    for nb in notebooks:
        runs = [f"train-{t}" for t in tasks + ["multitask"]] if nb == "train" else [nb]
        for run in runs:
            r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", nb, "--study", name, "--quiet",
                                "--params", str(params / f"{run}.yaml")], env=env, capture_output=True, text=True, cwd=paths.ROOT)
            assert r.returncode == 0, f"{run} failed:\n{r.stderr[-3000:]}"
    figures = tmp_path / "runs" / name / "figures"
    t1 = pd.read_csv(figures / "table1.csv")
    expected = ["zero-shot", "fine-tuned", "multitask", "averaging", "task arithmetic", "TIES", "DARE"]
    expected += ["Fisher", "RegMean"] if mode == "full" else []
    assert all(m in list(t1["method"]) for m in expected)
    assert set(tasks) <= set(t1.columns)
    # the median over templates is reported with the templates' range
    cache = [json.loads(p.read_text()) for p in (tmp_path / "runs" / name / "cache" / "evaluations").rglob("*.json")]
    assert cache and all("spread" in r for rec in cache for r in rec["tasks"].values())
    if mode == "full":
        assert (figures / "sign_conflicts.png").exists() and (figures / "ablations.csv").exists()
