"""The models a study merges, at one training seed: each task's model and the multitask model,
trained here (``runs/<study>/seed-<s>/checkpoints/<task>/``) and loaded once per seed view.

Training is skipped when the checkpoint's resolved settings are unchanged
(:func:`tiesnb.training.train_checkpoint`); a checkpoint is named in cache keys by its content
hash, so a retrained model never reuses an old model's evaluations.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import load_state_dict
from ..errors import TiesnbError
from ..io import sha256_cached
from .config import MULTITASK


class TaskModels:
    def __init__(self, study):
        self.study = study  # a view at one seed
        self._states: dict[str, dict] = {}

    def train_config(self, task: str):
        s, c = self.study, self.study.config
        if task != MULTITASK and task not in c.tasks:
            raise TiesnbError(f"task {task!r} is not in study {c.name}; its tasks: {', '.join(c.tasks)} (or {MULTITASK})")
        cfg = s.family.train_config(s, list(c.tasks) if task == MULTITASK else [task])
        cfg.steps = c.multitask_steps if task == MULTITASK else c.steps
        return cfg

    def checkpoint_dir(self, task: str) -> Path:
        return self.study.seed_dir / "checkpoints" / task

    def train(self, task: str, progress: bool = True) -> Path:
        from ..training import train_checkpoint

        s = self.study
        return train_checkpoint(s.family.trainer(), self.train_config(task), s.data(), s.heads(),
                                self.checkpoint_dir(task), progress=progress)

    def _missing(self, task: str) -> TiesnbError:
        name = self.study.config.name
        return TiesnbError(f"no checkpoint for {task!r} (seed {self.study.seed}) in study {name}: "
                           f"run `make train STUDY={name}`")

    def state(self, task: str) -> dict[str, torch.Tensor]:
        """A trained checkpoint (task model or multitask): encoder parameters, or (IA)³ vectors."""
        if task not in self._states:
            path = self.checkpoint_dir(task)
            if not (path / "model.safetensors").exists():
                raise self._missing(task)
            self._states[task] = load_state_dict(path)
        return self._states[task]

    def fingerprint(self, task: str) -> str:
        """The checkpoint's content hash (remembered per file and modification time)."""
        path = self.checkpoint_dir(task) / "model.safetensors"
        if not path.exists():
            raise self._missing(task)
        return sha256_cached(path)[:16]
