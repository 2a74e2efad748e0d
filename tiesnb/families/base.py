"""The interface every model family implements, and what it inherits.

A *family* is one kind of model with everything that is particular to it: how its tasks' data is
read, its pretrained weights, its heads (if any), how one of its models is trained and evaluated,
which parameters merge, and the statistics of the Fisher and RegMean baselines. A study names its
family in ``model:`` and gives the family's own settings in a section of the same name::

    model: minilm
    minilm:
      max_len: 64

:class:`~tiesnb.study.Study` — seeds, caching, evaluation rows, merging, outputs — is the same for
every family and asks it only the questions below. Adding a family: one module with a subclass of
:class:`Family` and its ``Settings`` dataclass, and one line in ``FAMILIES`` (``families/__init__``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch

from ..errors import TiesnbError


@dataclass
class NoSettings:
    """A family without settings of its own."""


class Family:
    name: str = ""
    Settings: type = NoSettings  # the dataclass of this family's section in study.yaml
    modes: tuple[str, ...] = ("full",)  # what the study's ``mode`` may be (ia3: (IA)³ vectors are trained)
    # what the pretrained encoder's row is called: "probe" where its heads are fitted on the task's
    # training data (a linear probe), "zero-shot" where they know the classes without it (CLIP, T5)
    pretrained_label: str = "zero-shot"
    cache_data: bool = True  # the splits are kept as JSON under runs/<study>/data (cheap readers: no)
    assets: tuple[str, ...] = ()  # the model's offline assets (none: a hub family); see study_assets
    # the package files, besides its own module, that its data and evaluations run (the code part of
    # the evaluation key, tiesnb/study/store.py): its data readers
    code: tuple[str, ...] = ()
    # the paper's columns beside the study's tables (tiesnb/paper.py): Table 1's settings, and the
    # ablation table's (the paper ablates T5-base and IA3 only; "IA3" brings its oracle-sign row)
    paper_columns: tuple[str, ...] = ("T5-base", "ViT-B/32", "IA3 / T0-3B")
    paper_ablation_columns: tuple[str, ...] = ("T5-base", "IA3")

    def task_asset(self, task: str) -> str | None:
        """The offline asset a task's data is read from (None: the hub, or data_dir)."""
        return None

    def study_assets(self, tasks) -> dict[str, list[str]]:
        """Every offline asset a study of these tasks reads → what reads it (the model, tasks):
        what `tiesnb data fetch --study` downloads and `tiesnb data check` asks about."""
        out = {a: ["the model"] for a in self.assets}
        for task in tasks:
            asset = self.task_asset(task)
            if asset:
                out.setdefault(asset, []).append(task)
        return out

    def check(self, study) -> None:
        """Raise a one-line error for a setting the family cannot use (called once per study)."""

    # ---------------------------------------------------------------- data
    def data_key(self, study) -> str:
        """What the splits depend on besides the task (a part of their cache file's name)."""
        c = study.config
        return f"{c.split_seed}-{c.n_train}-{c.n_val}-{c.n_test}"

    def load_task(self, study, task: str):
        """One task's splits, an object with ``train``, ``val``, ``test``, ``split(name)`` and a
        ``fingerprint`` of its content (and ``to_json`` when ``cache_data``)."""
        raise NotImplementedError

    def task_data(self, study, task: str, raw: dict):
        """The splits back from their JSON (``cache_data`` only)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- heads, training
    def heads_settings(self, study) -> dict:
        """What the fitted heads depend on besides the data (they are refitted when it changes)."""
        return {}

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        """The fixed heads, ``<task>.weight`` / ``<task>.bias``; {} for a family that needs none."""
        return {}

    def train_config(self, study, tasks: list[str]):
        """A :class:`~tiesnb.training.TrainConfig` (or the family's subclass) for these tasks;
        the study sets ``steps``."""
        raise NotImplementedError

    def trainer(self):
        """``trainer(cfg, data, heads_state, progress=, history=) -> state dict``."""
        raise NotImplementedError

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        """The pretrained model's state."""
        raise NotImplementedError

    # existing task models (``task_models`` in study.yaml): a family that can read them sets
    # ``reads_released`` and turns a source (a local folder or a hub id) into a state of its own
    reads_released: bool = False

    def released_folder(self, study, source: str):
        from .common import released_folder

        return released_folder(source)

    def released_fingerprint(self, study, source: str) -> str:
        from .common import released_fingerprint

        return released_fingerprint(source)

    def released_state(self, study, source: str) -> dict[str, torch.Tensor]:
        raise TiesnbError(f"the {self.name} family cannot read existing models")

    # (IA)³ (``mode: ia3``, the families that list it in ``modes``): a checkpoint holds only the
    # vectors; task vectors start from vectors of ones, and a state is folded into the pretrained
    # weights before it is evaluated
    def merge_base(self, study) -> dict[str, torch.Tensor]:
        """The point task vectors start from: the pretrained state, or (IA)³ vectors of ones."""
        from ..training import ia3_identity

        if study.config.mode == "ia3":
            return ia3_identity(study.state(study.tasks[0]))
        return self.pretrained(study)

    def runnable(self, study, state: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        """The model state that computes what a trained or merged ``state`` computes (None: the
        pretrained model): itself, or (IA)³ vectors folded into the pretrained weights."""
        from ..training import fold_ia3

        if state is None or study.config.mode != "ia3":
            return state
        return fold_ia3(self.pretrained(study), state)

    # ---------------------------------------------------------------- merging, evaluation
    def merge_options(self, study, params: Mapping[str, Any]) -> dict:
        """``exclude``, ``tied``, ``multiplicity`` for the merge engine."""
        return {}

    def eval_settings(self, study) -> list:
        """What an evaluation's result depends on besides the model, the data and the heads."""
        return [study.config.model, asdict(study.settings), study.config.eval_batch_size, study.config.autocast]

    def stat_settings(self, study) -> list:
        """What the Fisher and Gram statistics depend on besides the checkpoint and the data."""
        return self.eval_settings(study)

    def evaluator(self, study):
        """An object whose ``scores(state, task, split)`` gives ``(predictions, correct per
        example, spread over templates or None)`` (``state`` None: the pretrained model)."""
        raise NotImplementedError

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        """The diagonal Fisher (``fisher``) or the input Gram matrices (``grams``) of a task model."""
        raise TiesnbError(f"the {self.name} family has no {kind} statistics")
