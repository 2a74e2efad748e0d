"""One study: its configuration, where its outputs go, and the steps the notebooks call.

A study is named by a folder of parameter files, ``params/<study>/``; ``study.yaml`` there holds
the settings every notebook shares (tasks, splits, training, evaluation), each notebook run has
its own YAML beside it. Everything the study makes goes under ``runs/<study>/`` (checkpoints,
statistics, cached results, executed notebooks) except its figures and tables, which go to
``figures_dir`` (``figures/`` for the default study).

Training seeds. ``seeds: [0, 1, 2]`` retrains every task model and the multitask model once per
seed (the seed drives the initialisation of what is trained, the data order and dropout); the
splits (``split_seed``) and the heads stay the same for every seed. ``study.at_seed(s)`` is the
study seen from one seed: its checkpoints live in ``runs/<study>/seed-<s>/`` and every evaluation
row it returns carries ``seed``; the notebooks loop over ``study.seeds`` and the tables report the
mean over seeds with an interval (:mod:`tiesnb.stats`).

Expensive steps are reused when their resolved parameters have not changed: checkpoints (see
:func:`tiesnb.training.train_checkpoint`), statistics, and every evaluation, cached — accuracy and
the prediction for every example — under a key of everything that determines it: the merge
recipe, the inputs' fingerprints, the data, the heads, the evaluation settings and the code of
the modules on the evaluation path.
"""

from __future__ import annotations

import hashlib
import copy
import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from . import __version__, paths
from .checkpoints import load_state_dict, save_state_dict
from .config import dataclass_from, read_yaml
from .errors import TiesnbError
from .io import atomic_path, sha256_cached, write_json

MULTITASK = "multitask"


@dataclass
class StudyConfig:
    """``params/<study>/study.yaml``: the settings shared by every notebook of a study, whatever its
    model family; the family's own settings are the section named after it (``settings``)."""

    name: str
    tasks: list[str]
    inherit: str = ""  # another study whose study.yaml (and notebook parameter files) this one starts from
    model: str = "minilm"  # the model family (tiesnb.families): minilm | vision | seq2seq | clip
    split_seed: int = 0  # the shuffle that draws the splits (seq2seq: the original's 42); fixed across seeds
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds: every model is trained once per seed
    # data: examples per split and task (validation and test class-balanced)
    n_train: int = 2000
    n_val: int = 64
    n_test: int = 400
    # compute
    autocast: str = "auto"  # auto | bf16 | off
    threads: int = 0  # torch CPU threads, 0 = torch's default
    eval_batch_size: int = 32
    # fine-tuning of each task model and of the multitask model
    mode: str = "full"  # full | ia3 (the families that have it)
    steps: int = 250
    multitask_steps: int = 600
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    # statistics for the Fisher and RegMean baselines
    fisher_examples: int = 64
    gram_examples: int = 256
    # where figures and tables go, relative to the repository ("": runs/<study>/figures)
    figures_dir: str = "figures"
    settings: Any = field(default=None, repr=False)  # the family's section (its Settings dataclass); not a YAML key

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str | Path) -> "StudyConfig":
        """Strictly, from study.yaml's mapping: the shared keys, and the family's section."""
        from .families import FAMILIES, family, settings_fields

        data = dict(data)
        model = data.get("model", "minilm")
        if not isinstance(model, str):
            raise TiesnbError(f"{where}: parameter 'model' must be str, got {model!r}")
        fam = family(model)
        section = data.pop(model, None) or {}
        if not isinstance(section, dict):
            raise TiesnbError(f"{where}: '{model}:' must be a section of settings (a mapping), got {section!r}")
        shared = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        for key in list(data):
            if key in FAMILIES:
                raise TiesnbError(f"{where}: section '{key}:' applies to model: {key} (this study's model is {model})")
            if key not in shared:
                owners = [f for f in FAMILIES if key in settings_fields(f)]
                if owners:
                    raise TiesnbError(f"{where}: '{key}' is a setting of the {' / '.join(owners)} family: put it in the "
                                      f"'{model}:' section" + ("" if model in owners else f" (this study's model is {model})"))
        config = dataclass_from(cls, data, where)
        config.settings = dataclass_from(fam.Settings, section, f"{where} [{model}:]")
        return config


EVAL_CODE = ["training.py", "families/*.py", "merge/*.py", "data/*.py"]


def _code_fingerprint() -> str:
    """Hash of the modules whose code determines merge and evaluation results: the model, the
    evaluators, the data readers and templates, the merge methods."""
    h = hashlib.sha256(__version__.encode())
    pkg = Path(__file__).parent
    for path in sorted({p for pattern in EVAL_CODE for p in pkg.glob(pattern)}):
        h.update(str(path.relative_to(pkg)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _encode_digits(values: np.ndarray) -> str | list:
    """Per-example values as a compact string of digits when they are small integers."""
    v = np.asarray(values)
    if v.size and np.issubdtype(v.dtype, np.integer) and v.min() >= 0 and v.max() <= 9:
        return "".join(map(str, v.tolist()))
    return v.tolist()


def _decode_digits(raw: str | list, dtype) -> np.ndarray:
    if isinstance(raw, str):
        return np.frombuffer(raw.encode(), dtype=np.uint8).astype(dtype) - dtype(ord("0"))
    return np.asarray(raw, dtype=dtype)


def threads_setting(configured: int) -> int:
    """Torch threads: ``TIESNB_THREADS`` when set (``make study`` sets it to share the cores
    between the runs it starts at once), else the study's ``threads`` (0: torch's default)."""
    import os

    value = os.environ.get("TIESNB_THREADS", "")
    if value.strip():
        try:
            n = int(value)
        except ValueError:
            raise TiesnbError(f"TIESNB_THREADS must be a whole number, got {value!r}") from None
        if n < 0:
            raise TiesnbError(f"TIESNB_THREADS must be 0 (torch's default) or more, got {n}")
        return n
    return configured


def study_settings(name: str) -> dict:
    """``params/<name>/study.yaml``, on top of the study it names in ``inherit`` (one level)."""
    path = paths.PARAMS / name / "study.yaml"
    if not path.exists():
        known = sorted(str(p.parent.relative_to(paths.PARAMS)) for p in paths.PARAMS.rglob("study.yaml"))
        raise TiesnbError(f"no study {name!r}: {path} is missing; studies: {', '.join(known)}")
    own = read_yaml(path)
    parent = own.get("inherit")
    if not parent:
        return own
    parent_path = paths.PARAMS / str(parent) / "study.yaml"
    if not parent_path.exists():
        raise TiesnbError(f"{path}: inherit names study {parent!r}, but {parent_path} is missing")
    base = read_yaml(parent_path)
    if base.get("inherit"):
        raise TiesnbError(f"{path}: inherits {parent!r}, which inherits again; one level only")
    merged = {**base, "figures_dir": "", **own}  # a derived study never writes over its parent's figures
    for key, value in own.items():  # a family's section: the parent's keys, then this study's
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
    return merged


def params_file(study: str, run: str) -> Path:
    """The parameter file of one notebook run: the study's own, or its parent's (``inherit``)."""
    own = paths.PARAMS / study / f"{run}.yaml"
    if own.exists():
        return own
    parent = study_settings(study).get("inherit")
    if parent and (paths.PARAMS / str(parent) / f"{run}.yaml").exists():
        return paths.PARAMS / str(parent) / f"{run}.yaml"
    return own


class Study:
    """The steps of one study, from the notebooks' point of view."""

    def __init__(self, config: StudyConfig, seed: int | None = None):
        self.config = c = config
        from .families import family

        self.family = family(c.model)
        self.settings = c.settings if c.settings is not None else self.family.Settings()
        if c.mode not in self.family.modes:
            raise TiesnbError(f"study {c.name}: mode must be {' or '.join(self.family.modes)} for the {c.model} family, "
                              f"got {c.mode!r}")
        for key in ("n_train", "n_test"):
            if getattr(c, key) < 0:
                raise TiesnbError(f"study {c.name}: {key} must be >= 0, got {getattr(c, key)}")
        if c.eval_batch_size < 1:
            raise TiesnbError(f"study {c.name}: eval_batch_size must be at least 1, got {c.eval_batch_size}")
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise TiesnbError(f"study {c.name}: seeds must be a non-empty list of distinct integers, got {c.seeds}")
        self.family.check(self)
        self.seed = c.seeds[0] if seed is None else seed
        self.run_dir = paths.RUNS / c.name
        # "" keeps the figures inside the run folder (the smoke study: never over the real ones);
        # "figures" is the repository's figures/ (moved by TIESNB_FIGURES)
        if not c.figures_dir:
            self.figures_dir = self.run_dir / "figures"
        elif c.figures_dir == "figures":
            self.figures_dir = paths.FIGURES
        else:
            self.figures_dir = (paths.ROOT / c.figures_dir).resolve()
        self._shared: dict[str, Any] = {}  # data and evaluator: shared by every seed's view
        self._states: dict[str, dict] = {}
        self._tau: dict[str, dict] = {}  # merged task vectors of the last setting, reused across λ
        self._tv: dict[str, Any] = {}
        self.threads = threads_setting(c.threads)
        if self.threads > 0:
            torch.set_num_threads(self.threads)

    @classmethod
    def load(cls, name: str) -> "Study":
        return cls(StudyConfig.parse(study_settings(name), paths.PARAMS / name / "study.yaml"))

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    @property
    def seeds(self) -> list[int]:
        return list(self.config.seeds)

    def at_seed(self, seed: int) -> "Study":
        """This study seen from one training seed: the same data, heads and evaluator, that seed's
        checkpoints, statistics and task vectors."""
        if seed not in self.config.seeds:
            raise TiesnbError(f"seed {seed} is not one of study {self.config.name}'s seeds {self.config.seeds}")
        view = copy.copy(self)
        view.seed = seed
        view._states, view._tau, view._tv = {}, {}, {}
        return view

    def variant(self, **settings) -> "Study":
        """This study with some of its family's settings changed — an evaluation variant (the vision
        family's BatchNorm re-estimated): the same data, heads and checkpoints, its own evaluator
        and cache keys (the settings enter them)."""
        view = copy.copy(self)
        view.settings = dataclasses.replace(self.settings, **settings)
        view.config = dataclasses.replace(self.config, settings=view.settings)
        view._shared = {"data": self.data()}
        view._states, view._tau, view._tv = {}, {}, {}
        return view

    def each_seed(self):
        """The study at each of its seeds, in order (one at a time: a seed's models are released
        when the loop moves on)."""
        for s in self.seeds:
            yield self.at_seed(s)

    @property
    def seed_dir(self) -> Path:
        return self.run_dir / f"seed-{self.seed}"

    # ------------------------------------------------------------------ data and heads
    def data(self) -> dict:
        """Every task's splits, read once and kept as JSON under the run folder."""
        if "data" not in self._shared:
            data = {}
            key = self.family.data_key(self)
            for task in self.tasks:
                path = self.run_dir / "data" / f"{task}-{key}.json"
                if not self.family.cache_data:  # read directly (the reader keeps its own cache)
                    data[task] = self.family.load_task(self, task)
                elif path.exists():
                    data[task] = self.family.task_data(self, task, json.loads(path.read_text()))
                else:
                    d = data[task] = self.family.load_task(self, task)
                    write_json(path, d.to_json())
            self._shared["data"] = data
        return self._shared["data"]

    def data_summary(self):
        """One row per task: examples per split, classes or prompt templates."""
        import pandas as pd

        rows = []
        for t, d in self.data().items():
            row = {"task": t, **{s: d.size(s) for s in ("train", "val", "test")}}
            if hasattr(d, "labels"):
                row["classes"] = len(d.labels)
            if hasattr(d, "templates"):
                row["templates"] = len(d.templates)
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def heads_dir(self) -> Path:
        return self.run_dir / "heads"

    def fit_heads(self, progress: bool = True) -> dict[str, torch.Tensor]:
        """The linear probes (reused when data and settings are unchanged); none for seq2seq and
        (fitted from the text tower, not probed) for clip."""
        c = self.config
        data = self.data()
        resolved = {"data": {t: data[t].fingerprint for t in c.tasks}, **self.family.heads_settings(self),
                    "version": __version__}
        meta = self.heads_dir / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == json.loads(json.dumps(resolved)):
            return self.heads()
        heads = self.family.fit_heads(self, progress)
        save_state_dict(heads, self.heads_dir, overwrite=True,
                        extra_files={"params.json": json.dumps({"resolved": resolved}, indent=2) + "\n"})
        return heads

    def heads(self) -> dict[str, torch.Tensor]:
        if not (self.heads_dir / "model.safetensors").exists():
            raise TiesnbError(f"study {self.config.name}: the heads are not fitted yet: run `make probe STUDY={self.config.name}`")
        return load_state_dict(self.heads_dir)

    # ------------------------------------------------------------------ training
    def train_config(self, task: str):
        c = self.config
        if task != MULTITASK and task not in c.tasks:
            raise TiesnbError(f"task {task!r} is not in study {c.name}; its tasks: {', '.join(c.tasks)} (or {MULTITASK})")
        cfg = self.family.train_config(self, list(c.tasks) if task == MULTITASK else [task])
        cfg.steps = c.multitask_steps if task == MULTITASK else c.steps
        return cfg

    def checkpoint_dir(self, task: str) -> Path:
        return self.seed_dir / "checkpoints" / task

    def train(self, task: str, progress: bool = True) -> Path:
        from .training import train_checkpoint

        return train_checkpoint(self.family.trainer(), self.train_config(task), self.data(), self.heads(),
                                self.checkpoint_dir(task), progress=progress)

    def state(self, task: str) -> dict[str, torch.Tensor]:
        """A trained checkpoint (task model or multitask): encoder parameters, or (IA)³ vectors."""
        if task not in self._states:
            path = self.checkpoint_dir(task)
            if not (path / "model.safetensors").exists():
                raise TiesnbError(f"no checkpoint for {task!r} (seed {self.seed}) in study {self.config.name}: "
                                  f"run `make train STUDY={self.config.name}`")
            self._states[task] = load_state_dict(path)
        return self._states[task]

    def checkpoint_fingerprint(self, task: str) -> str:
        """The checkpoint's content hash (remembered per file and modification time)."""
        path = self.checkpoint_dir(task) / "model.safetensors"
        if not path.exists():
            raise TiesnbError(f"no checkpoint for {task!r} (seed {self.seed}) in study {self.config.name}: "
                              f"run `make train STUDY={self.config.name}`")
        return sha256_cached(path)[:16]

    # ------------------------------------------------------------------ what is merged
    def base(self) -> dict[str, torch.Tensor]:
        """The point task vectors start from: the pretrained model, or (IA)³ vectors of ones."""
        from .training import ia3_identity

        if self.config.mode == "ia3":
            return ia3_identity(self.state(self.tasks[0]))
        return self.family.pretrained(self)

    def merge_options(self, params: Mapping[str, Any] | None = None) -> dict:
        """Which parameters merge and how (``exclude``, ``tied``, ``multiplicity``), per family."""
        return self.family.merge_options(self, params or {})

    def encoder(self, state: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        """The model state that computes what a (merged) state computes: (IA)³ vectors are folded
        into the pretrained weights."""
        from .training import fold_ia3

        if state is None or self.config.mode == "full":
            return state
        return fold_ia3(self.family.pretrained(self), state)

    def _aliases(self) -> dict[str, str]:
        """Tied names → the one that stands for them (the first in sorted order, as the engine)."""
        return {a: sorted(g)[0] for g in self.merge_options().get("tied", []) for a in sorted(g)[1:]}

    def task_vectors(self, tasks: Sequence[str] | None = None) -> dict:
        """Each model's task vector θ_t − θ0 over the merged parameters, tied ones once (kept once
        computed)."""
        import fnmatch

        from .merge import TaskVector

        base = self.base()
        exclude = self.merge_options().get("exclude", [])
        aliases = self._aliases()
        names = [n for n, v in base.items() if v.is_floating_point() and n not in aliases
                 and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
        for t in tasks or self.tasks:
            if t not in self._tv:
                self._tv[t] = TaskVector.between(base, self.state(t), names)
        return {t: self._tv[t] for t in (tasks or self.tasks)}

    def apply(self, tv, lam: float = 1.0) -> dict[str, torch.Tensor]:
        """``base + λ·τ`` as a full state (tied names get their representative's value)."""
        base = self.base()
        out = tv.apply(base, lam)
        for alias, rep in self._aliases().items():
            if alias in out:
                out[alias] = out[rep]
        return out

    # ------------------------------------------------------------------ statistics
    def statistic(self, kind: str, task: str, progress: bool = True) -> dict[str, torch.Tensor]:
        """The diagonal Fisher (``fisher``) or the Gram matrices (``grams``) of a task model on
        its training data, computed once."""
        c = self.config
        if c.mode != "full":
            raise TiesnbError("the Fisher and RegMean baselines are implemented for full fine-tuning (mode: full)")
        if kind not in ("fisher", "grams"):
            raise TiesnbError(f"unknown statistic {kind!r}: fisher or grams")
        folder = self.seed_dir / "stats" / f"{kind}-{task}"
        resolved = {"checkpoint": self.checkpoint_fingerprint(task), "n": c.fisher_examples if kind == "fisher" else c.gram_examples,
                    "settings": self.family.stat_settings(self), "code": _code_fingerprint()}
        meta = folder / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == resolved:
            return load_state_dict(folder)
        stat = self.family.statistic(self, kind, task, progress)
        save_state_dict(stat, folder, overwrite=True, extra_files={"params.json": json.dumps({"resolved": resolved}) + "\n"})
        return stat

    # ------------------------------------------------------------------ evaluation, cached
    def evaluator(self):
        if "evaluator" not in self._shared:
            self._shared["evaluator"] = self.family.evaluator(self)
        return self._shared["evaluator"]

    def _eval_key(self, recipe: Mapping[str, Any], tasks: Sequence[str], split: str) -> str:
        data = self.data()
        key = {"recipe": recipe, "tasks": list(tasks), "split": split,
               "data": {t: data[t].fingerprint for t in tasks}, "heads": self._heads_fingerprint(),
               "eval": self.family.eval_settings(self),
               "code": _code_fingerprint()}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _heads_fingerprint(self) -> str:
        return sha256_cached(self.heads_dir / "model.safetensors")[:16]

    def _cache_file(self, key: str) -> Path:
        return self.run_dir / "cache" / "evaluations" / key[:2] / f"{key}.json"

    def _cached(self, key: str) -> dict | None:
        path = self._cache_file(key)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # unreadable: recomputed
            return None

    def evaluate(self, state_fn: Callable[[], Mapping[str, torch.Tensor] | None], recipe: Mapping[str, Any],
                 tasks: Sequence[str], split: str, method: str, **hparams: Any) -> list[dict]:
        """Accuracy rows of the model that ``state_fn`` builds (only called on a cache miss), one
        per task, each with the seed, the number of examples, and the per-example predictions
        (``pred``) and scores (``correct``: 1 right, 0 wrong; the mean is the accuracy)."""
        key = self._eval_key(recipe, tasks, split)
        record = self._cached(key)
        if record is None:
            state = self.encoder(state_fn())
            ev = self.evaluator()
            record = {"key": key, "tasks": {}}
            for t in tasks:
                pred, correct, spread = ev.scores(state, t, split)
                record["tasks"][t] = {"accuracy": float(np.mean(correct)), "pred": _encode_digits(pred),
                                      "correct2": _encode_digits(np.rint(2 * np.asarray(correct)).astype(np.int64))}
                if spread:  # several prompt templates: the median is reported, and the range
                    record["tasks"][t]["spread"] = [min(spread), max(spread)]
            write_json(self._cache_file(key), record)
        if "seed" in hparams:  # a method's own seed (DARE's drop): the column "seed" is the training seed
            hparams["method_seed"] = hparams.pop("seed")
        rows = []
        for t in tasks:
            r = record["tasks"][t]
            correct = _decode_digits(r["correct2"], np.float64) / 2
            row = {"task": t, "split": split, "method": method, "seed": self.seed, **hparams,
                   "accuracy": r["accuracy"], "n": len(correct), "pred": _decode_digits(r["pred"], np.int64),
                   "correct": correct}
            if "spread" in r:
                row["template_min"], row["template_max"] = r["spread"]
            rows.append(row)
        return rows

    def evaluate_checkpoint(self, name: str | None, tasks: Sequence[str], split: str, method: str, **hparams) -> list[dict]:
        """``name``: a task, ``multitask``, or None for the pretrained encoder with the heads."""
        recipe = {"checkpoint": None if name is None else self.checkpoint_fingerprint(name)}
        return self.evaluate(lambda: None if name is None else self.state(name), recipe, tasks, split, method, **hparams)

    LAMBDA_METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs")

    def merge(self, method: str, tasks: Sequence[str] | None = None, **params) -> dict[str, torch.Tensor]:
        """The merged state of ``tasks``' models. For the methods of the form θ0 + λ·τ_m the merged
        task vector τ_m is computed once per setting (merging the task vectors onto a zero base,
        which is exact) and reused across a λ sweep: the result is the same, bit for bit, as
        merging with each λ."""
        from .merge import merge

        tasks = list(tasks or self.tasks)
        params = dict(params)
        for key, kind in (("fishers", "fisher"), ("grams", "grams")):
            if params.get(key) == "auto":
                params[key] = [self.statistic(kind, t) for t in tasks]
        if params.get("signs") == MULTITASK:
            params["signs"] = dict(self.task_vectors([MULTITASK])[MULTITASK])
        options = self.merge_options(params)
        if method not in self.LAMBDA_METHODS or "lam" not in params:
            return merge(method, self.base(), [self.state(t) for t in tasks], **options, **params)
        lam = params.pop("lam")
        key = json.dumps([method, tasks, {k: (str(v) if k == "signs" else v) for k, v in params.items()}], sort_keys=True, default=str)
        if key not in self._tau:
            tvs = self.task_vectors(tasks)
            zero = {n: torch.zeros_like(v) for n, v in tvs[tasks[0]].items()}
            multiplicity = options.get("multiplicity")
            self._tau = {key: merge(method, zero, [dict(tvs[t]) for t in tasks], lam=1.0, multiplicity=multiplicity, **params)}
        tau = self._tau[key]
        base = self.base()
        out = {n: (base[n].float() + lam * tau[n]).to(base[n].dtype) if n in tau else base[n] for n in base}
        for alias, rep in self._aliases().items():
            if alias in out:
                out[alias] = out[rep]
        return out

    def evaluate_merge(self, method: str, split: str, tasks: Sequence[str] | None = None,
                       eval_tasks: Sequence[str] | None = None, label: str | None = None, **params) -> list[dict]:
        """Merge ``tasks``' models (default: all) with a method, evaluate on ``eval_tasks``
        (default: the merged tasks); cached. ``fishers='auto'`` / ``grams='auto'`` use the study's
        statistics, ``signs='multitask'`` the multitask model's task vector (the oracle)."""
        tasks = list(tasks or self.tasks)
        eval_tasks = list(eval_tasks or tasks)
        recipe = {"method": method, "params": params, "models": [self.checkpoint_fingerprint(t) for t in tasks],
                  "options": self.merge_options(params)}
        if params.get("signs") == MULTITASK:
            recipe["signs"] = self.checkpoint_fingerprint(MULTITASK)
        hp = {k: v for k, v in params.items() if k not in ("fishers", "grams")}
        return self.evaluate(lambda: self.merge(method, tasks, **params), recipe, eval_tasks, split,
                             label or method, n_models=len(tasks), **hp)

    # ------------------------------------------------------------------ outputs
    def output(self, name: str) -> Path:
        return self.figures_dir / name

    def provenance(self, name: str, notebook: str, params: Mapping[str, Any]) -> None:
        """Record how an output was made: the notebook, its resolved parameters, the study's."""
        write_json(self.figures_dir / "provenance" / f"{name}.json",
                   {"output": name, "notebook": notebook, "parameters": dict(params),
                    "study": asdict(self.config), "tiesnb": __version__})

    def save_table(self, df, name: str, notebook: str, params: Mapping[str, Any], caption: str = "",
                   floatfmt: str = ".1f", markdown: str | None = None) -> Path:
        """``<name>.csv`` and ``<name>.md`` in the figures folder, atomically, with provenance
        (``markdown``: the table's Markdown, if not the plain rendering of ``df``)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        self.save_data(df, name)
        from .tables import plain_markdown

        md = markdown if markdown is not None else plain_markdown(df, int(floatfmt.strip(".f")))
        with atomic_path(self.output(f"{name}.md")) as tmp:
            tmp.write_text((f"{caption}\n\n" if caption else "") + md + "\n")
        self.provenance(name, notebook, params)
        return self.output(f"{name}.md")

    def save_data(self, df, name: str) -> Path:
        """``<name>.csv`` in the figures folder (``name`` may hold a subfolder), atomically."""
        path = self.output(f"{name}.csv")
        with atomic_path(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        return path

    def save_figure(self, fig, name: str, notebook: str, params: Mapping[str, Any], data) -> Path:
        """``<name>.png`` and ``<name>.pdf``, atomically, the parameters in their metadata, and
        ``<name>.csv``: the plotted numbers (``data``, a DataFrame)."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        if data is None or len(data) == 0:
            raise TiesnbError(f"figure {name}: no data to write beside it")
        self.save_data(data, name)
        desc = json.dumps({"notebook": notebook, "parameters": dict(params), "study": self.config.name}, default=str)
        # no creation date in the PDF: the same figure gives the same bytes
        for ext, meta in (("png", {"Description": desc}),
                          ("pdf", {"Subject": desc, "Creator": f"tiesnb {__version__}", "CreationDate": None})):
            with atomic_path(self.output(f"{name}.{ext}")) as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=200, metadata=meta)
        self.provenance(name, notebook, params)
        return self.output(f"{name}.png")

    def results_path(self, name: str) -> Path:
        return self.run_dir / "results" / name

