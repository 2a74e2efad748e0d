"""Cached evaluations: every accuracy a study reports, and the prediction for every example, kept
under ``runs/<study>/cache/evaluations/`` by a key of everything that determines it.

| key part  | what                                                                              |
|-----------|-----------------------------------------------------------------------------------|
| recipe    | the evaluated model: a checkpoint's content hash, or a merge method, its parameters, its options and its models' hashes |
| tasks, split | what it is evaluated on                                                        |
| data      | each task's split fingerprint (its examples, after reading and templating)         |
| heads     | the heads' content hash                                                            |
| eval      | the family's evaluation settings (lengths, templates, batch size, autocast, ...)   |
| runtime   | bf16 or float32 as resolved, the device, the world size, torch and transformers versions |
| code      | the code on the evaluation path: the active family's module and its data readers, what every family shares (``SHARED_CODE``) |

Nothing else enters: editing another family, the assets table, a notebook or the tables leaves
every cached evaluation valid. A record is JSON; an unreadable one is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .. import __version__
from ..io import write_json

PACKAGE = Path(__file__).resolve().parent.parent
# what every family's evaluation path runs (relative to the package); a family adds its own
# module and the readers of its data (``Family.code``)
SHARED_CODE = ("families/base.py", "families/common.py", "training.py", "merge/*.py", "study/merging.py", "study/store.py")


def family_code(family) -> list[str]:
    """The package files an evaluation by ``family`` runs, sorted."""
    own = type(family).__module__.removeprefix("tiesnb.").replace(".", "/") + ".py"
    patterns = (*SHARED_CODE, own, *getattr(family, "code", ()))
    return sorted({str(p.relative_to(PACKAGE)) for pattern in patterns for p in PACKAGE.glob(pattern)})


def code_fingerprint(family) -> str:
    h = hashlib.sha256(__version__.encode())
    for name in family_code(family):
        h.update(name.encode())
        h.update((PACKAGE / name).read_bytes())
    return h.hexdigest()[:12]


def runtime(config) -> dict:
    """What the same model computes differently on another machine or stack."""
    import transformers

    from ..training import device, resolve_autocast

    cpu = device().type == "cpu"  # on a CPU the thread count can change a result's last bits
    return {"bf16": resolve_autocast(config.autocast), "device": device().type,
            **({"threads": torch.get_num_threads()} if cpu else {}),
            "world_size": int(os.environ.get("WORLD_SIZE", "1") or 1),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def encode_digits(values: np.ndarray) -> str | list:
    """Per-example values as a compact string of digits when they are small integers."""
    v = np.asarray(values)
    if v.size and np.issubdtype(v.dtype, np.integer) and v.min() >= 0 and v.max() <= 9:
        return "".join(map(str, v.tolist()))
    return v.tolist()


def decode_digits(raw: str | list, dtype) -> np.ndarray:
    if isinstance(raw, str):
        return np.frombuffer(raw.encode(), dtype=np.uint8).astype(dtype) - dtype(ord("0"))
    return np.asarray(raw, dtype=dtype)


class EvaluationStore:
    def __init__(self, study):
        self.study = study  # its data, heads, family settings; the evaluator is made once
        self._evaluator = None

    @property
    def folder(self) -> Path:
        return self.study.run_dir / "cache" / "evaluations"

    def evaluator(self):
        if self._evaluator is None:
            self._evaluator = self.study.family.evaluator(self.study)
        return self._evaluator

    def key(self, recipe: Mapping[str, Any], tasks: Sequence[str], split: str) -> str:
        s = self.study
        data = s.data()
        key = {"recipe": recipe, "tasks": list(tasks), "split": split,
               "data": {t: data[t].fingerprint for t in tasks}, "heads": s.inputs.heads_fingerprint(),
               "eval": s.family.eval_settings(s), "runtime": runtime(s.config), "code": code_fingerprint(s.family)}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self.file(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable: recomputed
            return None

    def evaluate(self, state_fn: Callable[[], Mapping[str, torch.Tensor] | None], recipe: Mapping[str, Any],
                 tasks: Sequence[str], split: str, method: str, seed: int, encoder: Callable, /,
                 **hparams: Any) -> list[dict]:
        """Accuracy rows of the model that ``state_fn`` builds (only called on a cache miss;
        ``encoder`` turns it into what the evaluator runs), one per task, each with the training
        seed (``seed``; a method's own seed in ``hparams`` becomes ``method_seed``), the number of examples, and the per-example predictions (``pred``) and scores
        (``correct``: 1 right, 0 wrong; the mean is the accuracy)."""
        key = self.key(recipe, tasks, split)
        record = self.get(key)
        if record is None:
            state = encoder(state_fn())
            ev = self.evaluator()
            record = {"key": key, "tasks": {}}
            for t in tasks:
                pred, correct, spread = ev.scores(state, t, split)
                record["tasks"][t] = {"accuracy": float(np.mean(correct)), "pred": encode_digits(pred),
                                      "correct2": encode_digits(np.rint(2 * np.asarray(correct)).astype(np.int64))}
                if spread:  # several prompt templates: the median is reported, and the range
                    record["tasks"][t]["spread"] = [min(spread), max(spread)]
            write_json(self.file(key), record)
        if "seed" in hparams:  # a method's own seed (DARE's drop): the column "seed" is the training seed
            hparams["method_seed"] = hparams.pop("seed")
        rows = []
        for t in tasks:
            r = record["tasks"][t]
            correct = decode_digits(r["correct2"], np.float64) / 2
            row = {"task": t, "split": split, "method": method, "seed": seed, **hparams,
                   "accuracy": r["accuracy"], "n": len(correct), "pred": decode_digits(r["pred"], np.int64),
                   "correct": correct}
            if "spread" in r:
                row["template_min"], row["template_max"] = r["spread"]
            rows.append(row)
        return rows
