"""The paper-scale path: T5 / T0 models, rank classification, full fine-tuning and (IA)³ with
``accelerate``, and the statistics of the Fisher and RegMean baselines.

Rank classification, as the original: an example is an input, a list of answer choices and the
label; a choice's score is the sum of its tokens' log-probabilities under the model given the
input (no length normalisation); the prediction is the best-scoring choice. The original's T5 runs
use template 0 to train and evaluate (``templates: first``); its (IA)³ runs train on every example
under every template and report a dataset's accuracy as the median over its templates
(``templates: all``, the original's ``--multiple_prompts``), with the spread over templates beside
it. The encoder runs once per input; all of an input's choices are scored in one decoder pass.
bf16 autocast on CUDA, float32 on CPU (``autocast`` in the study's settings).

Why one module (~680 lines): the paper-scale family carries the original's recipe — rank
classification, the multi-template pool, accelerate training with early stopping, (IA)³ and
the original's checkpoint format — each part short and read against the original's code.
"""

from __future__ import annotations

import functools
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .. import progress as progress_
from ..data.paper import PaperTaskData, RankExample
from ..errors import TiesnbError
from .base import Family
from ..training import TrainConfig, linear_schedule, record_step, resolve_autocast, set_threads

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# (IA)³ on T5: keys and values of self- and cross-attention, the FFN's intermediate activations
T5_IA3_TARGETS = ["k", "v", "wo"]
T5_IA3_FEEDFORWARD = ["wo"]


@functools.lru_cache(maxsize=2)
def _load(model_path: str):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from ..data.paper import MODEL_IDS
    from .common import quiet_transformers

    if not Path(model_path).exists():  # a legacy hub name ("t5-base") → today's id; a local folder stays
        model_path = MODEL_IDS.get(model_path, model_path)
    quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSeq2SeqLM.from_pretrained(model_path)
    except (OSError, ValueError) as e:  # no such id / no hub / a folder without a model or tokenizer
        raise TiesnbError(f"cannot load the seq2seq model {model_path!r} (a local folder, or a hub name with the hub "
                          f"reachable): {str(e).splitlines()[0][:200]}") from None
    return model, tok


def load_seq2seq(model_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A fresh copy of the model (pretrained weights) and its tokenizer."""
    import copy

    model, tok = _load(str(model_path))
    return copy.deepcopy(model).to(device), tok


def pretrained_state(model_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    model, _ = _load(str(model_path))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def ia3_reference(model_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The (IA)³ vectors this project trains on the model (peft's names: ``<module>.ia3_l``), at
    their starting point (ones): the names and shapes a released (IA)³ checkpoint must map to."""
    from peft import IA3Config, get_peft_model

    from ..training import ia3_state

    model, _ = load_seq2seq(model_path)
    return ia3_state(get_peft_model(model, IA3Config(target_modules=T5_IA3_TARGETS, feedforward_modules=T5_IA3_FEEDFORWARD)))


def original_ia3_names(name: str) -> str:
    """The original code's (IA)³ vector name → this project's: ``transformer.<…>.{k,v}.ia3_vector``
    (scales the output of k or v) → ``<…>.{k,v}.ia3_l``; ``<…>.DenseReluDense.wi_1.ia3_vector``
    (scales the output of wi_1, the gated branch, which is what wo multiplies) → ``<…>.wo.ia3_l``,
    an input scale of wo: the same function."""
    name = name.removeprefix("transformer.").removesuffix(".ia3_vector")
    return (name[:-len("wi_1")] + "wo" if name.endswith("DenseReluDense.wi_1") else name) + ".ia3_l"


def read_released(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or the original code's ``torch.save`` of a dict of
    tensors (``best_model.pt``), read with ``weights_only`` (tensors only, no code)."""
    if path.suffix == ".safetensors":
        from ..checkpoints import load_state_dict

        return load_state_dict(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a checkpoint, or one holding more than tensors
        raise TiesnbError(f"{path}: not a dict of tensors saved by torch.save ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TiesnbError(f"{path}: not a dict of tensors saved by torch.save")
    return state


def tied_groups(model_path: str | os.PathLike) -> list[list[str]]:
    """T5's tied parameters: the shared embedding, both ``embed_tokens`` and, when the word
    embeddings are tied (T5, not T5 v1.1 / T0), ``lm_head``."""
    model, _ = _load(str(model_path))
    group = ["shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"]
    if getattr(model.config, "tie_word_embeddings", False):
        group.append("lm_head.weight")
    return [group]


def original_multiplicity(model_path: str | os.PathLike) -> dict[str, int]:
    """How the original code counted T5's tied embedding in the global top-k: it dropped both
    ``embed_tokens`` copies but merged ``shared`` and ``lm_head`` — twice, when they are tied."""
    group = tied_groups(model_path)[0]
    return {min(group): 2} if "lm_head.weight" in group else {}


# ----------------------------------------------------------------------------------------------
# rank classification


def _batches(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(n, s + size)


def choice_scores(model, tok, examples: Sequence[RankExample], batch_size: int = 16, max_input_len: int = 256,
                  max_target_len: int = 32, bf16: bool = False, grad: bool = False) -> list[torch.Tensor]:
    """Per example, the summed log-probability of each answer choice given the input."""
    dev = next(model.parameters()).device
    out: list[torch.Tensor] = []
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx, torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for s, e in _batches(len(examples), batch_size):
            batch = examples[s:e]
            enc = tok([x.input for x in batch], truncation=True, max_length=max_input_len, padding=True,
                      return_tensors="pt").to(dev)
            hidden = model.get_encoder()(input_ids=enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state
            owner = torch.tensor([i for i, x in enumerate(batch) for _ in x.choices], device=dev)
            tgt = tok([c for x in batch for c in x.choices], truncation=True, max_length=max_target_len, padding=True,
                      return_tensors="pt").to(dev)
            labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
            logits = model(encoder_outputs=(hidden.index_select(0, owner),),
                           attention_mask=enc.attention_mask.index_select(0, owner), labels=labels).logits
            logp = logits.float().log_softmax(-1)
            tok_logp = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
            sums = tok_logp.sum(-1)
            i = 0
            for x in batch:
                out.append(sums[i:i + len(x.choices)] if grad else sums[i:i + len(x.choices)].detach().cpu())
                i += len(x.choices)
    return out


def rank_predictions(model, tok, examples: Sequence[RankExample], **kw) -> list[int]:
    """The index of the highest-scoring answer choice of every example."""
    return [int(torch.argmax(s)) for s in choice_scores(model, tok, examples, **kw)]


def rank_accuracy(model, tok, examples: Sequence[RankExample], **kw) -> float:
    preds = rank_predictions(model, tok, examples, **kw)
    return sum(p == x.label for p, x in zip(preds, examples)) / max(1, len(examples))


def template_indices(d: PaperTaskData, templates: str) -> list[int]:
    """``first``: template 0 alone (the original's T5 runs); ``all``: every template (its (IA)³ runs)."""
    return [0] if templates == "first" else list(range(len(d.prompts)))


class RankEvaluator:
    """Accuracy of any model state on any dataset: template 0's, or the median over the
    dataset's templates (``templates: all``)."""

    def __init__(self, model_path: str, data: Mapping[str, PaperTaskData], max_input_len: int = 256,
                 max_target_len: int = 32, batch_size: int = 16, autocast: str = "auto", progress: bool = True,
                 templates: str = "all"):
        self.data = dict(data)
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, self.tok = load_seq2seq(model_path, dev)
        self.pretrained = pretrained_state(model_path)
        self.bf16 = resolve_autocast(autocast, dev) and dev.type == "cuda"  # fp32 on CPU, as the original
        self.kw = dict(batch_size=batch_size, max_input_len=max_input_len, max_target_len=max_target_len, bf16=self.bf16)
        self.progress = progress
        self.templates = templates
        self.last_spread: dict[tuple[str, str], list[float]] = {}

    def _load(self, state):
        # a state the model does not know (e.g. (IA)³ vectors not folded into the weights) must not
        # be dropped silently: load_state_dict(strict=False) would evaluate the pretrained model
        result = self.model.load_state_dict(state if state is not None else self.pretrained, strict=False)
        if result.unexpected_keys:
            raise TiesnbError(f"the state to evaluate has {len(result.unexpected_keys)} entries the model lacks, e.g. "
                              f"{result.unexpected_keys[0]!r}: (IA)³ vectors must be folded into the weights first")
        self.model.eval()

    def template_accuracies(self, state, task: str, split: str) -> list[float]:
        self._load(state)
        d = self.data[task]
        accs = [rank_accuracy(self.model, self.tok, d.examples(split, t), **self.kw) for t in template_indices(d, self.templates)]
        self.last_spread[(task, split)] = accs
        return accs

    def accuracy(self, state, task: str, split: str) -> float:
        return statistics.median(self.template_accuracies(state, task, split))

    def scores(self, state, task: str, split: str):
        """Per example, the prediction and correctness under the median template (the mean of the
        two middle templates' correctness for an even number), so that the mean of the scores is
        the median accuracy over templates; and every template's accuracy."""
        import numpy as np

        self._load(state)
        d = self.data[task]
        preds, correct = [], []
        for t in template_indices(d, self.templates):
            examples = d.examples(split, t)
            p = np.asarray(rank_predictions(self.model, self.tok, examples, **self.kw))
            preds.append(p)
            correct.append((p == np.asarray([x.label for x in examples])).astype(np.float64))
        accs = [float(c.mean()) for c in correct]
        self.last_spread[(task, split)] = accs
        order = sorted(range(len(accs)), key=lambda i: (accs[i], i))
        mid = order[(len(order) - 1) // 2: len(order) // 2 + 1]  # one template, or the two middle ones
        return preds[mid[0]], sum(correct[i] for i in mid) / len(mid), accs


# ----------------------------------------------------------------------------------------------
# training


@dataclass
class Seq2SeqTrainConfig(TrainConfig):
    """A :class:`TrainConfig` for a seq2seq model, with the original's recipe as switches:
    ``schedule`` constant or linear, gradient accumulation, validation every ``eval_every``
    optimiser steps with early stopping after ``patience`` evaluations without improvement (the
    best state is returned; with ``eval_at_start``, a state must beat the pretrained model's score
    to be kept, and if none does the last state is returned), template 0 or every template
    (``templates``)."""

    model_path: str = ""
    max_len: int = 64
    max_target_len: int = 32
    templates: str = "all"  # first | all
    schedule: str = "linear"  # linear | constant
    grad_accum: int = 1
    eval_every: int = 0
    patience: int = 0
    eval_at_start: bool = False
    eval_batch_size: int = 16
    max_per_dataset: int = 500000  # training examples (record × template) kept per dataset; 0: all
    pool: str = "original"  # original: the cap applies to the multitask pool, per template | joint: to every pool
    val_tasks: list = field(default_factory=list)  # the tasks whose validation selects the state ([]: cfg.tasks)
    val_score: str = "pooled"  # pooled: accuracy over every example × template | median: median over templates

    def check(self) -> None:
        super().check()
        if self.max_len < 1 or self.max_target_len < 1:
            raise TiesnbError(f"max_len and max_target_len must be positive, got {self.max_len}, {self.max_target_len}")
        if self.templates not in ("first", "all") or self.schedule not in ("linear", "constant"):
            raise TiesnbError(f"templates must be first or all and schedule linear or constant, got "
                              f"{self.templates!r}, {self.schedule!r}")
        if self.grad_accum < 1 or self.eval_every < 0 or self.patience < 0:
            raise TiesnbError("grad_accum must be >= 1, eval_every and patience >= 0")
        if self.pool not in ("original", "joint"):
            raise TiesnbError(f"pool must be original or joint, got {self.pool!r}")


def lr_factor(step: int, cfg: Seq2SeqTrainConfig) -> float:
    """The learning rate's multiplier at optimiser step ``step`` (0-based)."""
    if cfg.schedule == "constant":
        return 1.0
    return linear_schedule(step, cfg)


def training_items(cfg: Seq2SeqTrainConfig, data: Mapping[str, PaperTaskData]) -> list[tuple[str, int, int]]:
    """(task, record, template) of every training example, per dataset as the original builds
    them (``pool: original``), datasets concatenated (its mixture: examples-proportional):

    * one dataset (a task model): each record with template 0, or every template's pass over the
      records (its ``train_template_idx`` 0 and −2), shuffled with ``random.Random(4)``, no cap;
    * several (the multitask model), template 0: the same, cut at ``max_per_dataset``; every
      template: per template its pass over the records, shuffled with ``Random(4)`` and again with
      seed 0, cut at ``max_per_dataset // templates`` (its ``DatasetMixtureReader``).

    ``pool: joint`` (this project's earlier pool): every pool, single or mixture, one shuffle with
    ``Random(4)`` over all templates and cut at ``max_per_dataset``."""
    import random

    cap = cfg.max_per_dataset if cfg.max_per_dataset > 0 else None
    mixture = len(cfg.tasks) > 1
    items = []
    for t in cfg.tasks:
        templates, n = template_indices(data[t], cfg.templates), len(data[t].train)
        if cfg.pool == "original" and mixture and len(templates) > 1:
            per = cap // len(templates) if cap else None
            for k in templates:
                part = [(t, i, k) for i in range(n)]
                random.Random(4).shuffle(part)  # the single-template dataset's own shuffle
                random.Random(0).shuffle(part)  # the mixture's: random.seed(0); random.shuffle
                items += part[:per]
            continue
        own = [(t, i, k) for k in templates for i in range(n)]
        random.Random(4).shuffle(own)
        items += own[:cap] if (mixture or cfg.pool == "joint") else own
    return items


class ItemStream:
    """A seeded stream of training items in epochs of permutations. Every process draws the same
    micro-batch of ``batch_size`` items and keeps its own share (``batch_size / processes``), so
    processes see different examples and together see what one process sees."""

    def __init__(self, n: int, seed: int):
        self.n, self.gen, self.order = n, torch.Generator().manual_seed(seed), []

    def take(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.order.pop())
        return out


def validation_score(model, tok, cfg: Seq2SeqTrainConfig, data: Mapping[str, PaperTaskData], bf16: bool) -> float:
    """What checkpoints are selected by: the mean over ``cfg.val_tasks`` (the original's
    ``inference_dataset_mixture``: every task of the study, also for a task model) of each task's
    validation accuracy — over every example × template (``pooled``, its ``eval_template_idx``
    −2; template 0 alone with ``templates: first``) or the median over templates (``median``)."""
    was_training = model.training
    model.eval()
    accs = []
    for t in cfg.val_tasks or cfg.tasks:
        d = data[t]
        per = []
        for k in template_indices(d, cfg.templates):
            examples = d.examples("val", k)
            per.append((rank_accuracy(model, tok, examples, batch_size=cfg.eval_batch_size, max_input_len=cfg.max_len,
                                      max_target_len=cfg.max_target_len, bf16=bf16), len(examples)))
        if cfg.val_score == "pooled":
            accs.append(sum(a * n for a, n in per) / max(1, sum(n for _, n in per)))
        else:
            accs.append(statistics.median(a for a, _ in per))
    model.train(was_training)
    return sum(accs) / len(accs)


def finetune(cfg: Seq2SeqTrainConfig, data: Mapping[str, PaperTaskData], heads_state=None, progress: bool = True,
             history: list | None = None, trace: dict | None = None) -> dict[str, torch.Tensor]:
    """Full fine-tuning or (IA)³ of a T5-style model on ``cfg.tasks`` (cross-entropy of the right
    answer) through ``accelerate``: CPU, one GPU or several (``accelerate launch``), the same
    recipe: the data sharded across processes, the optimiser stepping once per ``grad_accum``
    micro-batches (gradients synchronised on the last), the learning rate schedule stepped once per
    optimiser step. ``trace``, if given, receives per optimiser step the learning rate, and this
    process's example ids and validation scores."""
    from contextlib import nullcontext

    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    cfg.check()
    if not cfg.model_path:
        raise TiesnbError("model_path is empty: set it in study.yaml to the pretrained model's folder or hub name")
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    bf16 = resolve_autocast(cfg.autocast)
    acc = Accelerator(mixed_precision="bf16" if bf16 else "no", cpu=not torch.cuda.is_available())
    model, tok = load_seq2seq(cfg.model_path)
    if cfg.mode == "ia3":
        from peft import IA3Config, get_peft_model

        model = get_peft_model(model, IA3Config(target_modules=T5_IA3_TARGETS, feedforward_modules=T5_IA3_FEEDFORWARD))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # stepped by hand once per optimiser step: accelerate's wrapped scheduler steps once per process
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    model, opt = acc.prepare(model, opt)
    items = training_items(cfg, data)
    stream = ItemStream(len(items), cfg.seed)
    rank, world = acc.process_index, acc.num_processes
    # batch_size is the whole micro-batch, whatever the number of processes: each takes its share of
    # the examples one process would take, so N processes train on what one process trains on
    if cfg.batch_size % world:
        raise TiesnbError(f"batch_size {cfg.batch_size} does not split over {world} processes: make it a multiple of {world}")
    share = cfg.batch_size // world

    def state_now() -> dict[str, torch.Tensor]:
        m = acc.unwrap_model(model)
        if cfg.mode == "ia3":
            from ..training import ia3_state

            return ia3_state(m)
        return {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}

    def score_now() -> float:
        s = [validation_score(acc.unwrap_model(model), tok, cfg, data, bf16)]
        if world > 1:  # every process decides on the first one's score: the same stop everywhere
            broadcast_object_list(s, from_process=0)
        return s[0]

    best_score, best_state, waited = float("-inf"), None, 0
    if cfg.eval_every and cfg.eval_at_start:
        best_score = score_now()  # the bar: a state is kept only if it beats the pretrained model
    if trace is not None:
        trace.update(lr=[], items=[], grad=[], val=[] if not cfg.eval_every else ([best_score] if cfg.eval_at_start else []))
    model.train()
    name = "+".join(cfg.tasks) if len(cfg.tasks) < 3 else "multitask"
    bar = progress_.bar(range(cfg.steps), desc=f"train {name} ({cfg.mode}, seed {cfg.seed})",
                        disable=not progress or not acc.is_local_main_process)
    for step in bar:
        total = 0.0
        for micro in range(cfg.grad_accum):
            picks = stream.take(cfg.batch_size)[rank * share:(rank + 1) * share]
            pairs = []
            for j in picks:
                task, i, k = items[j]
                ex = data[task].example(data[task].train[i], k)
                pairs.append((ex.input, ex.choices[ex.label]))
            if trace is not None:
                trace["items"].append(picks)
            enc = tok([a for a, _ in pairs], truncation=True, max_length=cfg.max_len, padding=True, return_tensors="pt")
            tgt = tok([b for _, b in pairs], truncation=True, max_length=cfg.max_target_len, padding=True, return_tensors="pt")
            labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
            sync = nullcontext() if micro == cfg.grad_accum - 1 or world == 1 else acc.no_sync(model)
            with sync:
                with acc.autocast():
                    loss = model(input_ids=enc.input_ids.to(acc.device), attention_mask=enc.attention_mask.to(acc.device),
                                 labels=labels.to(acc.device)).loss / cfg.grad_accum
                acc.backward(loss)
            total = total + loss.detach()
        if trace is not None:
            trace["lr"].append(opt.param_groups[0]["lr"])
            # after the all-reduce: every process holds the same gradient
            trace["grad"].append(float(sum(p.grad.double().abs().sum() for p in params if p.grad is not None)))
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        record_step(total, step, cfg, bar, history)
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            score = score_now()
            if trace is not None:
                trace["val"].append(score)
            if score > best_score:
                best_score, best_state, waited = score, state_now(), 0
            else:
                waited += 1
                if cfg.patience and waited >= cfg.patience:
                    break
    if cfg.eval_every and best_state is not None:
        return best_state
    return state_now()


# ----------------------------------------------------------------------------------------------
# statistics


def fisher_diagonal(model_path: str, state: Mapping[str, torch.Tensor], data: PaperTaskData, names: Sequence[str],
                    n_examples: int = 32, max_input_len: int = 256, max_target_len: int = 32,
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the rank-classification distribution over answer choices (template 0):
    ``E_x Σ_c p(c|x) (∂ log p(c|x) / ∂θ)²``, exactly, per example."""
    model, tok = load_seq2seq(model_path)
    model.load_state_dict(state, strict=False)
    model.eval()
    params = dict(model.named_parameters(remove_duplicate=False))  # tied names point at one tensor
    unknown = [n for n in names if n not in params]
    if unknown:
        raise TiesnbError(f"Fisher requested for parameters the model lacks: {unknown[:3]}")
    for p in params.values():
        p.requires_grad_(False)
    for n in names:
        params[n].requires_grad_(True)
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    examples = data.examples("train", 0)[:n_examples]
    for ex in tqdm(examples, desc=f"Fisher {data.name}", disable=not progress, leave=False):
        [scores] = choice_scores(model, tok, [ex], 1, max_input_len, max_target_len, grad=True)
        logp = scores.log_softmax(-1)
        probs = logp.exp().detach()
        for c in range(len(ex.choices)):
            grads = torch.autograd.grad(logp[c], [params[n] for n in names], retain_graph=c + 1 < len(ex.choices),
                                        allow_unused=True)
            for n, g in zip(names, grads):
                if g is not None:
                    fisher[n].add_(probs[c] * g.square())
    return {n: (f / max(1, len(examples))).detach().cpu() for n, f in fisher.items()}


def gram_matrices(model_path: str, state: Mapping[str, torch.Tensor], data: PaperTaskData, n_examples: int = 64,
                  max_input_len: int = 256, max_target_len: int = 32, progress: bool = True) -> dict[str, torch.Tensor]:
    """Mean Gram matrix of every linear layer's inputs over the non-padding positions, with the
    right answer teacher-forced (template 0); keyed by the layer's weight name (RegMean)."""
    from .common import LinearGrams

    model, tok = load_seq2seq(model_path)
    model.load_state_dict(state, strict=False)
    model.eval()
    # cross-attention keys and values read the encoder's output, so the encoder's mask applies
    enc_side = lambda n: n.startswith("encoder.") or ".EncDecAttention.k" in n or ".EncDecAttention.v" in n  # noqa: E731
    examples = data.examples("train", 0)[:n_examples]
    with LinearGrams(model, lambda n: "enc" if enc_side(n) else "dec") as grams, torch.inference_mode():
        for s, e in tqdm(list(_batches(len(examples), 8)), desc=f"Gram {data.name}", disable=not progress, leave=False):
            batch = examples[s:e]
            enc = tok([x.input for x in batch], truncation=True, max_length=max_input_len, padding=True, return_tensors="pt")
            tgt = tok([x.choices[x.label] for x in batch], truncation=True, max_length=max_target_len, padding=True,
                      return_tensors="pt")
            grams.masks["enc"], grams.masks["dec"] = enc.attention_mask, tgt.attention_mask
            labels = tgt.input_ids.masked_fill(tgt.attention_mask == 0, -100)
            model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels)
    return grams.mean()


def make_tiny_t5(folder: str | Path, texts: Sequence[str], seed: int = 0, d_model: int = 32,
                 feed_forward_proj: str = "relu") -> Path:
    """A tiny randomly initialised T5 and a word-level tokenizer covering ``texts``, saved as a
    Hugging Face folder: the paper-scale path's stand-in for T5 in tests (no weights download)."""
    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    words = sorted({w for t in texts for w in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(t) for w in [w[0]]})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(tmodels.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(vocab), d_model=d_model, d_ff=2 * d_model, d_kv=d_model // 2, num_heads=2,
                   num_layers=2, num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                   tie_word_embeddings=True, feed_forward_proj=feed_forward_proj)
    model = T5ForConditionalGeneration(cfg)
    folder = Path(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------------------------
# the family


@dataclass
class Seq2SeqSettings:
    """The ``seq2seq:`` section of study.yaml: the model, where the data is, the prompts, and the
    original's training recipe as switches."""

    model_path: str = ""  # the pretrained model, a local folder or a hub name
    data_dir: str = ""  # local copies <dataset>/<split>.jsonl (default: the hub or its cache)
    story_cloze_dir: str = ""  # the manually downloaded Story Cloze folder
    max_len: int = 64  # input tokens
    max_target_len: int = 32  # tokens of an answer choice (the original: max_len)
    prompts: str = "promptsource"  # promptsource (the original's templates) | tiesnb (three of our own)
    templates: str = "first"  # first (T5: template 0 to train and evaluate) | all (IA3: train on
    #   example × template, accuracy = median over templates)
    schedule: str = "linear"  # linear (warm-up, then decay to 0) | constant
    grad_accum: int = 1  # micro-batches per optimiser step (effective batch = batch_size × grad_accum, any number of processes)
    eval_every: int = 0  # optimiser steps between validation evaluations (0: none; the last state is kept)
    patience: int = 0  # stop after this many evaluations without improvement (0: never); the best state is kept
    eval_at_start: bool = False  # evaluate before training: the pretrained score is the bar to beat
    max_per_dataset: int = 500000  # training examples (record × template) per dataset, the original's cap; 0: all
    pool: str = "original"  # original: as its readers (the cap on the multitask pool only, per template) | joint
    val_tasks: str = "mixture"  # checkpoint selection on: mixture (every task of the study, the original's) | own
    val_score: str = "pooled"  # a task's validation score: pooled over example × template (the original's) | median


class Seq2Seq(Family):
    """A T5-style model (``model_path``: a local folder or a hub name), rank classification over
    answer choices with several prompt templates per dataset."""

    name = "seq2seq"
    code = ("data/paper.py",)
    Settings = Seq2SeqSettings
    modes = ("full", "ia3")

    def check(self, study) -> None:
        s, name = study.settings, study.config.name
        for key, valid in (("prompts", ("promptsource", "tiesnb")), ("templates", ("first", "all")),
                           ("schedule", ("linear", "constant")), ("pool", ("original", "joint")),
                           ("val_tasks", ("mixture", "own")), ("val_score", ("pooled", "median"))):
            if getattr(s, key) not in valid:
                raise TiesnbError(f"study {name}: seq2seq.{key} must be one of {', '.join(valid)}, got {getattr(s, key)!r}")
        if s.grad_accum < 1:
            raise TiesnbError(f"study {name}: seq2seq.grad_accum must be at least 1, got {s.grad_accum}")
        for key in ("eval_every", "patience", "max_per_dataset"):
            if getattr(s, key) < 0:
                raise TiesnbError(f"study {name}: seq2seq.{key} must be >= 0, got {getattr(s, key)}")

    def data_key(self, study) -> str:
        return super().data_key(study) + "-v2"  # v2: the original's splits

    def load_task(self, study, task: str):
        from ..data.paper import load_paper_task

        c, s = study.config, study.settings
        return load_paper_task(task, c.n_train, c.n_val, c.n_test, c.split_seed, s.data_dir or None,
                               s.story_cloze_dir or None, s.prompts)

    def task_data(self, study, task: str, raw: dict):
        return PaperTaskData.from_json(task, raw, study.settings.prompts)

    def train_config(self, study, tasks: list[str]):
        c, s = study.config, study.settings
        return Seq2SeqTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                                  warmup=c.warmup, max_len=s.max_len, seed=study.seed, autocast=c.autocast,
                                  threads=study.threads, model_path=s.model_path, max_target_len=s.max_target_len,
                                  templates=s.templates, schedule=s.schedule, grad_accum=s.grad_accum,
                                  eval_every=s.eval_every, patience=s.patience, eval_at_start=s.eval_at_start,
                                  eval_batch_size=c.eval_batch_size, max_per_dataset=s.max_per_dataset,
                                  pool=s.pool, val_tasks=list(c.tasks) if s.val_tasks == "mixture" else list(tasks),
                                  val_score=s.val_score)

    def trainer(self):
        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        return pretrained_state(study.settings.model_path)

    # existing task models: the original code's checkpoints (``fullshot/ia3/<dataset>/best.pt``, a
    # ``torch.save`` of the trainable tensors under its wrapper's names, ``transformer.…``; its
    # checkpointer also writes ``best_model.pt``) or safetensors, as files or folders holding one
    reads_released = True

    @staticmethod
    def _released_file(source: str) -> Path:
        from .common import local_path, released_folder

        path = local_path(source)
        if path is not None and path.is_file():
            return path
        if path is not None and not path.exists():
            raise TiesnbError(f"existing model {source}: not found ({path}): download it there, or name its folder or file")
        folder = released_folder(source)
        names = ("best.pt", "best_model.pt", "finish.pt", "model.safetensors")  # the original's, then ours
        for name in names:
            if (folder / name).exists():
                return folder / name
        raise TiesnbError(f"{folder}: holds none of {', '.join(names)}")

    def released_folder(self, study, source: str) -> Path:
        return self._released_file(source).parent

    def released_fingerprint(self, study, source: str) -> str:
        from ..io import sha256_cached

        return sha256_cached(self._released_file(source))[:16]

    def released_state(self, study, source: str) -> dict[str, torch.Tensor]:
        from .common import check_like

        path = self._released_file(source)
        raw = read_released(path)
        if study.config.mode == "ia3":
            reference = ia3_reference(study.settings.model_path)
            state = {}
            for name, v in raw.items():
                ours = original_ia3_names(name) if name.endswith(".ia3_vector") else name
                if ours not in reference:
                    raise TiesnbError(f"{path}: {name!r} is not an (IA)³ vector of {study.settings.model_path} "
                                      f"(expected names like {next(iter(reference))!r} or the original's '…k.ia3_vector')")
                state[ours] = v.reshape(reference[ours].shape) if v.numel() == reference[ours].numel() else v
        else:
            reference = self.pretrained(study)
            state = {name.removeprefix("transformer."): v for name, v in raw.items()}
            unknown = sorted(set(state) - set(reference))
            if unknown:
                raise TiesnbError(f"{path}: {unknown[0]!r} is not a tensor of {study.settings.model_path}")
            for group in tied_groups(study.settings.model_path):  # the original saves the shared embedding once
                have = [n for n in group if n in state]
                for n in group:
                    if have and n not in state:
                        state[n] = state[have[0]]
        check_like(state, reference, path)
        return {k: state[k].to(reference[k].dtype) for k in reference}

    def merge_options(self, study, params) -> dict:
        """T5's tied embedding merges once; the original code's presets count it as the original
        did (twice in the global top-k when ``lm_head`` is tied)."""
        if study.config.mode == "ia3":
            return {}
        opts = {"tied": tied_groups(study.settings.model_path)}
        if params.get("preset") in ("original", "fusionbench"):
            opts["multiplicity"] = original_multiplicity(study.settings.model_path)
        return opts

    def eval_settings(self, study) -> list:
        c, s = study.config, study.settings
        return [c.model, s.model_path, s.max_len, s.max_target_len, c.eval_batch_size, c.autocast, s.templates]

    def evaluator(self, study):
        c, s = study.config, study.settings
        return RankEvaluator(s.model_path, study.data(), s.max_len, s.max_target_len, c.eval_batch_size, c.autocast,
                             progress=False, templates=s.templates)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        c, s = study.config, study.settings
        state = study.state(task)
        groups = tied_groups(s.model_path)
        if kind == "fisher":
            aliases = {a for g in groups for a in sorted(g)[1:]}
            names = [n for n, v in state.items() if v.is_floating_point() and n not in aliases]
            return fisher_diagonal(s.model_path, state, study.data()[task], names, c.fisher_examples,
                                   s.max_len, s.max_target_len, progress)
        grams = gram_matrices(s.model_path, state, study.data()[task], c.gram_examples, s.max_len,
                              s.max_target_len, progress)
        tied = {n for g in groups for n in g}
        return {k: v for k, v in grams.items() if k not in tied}  # a tied lm_head is the embedding: averaged
