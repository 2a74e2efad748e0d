"""The paper-scale path on a tiny randomly initialised T5 and fixtures in each real dataset's
schema: readers, rank classification against a hand computation, the median over templates,
T5's tied embedding in merges, (IA)³ on T5, and the whole pipeline end to end."""

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tiesnb import paths
from tiesnb.families import seq2seq
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


# the template counts of the original's readers (promptsource's original-task, accuracy templates)
ORIGINAL_TEMPLATES = {"rte": 10, "cb": 15, "copa": 8, "wic": 10, "wsc": 10, "winogrande": 5, "hellaswag": 7,
                      "story_cloze": 5, "anli_r1": 15, "anli_r2": 15, "anli_r3": 15}


def _load(data, name, style="promptsource", **kw):
    return load_paper_task(name, **{"n_train": 10, "n_val": 4, "seed": 42, "data_dir": data, **kw}, prompts=style)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_every_dataset_reads_and_templates(fixtures, name):
    _, data, _ = fixtures
    for style in ("promptsource", "tiesnb"):
        d = _load(data, name, style)
        assert len(d.train) == 10 and d.val and d.test
        assert len(d.prompts) == (ORIGINAL_TEMPLATES.get(name, len(d.prompts)) if style == "promptsource" else 3)
        for t in range(len(d.prompts)):
            for ex in d.examples("val", t) + d.examples("test", t):
                assert 0 <= ex.label < len(ex.choices) and ex.input.strip()
        again = _load(data, name, style)
        assert again.val == d.val and again.fingerprint == d.fingerprint  # seeded: the same split
        assert PaperTaskData.from_json(name, json.loads(json.dumps(d.to_json())), style) == d  # the run folder's cache
    # other prompts, another dataset for the caches
    assert _load(data, name, "tiesnb").fingerprint != _load(data, name, "promptsource").fingerprint


def test_splits_are_the_originals(fixtures):
    """As the original's readers: a shared split shuffled by random.seed(42) and cut at 32 (here 4),
    PAWS / WikiQA / QuaRTz their own splits, ANLI its dev (cut) and test sets; nothing capped."""
    import random

    _, data, _ = fixtures

    def original_cut(rows, n):
        random.seed(42)  # the original code seeds the global generator, then shuffles in place
        random.shuffle(rows)
        return rows[:n], rows[n:]

    rte = _load(data, "rte", n_train=0)
    val, test = original_cut(records("rte", "validation", data), 4)
    assert (rte.val, rte.test, rte.train) == (val, test, records("rte", "train", data))
    paws = _load(data, "paws")
    assert paws.val == records("paws", "validation", data) and paws.test == records("paws", "test", data)
    anli = _load(data, "anli_r2")
    assert anli.val == original_cut(records("anli_r2", "dev_r2", data), 4)[0] and anli.test == records("anli_r2", "test_r2", data)
    story = _load(data, "story_cloze")  # trains on the 2016 validation set, evaluates on the 2016 test set
    assert story.train == records("story_cloze", "validation", data)[:10]
    assert story.val + story.test == original_cut(records("story_cloze", "test", data), 4)[0] + original_cut(records("story_cloze", "test", data), 4)[1]
    assert len(_load(data, "rte", n_test=3).test) == 3  # a cap, only when asked


def test_labels_map_to_the_right_answer(fixtures):
    _, data, _ = fixtures
    for name, rec, right in [
        ("rte", {"premise": "a", "hypothesis": "b", "idx": 0, "label": 0}, "yes"),  # 0 = entailment
        ("anli_r1", {"premise": "a", "hypothesis": "b", "uid": "0", "reason": "", "label": 2}, "incorrect"),  # 2 = contradiction
        ("winogrande", {"sentence": "_ ran", "option1": "x", "option2": "y", "answer": "2"}, "y"),
    ]:
        d = PaperTaskData(name, [], [], [], _load(data, name).prompts)
        ex = d.example(rec, 0)
        assert right in ex.choices[ex.label].lower()
    qasc_rec = records("qasc", "train", data)[3]
    d = _load(data, "qasc")
    for t in range(len(d.prompts)):
        ex = d.example(qasc_rec, t)
        assert ex.choices[ex.label].lower() == qasc_rec["choices"]["text"][qasc_rec["choices"]["label"].index(qasc_rec["answerKey"])].lower()


def test_the_hubs_parquet_layout(tmp_path, monkeypatch):
    """Read through ``datasets`` from the namespaced repositories' Parquet export, laid out and
    named as on the hub (a local folder stands in for hf://datasets)."""
    from tiesnb.data import paper

    from paper_fixtures import record, write_parquet_export

    root = write_parquet_export(tmp_path / "hub", ["rte", "anli_r1", "hellaswag", "quartz", "winogrande"])
    assert (root / "aps" / "super_glue@refs%2Fconvert%2Fparquet" / "rte" / "validation" / "0000.parquet").exists()
    monkeypatch.setattr(paper, "HUB_ROOT", str(root))
    rows = records("anli_r1", "test_r1")
    assert len(rows) == 40 and set(rows[0]) == {"premise", "hypothesis", "label", "uid", "reason"}
    d = load_paper_task("hellaswag", 5, 4, 0)
    assert len(d.test) == 36 and isinstance(d.train[0]["endings"], list)
    assert load_paper_task("quartz", 5, 4, 0).test == records("quartz", "test")
    with pytest.raises(TiesnbError, match=r"cannot load cb split 'train' from .*aps/super_glue@refs%2Fconvert%2Fparquet/cb/"
                                          r"train/\*\.parquet .*set data_dir to a folder of copies .*cb/train.jsonl"):
        records("cb", "train")


def test_the_flat_parquet_layout_too(tmp_path, monkeypatch):
    """Some repositories' export is flat (aps/super_glue: ``rte/super_glue-train.parquet``), or flat
    and sharded: both are read, the shards in order, and a split never takes another's files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tiesnb.data import paper

    from paper_fixtures import record

    rng = __import__("random").Random(0)
    folder = tmp_path / "hub" / f"aps/super_glue@{paper.PARQUET_REVISION}"
    rows = {s: [record("rte", i, rng) for i in range(n)] for s, n in (("train", 30), ("validation", 12))}
    (folder / "rte").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows["validation"]), folder / "rte" / "super_glue-validation.parquet")
    (folder / "cb").mkdir(parents=True)
    for k, part in enumerate((rows["train"][:20], rows["train"][20:])):
        pq.write_table(pa.Table.from_pylist(part), folder / "cb" / f"super_glue-train-0000{k}-of-00002.parquet")
    monkeypatch.setattr(paper, "HUB_ROOT", str(tmp_path / "hub"))
    assert records("rte", "validation") == rows["validation"]
    assert records("cb", "train") == rows["train"]
    with pytest.raises(TiesnbError, match="cannot load rte split 'train'"):
        records("rte", "train")


def test_story_cloze_from_its_csv_files(tmp_path):
    import csv

    from paper_fixtures import record
    from tiesnb.data.paper import STORY_CLOZE_COLUMNS
    from tiesnb.cli import main

    rng = __import__("random").Random(0)
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    inverse = {v: k for k, v in STORY_CLOZE_COLUMNS.items()}
    for fname, n in [("cloze_test_val__spring2016 - cloze_test_ALL_val.csv", 12),
                     ("cloze_test_test__spring2016 - cloze_test_ALL_test.csv", 40)]:
        with open(csv_dir / fname, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(STORY_CLOZE_COLUMNS))
            w.writeheader()
            for i in range(n):
                w.writerow({inverse[k]: v for k, v in record("story_cloze", i, rng).items()})
    assert main(["data", "story-cloze", str(csv_dir), "--out", str(tmp_path / "sc")]) == 0
    d = load_paper_task("story_cloze", 0, 4, 0, story_cloze_dir=tmp_path / "sc")
    assert (len(d.train), len(d.val), len(d.test)) == (12, 4, 36)
    first = records("story_cloze", "validation", story_cloze_dir=tmp_path / "sc")[0]
    assert first["answer_right_ending"] in (1, 2) and first["input_sentence_1"]
    (csv_dir / "cloze_test_test__spring2016 - cloze_test_ALL_test.csv").write_text("InputStoryid,InputSentence1\nx,y\n")
    with pytest.raises(TiesnbError, match="lacks the column"):
        seq2seq_convert = __import__("tiesnb.data.paper", fromlist=["x"]).convert_story_cloze
        seq2seq_convert(csv_dir, tmp_path / "sc2")
    assert not (tmp_path / "sc2").exists()  # nothing written: not even the good validation file


def test_bad_datasets(tmp_path):
    with pytest.raises(TiesnbError, match="story_cloze needs a manual download: get its CSV files .*tiesnb data story-cloze"):
        records("story_cloze", "validation")
    with pytest.raises(TiesnbError, match=r"no local copy .*rte/train.jsonl \(or .parquet\)"):
        records("rte", "train", tmp_path)
    with pytest.raises(TiesnbError, match="unknown dataset 'rtee'"):
        records("rtee", "train")
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.jsonl").write_text(json.dumps({"sentence": "x", "label": 0}) + "\n")
    (tmp_path / "rte" / "validation.jsonl").write_text("".join(json.dumps({"sentence": "x", "label": 0}) + "\n" for _ in range(40)))
    with pytest.raises(TiesnbError, match="rte: a .* record does not have the dataset's schema"):
        load_paper_task("rte", 10, data_dir=tmp_path)
    with pytest.raises(TiesnbError, match="prompts must be one of promptsource, tiesnb"):
        load_paper_task("rte", 10, data_dir=tmp_path, prompts="mine")


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


def test_template_zero_or_the_median_over_templates(fixtures):
    _, data, path = fixtures
    d = {"cb": _load(data, "cb", n_test=10)}
    ev = seq2seq.RankEvaluator(str(path), d, batch_size=4, autocast="off", progress=False, templates="all")
    per = ev.template_accuracies(None, "cb", "test")
    assert len(per) == 15 and ev.accuracy(None, "cb", "test") == statistics.median(per)
    first = seq2seq.RankEvaluator(str(path), d, batch_size=4, autocast="off", progress=False, templates="first")
    assert first.template_accuracies(None, "cb", "test") == per[:1]


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
# the training recipe


def _separable(n: int, seed: int) -> list[dict]:
    """RTE-shaped records whose label is written in the premise: the cat entails, the dog not."""
    import random

    rng = random.Random(seed)
    verbs = ["sleeps", "runs", "sings", "stops"]
    return [{"premise": f"the {'cat' if i % 2 == 0 else 'dog'} {rng.choice(verbs)}", "hypothesis": f"the bird {rng.choice(verbs)}",
             "idx": i, "label": i % 2} for i in range(n)]


def _separable_task():
    from tiesnb.data.paper import prompts_for

    return {"rte": PaperTaskData("rte", _separable(64, 0), _separable(12, 1), _separable(40, 2), prompts_for("rte", "tiesnb"),
                                 "separable", "tiesnb")}


def test_training_beats_zero_shot_and_keeps_the_best_state(fixtures):
    """On a task the tiny T5 can learn: accuracy rises well above zero-shot; with validation every
    4 optimiser steps and patience 6, training stops after 6 evaluations without improvement and
    returns the best evaluated state (its validation score is the best seen)."""
    _, _, path = fixtures
    data = _separable_task()
    ev = seq2seq.RankEvaluator(str(path), data, batch_size=8, autocast="off", progress=False, templates="first")
    zero = ev.accuracy(None, "rte", "test")
    cfg = seq2seq.Seq2SeqTrainConfig(tasks=["rte"], steps=100, batch_size=4, grad_accum=2, lr=1e-2, schedule="constant",
                                     templates="first", eval_every=4, patience=6, eval_batch_size=8, autocast="off",
                                     model_path=str(path), max_len=32, max_target_len=4)
    trace = {}
    state = seq2seq.finetune(cfg, data, progress=False, trace=trace)
    assert ev.accuracy(state, "rte", "test") >= max(0.9, zero + 0.25)
    vals = trace["val"]
    best, waited, stop = float("-inf"), 0, None  # the early-stopping rule, replayed on the scores seen
    for i, v in enumerate(vals):
        best, waited = (v, 0) if v > best else (best, waited + 1)
        if waited == 6:
            stop = i
            break
    assert stop is not None and len(vals) == stop + 1 < 25  # it stopped, and exactly there
    assert len(trace["lr"]) == 4 * len(vals) and set(trace["lr"]) == {1e-2}  # constant, one per optimiser step
    assert len(trace["items"]) == 2 * len(trace["lr"])  # two micro-batches per optimiser step
    ev_val = seq2seq.validation_score(seq2seq.load_seq2seq(path)[0], ev.tok, cfg, data, False)
    model, _ = seq2seq.load_seq2seq(path)
    model.load_state_dict(state)
    assert seq2seq.validation_score(model, ev.tok, cfg, data, False) == max(vals) > ev_val


def test_ia3_vectors_must_be_folded_before_evaluation(fixtures):
    """The (IA)³ path fails loudly when its vectors would be ignored, and folding them changes
    what the model computes."""
    from tiesnb.training import fold_ia3

    _, data, path = fixtures
    d = {"rte": _load(data, "rte")}
    cfg = seq2seq.Seq2SeqTrainConfig(tasks=["rte"], mode="ia3", steps=1, batch_size=4, lr=0.05, autocast="off",
                                     model_path=str(path), max_len=32, max_target_len=8, templates="first")
    vectors = {k: 3 * torch.ones_like(v) for k, v in seq2seq.finetune(cfg, d, progress=False).items()}
    ev = seq2seq.RankEvaluator(str(path), d, batch_size=4, autocast="off", progress=False, templates="first")
    with pytest.raises(TiesnbError, match="entries the model lacks.*must be folded"):
        ev.accuracy(vectors, "rte", "val")
    examples = d["rte"].examples("val", 0)
    ev._load(None)
    plain = seq2seq.choice_scores(ev.model, ev.tok, examples)
    ev._load(fold_ia3(seq2seq.pretrained_state(path), vectors))
    folded = seq2seq.choice_scores(ev.model, ev.tok, examples)
    assert not all(torch.allclose(a, b) for a, b in zip(plain, folded))


def test_two_processes_train_what_one_process_trains(fixtures, tmp_path):
    """With 2 CPU processes (gloo) and the same settings as 1 process: in every micro-batch the
    two see different examples which together are the single process's batch (the effective batch
    is the configured one); the gradients are all-reduced (equal in both); the learning rate
    follows the single-process schedule; the early-stopping decision is process 0's; only process
    0 saves, and the number of processes is in the checkpoint's key."""
    _, data, path = fixtures
    script = paths.ROOT / "tests" / "accelerate_train.py"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), str(path), str(data), "4"], env=env,
                         capture_output=True, text=True, cwd=paths.ROOT)
    assert one.returncode == 0, one.stderr[-3000:]
    # torchrun, which `accelerate launch --multi_gpu` starts (accelerate's --cpu launcher starts one process)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                          str(script), str(tmp_path / "two"), str(path), str(data), "4"], env=env, capture_output=True,
                         text=True, cwd=paths.ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    single = json.loads((tmp_path / "one" / "rank0.json").read_text())
    r0, r1 = (json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1))
    n = len(single["lr"])
    assert r0["lr"] == r1["lr"] == single["lr"] and n >= 2
    assert single["lr"] == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0, 0.5)][:n])  # warm-up 2 steps, then decay
    assert len(r0["items"]) == len(r1["items"]) == len(single["items"]) == 2 * n
    for a, b, s in zip(r0["items"], r1["items"], single["items"]):
        assert len(a) == len(b) == 2 and not set(a) & set(b) and a + b == s
    assert r0["grad"] == r1["grad"] and all(g > 0 for g in r0["grad"])  # all-reduced: the same gradient
    assert r1["val"] == r0["val"] and -1.0 not in r0["val"]  # process 1's own score never decided
    saved = json.loads((tmp_path / "two" / "ckpt-rank0" / "params.json").read_text())["resolved"]
    assert saved["world_size"] == 2 and not (tmp_path / "two" / "ckpt-rank1").exists()
    assert "world_size" not in json.loads((tmp_path / "one" / "ckpt-rank0" / "params.json").read_text())["resolved"]


# ---------------------------------------------------------------------------------------------
# the whole paper-scale path through the same notebooks and pipeline


def _study(root, name, mode, tasks, model_path, data_dir):
    folder = root / "params" / name
    folder.mkdir(parents=True)
    study = {"name": name, "model": "seq2seq", "tasks": tasks,
             "mode": mode, "n_train": 16, "n_val": 4, "n_test": 10,
             "autocast": "off", "eval_batch_size": 8, "steps": 2, "multitask_steps": 2, "batch_size": 4,
             "lr": 0.01 if mode == "ia3" else 1e-3, "fisher_examples": 2, "gram_examples": 4, "figures_dir": "",
             "seq2seq": {"model_path": str(model_path), "data_dir": str(data_dir), "max_len": 48, "max_target_len": 8,
                         "templates": "all" if mode == "ia3" else "first", "schedule": "constant", "eval_every": 1,
                         "patience": 1}}
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
        _poisoned_test_labels_change_no_choice(tmp_path, name, params, env, t1)


def _poisoned_test_labels_change_no_choice(tmp_path, name, params, env, t1):
    """λ and k are chosen on validation only: with every test label changed, the merge sweep
    chooses the same settings (while its test accuracies change)."""
    run = tmp_path / "runs" / name
    [choices_file] = run.rglob("choices.json")
    before = json.loads(choices_file.read_text())["choices"]
    for f in (run / "data").glob("*.json"):
        raw = json.loads(f.read_text())
        for r in raw["test"]:
            if "label" in r:
                r["label"] = 1 - int(r["label"])
            else:
                r["answerKey"] = "ABCDEFGH"[("ABCDEFGH".index(r["answerKey"]) + 1) % len(r["choices"]["label"])]
        f.write_text(json.dumps(raw))
    choices_file.unlink()
    r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", "merge_sweep", "--study", name, "--quiet",
                        "--params", str(params / "merge_sweep.yaml")], env=env, capture_output=True, text=True, cwd=paths.ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(choices_file.read_text())["choices"] == before
    after = pd.read_csv(run / "figures" / "table1.csv")
    assert not after.equals(t1)  # the test numbers did change


def test_a_template_change_invalidates_cached_accuracies(fixtures, tmp_path, monkeypatch):
    from tiesnb.data import paper
    from tiesnb.study import Study

    _, data, model = fixtures
    _study(tmp_path, "tiny-cache", "full", ["rte"], model, data)
    monkeypatch.setattr(paths, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(paths, "PARAMS", tmp_path / "params")
    cfg = tmp_path / "params" / "tiny-cache" / "study.yaml"
    settings = yaml.safe_load(cfg.read_text())
    settings["seq2seq"]["prompts"] = "tiesnb"
    cfg.write_text(yaml.safe_dump(settings))
    Study.load("tiny-cache").fit_heads(progress=False)  # (none for seq2seq: the probe step's marker)
    first = Study.load("tiny-cache").evaluate_checkpoint(None, ["rte"], "val", "zero-shot")
    cached = lambda: sorted((tmp_path / "runs" / "tiny-cache" / "cache" / "evaluations").rglob("*.json"))  # noqa: E731
    assert len(cached()) == 1
    assert Study.load("tiny-cache").evaluate_checkpoint(None, ["rte"], "val", "zero-shot")[0]["accuracy"] == first[0]["accuracy"]
    assert len(cached()) == 1  # reused
    old = paper.TIESNB_PROMPTS["rte"]
    changed = paper.Prompt(old[0].name, lambda r: (f'{r["premise"]} Does "{r["hypothesis"]}" follow?', ("Yes", "No")), "edited")
    monkeypatch.setitem(paper.TIESNB_PROMPTS, "rte", (changed, *old[1:]))
    Study.load("tiny-cache").evaluate_checkpoint(None, ["rte"], "val", "zero-shot")
    assert len(cached()) == 2  # a new key: computed again with the edited template


def test_each_family_reads_its_own_section_and_checks_it():
    from tiesnb.study import Study, StudyConfig

    parse = lambda **d: StudyConfig.parse({"name": "x", "tasks": ["rte"], **d}, "study.yaml")  # noqa: E731
    with pytest.raises(TiesnbError, match="'patience' is a setting of the seq2seq family: put it in the 'minilm:' section "
                                          r"\(this study's model is minilm\)"):
        parse(patience=3)
    with pytest.raises(TiesnbError, match="'max_len' is a setting of the minilm / seq2seq family: put it in the 'seq2seq:'"):
        parse(model="seq2seq", max_len=3)
    with pytest.raises(TiesnbError, match="section 'seq2seq:' applies to model: seq2seq"):
        parse(seq2seq={"patience": 3})
    with pytest.raises(TiesnbError, match=r"study.yaml \[minilm:\]: unknown parameter 'patience'"):
        parse(minilm={"patience": 3})
    assert parse(model="seq2seq", seq2seq={"patience": 3}).settings.patience == 3
    assert parse(minilm={"max_len": 7}).settings.max_len == 7
    for key, bad, msg in [("schedule", "cosine", "seq2seq.schedule must be one of linear, constant"),
                          ("templates", "some", "seq2seq.templates must be one of first, all"),
                          ("grad_accum", 0, "seq2seq.grad_accum must be at least 1"),
                          ("eval_every", -1, "seq2seq.eval_every must be >= 0")]:
        with pytest.raises(TiesnbError, match=msg):
            Study(parse(model="seq2seq", seq2seq={key: bad}))
    with pytest.raises(TiesnbError, match="mode must be full for the vision family"):
        Study(parse(model="vision", mode="ia3"))


def test_training_examples_are_the_originals_pool(fixtures):
    """The original's readers: a task model's pool is every template's pass over the records,
    shuffled with random.Random(4), never cut; the multitask pool is, per dataset and template,
    the records shuffled with Random(4) then with seed 0 and cut at max // templates; template 0
    alone: shuffled with Random(4), cut at max in the mixture only. ``pool: joint`` cuts every
    pool at max after one shuffle."""
    import random

    _, data, _ = fixtures
    d = {"cb": _load(data, "cb"), "rte": _load(data, "rte")}  # 10 records each; 15 and 10 templates
    mixture = seq2seq.training_items(seq2seq.Seq2SeqTrainConfig(tasks=["cb", "rte"], templates="all", max_per_dataset=40), d)
    expected = []
    for t, n_templates in (("cb", 15), ("rte", 10)):
        for k in range(n_templates):
            part = [(t, i, k) for i in range(10)]
            random.Random(4).shuffle(part)
            random.seed(0)
            random.shuffle(part)  # as the original: the global generator, seeded
            expected += part[:40 // n_templates]
    assert mixture == expected and len(mixture) == 15 * 2 + 10 * 4
    single = seq2seq.training_items(seq2seq.Seq2SeqTrainConfig(tasks=["cb"], templates="all", max_per_dataset=40), d)
    pool = [("cb", i, k) for k in range(15) for i in range(10)]
    random.Random(4).shuffle(pool)
    assert single == pool  # 150 items: no cap for one dataset
    joint = seq2seq.training_items(seq2seq.Seq2SeqTrainConfig(tasks=["cb"], templates="all", max_per_dataset=40,
                                                              pool="joint"), d)
    assert joint == pool[:40]
    first = seq2seq.training_items(seq2seq.Seq2SeqTrainConfig(tasks=["rte", "cb"], templates="first", max_per_dataset=4), d)
    rte = [("rte", i, 0) for i in range(10)]
    random.Random(4).shuffle(rte)
    assert first[:4] == rte[:4] and len(first) == 8


def test_legacy_model_names_resolve_to_todays_ids(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    seq2seq._load.cache_clear()
    with pytest.raises(TiesnbError, match="cannot load the seq2seq model 'google-t5/t5-base'"):
        seq2seq.load_seq2seq("t5-base")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t5-base").mkdir()  # a local folder of that name is read as a folder
    with pytest.raises(TiesnbError, match="cannot load the seq2seq model 't5-base'"):
        seq2seq.load_seq2seq("t5-base")
    seq2seq._load.cache_clear()


# ---------------------------------------------------------------------------------------------
# existing (IA)³ checkpoints in the original code's format


def _original_name(ours: str) -> str:
    """This project's (IA)³ name → the original code's (the inverse of original_ia3_names)."""
    name = ours.removesuffix(".ia3_l")
    name = name[:-len("wo")] + "wi_1" if name.endswith("DenseReluDense.wo") else name
    return f"transformer.{name}.ia3_vector"


def test_original_ia3_checkpoints_compute_what_the_original_computes(fixtures, tmp_path):
    """An (IA)³ checkpoint as the original saves it (``transformer.…{k,v,wi_1}.ia3_vector``, each
    scaling that layer's output) is read into this project's vectors; folded into the model, it
    gives the same logits as the original's semantics implemented by hand with forward hooks."""
    from tiesnb.training import fold_ia3

    _, data, _ = fixtures
    model_path = seq2seq.make_tiny_t5(tmp_path / "tiny-t0", all_texts(data), feed_forward_proj="gated-gelu")
    reference = seq2seq.ia3_reference(model_path)
    torch.manual_seed(0)
    original = {_original_name(k): 1 + 0.3 * torch.randn(v.numel()) for k, v in reference.items()}
    assert any(".DenseReluDense.wi_1.ia3_vector" in k for k in original)
    ours = {seq2seq.original_ia3_names(k): v for k, v in original.items()}
    assert set(ours) == set(reference)
    model, tok = seq2seq.load_seq2seq(model_path)
    hooks = []
    for name, module in model.named_modules():
        key = f"transformer.{name}.ia3_vector"
        if key in original:
            hooks.append(module.register_forward_hook(lambda m, i, out, v=original[key]: out * v))
    batch = tok(["the cat sat", "a dog"], return_tensors="pt", padding=True)
    labels = tok(["yes", "no"], return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        want = model(**batch, labels=labels).logits
        for h in hooks:
            h.remove()
        folded = {k: v.reshape(reference[k].shape) for k, v in ours.items()}
        model.load_state_dict(fold_ia3(seq2seq.pretrained_state(model_path), folded))
        got = model(**batch, labels=labels).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_a_study_of_original_ia3_checkpoints(fixtures, tmp_path):
    """task_models naming folders of the original's ``best_model.pt``: nothing is trained, every
    notebook runs on those vectors, and a wrong shape or name is one line naming the file."""
    from tiesnb.study import Study

    _, data, _ = fixtures
    model_path = seq2seq.make_tiny_t5(tmp_path / "tiny-t0", all_texts(data), feed_forward_proj="gated-gelu")
    reference = seq2seq.ia3_reference(model_path)
    released = {}
    for i, task in enumerate(["rte", "copa"]):
        torch.manual_seed(i)
        folder = tmp_path / "released" / task
        folder.mkdir(parents=True)
        torch.save({_original_name(k): 1 + 0.2 * torch.randn(v.numel()) for k, v in reference.items()},
                   folder / "best_model.pt")
        released[task] = str(folder)
    params = _study(tmp_path, "orig-ia3", "ia3", ["rte", "copa"], model_path, data)
    settings = yaml.safe_load((params / "study.yaml").read_text())
    (params / "study.yaml").write_text(yaml.safe_dump({**settings, "task_models": released}))
    env = {**os.environ, "TIESNB_RUNS": str(tmp_path / "runs"), "TIESNB_PARAMS": str(tmp_path / "params"),
           "PYTHONWARNINGS": "ignore"}
    for nb, run in [("probe", "probe"), ("train", "train-rte"), ("train", "train-multitask"), ("evaluate", "evaluate"),
                    ("merge_sweep", "merge_sweep"), ("interference", "interference"), ("ablations", "ablations"),
                    ("num_tasks", "num_tasks")]:
        r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", nb, "--study", "orig-ia3", "--quiet",
                            "--params", str(params / f"{run}.yaml")], env=env, capture_output=True, text=True, cwd=paths.ROOT)
        assert r.returncode == 0, f"{run} failed:\n{r.stderr[-3000:]}"
    t1 = pd.read_csv(tmp_path / "runs" / "orig-ia3" / "figures" / "table1.csv")
    assert {"fine-tuned", "TIES", "task arithmetic"} <= set(t1.method) and "multitask" not in set(t1.method)
    assert not (tmp_path / "runs" / "orig-ia3" / "seed-0" / "checkpoints").exists()
    old = (paths.PARAMS, paths.RUNS)
    paths.PARAMS, paths.RUNS = tmp_path / "params", tmp_path / "runs"
    try:
        S = Study.load("orig-ia3")
        state = S.state("rte")
        saved = torch.load(Path(released["rte"]) / "best_model.pt", weights_only=True)
        k = next(n for n in saved if "wi_1" in n)
        assert torch.equal(state[seq2seq.original_ia3_names(k)].reshape(-1), saved[k])
        saved[k] = torch.ones(3)
        torch.save(saved, Path(released["copa"]) / "best_model.pt")
        with pytest.raises(TiesnbError, match=r"copa/best_model.pt: '.*DenseReluDense.wo.ia3_l' has shape \(3,\)"):
            Study.load("orig-ia3").state("copa")
        saved["transformer.encoder.block.0.layer.0.SelfAttention.q.ia3_vector"] = torch.ones(4)
        torch.save(saved, Path(released["copa"]) / "best_model.pt")
        with pytest.raises(TiesnbError, match=r"copa/best_model.pt: '.*SelfAttention.q.ia3_vector' is not an \(IA\)³ vector"):
            Study.load("orig-ia3").state("copa")
    finally:
        paths.PARAMS, paths.RUNS = old


def test_checkpoints_are_selected_as_the_original_selects_them(monkeypatch):
    """The score is the mean over the validation tasks (the original's inference mixture: every
    task of the study) of each task's accuracy pooled over example × template (its
    eval_template_idx −2); ``median`` takes the median over templates instead."""
    from types import SimpleNamespace

    acc = {("a", 0): 0.2, ("a", 1): 0.5, ("a", 2): 0.9, ("b", 0): 0.4, ("b", 1): 0.6, ("b", 2): 0.2}
    sizes = {0: 10, 1: 10, 2: 20}
    data = {t: SimpleNamespace(prompts=[0, 1, 2], examples=lambda split, k, t=t: [(t, k)] * sizes[k]) for t in "ab"}
    monkeypatch.setattr(seq2seq, "template_indices", lambda d, templates: [0, 1, 2] if templates == "all" else [0])
    monkeypatch.setattr(seq2seq, "rank_accuracy", lambda model, tok, ex, **kw: acc[ex[0]])
    model = SimpleNamespace(training=False, eval=lambda: None, train=lambda mode=True: None)
    cfg = lambda **kw: seq2seq.Seq2SeqTrainConfig(tasks=["a"], templates="all", **kw)  # noqa: E731
    pooled_a = (0.2 * 10 + 0.5 * 10 + 0.9 * 20) / 40
    pooled_b = (0.4 * 10 + 0.6 * 10 + 0.2 * 20) / 40
    assert seq2seq.validation_score(model, None, cfg(), data, False) == pytest.approx(pooled_a)
    assert seq2seq.validation_score(model, None, cfg(val_tasks=["a", "b"]), data, False) == pytest.approx((pooled_a + pooled_b) / 2)
    assert seq2seq.validation_score(model, None, cfg(val_score="median"), data, False) == pytest.approx(0.5)
    study = SimpleNamespace(config=SimpleNamespace(tasks=["a", "b"], mode="ia3", batch_size=8, lr=1e-4, weight_decay=0.0,
                                                   warmup=0.0, autocast="off", eval_batch_size=4),
                            settings=seq2seq.Seq2SeqSettings(), seed=0, threads=1)
    from tiesnb.families import family

    fam = family("seq2seq")
    assert fam.train_config(study, ["a"]).val_tasks == ["a", "b"]  # the mixture, also for a task model
    study.settings = seq2seq.Seq2SeqSettings(val_tasks="own")
    assert fam.train_config(study, ["a"]).val_tasks == ["a"]
