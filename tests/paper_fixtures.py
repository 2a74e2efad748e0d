"""Tiny invented records in the schema of each of the paper's datasets (as ``datasets`` gives
them), written as ``<data_dir>/<dataset>/<split>.jsonl``."""

import json
import random
from pathlib import Path

from tiesnb.data.paper import DATASETS

NOUNS = ["cat", "dog", "bird", "car", "tree", "river", "house", "book"]
VERBS = ["sleeps", "runs", "sings", "stops", "grows", "flows", "stands", "falls"]


def _sentence(rng):
    return f"the {rng.choice(NOUNS)} {rng.choice(VERBS)}"


def record(name: str, i: int, rng: random.Random) -> dict:
    s1, s2 = _sentence(rng), _sentence(rng)
    if name in ("rte",):
        return {"premise": s1, "hypothesis": s2, "idx": i, "label": i % 2}
    if name == "cb" or name.startswith("anli"):
        return {"premise": s1, "hypothesis": s2, "label": i % 3, **({"idx": i} if name == "cb" else {"uid": str(i), "reason": ""})}
    if name == "wic":
        w = rng.choice(NOUNS)
        return {"word": w, "sentence1": f"the {w} {rng.choice(VERBS)}", "sentence2": f"a {w} {rng.choice(VERBS)}",
                "start1": 4, "start2": 2, "end1": 4 + len(w), "end2": 2 + len(w), "idx": i, "label": i % 2}
    if name == "wsc":
        return {"text": f"{s1} because it {rng.choice(VERBS)}", "span1_index": 1, "span2_index": 4,
                "span1_text": s1.split()[1], "span2_text": "it", "idx": i, "label": i % 2}
    if name == "copa":
        return {"premise": s1, "choice1": s2, "choice2": _sentence(rng), "question": ["cause", "effect"][i % 2],
                "idx": i, "label": i % 2}
    if name == "winogrande":
        return {"sentence": f"the {NOUNS[i % 8]} saw the {NOUNS[(i + 1) % 8]} because _ {rng.choice(VERBS)}",
                "option1": NOUNS[i % 8], "option2": NOUNS[(i + 1) % 8], "answer": str(1 + i % 2)}
    if name == "hellaswag":
        return {"ind": i, "activity_label": "walking", "ctx_a": s1, "ctx_b": "then", "ctx": f"{s1} then",
                "endings": [_sentence(rng) for _ in range(4)], "source_id": "x", "split": "train", "split_type": "indomain",
                "label": str(i % 4)}
    if name == "story_cloze":
        return {"story_id": str(i), **{f"input_sentence_{k}": _sentence(rng) for k in range(1, 5)},
                "sentence_quiz1": _sentence(rng), "sentence_quiz2": _sentence(rng), "answer_right_ending": 1 + i % 2}
    if name == "paws":
        return {"id": i, "sentence1": s1, "sentence2": s2, "label": i % 2}
    if name == "qasc":
        letters = list("ABCDEFGH")
        return {"id": str(i), "question": f"what {rng.choice(VERBS)}", "choices": {"text": NOUNS, "label": letters},
                "answerKey": letters[i % 8], "fact1": s1, "fact2": s2, "combinedfact": s1, "formatted_question": ""}
    if name == "quartz":
        return {"id": str(i), "question": f"which {rng.choice(VERBS)}", "choices": {"text": ["more", "less"], "label": ["A", "B"]},
                "answerKey": "AB"[i % 2], "para": s1, "para_id": "p",
                "para_anno": {k: "" for k in ("effect_prop", "cause_dir_str", "effect_dir_str", "cause_dir_sign",
                                              "effect_dir_sign", "cause_prop")},
                "question_anno": {k: "" for k in ("more_effect_dir", "less_effect_dir", "less_cause_prop",
                                                  "more_effect_prop", "less_effect_prop", "less_cause_dir")}}
    if name == "wiki_qa":
        return {"question_id": str(i), "question": f"what {rng.choice(VERBS)}", "document_title": "x", "answer": s1,
                "label": i % 2}
    raise KeyError(name)


def write_fixtures(folder: Path, names=None, n_train: int = 16, n_eval: int = 14, seed: int = 0) -> Path:
    """Local copies ``<folder>/<dataset>/<hub split>.jsonl`` of every split a dataset reads."""
    rng = random.Random(seed)
    for name in names or DATASETS:
        spec = DATASETS[name]
        for split in spec.hub_splits():
            n = n_train if split == spec.train else n_eval
            path = Path(folder) / name / f"{split}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(record(name, i, rng)) + "\n" for i in range(n)))
    return Path(folder)


def write_parquet_export(root: Path, names=None, n: int = 40, seed: int = 0) -> Path:
    """The hub's Parquet export of each dataset's repository, as it is laid out there:
    ``<root>/<owner>/<repo>@refs%2Fconvert%2Fparquet/<config>/<split>/0000.parquet``, with the
    dataset's column names (a stand-in for ``hf://datasets`` when ``TIESNB_HUB_ROOT`` points here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tiesnb.data.paper import PARQUET_REVISION

    rng = random.Random(seed)
    for name in names or DATASETS:
        spec = DATASETS[name]
        for split in spec.hub_splits():
            path = Path(root) / f"{spec.repo}@{PARQUET_REVISION}" / spec.config / split / "0000.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist([record(name, i, rng) for i in range(n)]), path)
    return Path(root)


def all_texts(folder: Path) -> list[str]:
    """Every input and answer choice the templates (promptsource's and the project's) make from
    the fixtures (the tiny tokenizer's vocabulary)."""
    from tiesnb.data.paper import PaperTaskData, prompts_for, records

    texts = []
    for name, spec in DATASETS.items():
        for style in ("promptsource", "tiesnb"):
            d = PaperTaskData(name, [], [], [], prompts_for(name, style))
            for split in spec.hub_splits():
                for r in records(name, split, folder, folder / name if spec.manual else None):
                    for t in range(len(d.prompts)):
                        ex = d.example(r, t)
                        texts += [ex.input, *ex.choices]
    return texts
