"""Trainers of the embedded study: linear probes (the heads), full fine-tuning and (IA)³ of the
encoder per task, and the multitask model.

Every trainer is seeded and deterministic on a given machine (same parameters, same seed →
the same checkpoint, bit for bit), shows a progress bar, and writes its checkpoint atomically as
safetensors plus ``params.json`` (the resolved parameters). :func:`train_checkpoint` skips a run
whose checkpoint already exists with identical parameters. Where CUDA is present it is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__, models, progress as progress_
from .checkpoints import load_state_dict, save_state_dict
from .data import TaskData
from .errors import TiesnbError

# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """How one encoder is trained. ``tasks`` holds one task (a task model) or several (the
    multitask model)."""

    tasks: list[str]
    mode: str = "full"  # full | ia3
    steps: int = 250
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with a linear warm-up, then linear decay to 0
    max_len: int = 64
    train_embeddings: bool = False  # the embedding tables too (52 % of MiniLM's weights)
    sparse_embeddings: bool = True  # with train_embeddings: only the word-embedding rows a batch uses are updated
    seed: int = 0
    autocast: str = "auto"  # auto | bf16 | off: bf16 autocast where the CPU has native bf16, or on CUDA
    threads: int = 0  # torch CPU threads (0: torch's default)

    def check(self) -> None:
        if self.mode not in ("full", "ia3"):
            raise TiesnbError(f"training mode must be full or ia3, got {self.mode!r}")
        for k in ("steps", "batch_size", "max_len"):
            if getattr(self, k) < 1:
                raise TiesnbError(f"training {k} must be positive, got {getattr(self, k)}")
        if not 0 <= self.warmup < 1:
            raise TiesnbError(f"warmup must be in [0, 1), got {self.warmup}")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_autocast(setting: str, dev: torch.device | None = None) -> bool:
    """Whether to compute in bf16 autocast: ``auto`` means on CUDA and on CPUs with native bf16
    (where it is ~1.6× faster than float32; elsewhere it is emulated and slower)."""
    dev = dev or device()
    if setting == "bf16":
        return True
    if setting == "off":
        return False
    if setting != "auto":
        raise TiesnbError(f"autocast must be auto, bf16 or off; got {setting!r}")
    return dev.type == "cuda" or cpu_has_bf16()


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# linear probes: the heads


def features(encoder: torch.nn.Module, encoded: Sequence[list], batch_size: int = 32, bf16: bool = False) -> torch.Tensor:
    """Pooled sentence embeddings, in input order."""
    dev = next(encoder.parameters()).device
    out = torch.empty(len(encoded), models.hidden_size())
    encoder.eval()
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        for idx in models.length_batches(encoded, batch_size):
            out[idx] = models.pooled(encoder, models.collate([encoded[i] for i in idx], dev)).float().cpu()
    return out


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-3, max_iter: int = 200) -> torch.nn.Linear:
    """Multinomial logistic regression (L2-penalised), fitted to convergence with L-BFGS in
    float64: deterministic, no learning rate to tune."""
    x64, y = x.double(), y.long()
    W = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x64 @ W.T + b, y) + l2 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = torch.nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(W.float())
        head.bias.copy_(b.float())
    return head


def fit_heads(data: Mapping[str, TaskData], n_examples: int = 1000, l2: float = 1e-3, max_len: int = 64,
              autocast: str = "auto", progress: bool = True) -> dict[str, torch.Tensor]:
    """Fit every task's head on the frozen pretrained encoder; a state dict ``<task>.weight``,
    ``<task>.bias``."""
    dev = device()
    bf16 = resolve_autocast(autocast, dev)
    encoder = models.load_encoder(device=dev)
    state = {}
    for task in tqdm(list(data), desc="linear probes", disable=not progress, leave=False):
        d = data[task]
        train = d.train[:n_examples]
        x = features(encoder, models.encode(train, max_len), bf16=bf16)
        y = torch.tensor([e.label for e in train])
        head = fit_linear(x, y, len(d.labels), l2)
        state[f"{task}.weight"] = head.weight.detach().clone()
        state[f"{task}.bias"] = head.bias.detach().clone()
    return state


def heads_module(state: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None) -> models.Heads:
    tasks = tasks or sorted({k.rsplit(".", 1)[0] for k in state})
    missing = [t for t in tasks if f"{t}.weight" not in state]
    if missing:
        raise TiesnbError(f"no fitted head for task(s) {', '.join(missing)}: run the probe step first")
    heads = models.Heads({t: state[f"{t}.weight"].shape[0] for t in tasks})
    with torch.no_grad():
        for t in tasks:
            heads.heads[t].weight.copy_(state[f"{t}.weight"])
            heads.heads[t].bias.copy_(state[f"{t}.bias"])
    heads.requires_grad_(False)
    return heads


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


def ia3_state(peft_model) -> dict[str, torch.Tensor]:
    """The (IA)³ vectors as ``<module>.ia3_l`` → tensor (``(out, 1)`` scales outputs,
    ``(1, in)`` scales inputs)."""
    from peft import get_peft_model_state_dict

    sd = get_peft_model_state_dict(peft_model)
    return {k.removeprefix("base_model.model."): v.detach().to("cpu", copy=True) for k, v in sd.items()}


def fold_ia3(encoder_state: Mapping[str, torch.Tensor], ia3: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict computing what the encoder with (IA)³ vectors ``ia3`` computes: an
    output scale ``l`` (out, 1) becomes ``l·W`` and ``l·b``, an input scale (1, in) ``W·l``."""
    out = dict(encoder_state)
    for key, l in ia3.items():
        module = key.removesuffix(".ia3_l")
        w, b = f"{module}.weight", f"{module}.bias"
        if w not in out:
            raise TiesnbError(f"(IA)³ vector '{key}' has no weight '{w}' in the encoder")
        out[w] = encoder_state[w] * l.to(encoder_state[w].dtype)
        if l.shape[1] == 1 and b in out:  # output scaling also scales the bias
            out[b] = encoder_state[b] * l.reshape(-1).to(encoder_state[b].dtype)
    return out


def ia3_identity(ia3: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The (IA)³ "pretrained" point: all ones. Task vectors are ``ia3 − 1``."""
    return {k: torch.ones_like(v) for k, v in ia3.items()}


# ----------------------------------------------------------------------------------------------
# fine-tuning


def record_step(loss: torch.Tensor, step: int, cfg: TrainConfig, bar, history: list | None) -> None:
    """Stop on a non-finite loss (naming the fix), show it, keep it."""
    value = loss.detach().item()
    if not math.isfinite(value):
        raise TiesnbError(f"training {cfg.tasks} diverged at step {step} (loss {value}): lower lr")
    bar.set_postfix(loss=f"{value:.3f}")
    if history is not None:
        history.append(value)


def _schedule(step: int, cfg: TrainConfig) -> float:
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))


def finetune(cfg: TrainConfig, data: Mapping[str, TaskData], heads_state: Mapping[str, torch.Tensor],
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
    encoder = models.load_encoder(device=dev)
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
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: _schedule(s, cfg)) for o in opts]
    encoded = {t: models.encode(data[t].train, cfg.max_len) for t in cfg.tasks}
    labels = {t: [e.label for e in data[t].train] for t in cfg.tasks}
    gen = torch.Generator().manual_seed(cfg.seed)
    orders = {t: [] for t in cfg.tasks}

    def draw(task: str) -> int:  # epochs of seeded permutations
        if not orders[task]:
            orders[task] = torch.randperm(len(encoded[task]), generator=gen).tolist()
        return orders[task].pop()

    net.train()
    name = "+".join(cfg.tasks) if len(cfg.tasks) < 3 else "multitask"
    bar = progress_.bar(range(cfg.steps), desc=f"train {name} ({cfg.mode}, seed {cfg.seed})", disable=not progress)
    for step in bar:
        if len(cfg.tasks) == 1:
            picks = [(cfg.tasks[0], draw(cfg.tasks[0])) for _ in range(cfg.batch_size)]
        else:  # multitask: each example's task drawn uniformly
            which = torch.randint(len(cfg.tasks), (cfg.batch_size,), generator=gen).tolist()
            picks = [(cfg.tasks[w], draw(cfg.tasks[w])) for w in which]
        picks.sort(key=lambda p: cfg.tasks.index(p[0]))
        batch = models.collate([encoded[t][i] for t, i in picks], dev)
        y = torch.tensor([labels[t][i] for t, i in picks], device=dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            pooled = models.pooled(net, batch)
        loss = 0.0
        pos = 0
        for t in cfg.tasks:
            n = sum(1 for p in picks if p[0] == t)
            if n:
                logits = heads(t, pooled[pos:pos + n].float())
                loss = loss + F.cross_entropy(logits, y[pos:pos + n], reduction="sum")
                pos += n
        loss = loss / cfg.batch_size
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o, sc in zip(opts, scheds):
            o.step()
            sc.step()
        record_step(loss, step, cfg, bar, history)
    net.eval()
    return ia3_state(net) if cfg.mode == "ia3" else models.encoder_state(encoder)


# ----------------------------------------------------------------------------------------------
# checkpoints with skip-if-identical


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def train_checkpoint(cfg: TrainConfig, data: Mapping, heads_state: Mapping[str, torch.Tensor],
                     out: str | os.PathLike, extra: Mapping | None = None, progress: bool = True,
                     trainer=None) -> Path:
    """Train (with ``trainer``, default :func:`finetune`) and save to ``out`` (``model.safetensors``
    + ``params.json``), unless ``out`` already holds a checkpoint made with the identical resolved
    parameters (then it is reused)."""
    out = Path(out)
    heads_fp = _fingerprint(heads_state)
    resolved = {"train": asdict(cfg), "data": {t: data[t].fingerprint for t in cfg.tasks}, "heads": heads_fp,
                "autocast_bf16": resolve_autocast(cfg.autocast), "device": device().type,
                "versions": {"tiesnb": __version__, "torch": torch.__version__}, **(extra or {})}
    existing = out / "params.json"
    if existing.exists() and (out / "model.safetensors").exists():
        try:
            if _canonical(json.loads(existing.read_text())["resolved"]) == _canonical(resolved):
                return out
        except (json.JSONDecodeError, KeyError):
            pass
    history: list[float] = []
    t0 = time.time()
    state = (trainer or finetune)(cfg, data, heads_state, progress=progress, history=history)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` only the first process saves
        return out
    metrics = {"seconds": round(time.time() - t0, 1), "loss": [round(x, 4) for x in history]}
    save_state_dict(state, out, overwrite=True,
                    extra_files={"params.json": json.dumps({"resolved": resolved, "metrics": metrics}, indent=1, default=str) + "\n"})
    return out


def _fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]

