"""The models a study merges, at one training seed: each task's model and the multitask model,
trained here (``runs/<study>/seed-<s>/checkpoints/<task>/``) or existing ones the study names
(``task_models``, ``multitask_model``: a local folder or a hub id, read by the family), loaded once
per seed view.

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

    def existing(self, task: str) -> str:
        """The existing model the study names for ``task`` ("" when it is trained here)."""
        c = self.study.config
        return c.multitask_model if task == MULTITASK else c.task_models.get(task, "")

    def has_multitask(self) -> bool:
        """Trained here, unless the study reads existing task models and names no multitask model."""
        c = self.study.config
        return bool(c.multitask_model or not c.task_models)

    def train(self, task: str, progress: bool = True) -> Path | None:
        """Train the model (skipped when its checkpoint is up to date); for an existing model, read
        it once (a wrong key or shape stops here) and train nothing. None: no multitask model."""
        from ..training import train_checkpoint

        s = self.study
        if task == MULTITASK and not self.has_multitask():
            print(f"no multitask model: study {s.config.name} reads existing task models and names none (multitask_model)")
            return None
        if self.existing(task):
            self.state(task)
            print(f"{task}: the existing model {self.existing(task)} (not trained here)")
            return s.family.released_folder(s, self.existing(task))
        return train_checkpoint(s.family.trainer(), self.train_config(task), s.data(), s.heads(),
                                self.checkpoint_dir(task), progress=progress)

    def _missing(self, task: str) -> TiesnbError:
        name = self.study.config.name
        return TiesnbError(f"no checkpoint for {task!r} (seed {self.study.seed}) in study {name}: "
                           f"run `make train STUDY={name}`")

    def state(self, task: str) -> dict[str, torch.Tensor]:
        """A trained checkpoint (task model or multitask): encoder parameters, or (IA)³ vectors."""
        if task not in self._states and self.existing(task):
            self._states[task] = self.study.family.released_state(self.study, self.existing(task))
        if task not in self._states:
            path = self.checkpoint_dir(task)
            if not (path / "model.safetensors").exists():
                raise self._missing(task)
            self._states[task] = load_state_dict(path)
        return self._states[task]

    def fingerprint(self, task: str) -> str:
        """The checkpoint's content hash (remembered per file and modification time)."""
        if self.existing(task):
            return self.study.family.released_fingerprint(self.study, self.existing(task))
        path = self.checkpoint_dir(task) / "model.safetensors"
        if not path.exists():
            raise self._missing(task)
        return sha256_cached(path)[:16]
