"""The paper's datasets for the paper-scale (T5 / (IA)³) study, read as the original code reads them.

**Where the data comes from.** Each dataset is the namespaced Hugging Face repository that holds it
today, read from the Parquet files of its ``refs/convert/parquet`` branch (every repository in
:data:`DATASETS` has one, including those whose main branch still ships only a loading script,
which ``datasets`` 5.x refuses). Its records keep the dataset's own column names, which the
prompt templates read. Offline, ``data_dir`` holds local copies ``<data_dir>/<dataset>/<split>.jsonl``
(or ``.parquet``) in the same schema. Story Cloze is not on the hub: download its CSV files and
convert them with ``tiesnb data story-cloze CSV_DIR`` (:func:`convert_story_cloze`).

**Prompts.** ``promptsource`` (default): the templates of the promptsource package, read at run
time, filtered as the original code filters them (the original task's templates, scored by
accuracy, minus the ones it names; HellaSwag's randomized template split into its four prompts),
in the package's order, so template 0 is the original's template 0. ``tiesnb``: three templates
per dataset written for this project (the embedded study's style), kept as an option.

**Splits**, as the original's readers: training on the training split (Story Cloze: its 2016
validation set). Validation and test: most datasets have no labelled test split, so their
validation split is shuffled with ``random.Random(42)`` and cut: the first 32 examples validate,
all the rest test. PAWS, WikiQA and QuaRTz use their validation split (whole) to validate and their
test split to test; ANLI validates on 32 shuffled examples of its round's dev set and tests on its
round's test set.

Why one module (~500 lines): the original's eleven dataset readers (splits, labels, prompt
filters) are one table each and read as one, beside the prompt machinery they share.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import random
import re
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from ..errors import TiesnbError

Record = dict

# the Parquet export every hub dataset gets: <config>/<split>/NNNN.parquet
HUB_ROOT = os.environ.get("TIESNB_HUB_ROOT", "hf://datasets")
PARQUET_REVISION = "refs%2Fconvert%2Fparquet"
PROMPTS = ("promptsource", "tiesnb")


@dataclass(frozen=True)
class RankExample:
    input: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Prompt:
    """One prompt template: ``render`` turns a record into the input text and its answer choices;
    ``source`` is the template's text (what the caches fingerprint)."""

    name: str
    render: Callable[[Record], tuple[str, tuple[str, ...]]]
    source: str
    needs: frozenset = frozenset()  # the record's columns it reads (Jinja renders a missing one as "")


@dataclass(frozen=True)
class PaperDataset:
    name: str
    repo: str  # the namespaced hub repository
    config: str  # its configuration (a folder of the Parquet export)
    train: str  # hub split each role reads
    validation: str
    test: str | None  # None: validation and test are cut from the ``validation`` split
    label: Callable[[Record], int]  # the index of the right answer choice
    promptsource: tuple[str, ...]  # promptsource's (dataset, subset)
    ignore: tuple[str, ...] = ()  # promptsource templates the original leaves out
    manual: bool = False  # not on the hub (Story Cloze)

    def hub_splits(self) -> list[str]:
        return [s for s in (self.train, self.validation, self.test) if s]

    def url(self, split: str) -> str:
        return f"{HUB_ROOT}/{self.repo}@{PARQUET_REVISION}/{self.config}/{split}/*.parquet"

    def flat_urls(self, split: str) -> tuple[str, str]:
        """The export's older, flat layout (``rte/super_glue-train.parquet``, or sharded
        ``…-train-00000-of-00002.parquet``), which some repositories still have."""
        folder = f"{HUB_ROOT}/{self.repo}@{PARQUET_REVISION}/{self.config}"
        return f"{folder}/*-{split}.parquet", f"{folder}/*-{split}-[0-9]*-of-[0-9]*.parquet"


def _int_label(r: Record) -> int:
    return int(r["label"])


def _letter(r: Record) -> int:
    return "ABCDEFGH".index(r["answerKey"])


_SG = "aps/super_glue"
DATASETS: dict[str, PaperDataset] = {d.name: d for d in [
    PaperDataset("rte", _SG, "rte", "train", "validation", None, _int_label, ("super_glue", "rte")),
    PaperDataset("cb", _SG, "cb", "train", "validation", None, _int_label, ("super_glue", "cb")),
    PaperDataset("wic", _SG, "wic", "train", "validation", None, _int_label, ("super_glue", "wic")),
    PaperDataset("wsc", _SG, "wsc.fixed", "train", "validation", None, _int_label, ("super_glue", "wsc.fixed")),
    PaperDataset("copa", _SG, "copa", "train", "validation", None, _int_label, ("super_glue", "copa"),
                 ignore=("…which may be caused by", "…What could happen next, C1 or C2?", "…As a result, C1 or C2?",
                         "…why? C1 or C2")),
    PaperDataset("winogrande", "allenai/winogrande", "winogrande_xl", "train", "validation", None,
                 lambda r: int(r["answer"]) - 1, ("winogrande", "winogrande_xl")),
    PaperDataset("hellaswag", "Rowan/hellaswag", "default", "train", "validation", None, _int_label, ("hellaswag",),
                 ignore=("Randomized prompts template",)),
    PaperDataset("story_cloze", "LSDSem/story_cloze", "2016", "validation", "test", None,
                 lambda r: int(r["answer_right_ending"]) - 1, ("story_cloze", "2016"), manual=True),
    *[PaperDataset(f"anli_r{i}", "facebook/anli", "plain_text", f"train_r{i}", f"dev_r{i}", f"test_r{i}", _int_label,
                   ("anli",)) for i in (1, 2, 3)],
    PaperDataset("paws", "google-research-datasets/paws", "labeled_final", "train", "validation", "test", _int_label,
                 ("paws", "labeled_final")),
    PaperDataset("qasc", "allenai/qasc", "default", "train", "validation", None, _letter, ("qasc",)),
    PaperDataset("quartz", "allenai/quartz", "default", "train", "validation", "test", _letter, ("quartz",)),
    PaperDataset("wiki_qa", "microsoft/wiki_qa", "default", "train", "validation", "test", _int_label, ("wiki_qa",)),
]}

MIXTURES = {
    "t5_mixture": ["paws", "qasc", "quartz", "story_cloze", "wiki_qa", "winogrande", "wsc"],
    "T0_held_out": ["rte", "cb", "winogrande", "wic", "wsc", "copa", "hellaswag", "story_cloze", "anli_r1", "anli_r2", "anli_r3"],
}

# models as they are named on the hub today
MODEL_IDS = {f"t5-{size}": f"google-t5/t5-{size}" for size in ("small", "base", "large", "3b", "11b")}


def _spec(name: str) -> PaperDataset:
    spec = DATASETS.get(name)
    if spec is None:
        raise TiesnbError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    return spec


# ----------------------------------------------------------------------------------------------
# reading


def _read_local(path: Path) -> list[Record]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def records(name: str, split: str, data_dir: str | Path | None = None, story_cloze_dir: str | Path | None = None) -> list[Record]:
    """The records of one hub split of a dataset, in the dataset's schema and order."""
    spec = _spec(name)
    local = Path(story_cloze_dir) if spec.manual and story_cloze_dir else (Path(data_dir) / name if data_dir else None)
    if spec.manual and local is None:
        raise TiesnbError(f"{name} needs a manual download: get its CSV files (https://cs.rochester.edu/nlp/rocstories/), "
                          f"run `tiesnb data story-cloze CSV_DIR`, and set story_cloze_dir in study.yaml to the folder it writes")
    if local is not None:
        for suffix in (".jsonl", ".parquet"):
            if (local / f"{split}{suffix}").exists():
                return _read_local(local / f"{split}{suffix}")
        raise TiesnbError(f"{name}: no local copy {local / split}.jsonl (or .parquet): the folder holds one file per "
                          f"split in the dataset's schema")
    import datasets

    url = spec.url(split)
    try:
        from fsspec.core import url_to_fs

        fs, _ = url_to_fs(url)
        protocol = url.split("://")[0] + "://" if "://" in url else ""
        found = sorted(fs.glob(url)) or sorted({f for pattern in spec.flat_urls(split) for f in fs.glob(pattern)})
        if not found:
            raise FileNotFoundError(f"no Parquet files for split {split} in either layout")
        files = [f if "://" in f else protocol + f for f in found] if protocol else found
        ds = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    except Exception as e:  # no hub, nothing cached, a moved repository: say what was tried and what else works
        first = (str(e).splitlines() or [""])[0][:160]
        raise TiesnbError(f"cannot load {name} split {split!r} from {url} (or the flat {spec.flat_urls(split)[0]}) "
                          f"({type(e).__name__}: {first}); offline, set data_dir to a folder of copies "
                          f"<data_dir>/{name}/{split}.jsonl") from None
    return [dict(r) for r in ds]


# ----------------------------------------------------------------------------------------------
# prompts


def _promptsource():
    """promptsource's template module. Its last release (0.2.3, 2022) imports ``pkg_resources``
    only to find its own template folder; setuptools ≥ 81 no longer ships that module, so a
    stand-in answering that one call is installed when it is missing."""
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        shim = types.ModuleType("pkg_resources")

        def resource_filename(package: str, resource: str) -> str:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise ImportError(package)
            return os.path.join(os.path.dirname(spec.origin), resource)

        shim.resource_filename = resource_filename
        sys.modules["pkg_resources"] = shim
    try:
        from promptsource import templates
    except ImportError as e:
        raise TiesnbError(f"prompts 'promptsource' need the promptsource package ({e}): `make setup` installs it "
                          f"(pip install --no-deps --ignore-requires-python promptsource==0.2.3); or set prompts: tiesnb") from None
    return templates


def _from_promptsource(t) -> Prompt:
    from jinja2 import meta

    env = _promptsource().env
    needs = set()
    for text in (t.jinja, t.answer_choices or ""):
        needs |= meta.find_undeclared_variables(env.parse(text))

    def render(r: Record) -> tuple[str, tuple[str, ...]]:
        parts = t.apply(r)
        choices = t.get_answer_choices_list(r)
        if not parts or not parts[0].strip() or not choices:
            raise TiesnbError(f"promptsource template {t.name!r} gives no input or no answer choices for {str(r)[:100]}")
        return parts[0], tuple(choices)

    return Prompt(t.name, render, f"{t.jinja}\n|answer_choices|{t.answer_choices}", frozenset(needs - {"answer_choices"}))


@lru_cache(maxsize=None)
def promptsource_prompts(name: str) -> tuple[Prompt, ...]:
    """The original code's templates for a dataset: promptsource's templates of the original task
    whose metrics are accuracy, minus those it names, in promptsource's order; HellaSwag's
    randomized template becomes one template per prompt it draws from (as the original does)."""
    spec = _spec(name)
    ps = _promptsource()
    found = list(ps.DatasetTemplates(*spec.promptsource).templates.values())
    if not found:
        raise TiesnbError(f"promptsource has no templates for {'/'.join(spec.promptsource)}")
    kept = [t for t in found if t.metadata.original_task and all(m == "Accuracy" for m in t.metadata.metrics or [])
            and t.name not in spec.ignore]
    prompts = [_from_promptsource(t) for t in kept]
    if name == "hellaswag":
        [rnd] = [t for t in found if t.name == "Randomized prompts template"]
        m = re.search(r"set prompts = \[(.*?)\]", rnd.jinja, re.S)
        for i, text in enumerate(re.findall(r"'([^']*)'", m.group(1) if m else "")):
            prompts.append(_from_promptsource(ps.Template(
                name=f"randomized prompt {i + 1}", jinja=text + "{{ctx}}|||{{answer_choices [label | int()]}}",
                reference="", answer_choices='{{endings | join("|||")}}')))
    return tuple(prompts)


# the project's own templates (prompts: tiesnb)


def _fixed(name: str, text: Callable[[Record], str], choices: Callable[[Record], tuple[str, ...]], source: str) -> Prompt:
    return Prompt(name, lambda r: (text(r), tuple(choices(r))), source)


def _nli(choices: tuple[str, ...]):
    c = lambda r: choices  # noqa: E731
    return (_fixed("does this imply", lambda r: f'{r["premise"]} Question: does this imply that "{r["hypothesis"]}"? '
                   f'{", ".join(choices[:-1])} or {choices[-1]}?', c, f"nli-imply{choices}"),
            _fixed("can we infer", lambda r: f'Suppose {r["premise"]} Can we infer that "{r["hypothesis"]}"?', c, f"nli-infer{choices}"),
            _fixed("is it true", lambda r: f'{r["premise"]} Based on that, is it true that {r["hypothesis"]}?', c, f"nli-true{choices}"))


YES_NO = ("No", "Yes")


def _yes_no(forms: list[str], template: Callable[[Record, int], str]):
    return tuple(_fixed(f, lambda r, i=i: template(r, i), lambda r: YES_NO, f"yes-no:{f}") for i, f in enumerate(forms))


def _three(name: str, text: Callable[[Record, int], str], choices: Callable[[Record], tuple[str, ...]]):
    return tuple(_fixed(f"{name} {i}", lambda r, i=i: text(r, i), choices, f"{name}:{i}") for i in range(3))


def _story(r: Record) -> str:
    return " ".join(r[f"input_sentence_{i}"] for i in range(1, 5))


_LETTERED = lambda r: tuple(r["choices"]["text"])  # noqa: E731
TIESNB_PROMPTS: dict[str, tuple[Prompt, ...]] = {
    "rte": _nli(("Yes", "No")),
    "cb": _nli(("Yes", "No", "Maybe")),
    **{f"anli_r{i}": _nli(("Yes", "Maybe", "No")) for i in (1, 2, 3)},
    "wic": _yes_no(["same meaning", "same sense", "sense pair"], lambda r, i: [
        f'Does the word "{r["word"]}" mean the same thing in "{r["sentence1"]}" and "{r["sentence2"]}"?',
        f'"{r["sentence1"]}" / "{r["sentence2"]}" Is "{r["word"]}" used with the same meaning in both?',
        f'Sentence A: {r["sentence1"]} Sentence B: {r["sentence2"]} The same sense of "{r["word"]}"?'][i]),
    "wsc": _yes_no(["refer to", "same as", "passage"], lambda r, i: [
        f'{r["text"]} In the passage above, does "{r["span2_text"]}" refer to "{r["span1_text"]}"?',
        f'{r["text"]} Here, is "{r["span2_text"]}" the same as "{r["span1_text"]}"?',
        f'Passage: {r["text"]} Is "{r["span2_text"]}" "{r["span1_text"]}"?'][i]),
    "paws": _yes_no(["same thing", "paraphrase", "same meaning"], lambda r, i: [
        f'Sentence 1: {r["sentence1"]} Sentence 2: {r["sentence2"]} Do they mean the same thing?',
        f'Is "{r["sentence1"]}" a paraphrase of "{r["sentence2"]}"?',
        f'{r["sentence1"]} / {r["sentence2"]} Same meaning?'][i]),
    "wiki_qa": _yes_no(["reasonable", "correct", "candidate"], lambda r, i: [
        f'Question: {r["question"]} Would "{r["answer"]}" be a reasonable answer?',
        f'Is "{r["answer"]}" a correct answer to "{r["question"]}"?',
        f'{r["question"]} Candidate answer: {r["answer"]} Correct?'][i]),
    "copa": _three("copa", lambda r, i: [
        f'{r["premise"]} What was the {r["question"]}?',
        f'{r["premise"]} {"This happened because" if r["question"] == "cause" else "As a consequence,"}',
        f'Premise: {r["premise"]} Which is the more likely {r["question"]}?'][i], lambda r: (r["choice1"], r["choice2"])),
    "winogrande": _three("winogrande", lambda r, i: [
        f'{r["sentence"]} In the sentence above, what does "_" stand for?', f'Fill in the blank: {r["sentence"]}',
        f'{r["sentence"]} Who or what is "_"?'][i], lambda r: (r["option1"], r["option2"])),
    "hellaswag": _three("hellaswag", lambda r, i: [
        r["ctx"], f'Complete the description: {r["ctx"]}', f'{r["activity_label"]}: {r["ctx"]} What happens next?'][i],
        lambda r: tuple(r["endings"])),
    "story_cloze": _three("story", lambda r, i: [
        f"{_story(r)} What is a possible continuation for the story?", f"{_story(r)} Which ending fits?",
        f"Story: {_story(r)} Ending:"][i], lambda r: (r["sentence_quiz1"], r["sentence_quiz2"])),
    "qasc": _three("qasc", lambda r, i: [
        r["question"], f'{r["fact1"]} {r["fact2"]} {r["question"]}', f'Question: {r["question"]} Answer:'][i], _LETTERED),
    "quartz": _three("quartz", lambda r, i: [
        f'{r["para"]} {r["question"]}', f'Question: {r["question"]} Use this fact: {r["para"]}', r["question"]][i], _LETTERED),
}


def prompts_for(name: str, prompts: str = "promptsource") -> tuple[Prompt, ...]:
    _spec(name)
    if prompts == "promptsource":
        return promptsource_prompts(name)
    if prompts == "tiesnb":
        return TIESNB_PROMPTS[name]
    raise TiesnbError(f"prompts must be one of {', '.join(PROMPTS)}, got {prompts!r}")


def prompts_fingerprint(prompts: tuple[Prompt, ...]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.name.encode() + b"\0" + p.source.encode() + b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# one dataset's splits


@dataclass
class PaperTaskData:
    """One dataset's splits (records in its schema) and the prompts that turn them into rank
    examples. ``fingerprint`` covers the records and the prompts' text."""

    name: str
    train: list[Record]
    val: list[Record]
    test: list[Record]
    prompts: tuple[Prompt, ...]
    records_fingerprint: str = ""
    prompt_style: str = "promptsource"

    @property
    def fingerprint(self) -> str:
        return f"{self.records_fingerprint}-{prompts_fingerprint(self.prompts)}"

    @property
    def templates(self) -> tuple[Prompt, ...]:
        return self.prompts

    def split(self, name: str) -> list[Record]:
        from .tasks import parse_split

        base, n = parse_split(name)
        return getattr(self, base)[:n]

    def size(self, split: str) -> int:
        return len(self.split(split))

    def example(self, record: Record, template: int) -> RankExample:
        text, choices = self.prompts[template].render(record)
        label = DATASETS[self.name].label(record)
        if not 0 <= label < len(choices):
            raise TiesnbError(f"{self.name}: label {label} outside the {len(choices)} answer choices of template "
                              f"{self.prompts[template].name!r}")
        return RankExample(text, choices, label)

    def examples(self, split: str, template: int) -> list[RankExample]:
        return [self.example(r, template) for r in self.split(split)]

    def to_json(self) -> dict:
        return {"records_fingerprint": self.records_fingerprint, "train": self.train, "val": self.val, "test": self.test}

    @classmethod
    def from_json(cls, name: str, raw: dict, prompts: str = "promptsource") -> "PaperTaskData":
        # the fingerprint is computed again from the records read: an edited file is a new dataset
        return cls(name, raw["train"], raw["val"], raw["test"], prompts_for(name, prompts),
                   records_fingerprint(raw["train"], raw["val"], raw["test"]), prompts)

    def __eq__(self, other) -> bool:
        return isinstance(other, PaperTaskData) and (self.name, self.fingerprint) == (other.name, other.fingerprint)


def load_paper_task(name: str, n_train: int = 0, n_val: int = 32, n_test: int = 0, seed: int = 42,
                    data_dir: str | Path | None = None, story_cloze_dir: str | Path | None = None,
                    prompts: str = "promptsource") -> PaperTaskData:
    """A dataset's splits as the original reads them (see the module's docstring). ``n_train``
    and ``n_test`` cap the training and test records (0: all, the original); ``n_val`` is the
    number of validation examples cut from a shared split (the original's 32)."""
    spec = _spec(name)
    train = records(name, spec.train, data_dir, story_cloze_dir)
    validation = records(name, spec.validation, data_dir, story_cloze_dir)
    shuffled = list(validation)
    random.Random(seed).shuffle(shuffled)  # the original: random.seed(42); random.shuffle(...)
    if spec.test is None:  # cut validation and test from one split
        if len(shuffled) <= n_val:
            raise TiesnbError(f"{name}: its {spec.validation} split has {len(shuffled)} examples, not more than the "
                              f"{n_val} for validation: lower n_val")
        val, test = shuffled[:n_val], shuffled[n_val:]
    elif name.startswith("anli"):
        val, test = shuffled[:n_val], records(name, spec.test, data_dir, story_cloze_dir)
    else:  # PAWS, WikiQA, QuaRTz: the whole validation split, in its order, and the test split
        val, test = validation, records(name, spec.test, data_dir, story_cloze_dir)
    if n_train > 0:
        train = train[:n_train]
    if n_test > 0:
        test = test[:n_test]
    data = PaperTaskData(name, train, val, test, prompts_for(name, prompts), prompt_style=prompts)
    for split in ("val", "train", "test"):  # every template must apply: a schema mismatch is reported here, by name
        for r in getattr(data, split)[:1]:
            for t in range(len(data.prompts)):
                try:
                    missing = sorted(data.prompts[t].needs - set(r))
                    if missing:
                        raise KeyError(f"no column {', '.join(missing)}")
                    data.example(r, t)
                except (KeyError, ValueError, TypeError, IndexError) as e:
                    raise TiesnbError(f"{name}: a {split} record does not have the dataset's schema "
                                      f"({type(e).__name__}: {e}): {str(r)[:120]}") from None
    data.records_fingerprint = records_fingerprint(data.train, data.val, data.test)
    return data


def records_fingerprint(*splits: list[Record]) -> str:
    return hashlib.sha256(json.dumps(list(splits), sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Story Cloze from its official CSV files

STORY_CLOZE_COLUMNS = {"InputStoryid": "story_id", "InputSentence1": "input_sentence_1", "InputSentence2": "input_sentence_2",
                       "InputSentence3": "input_sentence_3", "InputSentence4": "input_sentence_4",
                       "RandomFifthSentenceQuiz1": "sentence_quiz1", "RandomFifthSentenceQuiz2": "sentence_quiz2",
                       "AnswerRightEnding": "answer_right_ending"}


def convert_story_cloze(csv_dir: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Convert the Story Cloze 2016 CSV files (``cloze_test_val__spring2016 …csv`` and
    ``cloze_test_test__spring2016 …csv``) to ``<out_dir>/validation.jsonl`` and ``test.jsonl`` in
    the hub dataset's schema. Written to temporary files, then renamed."""
    from ..io import atomic_path

    csv_dir, out_dir = Path(csv_dir), Path(out_dir)
    if not csv_dir.is_dir():
        raise TiesnbError(f"story-cloze: {csv_dir} is not a folder")
    found = {}
    for path in sorted(csv_dir.glob("*.csv")):
        low = path.name.lower()
        if "2016" in low and "val" in low:
            found.setdefault("validation", path)
        elif "2016" in low and "test" in low:
            found.setdefault("test", path)
    missing = [s for s in ("validation", "test") if s not in found]
    if missing:
        raise TiesnbError(f"story-cloze: no 2016 {' or '.join(missing)} CSV in {csv_dir} (expected names like "
                          f"'cloze_test_val__spring2016 - cloze_test_ALL_val.csv' and '…_test__spring2016 …_test.csv')")
    parsed = {}  # every file read and checked before anything is written
    for split, path in found.items():
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            absent = [c for c in STORY_CLOZE_COLUMNS if c not in (reader.fieldnames or [])]
            if absent:
                raise TiesnbError(f"story-cloze: {path.name} lacks the column(s) {', '.join(absent)}")
            rows = []
            for row in reader:
                rec = {new: row[old] for old, new in STORY_CLOZE_COLUMNS.items()}
                if rec["answer_right_ending"] not in ("1", "2"):
                    raise TiesnbError(f"story-cloze: {path.name}: AnswerRightEnding must be 1 or 2, got "
                                      f"{rec['answer_right_ending']!r} (story {rec['story_id']})")
                rec["answer_right_ending"] = int(rec["answer_right_ending"])
                rows.append(rec)
        parsed[split] = rows
    written = {}
    for split, rows in parsed.items():
        target = out_dir / f"{split}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        written[split] = target
    return written
