"""One study, as the notebooks see it: ``Study.load("default")`` and the steps they call.

``Study`` is a facade over the parts of a study, each a module here small enough to read at once:

| part        | module       | what it owns                                                         |
|-------------|--------------|----------------------------------------------------------------------|
| settings    | ``config``   | ``study.yaml`` read strictly (``StudyConfig``), inheritance, checks  |
| inputs      | ``inputs``   | each task's splits and the heads (the same for every seed)           |
| models      | ``models``   | the task models and the multitask model of one seed: training, loading |
| merging     | ``merging``  | base, task vectors, merges (λ sweeps reuse τ_m), Fisher/Gram statistics |
| evaluations | ``store``    | evaluations cached under a key of everything that determines them     |
| outputs     | ``outputs``  | figures and tables written atomically, with their provenance          |

Everything the study makes goes under ``runs/<study>/`` (checkpoints, statistics, cached
results, executed notebooks) except its figures and tables, which go to ``figures_dir``
(``figures/`` for the default study).

Training seeds. ``seeds: [0, 1, 2]`` retrains every task model and the multitask model once per
seed (the seed drives the initialisation of what is trained, the data order and dropout); the
splits (``split_seed``) and the heads stay the same for every seed. ``study.at_seed(s)`` is the
study seen from one seed: its checkpoints live in ``runs/<study>/seed-<s>/`` and every evaluation
row it returns carries ``seed``; the notebooks loop over ``study.each_seed()`` and the tables
report the mean over seeds with an interval (:mod:`tiesnb.stats`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import paths
from ..errors import TiesnbError
from .config import MULTITASK, StudyConfig, check, figures_dir, params_file, study_settings, threads_setting
from .inputs import Inputs
from .merging import LAMBDA_METHODS, Merger
from .models import TaskModels
from .outputs import Outputs
from .store import EvaluationStore

__all__ = ["MULTITASK", "Study", "StudyConfig", "params_file", "study_settings", "threads_setting"]


class Study:
    """The steps of one study, from the notebooks' point of view."""

    LAMBDA_METHODS = LAMBDA_METHODS

    def __init__(self, config: StudyConfig, seed: int | None = None):
        from ..families import family

        self.config = config
        self.family = family(config.model)
        self.settings = config.settings if config.settings is not None else self.family.Settings()
        check(config, self.family)
        self.family.check(self)
        self.seed = config.seeds[0] if seed is None else seed
        self.run_dir = paths.RUNS / config.name
        self.outputs = Outputs(config, figures_dir(config), self.run_dir)
        self.inputs = Inputs(self)  # shared by every seed's view
        self.store = EvaluationStore(self)  # shared by every seed's view
        self.models = TaskModels(self)  # this seed's
        self.merger = Merger(self)  # this seed's
        self.threads = threads_setting(config.threads)
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

    @property
    def seed_dir(self) -> Path:
        return self.run_dir / f"seed-{self.seed}"

    @property
    def figures_dir(self) -> Path:
        return self.outputs.figures_dir

    # ------------------------------------------------------------------ views
    def at_seed(self, seed: int) -> "Study":
        """This study seen from one training seed: the same data, heads and evaluator, that seed's
        checkpoints, statistics and task vectors."""
        if seed not in self.config.seeds:
            raise TiesnbError(f"seed {seed} is not one of study {self.config.name}'s seeds {self.config.seeds}")
        view = copy.copy(self)
        view.seed = seed
        view.models, view.merger = TaskModels(view), Merger(view)
        return view

    def each_seed(self):
        """The study at each of its seeds, in order (one at a time: a seed's models are released
        when the loop moves on)."""
        for s in self.seeds:
            yield self.at_seed(s)

    # ------------------------------------------------------------------ inputs
    def data(self) -> dict:
        return self.inputs.data()

    def data_summary(self):
        return self.inputs.summary()

    @property
    def heads_dir(self) -> Path:
        return self.inputs.heads_dir

    def fit_heads(self, progress: bool = True) -> dict[str, torch.Tensor]:
        return self.inputs.fit_heads(progress)

    def heads(self) -> dict[str, torch.Tensor]:
        return self.inputs.heads()

    # ------------------------------------------------------------------ models
    def train_config(self, task: str):
        return self.models.train_config(task)

    def checkpoint_dir(self, task: str) -> Path:
        return self.models.checkpoint_dir(task)

    def train(self, task: str, progress: bool = True) -> Path:
        return self.models.train(task, progress)

    def state(self, task: str) -> dict[str, torch.Tensor]:
        return self.models.state(task)

    def checkpoint_fingerprint(self, task: str) -> str:
        return self.models.fingerprint(task)

    @property
    def has_multitask(self) -> bool:
        """Whether the study has a multitask model (trained here, or an existing one it names)."""
        return self.models.has_multitask()

    # ------------------------------------------------------------------ merging
    def base(self) -> dict[str, torch.Tensor]:
        return self.merger.base()

    def merge_options(self, params: Mapping[str, Any] | None = None) -> dict:
        return self.merger.options(params)

    def encoder(self, state: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor] | None:
        return self.merger.encoder(state)

    def task_vectors(self, tasks: Sequence[str] | None = None) -> dict:
        return self.merger.task_vectors(tasks)

    def apply(self, tv, lam: float = 1.0) -> dict[str, torch.Tensor]:
        return self.merger.apply(tv, lam)

    def merge(self, method: str, tasks: Sequence[str] | None = None, **params) -> dict[str, torch.Tensor]:
        return self.merger.merge(method, tasks, **params)

    def statistic(self, kind: str, task: str, progress: bool = True) -> dict[str, torch.Tensor]:
        return self.merger.statistic(kind, task, progress)

    # ------------------------------------------------------------------ evaluation, cached
    def evaluator(self):
        return self.store.evaluator()

    def evaluate(self, state_fn: Callable[[], Mapping[str, torch.Tensor] | None], recipe: Mapping[str, Any],
                 tasks: Sequence[str], split: str, method: str, **hparams: Any) -> list[dict]:
        """Accuracy rows of the model ``state_fn`` builds (called only on a cache miss), one per task."""
        return self.store.evaluate(state_fn, recipe, tasks, split, method, self.seed, self.encoder, **hparams)

    def evaluate_checkpoint(self, name: str | None, tasks: Sequence[str], split: str, method: str, **hparams) -> list[dict]:
        """``name``: a task, ``multitask``, or None for the pretrained encoder with the heads."""
        recipe = {"checkpoint": None if name is None else self.checkpoint_fingerprint(name)}
        return self.evaluate(lambda: None if name is None else self.state(name), recipe, tasks, split, method, **hparams)

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
        return self.outputs.path(name)

    def results_path(self, name: str) -> Path:
        return self.outputs.results_path(name)

    def provenance(self, name: str, notebook: str, params: Mapping[str, Any]) -> None:
        self.outputs.provenance(name, notebook, params)

    def save_table(self, df, name: str, notebook: str, params: Mapping[str, Any], caption: str = "",
                   floatfmt: str = ".1f", markdown: str | None = None) -> Path:
        return self.outputs.save_table(df, name, notebook, params, caption, floatfmt, markdown)

    def save_data(self, df, name: str) -> Path:
        return self.outputs.save_data(df, name)

    def save_figure(self, fig, name: str, notebook: str, params: Mapping[str, Any], data) -> Path:
        return self.outputs.save_figure(fig, name, notebook, params, data)
