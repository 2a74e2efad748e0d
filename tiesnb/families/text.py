"""The text family (the embedded default study): the pretrained MiniLM-L6 encoder from its
offline package, mean pooling, one fixed linear head per task; full fine-tuning or (IA)³ of the
encoder per task and for the multitask model; evaluation through the heads; the Fisher and Gram
statistics of the Fisher and RegMean baselines.

Only the encoder is fine-tuned and merged. Each task's head is fitted once on the frozen
pretrained encoder (a linear probe) and then kept fixed — the paper's ViT protocol — so every
encoder (pretrained, fine-tuned, multitask, merged) is evaluated through the same heads.
Encoders travel as state dicts (name → tensor, the names of ``transformers``' ``BertModel``).

Why one module (~450 lines): a family is one unit (data, model, heads, training, evaluation,
statistics) that a newcomer reads with its interface, ``families/base.py``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .. import progress as progress_
from ..data import Example, TaskData
from ..data.sources import minilm_dir
from ..errors import TiesnbError
from .base import Family
from .common import LinearGrams, quiet_transformers
from ..training import (Sampler, TrainConfig, device, fit_linear, heads_loss, heads_module, ia3_state,
                        linear_schedule, record_step, resolve_autocast, set_threads)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=1)
def tokenizer():
    """MiniLM's fast WordPiece tokenizer (from the offline package)."""
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def load_encoder(state: Mapping[str, torch.Tensor] | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The MiniLM encoder (``BertModel`` without pooler), pretrained, or with ``state`` loaded."""
    from transformers import AutoModel

    quiet_transformers()
    model = AutoModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
    if state is not None:
        load_state(model, state)
    return model.to(device)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load an encoder state dict; every parameter must be there, with its shape."""
    own = dict(model.named_parameters())
    missing = [k for k in own if k not in state]
    unknown = [k for k in state if k not in own and k not in dict(model.named_buffers())]
    if missing or unknown:
        raise TiesnbError(f"encoder state does not fit MiniLM: missing {missing[:3]}, unknown {unknown[:3]}")
    with torch.no_grad():
        for k, p in own.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise TiesnbError(f"encoder state: '{k}' has shape {tuple(state[k].shape)}, MiniLM needs {tuple(p.shape)}")
            p.copy_(state[k])


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's parameters (no buffers) as a detached CPU state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}


@functools.lru_cache(maxsize=1)
def pretrained_state() -> dict[str, torch.Tensor]:
    return encoder_state(load_encoder())


def hidden_size() -> int:
    return 384


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states under the attention mask (how all-MiniLM-L6-v2 pools)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# tokenised inputs and batches


def encode(examples: Sequence[Example], max_len: int) -> list[list[int]]:
    """Token ids per example (a text or a text pair), truncated to ``max_len`` (longest first)."""
    tok = tokenizer()
    texts = [e.text for e in examples]
    pairs = [e.pair for e in examples]
    if all(p is None for p in pairs):
        enc = tok(texts, truncation=True, max_length=max_len)
    else:
        enc = tok(texts, [p or "" for p in pairs], truncation="longest_first", max_length=max_len)
    return [list(zip(ids, tt)) for ids, tt in zip(enc["input_ids"], enc["token_type_ids"])]


def collate(encoded: Sequence[list], device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Pad a batch of encoded examples to its longest member."""
    L = max(len(e) for e in encoded)
    ids = torch.zeros(len(encoded), L, dtype=torch.long)
    types = torch.zeros(len(encoded), L, dtype=torch.long)
    mask = torch.zeros(len(encoded), L, dtype=torch.long)
    for i, e in enumerate(encoded):
        n = len(e)
        ids[i, :n] = torch.tensor([a for a, _ in e])
        types[i, :n] = torch.tensor([b for _, b in e])
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "token_type_ids": types.to(device), "attention_mask": mask.to(device)}


def pooled(encoder: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = encoder(**batch).last_hidden_state
    return mean_pool(out, batch["attention_mask"])


def length_batches(encoded: Sequence[list], batch_size: int) -> Iterable[list[int]]:
    """Index batches of similar length (least padding), for inference."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for s in range(0, len(order), batch_size):
        yield order[s:s + batch_size]

# ----------------------------------------------------------------------------------------------
# linear probes: the heads


def features(encoder: torch.nn.Module, encoded: Sequence[list], batch_size: int = 32, bf16: bool = False) -> torch.Tensor:
    """Pooled sentence embeddings, in input order."""
    dev = next(encoder.parameters()).device
    out = torch.empty(len(encoded), hidden_size())
    encoder.eval()
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for idx in length_batches(encoded, batch_size):
            out[idx] = pooled(encoder, collate([encoded[i] for i in idx], dev)).float().cpu()
    return out


def fit_heads(data: Mapping[str, TaskData], n_examples: int = 1000, l2: float = 1e-3, max_len: int = 64,
              autocast: str = "auto", progress: bool = True) -> dict[str, torch.Tensor]:
    """Fit every task's head on the frozen pretrained encoder; a state dict ``<task>.weight``,
    ``<task>.bias``."""
    dev = device()
    bf16 = resolve_autocast(autocast, dev)
    encoder = load_encoder(device=dev)
    state = {}
    for task in tqdm(list(data), desc="linear probes", disable=not progress, leave=False):
        d = data[task]
        train = d.train[:n_examples]
        x = features(encoder, encode(train, max_len), bf16=bf16)
        y = torch.tensor([e.label for e in train])
        head = fit_linear(x, y, len(d.labels), l2)
        state[f"{task}.weight"] = head.weight.detach().clone()
        state[f"{task}.bias"] = head.bias.detach().clone()
    return state

# ----------------------------------------------------------------------------------------------
# (IA)^3


IA3_TARGETS = r".*\.attention\.self\.(key|value)|.*\.layer\.\d+\.output\.dense"
IA3_FEEDFORWARD = r".*\.layer\.\d+\.output\.dense"


def ia3_model(encoder: torch.nn.Module):
    """Wrap the encoder with (IA)³ vectors on keys, values and the FFN's intermediate activations
    (the paper's placement), all initialised to 1."""
    from peft import IA3Config, get_peft_model

    cfg = IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD)
    return get_peft_model(encoder, cfg)

# ----------------------------------------------------------------------------------------------
# fine-tuning


@dataclass
class TextTrainConfig(TrainConfig):
    max_len: int = 64
    train_embeddings: bool = False  # the embedding tables too (52 % of MiniLM's weights)
    sparse_embeddings: bool = True  # with train_embeddings: only the word-embedding rows a batch uses are updated

    def check(self) -> None:
        super().check()
        if self.max_len < 1:
            raise TiesnbError(f"training max_len must be positive, got {self.max_len}")


def finetune(cfg: "TextTrainConfig", data: Mapping[str, TaskData], heads_state: Mapping[str, torch.Tensor],
             progress: bool = True, history: list | None = None) -> dict[str, torch.Tensor]:
    """Train the encoder (mode ``full``) or (IA)³ vectors (mode ``ia3``) on ``cfg.tasks`` with
    the heads frozen; returns the encoder state dict, or the (IA)³ vectors. The loss of every
    step is appended to ``history`` if given."""
    cfg.check()
    set_threads(cfg.threads)
    dev = device()
    bf16 = resolve_autocast(cfg.autocast, dev)
    torch.manual_seed(cfg.seed)
    heads = heads_module(heads_state, cfg.tasks).to(dev)
    encoder = load_encoder(device=dev)
    sparse = []
    if cfg.mode == "ia3":
        net = ia3_model(encoder)
        params = [p for p in net.parameters() if p.requires_grad]
    else:
        net = encoder
        for n, p in net.named_parameters():
            p.requires_grad_(cfg.train_embeddings or not n.startswith("embeddings."))
        if cfg.train_embeddings and cfg.sparse_embeddings:
            # A batch touches a few hundred of the 30,522 word-embedding rows: a sparse gradient and
            # lazy Adam (moments and weights of those rows only, no weight decay) cost almost
            # nothing, where dense AdamW would read and write all 11.7 M entries every step.
            words = net.embeddings.word_embeddings
            words.sparse = True
            sparse = [words.weight]
        params = [p for p in net.parameters() if p.requires_grad and not any(p is q for q in sparse)]
    opts = [torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=cfg.lr))
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: linear_schedule(s, cfg)) for o in opts]
    encoded = {t: encode(data[t].train, cfg.max_len) for t in cfg.tasks}
    labels = {t: [e.label for e in data[t].train] for t in cfg.tasks}
    sampler = Sampler({t: len(encoded[t]) for t in cfg.tasks}, cfg.seed)

    net.train()
    name = "+".join(cfg.tasks) if len(cfg.tasks) < 3 else "multitask"
    bar = progress_.bar(range(cfg.steps), desc=f"train {name} ({cfg.mode}, seed {cfg.seed})", disable=not progress)
    for step in bar:
        picks = sampler.batch(cfg.batch_size)
        batch = collate([encoded[t][i] for t, i in picks], dev)
        y = torch.tensor([labels[t][i] for t, i in picks], device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            feats = pooled(net, batch)
        loss = heads_loss(heads, picks, feats, y)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o, sc in zip(opts, scheds):
            o.step()
            sc.step()
        record_step(loss, step, cfg, bar, history)
    net.eval()
    return ia3_state(net) if cfg.mode == "ia3" else encoder_state(encoder)


# ----------------------------------------------------------------------------------------------
# evaluation through the heads


class Evaluator:
    """Accuracy of any encoder state dict on any of ``data``'s tasks and splits."""

    def __init__(self, data: Mapping[str, TaskData], heads_state: Mapping[str, torch.Tensor], max_len: int = 64,
                 batch_size: int = 32, autocast: str = "auto", progress: bool = True):
        self.data = dict(data)
        self.dev = device()
        self.bf16 = resolve_autocast(autocast, self.dev)
        self.heads = heads_module(heads_state, list(self.data)).to(self.dev)
        self.encoder = load_encoder(device=self.dev).eval()
        self.max_len, self.batch_size, self.progress = max_len, batch_size, progress
        self._encoded: dict[tuple[str, str], list] = {}

    def encoded(self, task: str, split: str) -> list:
        key = (task, split)
        if key not in self._encoded:
            if task not in self.data:
                raise TiesnbError(f"task {task!r} is not loaded in this evaluator; loaded: {', '.join(self.data)}")
            self._encoded[key] = encode(self.data[task].split(split), self.max_len)
        return self._encoded[key]

    def predictions(self, state: Mapping[str, torch.Tensor] | None, task: str, split: str) -> torch.Tensor:
        """Predicted label of every example (``state`` None: the pretrained encoder)."""
        load_state(self.encoder, state if state is not None else pretrained_state())
        enc = self.encoded(task, split)
        preds = torch.empty(len(enc), dtype=torch.long)
        with torch.inference_mode(), torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            for idx in length_batches(enc, self.batch_size):
                feats = pooled(self.encoder, collate([enc[i] for i in idx], self.dev))
                preds[idx] = self.heads(task, feats.float()).argmax(-1).cpu()
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
    encoder = load_encoder(state, device=dev).eval()  # no dropout: the model's own distribution
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
    enc = encode(examples, max_len)
    for i in tqdm(range(len(enc)), desc=f"Fisher {task}", disable=not progress, leave=False):
        batch = collate([enc[i]], dev)
        logp = F.log_softmax(heads(task, pooled(encoder, batch)), -1)[0]
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


def gram_matrices(state: Mapping[str, torch.Tensor], data: TaskData, n_examples: int = 256, max_len: int = 64,
                  batch_size: int = 32, progress: bool = True, task: str = "") -> dict[str, torch.Tensor]:
    """For every linear layer of the encoder, the mean Gram matrix ``XᵀX / N`` of its inputs
    over the (non-padding) tokens of the training data, keyed by the layer's weight name — the
    statistics of RegMean (Jin et al. 2023)."""
    dev = device()
    encoder = load_encoder(state, device=dev).eval()
    enc = encode(data.train[:n_examples], max_len)
    with LinearGrams(encoder) as grams, torch.inference_mode():
        for idx in tqdm(list(length_batches(enc, batch_size)), desc=f"Gram {task}", disable=not progress, leave=False):
            batch = collate([enc[i] for i in idx], dev)
            grams.masks["mask"] = batch["attention_mask"]
            encoder(**batch)
    return grams.mean()


# ----------------------------------------------------------------------------------------------
# the family


@dataclass
class TextSettings:
    """The ``minilm:`` section of study.yaml."""

    max_len: int = 64  # tokens (a text, or a text pair truncated longest-first)
    probe_examples: int = 1000  # training examples each head is fitted on
    probe_l2: float = 1e-3
    train_embeddings: bool = False  # train (and merge) the embedding tables too, as full fine-tuning does
    sparse_embeddings: bool = True  # with train_embeddings: word-embedding rows updated sparsely (lazy Adam)


class MiniLM(Family):
    """MiniLM-L6 from its offline package, one fixed linear head per task."""

    name = "minilm"
    code = ("data/tasks.py", "data/sources.py")
    Settings = TextSettings
    modes = ("full", "ia3")
    assets = ("minilm",)
    pretrained_label = "probe"

    def task_asset(self, task: str) -> str | None:
        from ..data import get_task

        return get_task(task).asset

    def load_task(self, study, task: str):
        from ..data import load_task

        c = study.config
        return load_task(task, c.n_train, c.n_val, c.n_test, c.split_seed)

    def task_data(self, study, task: str, raw: dict):
        return TaskData.from_json(task, raw)

    def heads_settings(self, study) -> dict:
        s = study.settings
        return {"probe_examples": s.probe_examples, "probe_l2": s.probe_l2, "max_len": s.max_len,
                "autocast": study.config.autocast}

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        s = study.settings
        return fit_heads(study.data(), s.probe_examples, s.probe_l2, s.max_len, study.config.autocast, progress)

    def train_config(self, study, tasks: list[str]):
        c, s = study.config, study.settings
        return TextTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                               warmup=c.warmup, max_len=s.max_len, train_embeddings=s.train_embeddings,
                               sparse_embeddings=s.sparse_embeddings, seed=study.seed, autocast=c.autocast,
                               threads=study.threads)

    def trainer(self):
        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        return pretrained_state()

    def merge_options(self, study, params: Mapping[str, Any]) -> dict:
        """The trained parameters merge: frozen embeddings have zero task vectors and would only
        dilute a global top-k."""
        return {"exclude": ["embeddings.*"]} if study.config.mode == "full" and not study.settings.train_embeddings else {}

    def eval_settings(self, study) -> list:
        c = study.config
        return [c.model, study.settings.max_len, c.eval_batch_size, c.autocast]

    def evaluator(self, study):
        return Evaluator(study.data(), study.heads(), study.settings.max_len, study.config.eval_batch_size,
                         study.config.autocast, progress=False)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        c, s = study.config, study.settings
        state = study.state(task)
        if kind == "fisher":
            names = [n for n in state if not n.startswith("embeddings.") or s.train_embeddings]
            return fisher_diagonal(state, task, study.data()[task], study.heads(), names, c.fisher_examples, s.max_len, progress)
        return gram_matrices(state, study.data()[task], c.gram_examples, s.max_len, progress=progress, task=task)
