"""One study: its configuration, where its outputs go, and the steps the notebooks call.

A study is named by a folder of parameter files, ``params/<study>/``; ``study.yaml`` there holds
the settings every notebook shares (tasks, splits, training, evaluation), each notebook run has
its own YAML beside it. Everything the study makes goes under ``runs/<study>/`` (checkpoints,
statistics, cached results, executed notebooks) except its figures and tables, which go to
``figures_dir`` (``figures/`` for the default study).

Expensive steps are reused when their resolved parameters have not changed: checkpoints (see
:func:`tiesnb.train.train_checkpoint`), statistics, and every evaluation result, cached under a
key of everything that determines it — the merge recipe, the inputs' fingerprints, the data, the
heads, the evaluation settings and the code of the merge and evaluation modules.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from . import __version__, paths
from .checkpoints import load_state_dict, save_state_dict
from .config import load_dataclass
from .data import TaskData, load_task
from .data.tasks import Example
from .errors import TiesnbError
from .io import atomic_path, sha256_cached, write_json

MULTITASK = "multitask"


@dataclass
class StudyConfig:
    """``params/<study>/study.yaml``: the settings shared by every notebook of a study."""

    name: str
    tasks: list[str]
    model: str = "minilm"
    seed: int = 0
    # data: examples per split and task (validation and test class-balanced)
    n_train: int = 2000
    n_val: int = 64
    n_test: int = 400
    max_len: int = 64
    # compute
    autocast: str = "auto"  # auto | bf16 | off
    threads: int = 0  # torch CPU threads, 0 = torch's default
    eval_batch_size: int = 32
    # heads: linear probes on the frozen pretrained encoder
    probe_examples: int = 1000
    probe_l2: float = 1e-3
    # fine-tuning of each task model and of the multitask model
    mode: str = "full"  # full | ia3
    steps: int = 250
    multitask_steps: int = 600
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    train_embeddings: bool = False
    # statistics for the Fisher and RegMean baselines
    fisher_examples: int = 64
    gram_examples: int = 256
    # where figures and tables go, relative to the repository ("": runs/<study>/figures)
    figures_dir: str = "figures"

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _code_fingerprint() -> str:
    """Hash of the modules whose code determines merge and evaluation results."""
    h = hashlib.sha256(__version__.encode())
    pkg = Path(__file__).parent
    for rel in sorted(["evaluate.py", "models.py", *[f"merge/{p.name}" for p in (pkg / "merge").glob("*.py")]]):
        h.update((pkg / rel).read_bytes())
    return h.hexdigest()[:12]


class Study:
    """The steps of one study, from the notebooks' point of view."""

    def __init__(self, config: StudyConfig):
        self.config = c = config
        if c.mode not in ("full", "ia3"):
            raise TiesnbError(f"study {c.name}: mode must be full or ia3, got {c.mode!r}")
        self.run_dir = paths.RUNS / c.name
        # "" keeps the figures inside the run folder (the smoke study: never over the real ones)
        self.figures_dir = self.run_dir / "figures" if not c.figures_dir else (paths.ROOT / c.figures_dir).resolve()
        self._data: dict[str, TaskData] | None = None
        self._evaluator = None
        self._states: dict[str, dict] = {}
        self._tau: dict[str, dict] = {}  # merged task vectors of the last setting, reused across λ
        self._tv: dict[str, Any] = {}
        if c.threads > 0:
            torch.set_num_threads(c.threads)

    @classmethod
    def load(cls, name: str) -> "Study":
        path = paths.PARAMS / name / "study.yaml"
        if not path.exists():
            known = sorted(p.parent.name for p in paths.PARAMS.glob("*/study.yaml"))
            raise TiesnbError(f"no study {name!r}: {path} is missing; studies: {', '.join(known)}")
        return cls(load_dataclass(StudyConfig, path))

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    # ------------------------------------------------------------------ data and heads
    def data(self) -> dict[str, TaskData]:
        """Every task's splits, read once and kept as JSON under the run folder."""
        if self._data is None:
            c = self.config
            self._data = {}
            for task in c.tasks:
                key = f"{task}-{c.seed}-{c.n_train}-{c.n_val}-{c.n_test}"
                path = self.run_dir / "data" / f"{key}.json"
                if path.exists():
                    raw = json.loads(path.read_text())
                    self._data[task] = TaskData(task, tuple(raw["labels"]),
                                                *[[Example(*e) for e in raw[s]] for s in ("train", "val", "test")],
                                                fingerprint=raw["fingerprint"])
                else:
                    d = load_task(task, c.n_train, c.n_val, c.n_test, c.seed)
                    write_json(path, {"labels": d.labels, "fingerprint": d.fingerprint,
                                      **{s: [[e.text, e.pair, e.label] for e in d.split(s)] for s in ("train", "val", "test")}})
                    self._data[task] = d
        return self._data

    @property
    def heads_dir(self) -> Path:
        return self.run_dir / "heads"

    def fit_heads(self, progress: bool = True) -> dict[str, torch.Tensor]:
        """The linear probes (reused when data and settings are unchanged)."""
        from .train import fit_heads

        c = self.config
        data = self.data()
        resolved = {"data": {t: data[t].fingerprint for t in c.tasks}, "probe_examples": c.probe_examples,
                    "probe_l2": c.probe_l2, "max_len": c.max_len, "autocast": c.autocast, "version": __version__}
        meta = self.heads_dir / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == json.loads(json.dumps(resolved)):
            return self.heads()
        heads = fit_heads(data, c.probe_examples, c.probe_l2, c.max_len, c.autocast, progress)
        save_state_dict(heads, self.heads_dir, overwrite=True,
                        extra_files={"params.json": json.dumps({"resolved": resolved}, indent=2) + "\n"})
        return heads

    def heads(self) -> dict[str, torch.Tensor]:
        if not (self.heads_dir / "model.safetensors").exists():
            raise TiesnbError(f"study {self.config.name}: the heads are not fitted yet: run `make probe STUDY={self.config.name}`")
        return load_state_dict(self.heads_dir)

    # ------------------------------------------------------------------ training
    def train_config(self, task: str):
        from .train import TrainConfig

        c = self.config
        if task != MULTITASK and task not in c.tasks:
            raise TiesnbError(f"task {task!r} is not in study {c.name}; its tasks: {', '.join(c.tasks)} (or {MULTITASK})")
        return TrainConfig(tasks=list(c.tasks) if task == MULTITASK else [task], mode=c.mode,
                           steps=c.multitask_steps if task == MULTITASK else c.steps, batch_size=c.batch_size,
                           lr=c.lr, weight_decay=c.weight_decay, warmup=c.warmup, max_len=c.max_len,
                           train_embeddings=c.train_embeddings, seed=c.seed, autocast=c.autocast, threads=c.threads)

    def checkpoint_dir(self, task: str) -> Path:
        return self.run_dir / "checkpoints" / task

    def train(self, task: str, progress: bool = True) -> Path:
        from .train import train_checkpoint

        return train_checkpoint(self.train_config(task), self.data(), self.heads(), self.checkpoint_dir(task),
                                progress=progress)

    def state(self, task: str) -> dict[str, torch.Tensor]:
        """A trained checkpoint (task model or multitask): encoder parameters, or (IA)³ vectors."""
        if task not in self._states:
            path = self.checkpoint_dir(task)
            if not (path / "model.safetensors").exists():
                raise TiesnbError(f"no checkpoint for {task!r} in study {self.config.name}: "
                                  f"run `make train STUDY={self.config.name}`")
            self._states[task] = load_state_dict(path)
        return self._states[task]

    def checkpoint_fingerprint(self, task: str) -> str:
        """The checkpoint's content hash (remembered per file and modification time)."""
        path = self.checkpoint_dir(task) / "model.safetensors"
        if not path.exists():
            raise TiesnbError(f"no checkpoint for {task!r} in study {self.config.name}: "
                              f"run `make train STUDY={self.config.name}`")
        return sha256_cached(path)[:16]

    # ------------------------------------------------------------------ what is merged
    def base(self) -> dict[str, torch.Tensor]:
        """The point task vectors start from: the pretrained encoder, or (IA)³ vectors of ones."""
        from .models import pretrained_state
        from .train import ia3_identity

        if self.config.mode == "ia3":
            return ia3_identity(self.state(self.tasks[0]))
        return pretrained_state()

    def merge_options(self) -> dict:
        """Which parameters merge: the trained ones (frozen embeddings have zero task vectors and
        would only dilute a global top-k)."""
        if self.config.mode == "full" and not self.config.train_embeddings:
            return {"exclude": ["embeddings.*"]}
        return {}

    def encoder(self, state: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        """The encoder state dict that computes what a (merged) state computes."""
        from .models import pretrained_state
        from .train import fold_ia3

        if state is None or self.config.mode == "full":
            return state
        return fold_ia3(pretrained_state(), state)

    def task_vectors(self, tasks: Sequence[str] | None = None) -> dict:
        """Each model's task vector θ_t − θ0 over the merged parameters (kept once computed)."""
        import fnmatch

        from .merge import TaskVector

        base = self.base()
        exclude = self.merge_options().get("exclude", [])
        names = [n for n, v in base.items() if v.is_floating_point() and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
        for t in tasks or self.tasks:
            if t not in self._tv:
                self._tv[t] = TaskVector.between(base, self.state(t), names)
        return {t: self._tv[t] for t in (tasks or self.tasks)}

    # ------------------------------------------------------------------ statistics
    def statistic(self, kind: str, task: str, progress: bool = True) -> dict[str, torch.Tensor]:
        """The diagonal Fisher (``fisher``) or the Gram matrices (``grams``) of a task model on
        its training data, computed once."""
        from .evaluate import fisher_diagonal, gram_matrices

        c = self.config
        if c.mode != "full":
            raise TiesnbError("the Fisher and RegMean baselines are implemented for full fine-tuning (mode: full)")
        folder = self.run_dir / "stats" / f"{kind}-{task}"
        resolved = {"checkpoint": self.checkpoint_fingerprint(task), "n": c.fisher_examples if kind == "fisher" else c.gram_examples,
                    "max_len": c.max_len, "code": _code_fingerprint()}
        meta = folder / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == resolved:
            return load_state_dict(folder)
        state = self.state(task)
        if kind == "fisher":
            names = [n for n in state if not n.startswith("embeddings.") or c.train_embeddings]
            stat = fisher_diagonal(state, task, self.data()[task], self.heads(), names, c.fisher_examples, c.max_len, progress)
        elif kind == "grams":
            stat = gram_matrices(state, self.data()[task], c.gram_examples, c.max_len, progress=progress, task=task)
        else:
            raise TiesnbError(f"unknown statistic {kind!r}: fisher or grams")
        save_state_dict(stat, folder, overwrite=True, extra_files={"params.json": json.dumps({"resolved": resolved}) + "\n"})
        return stat

    # ------------------------------------------------------------------ evaluation, cached
    def evaluator(self):
        from .evaluate import Evaluator

        if self._evaluator is None:
            c = self.config
            self._evaluator = Evaluator(self.data(), self.heads(), c.max_len, c.eval_batch_size, c.autocast, progress=False)
        return self._evaluator

    def _eval_key(self, recipe: Mapping[str, Any], tasks: Sequence[str], split: str) -> str:
        c = self.config
        data = self.data()
        key = {"recipe": recipe, "tasks": list(tasks), "split": split,
               "data": {t: data[t].fingerprint for t in tasks}, "heads": self._heads_fingerprint(),
               "eval": [c.max_len, c.eval_batch_size, c.autocast], "code": _code_fingerprint()}
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def _heads_fingerprint(self) -> str:
        return sha256_cached(self.heads_dir / "model.safetensors")[:16]

    def _cache_path(self) -> Path:
        return self.run_dir / "cache" / "evaluations.jsonl"

    def _cache(self) -> dict[str, list[dict]]:
        path = self._cache_path()
        out = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out[rec["key"]] = rec["accuracy"]
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by an interrupted run: ignored, recomputed
        return out

    def evaluate(self, state_fn: Callable[[], Mapping[str, torch.Tensor] | None], recipe: Mapping[str, Any],
                 tasks: Sequence[str], split: str, method: str, **hparams: Any) -> list[dict]:
        """Accuracy rows of the model that ``state_fn`` builds (only called on a cache miss)."""
        key = self._eval_key(recipe, tasks, split)
        cache = self._cache()
        if key in cache:
            acc = cache[key]
        else:
            state = self.encoder(state_fn())
            ev = self.evaluator()
            acc = {t: ev.accuracy(state, t, split) for t in tasks}
            path = self._cache_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:  # one line per result: appending is atomic enough
                f.write(json.dumps({"key": key, "accuracy": acc}) + "\n")
        return [{"task": t, "split": split, "method": method, **hparams, "accuracy": acc[t]} for t in tasks]

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
        if method not in self.LAMBDA_METHODS or "lam" not in params:
            return merge(method, self.base(), [self.state(t) for t in tasks], **self.merge_options(), **params)
        lam = params.pop("lam")
        key = json.dumps([method, tasks, {k: (str(v) if k == "signs" else v) for k, v in params.items()}], sort_keys=True, default=str)
        if key not in self._tau:
            tvs = self.task_vectors(tasks)
            zero = {n: torch.zeros_like(v) for n, v in tvs[tasks[0]].items()}
            self._tau = {key: merge(method, zero, [dict(tvs[t]) for t in tasks], lam=1.0, **params)}
        tau = self._tau[key]
        base = self.base()
        return {n: (base[n].float() + lam * tau[n]).to(base[n].dtype) if n in tau else base[n] for n in base}

    def evaluate_merge(self, method: str, split: str, tasks: Sequence[str] | None = None,
                       eval_tasks: Sequence[str] | None = None, label: str | None = None, **params) -> list[dict]:
        """Merge ``tasks``' models (default: all) with a method, evaluate on ``eval_tasks``
        (default: the merged tasks); cached. ``fishers='auto'`` / ``grams='auto'`` use the study's
        statistics, ``signs='multitask'`` the multitask model's task vector (the oracle)."""
        tasks = list(tasks or self.tasks)
        eval_tasks = list(eval_tasks or tasks)
        recipe = {"method": method, "params": params, "models": [self.checkpoint_fingerprint(t) for t in tasks],
                  "options": self.merge_options()}
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
                   floatfmt: str = ".1f") -> Path:
        """``<name>.csv`` and ``<name>.md`` in the figures folder, atomically, with provenance."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.output(f"{name}.csv")) as tmp:
            df.to_csv(tmp, index=False)
        md = df.to_markdown(index=False, floatfmt=floatfmt, missingval="")
        with atomic_path(self.output(f"{name}.md")) as tmp:
            tmp.write_text((f"{caption}\n\n" if caption else "") + md + "\n")
        self.provenance(name, notebook, params)
        return self.output(f"{name}.md")

    def save_figure(self, fig, name: str, notebook: str, params: Mapping[str, Any]) -> Path:
        """``<name>.png`` and ``<name>.pdf``, atomically, the parameters in their metadata."""
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        desc = json.dumps({"notebook": notebook, "parameters": dict(params), "study": self.config.name}, default=str)
        for ext, meta in (("png", {"Description": desc}), ("pdf", {"Subject": desc, "Creator": f"tiesnb {__version__}"})):
            with atomic_path(self.output(f"{name}.{ext}")) as tmp:
                fig.savefig(tmp, format=ext, bbox_inches="tight", dpi=200, metadata=meta)
        self.provenance(name, notebook, params)
        return self.output(f"{name}.png")

    def results_path(self, name: str) -> Path:
        return self.run_dir / "results" / name

