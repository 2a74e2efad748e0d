"""Model families: what differs between the embedded study (a MiniLM encoder with fixed linear
heads) and the paper-scale study (T5 / T0 scored by rank classification). :class:`~tiesnb.study.Study`
asks its family for data, heads, training, the merge's base and options, evaluation and statistics,
so the notebooks and the pipeline are the same for both."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .errors import TiesnbError


def threads_setting(configured: int) -> int:
    from .study import threads_setting as resolve

    return resolve(configured)


class MiniLM:
    """MiniLM-L6 from its offline package, one fixed linear head per task."""

    name = "minilm"

    def data_key(self, study) -> str:
        c = study.config
        return f"{c.split_seed}-{c.n_train}-{c.n_val}-{c.n_test}"

    def load_task(self, study, task: str):
        from .data import load_task

        c = study.config
        return load_task(task, c.n_train, c.n_val, c.n_test, c.split_seed)

    def task_data(self, study, task: str, raw: dict):
        from .data import TaskData

        return TaskData.from_json(task, raw)

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        from .train import fit_heads

        c = study.config
        return fit_heads(study.data(), c.probe_examples, c.probe_l2, c.max_len, c.autocast, progress)

    def train_config(self, study, tasks: list[str]):
        from .train import TrainConfig

        c = study.config
        return TrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                           warmup=c.warmup, max_len=c.max_len, train_embeddings=c.train_embeddings,
                           sparse_embeddings=c.sparse_embeddings, seed=study.seed, autocast=c.autocast,
                           threads=threads_setting(c.threads))

    def trainer(self):
        from .train import finetune

        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        from .models import pretrained_state

        return pretrained_state()

    def merge_options(self, study, params: Mapping[str, Any]) -> dict:
        """The trained parameters merge: frozen embeddings have zero task vectors and would only
        dilute a global top-k."""
        c = study.config
        return {"exclude": ["embeddings.*"]} if c.mode == "full" and not c.train_embeddings else {}

    def evaluator(self, study):
        from .evaluate import Evaluator

        c = study.config
        return Evaluator(study.data(), study.heads(), c.max_len, c.eval_batch_size, c.autocast, progress=False)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        from .evaluate import fisher_diagonal, gram_matrices

        c = study.config
        state = study.state(task)
        if kind == "fisher":
            names = [n for n in state if not n.startswith("embeddings.") or c.train_embeddings]
            return fisher_diagonal(state, task, study.data()[task], study.heads(), names, c.fisher_examples, c.max_len, progress)
        return gram_matrices(state, study.data()[task], c.gram_examples, c.max_len, progress=progress, task=task)


class Seq2Seq:
    """A T5-style model (``model_path``: a local folder or a hub name), rank classification over
    answer choices with several prompt templates per dataset."""

    name = "seq2seq"

    def data_key(self, study) -> str:
        c = study.config
        return f"{c.split_seed}-{c.n_train}-{c.n_val}-{c.n_test}-v2"  # v2: the original's splits

    def load_task(self, study, task: str):
        from .data.paper import load_paper_task

        c = study.config
        return load_paper_task(task, c.n_train, c.n_val, c.n_test, c.split_seed, c.data_dir or None,
                               c.story_cloze_dir or None, c.prompts)

    def task_data(self, study, task: str, raw: dict):
        from .data.paper import PaperTaskData

        return PaperTaskData.from_json(task, raw, study.config.prompts)

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        return {}  # rank classification needs no heads

    def train_config(self, study, tasks: list[str]):
        from .seq2seq import Seq2SeqTrainConfig

        c = study.config
        return Seq2SeqTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                                  warmup=c.warmup, max_len=c.max_len, seed=study.seed, autocast=c.autocast,
                                  threads=threads_setting(c.threads),
                                  model_path=c.model_path, max_target_len=c.max_target_len, templates=c.templates,
                                  schedule=c.schedule, grad_accum=c.grad_accum, eval_every=c.eval_every,
                                  patience=c.patience, eval_at_start=c.eval_at_start, eval_batch_size=c.eval_batch_size,
                                  max_per_dataset=c.max_per_dataset)

    def trainer(self):
        from .seq2seq import finetune

        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        from .seq2seq import pretrained_state

        return pretrained_state(study.config.model_path)

    def merge_options(self, study, params: Mapping[str, Any]) -> dict:
        """T5's tied embedding merges once; the original code's presets count it as the original
        did (twice in the global top-k when ``lm_head`` is tied)."""
        from .seq2seq import original_multiplicity, tied_groups

        if study.config.mode == "ia3":
            return {}
        opts = {"tied": tied_groups(study.config.model_path)}
        if params.get("preset") in ("original", "fusionbench"):
            opts["multiplicity"] = original_multiplicity(study.config.model_path)
        return opts

    def evaluator(self, study):
        from .seq2seq import RankEvaluator

        c = study.config
        return RankEvaluator(c.model_path, study.data(), c.max_len, c.max_target_len, c.eval_batch_size, c.autocast,
                             progress=False, templates=c.templates)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        from . import seq2seq

        c = study.config
        state = study.state(task)
        if kind == "fisher":
            aliases = {a for g in seq2seq.tied_groups(c.model_path) for a in sorted(g)[1:]}
            names = [n for n, v in state.items() if v.is_floating_point() and n not in aliases]
            return seq2seq.fisher_diagonal(c.model_path, state, study.data()[task], names, c.fisher_examples,
                                           c.max_len, c.max_target_len, progress)
        grams = seq2seq.gram_matrices(c.model_path, state, study.data()[task], c.gram_examples, c.max_len,
                                      c.max_target_len, progress)
        tied = {n for g in seq2seq.tied_groups(c.model_path) for n in g}
        return {k: v for k, v in grams.items() if k not in tied}  # a tied lm_head is the embedding: averaged


FAMILIES = {f.name: f for f in (MiniLM(), Seq2Seq())}


def family(name: str):
    try:
        return FAMILIES[name]
    except KeyError:
        raise TiesnbError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}") from None
