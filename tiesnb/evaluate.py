"""Evaluation of encoders through the fixed heads, and the per-model statistics that Fisher
merging and RegMean need.

:class:`Evaluator` keeps one encoder module and the tokenised splits, so evaluating another
state dict costs only the forward passes: batched by length (least padding), in inference mode,
with a progress bar. Results are tidy rows — task, split, method, hyperparameters, accuracy —
that the notebooks tabulate.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import models
from .data import TaskData
from .errors import TiesnbError
from .train import device, heads_module, resolve_autocast


class Evaluator:
    """Accuracy of any encoder state dict on any of ``data``'s tasks and splits."""

    def __init__(self, data: Mapping[str, TaskData], heads_state: Mapping[str, torch.Tensor], max_len: int = 64,
                 batch_size: int = 32, autocast: str = "auto", progress: bool = True):
        self.data = dict(data)
        self.dev = device()
        self.bf16 = resolve_autocast(autocast, self.dev)
        self.heads = heads_module(heads_state, list(self.data)).to(self.dev)
        self.encoder = models.load_encoder(device=self.dev).eval()
        self.max_len, self.batch_size, self.progress = max_len, batch_size, progress
        self._encoded: dict[tuple[str, str], list] = {}

    def encoded(self, task: str, split: str) -> list:
        key = (task, split)
        if key not in self._encoded:
            if task not in self.data:
                raise TiesnbError(f"task {task!r} is not loaded in this evaluator; loaded: {', '.join(self.data)}")
            self._encoded[key] = models.encode(self.data[task].split(split), self.max_len)
        return self._encoded[key]

    def predictions(self, state: Mapping[str, torch.Tensor] | None, task: str, split: str) -> torch.Tensor:
        """Predicted label of every example (``state`` None: the pretrained encoder)."""
        models.load_state(self.encoder, state if state is not None else models.pretrained_state())
        enc = self.encoded(task, split)
        preds = torch.empty(len(enc), dtype=torch.long)
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            for idx in models.length_batches(enc, self.batch_size):
                pooled = models.pooled(self.encoder, models.collate([enc[i] for i in idx], self.dev))
                preds[idx] = self.heads(task, pooled.float()).argmax(-1).cpu()
        return preds

    def scores(self, state: Mapping[str, torch.Tensor] | None, task: str, split: str):
        """``(predicted labels, correct (0/1 per example), None)`` — what the study caches."""
        import numpy as np

        preds = self.predictions(state, task, split).numpy()
        gold = np.asarray([e.label for e in self.data[task].split(split)])
        return preds, (preds == gold).astype(np.float64), None

    def accuracy(self, state: Mapping[str, torch.Tensor] | None, task: str, split: str) -> float:
        preds = self.predictions(state, task, split)
        gold = torch.tensor([e.label for e in self.data[task].split(split)])
        return float((preds == gold).float().mean())

    def rows(self, state: Mapping[str, torch.Tensor] | None, tasks: Sequence[str], split: str,
             method: str, **hparams: Any) -> list[dict]:
        """One tidy row per task: ``task, split, method, <hparams…>, accuracy``."""
        out = []
        bar = tqdm(tasks, desc=f"eval {method} ({split})", disable=not self.progress, leave=False)
        for task in bar:
            out.append({"task": task, "split": split, "method": method, **hparams,
                        "accuracy": self.accuracy(state, task, split)})
        return out

    def mean(self, state, tasks: Sequence[str], split: str) -> float:
        return sum(self.accuracy(state, t, split) for t in tasks) / len(tasks)


# ----------------------------------------------------------------------------------------------
# statistics for Fisher merging and RegMean


def fisher_diagonal(state: Mapping[str, torch.Tensor], task: str, data: TaskData,
                    heads_state: Mapping[str, torch.Tensor], names: Sequence[str], n_examples: int = 64,
                    max_len: int = 64, progress: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of the model (encoder ``state`` + the task's head) on its training data:
    ``E_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)²`` — the exact expectation over the labels, per
    example (Matena & Raffel 2022) — for the parameters ``names``."""
    dev = device()
    heads = heads_module(heads_state, [task]).to(dev)
    encoder = models.load_encoder(state, device=dev).eval()  # no dropout: the model's own distribution
    params = dict(encoder.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise TiesnbError(f"Fisher requested for parameters the encoder lacks: {unknown[:3]}")
    for n, p in params.items():
        p.requires_grad_(n in names)
    # the word embeddings' gradient touches only the example's tokens: a sparse gradient keeps each
    # backward pass from writing (and squaring) all 11.7 M entries
    words = "embeddings.word_embeddings.weight"
    encoder.embeddings.word_embeddings.sparse = words in names
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    examples = data.train[:n_examples]
    enc = models.encode(examples, max_len)
    for i in tqdm(range(len(enc)), desc=f"Fisher {task}", disable=not progress, leave=False):
        batch = models.collate([enc[i]], dev)
        logp = F.log_softmax(heads(task, models.pooled(encoder, batch)), -1)[0]
        probs = logp.exp().detach()
        for y in range(logp.shape[0]):
            grads = torch.autograd.grad(logp[y], [params[n] for n in names], retain_graph=y + 1 < logp.shape[0])
            for n, g in zip(names, grads):
                if g.is_sparse:  # square the summed gradient of each row, not its pieces
                    g = g.coalesce()
                    g = torch.sparse_coo_tensor(g.indices(), probs[y] * g.values().square(), g.shape, check_invariants=False)
                    fisher[n].add_(g)
                else:
                    fisher[n].add_(probs[y] * g.square())
    return {n: (f / max(1, len(enc))).detach().cpu() for n, f in fisher.items()}


class LinearGrams:
    """Accumulates, for every ``nn.Linear`` of ``model``, ``XᵀX`` over the unmasked positions of
    its inputs while the model runs inside ``with``. Which mask applies to a layer is named by
    ``mask_of(layer_name)`` (an encoder-decoder has one mask per side); set ``masks[...]`` before
    each forward pass. ``mean()`` gives ``XᵀX / N`` keyed by the layer's weight name (RegMean)."""

    def __init__(self, model: torch.nn.Module, mask_of=lambda name: "mask"):
        self.model, self.mask_of = model, mask_of
        self.masks: dict[str, torch.Tensor] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._hooks = []

    def __enter__(self) -> "LinearGrams":
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                self._hooks.append(module.register_forward_hook(self._hook(f"{name}.weight", self.mask_of(name))))
        return self

    def _hook(self, key: str, mask: str):
        def hook(_mod, inputs, _out):
            x = inputs[0].float()
            x = x.reshape(-1, x.shape[-1])[self.masks[mask].reshape(-1).bool()]
            self.grams[key] = self.grams[key] + x.T @ x if key in self.grams else x.T @ x
            self.counts[key] = self.counts.get(key, 0) + x.shape[0]
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: (g / self.counts[k]).cpu() for k, g in self.grams.items()}


def gram_matrices(state: Mapping[str, torch.Tensor], data: TaskData, n_examples: int = 256, max_len: int = 64,
                  batch_size: int = 32, progress: bool = True, task: str = "") -> dict[str, torch.Tensor]:
    """For every linear layer of the encoder, the mean Gram matrix ``XᵀX / N`` of its inputs
    over the (non-padding) tokens of the training data, keyed by the layer's weight name — the
    statistics of RegMean (Jin et al. 2023)."""
    dev = device()
    encoder = models.load_encoder(state, device=dev).eval()
    enc = models.encode(data.train[:n_examples], max_len)
    with LinearGrams(encoder) as grams, torch.inference_mode():
        for idx in tqdm(list(models.length_batches(enc, batch_size)), desc=f"Gram {task}", disable=not progress, leave=False):
            batch = models.collate([enc[i] for i in idx], dev)
            grams.masks["mask"] = batch["attention_mask"]
            encoder(**batch)
    return grams.mean()
