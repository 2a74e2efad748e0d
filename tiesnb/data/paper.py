"""The paper's datasets for the paper-scale (T5 / (IA)³) study, as rank-classification tasks.

Each dataset is read through ``datasets`` — from the hub or the local cache when reachable, or
from local copies in the dataset's own schema (``<data_dir>/<dataset>/<split>.jsonl``) — and
turned into examples ``(input, answer choices, label)`` by a few prompt templates per dataset,
answer-choice style, written for this project. Splits as the original: the dataset's training
split for training; its evaluation split shuffled with seed 42, the first 32 examples for
validation and the rest for test.

Story Cloze is not on the hub: download it (https://cs.rochester.edu/nlp/rocstories/) and give
its folder as ``story_cloze_dir``; its 2016 validation set trains, its 2016 test set evaluates.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import TiesnbError

Record = dict


@dataclass(frozen=True)
class RankExample:
    input: str
    choices: tuple[str, ...]
    label: int


Template = Callable[[Record], RankExample]


@dataclass(frozen=True)
class PaperDataset:
    name: str
    hub: tuple[str, str | None]  # (path, config) for datasets.load_dataset
    train_split: str
    eval_split: str
    templates: tuple[Template, ...]
    manual: bool = False  # needs a manual download (Story Cloze)


def _nli(choices: tuple[str, ...], order: dict[int, int]):
    """Premise/hypothesis templates; ``order`` maps the dataset's label to the choice index."""
    forms = [
        lambda r: f'{r["premise"]} Question: does this imply that "{r["hypothesis"]}"? {", ".join(choices[:-1])} or {choices[-1]}?',
        lambda r: f'Suppose {r["premise"]} Can we infer that "{r["hypothesis"]}"?',
        lambda r: f'{r["premise"]} Based on that, is it true that {r["hypothesis"]}?',
    ]
    return tuple((lambda r, f=f: RankExample(f(r), choices, order[int(r["label"])])) for f in forms)


def _pair(choices, forms):
    return tuple((lambda r, f=f: RankExample(f(r), choices, int(r["label"]))) for f in forms)


def _copa(r: Record, form: int) -> RankExample:
    q = r["question"]
    text = [f'{r["premise"]} What was the {q}?',
            f'{r["premise"]} {"This happened because" if q == "cause" else "As a consequence,"}',
            f'Premise: {r["premise"]} Which is the more likely {q}?'][form]
    return RankExample(text, (r["choice1"], r["choice2"]), int(r["label"]))


def _winogrande(r: Record, form: int) -> RankExample:
    text = [f'{r["sentence"]} In the sentence above, what does "_" stand for?',
            f'Fill in the blank: {r["sentence"]}',
            f'{r["sentence"]} Who or what is "_"?'][form]
    return RankExample(text, (r["option1"], r["option2"]), int(r["answer"]) - 1)


def _hellaswag(r: Record, form: int) -> RankExample:
    text = [r["ctx"], f'Complete the description: {r["ctx"]}', f'{r["activity_label"]}: {r["ctx"]} What happens next?'][form]
    return RankExample(text, tuple(r["endings"]), int(r["label"]))


def _story(r: Record, form: int) -> RankExample:
    story = " ".join(r[f"input_sentence_{i}"] for i in range(1, 5))
    text = [f"{story} What is a possible continuation for the story?", f"{story} Which ending fits?",
            f"Story: {story} Ending:"][form]
    return RankExample(text, (r["sentence_quiz1"], r["sentence_quiz2"]), int(r["answer_right_ending"]) - 1)


def _lettered(r: Record, form: int, text: str) -> RankExample:
    labels = list(r["choices"]["label"])
    return RankExample(text, tuple(r["choices"]["text"]), labels.index(r["answerKey"]))


def _qasc(r: Record, form: int) -> RankExample:
    text = [r["question"], f'{r["fact1"]} {r["fact2"]} {r["question"]}', f'Question: {r["question"]} Answer:'][form]
    return _lettered(r, form, text)


def _quartz(r: Record, form: int) -> RankExample:
    text = [f'{r["para"]} {r["question"]}', f'Question: {r["question"]} Use this fact: {r["para"]}', r["question"]][form]
    return _lettered(r, form, text)


def _forms(fn, n=3):
    return tuple((lambda r, i=i: fn(r, i)) for i in range(n))


YES_NO = ("No", "Yes")
DATASETS: dict[str, PaperDataset] = {d.name: d for d in [
    PaperDataset("rte", ("super_glue", "rte"), "train", "validation", _nli(("Yes", "No"), {0: 0, 1: 1})),
    PaperDataset("cb", ("super_glue", "cb"), "train", "validation", _nli(("Yes", "No", "Maybe"), {0: 0, 1: 1, 2: 2})),
    PaperDataset("wic", ("super_glue", "wic"), "train", "validation", _pair(YES_NO, [
        lambda r: f'Does the word "{r["word"]}" mean the same thing in "{r["sentence1"]}" and "{r["sentence2"]}"?',
        lambda r: f'"{r["sentence1"]}" / "{r["sentence2"]}" Is "{r["word"]}" used with the same meaning in both?',
        lambda r: f'Sentence A: {r["sentence1"]} Sentence B: {r["sentence2"]} The same sense of "{r["word"]}"?'])),
    PaperDataset("wsc", ("super_glue", "wsc.fixed"), "train", "validation", _pair(YES_NO, [
        lambda r: f'{r["text"]} In the passage above, does "{r["span2_text"]}" refer to "{r["span1_text"]}"?',
        lambda r: f'{r["text"]} Here, is "{r["span2_text"]}" the same as "{r["span1_text"]}"?',
        lambda r: f'Passage: {r["text"]} Is "{r["span2_text"]}" "{r["span1_text"]}"?'])),
    PaperDataset("copa", ("super_glue", "copa"), "train", "validation", _forms(_copa)),
    PaperDataset("winogrande", ("winogrande", "winogrande_xl"), "train", "validation", _forms(_winogrande)),
    PaperDataset("hellaswag", ("hellaswag", None), "train", "validation", _forms(_hellaswag)),
    PaperDataset("story_cloze", ("story_cloze", "2016"), "validation", "test", _forms(_story), manual=True),
    *[PaperDataset(f"anli_r{i}", ("anli", None), f"train_r{i}", f"dev_r{i}",
                   _nli(("Yes", "Maybe", "No"), {0: 0, 1: 1, 2: 2})) for i in (1, 2, 3)],
    PaperDataset("paws", ("paws", "labeled_final"), "train", "validation", _pair(YES_NO, [
        lambda r: f'Sentence 1: {r["sentence1"]} Sentence 2: {r["sentence2"]} Do they mean the same thing?',
        lambda r: f'Is "{r["sentence1"]}" a paraphrase of "{r["sentence2"]}"?',
        lambda r: f'{r["sentence1"]} / {r["sentence2"]} Same meaning?'])),
    PaperDataset("qasc", ("qasc", None), "train", "validation", _forms(_qasc)),
    PaperDataset("quartz", ("quartz", None), "train", "validation", _forms(_quartz)),
    PaperDataset("wiki_qa", ("wiki_qa", None), "train", "validation", _pair(YES_NO, [
        lambda r: f'Question: {r["question"]} Would "{r["answer"]}" be a reasonable answer?',
        lambda r: f'Is "{r["answer"]}" a correct answer to "{r["question"]}"?',
        lambda r: f'{r["question"]} Candidate answer: {r["answer"]} Correct?'])),
]}

MIXTURES = {
    "t5_mixture": ["paws", "qasc", "quartz", "story_cloze", "wiki_qa", "winogrande", "wsc"],
    "T0_held_out": ["rte", "cb", "winogrande", "wic", "wsc", "copa", "hellaswag", "story_cloze", "anli_r1", "anli_r2", "anli_r3"],
}


def records(name: str, split: str, data_dir: str | Path | None = None, story_cloze_dir: str | Path | None = None) -> list[Record]:
    """The records of one split, in the dataset's schema."""
    spec = DATASETS.get(name)
    if spec is None:
        raise TiesnbError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if data_dir:
        path = Path(data_dir) / name / f"{split}.jsonl"
        if not path.exists():
            raise TiesnbError(f"{name}: no local copy {path} (data_dir holds <dataset>/<split>.jsonl in the dataset's schema)")
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import datasets

    kwargs = {}
    if spec.manual:
        if not story_cloze_dir:
            raise TiesnbError(f"{name} needs a manual download: set story_cloze_dir in study.yaml to its folder "
                              f"(https://cs.rochester.edu/nlp/rocstories/)")
        kwargs["data_dir"] = str(story_cloze_dir)
    try:
        ds = datasets.load_dataset(spec.hub[0], spec.hub[1], split=split, **kwargs)
    except Exception as e:  # no hub, no cache, or a moved dataset: say what to do
        raise TiesnbError(f"cannot load {name} ({spec.hub[0]}/{spec.hub[1]}, split {split}) from the hub or the local "
                          f"cache: {type(e).__name__}: {str(e).splitlines()[0][:160]}; or give data_dir with local "
                          f"copies") from None
    return [dict(r) for r in ds]


@dataclass
class PaperTaskData:
    """One dataset's splits: records, and the templates that turn them into rank examples."""

    name: str
    train: list[Record]
    val: list[Record]
    test: list[Record]
    templates: tuple[Template, ...]
    fingerprint: str = field(default="")

    def split(self, name: str) -> list[Record]:
        from .tasks import parse_split

        base, n = parse_split(name)
        return getattr(self, base)[:n]

    def examples(self, split: str, template: int) -> list[RankExample]:
        return [self.templates[template](r) for r in self.split(split)]

    def to_json(self) -> dict:
        return {"fingerprint": self.fingerprint, "train": self.train, "val": self.val, "test": self.test}

    @classmethod
    def from_json(cls, name: str, raw: dict) -> "PaperTaskData":
        return cls(name, raw["train"], raw["val"], raw["test"], DATASETS[name].templates, raw["fingerprint"])


def load_paper_task(name: str, n_train: int, n_val: int = 32, n_test: int = 1000, seed: int = 42,
                    data_dir: str | Path | None = None, story_cloze_dir: str | Path | None = None) -> PaperTaskData:
    spec = DATASETS.get(name)
    if spec is None:
        raise TiesnbError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    train = records(name, spec.train_split, data_dir, story_cloze_dir)
    evaluation = records(name, spec.eval_split, data_dir, story_cloze_dir)
    if len(evaluation) <= n_val:
        raise TiesnbError(f"{name}: its {spec.eval_split} split has {len(evaluation)} examples, not more than the "
                          f"{n_val} for validation: lower n_val")
    rng = random.Random(seed)
    rng.shuffle(evaluation)
    random.Random(seed).shuffle(train)
    data = PaperTaskData(name, train[:n_train], evaluation[:n_val], evaluation[n_val:n_val + n_test], spec.templates)
    for t in spec.templates:  # every template must apply: a schema mismatch is reported here, by name
        for r in data.val[:1] + data.train[:1]:
            try:
                ex = t(r)
            except (KeyError, ValueError, TypeError) as e:
                raise TiesnbError(f"{name}: a record does not have the dataset's schema ({type(e).__name__}: {e}): {str(r)[:120]}") from None
            if not 0 <= ex.label < len(ex.choices):
                raise TiesnbError(f"{name}: label {ex.label} outside the {len(ex.choices)} answer choices")
    h = hashlib.sha256(json.dumps([data.train, data.val, data.test], sort_keys=True, default=str).encode())
    data.fingerprint = h.hexdigest()[:16]
    return data
