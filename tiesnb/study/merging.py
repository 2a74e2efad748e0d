"""Merging a study's models at one training seed: the base they start from, their task vectors,
the merge itself (through :func:`tiesnb.merge.merge`), and the Fisher and Gram statistics of the
baselines that need them.

For the methods of the form θ0 + λ·τ_m the merged task vector τ_m is computed once per setting
(merging the task vectors onto a zero base, which is exact) and reused across a λ sweep: the
result is the same, bit for bit, as merging with each λ.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any, Mapping, Sequence

import torch

from ..checkpoints import load_state_dict, save_state_dict
from ..errors import TiesnbError
from .config import MULTITASK
from .store import code_fingerprint, runtime

LAMBDA_METHODS = ("task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs")


class Merger:
    def __init__(self, study):
        self.study = study  # a view at one seed: its models
        self._tau: dict[str, dict] = {}  # merged task vectors of the last setting, reused across λ
        self._tv: dict[str, Any] = {}

    def base(self) -> dict[str, torch.Tensor]:
        """The point task vectors start from (the family's: the pretrained model, or (IA)³ ones)."""
        return self.study.family.merge_base(self.study)

    def options(self, params: Mapping[str, Any] | None = None) -> dict:
        """Which parameters merge and how (``exclude``, ``tied``, ``multiplicity``), per family."""
        return self.study.family.merge_options(self.study, params or {})

    def encoder(self, state: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        """The model state that computes what a (merged) state computes (the family's: (IA)³
        vectors are folded into the pretrained weights)."""
        return self.study.family.runnable(self.study, state)

    def aliases(self) -> dict[str, str]:
        """Tied names → the one that stands for them (the first in sorted order, as the engine)."""
        return {a: sorted(g)[0] for g in self.options().get("tied", []) for a in sorted(g)[1:]}

    def task_vectors(self, tasks: Sequence[str] | None = None) -> dict:
        """Each model's task vector θ_t − θ0 over the merged parameters, tied ones once (kept once
        computed)."""
        from ..merge import TaskVector

        tasks = list(tasks or self.study.tasks)
        base = self.base()
        exclude = self.options().get("exclude", [])
        aliases = self.aliases()
        names = [n for n, v in base.items() if v.is_floating_point() and n not in aliases
                 and not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
        for t in tasks:
            if t not in self._tv:
                self._tv[t] = TaskVector.between(base, self.study.state(t), names)
        return {t: self._tv[t] for t in tasks}

    def _with_aliases(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for alias, rep in self.aliases().items():
            if alias in out:
                out[alias] = out[rep]
        return out

    def apply(self, tv, lam: float = 1.0) -> dict[str, torch.Tensor]:
        """``base + λ·τ`` as a full state (tied names get their representative's value)."""
        return self._with_aliases(tv.apply(self.base(), lam))

    def merge(self, method: str, tasks: Sequence[str] | None = None, **params) -> dict[str, torch.Tensor]:
        """The merged state of ``tasks``' models (default: all). ``fishers='auto'`` /
        ``grams='auto'`` use the study's statistics, ``signs='multitask'`` the multitask model's
        task vector (the oracle)."""
        from ..merge import merge

        s = self.study
        tasks = list(tasks or s.tasks)
        params = dict(params)
        for key, kind in (("fishers", "fisher"), ("grams", "grams")):
            if params.get(key) == "auto":
                params[key] = [self.statistic(kind, t) for t in tasks]
        if params.get("signs") == MULTITASK:
            params["signs"] = dict(self.task_vectors([MULTITASK])[MULTITASK])
        options = self.options(params)
        if method not in LAMBDA_METHODS or "lam" not in params:
            return merge(method, self.base(), [s.state(t) for t in tasks], **options, **params)
        lam = params.pop("lam")
        key = json.dumps([method, tasks, {k: (str(v) if k == "signs" else v) for k, v in params.items()}],
                         sort_keys=True, default=str)
        if key not in self._tau:
            tvs = self.task_vectors(tasks)
            zero = {n: torch.zeros_like(v) for n, v in tvs[tasks[0]].items()}
            multiplicity = options.get("multiplicity")
            self._tau = {key: merge(method, zero, [dict(tvs[t]) for t in tasks], lam=1.0, multiplicity=multiplicity,
                                    **params)}
        tau = self._tau[key]
        base = self.base()
        return self._with_aliases({n: (base[n].float() + lam * tau[n]).to(base[n].dtype) if n in tau else base[n]
                                   for n in base})

    def statistic(self, kind: str, task: str, progress: bool = True) -> dict[str, torch.Tensor]:
        """The diagonal Fisher (``fisher``) or the Gram matrices (``grams``) of a task model on
        its training data, computed once."""
        s, c = self.study, self.study.config
        if c.mode != "full":
            raise TiesnbError("the Fisher and RegMean baselines are implemented for full fine-tuning (mode: full)")
        if kind not in ("fisher", "grams"):
            raise TiesnbError(f"unknown statistic {kind!r}: fisher or grams")
        folder = s.seed_dir / "stats" / f"{kind}-{task}"
        resolved = {"checkpoint": s.checkpoint_fingerprint(task),
                    "n": c.fisher_examples if kind == "fisher" else c.gram_examples,
                    "settings": s.family.stat_settings(s), "runtime": runtime(c), "code": code_fingerprint(s.family)}
        meta = folder / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == resolved:
            return load_state_dict(folder)
        stat = s.family.statistic(s, kind, task, progress)
        save_state_dict(stat, folder, overwrite=True, extra_files={"params.json": json.dumps({"resolved": resolved}) + "\n"})
        return stat
