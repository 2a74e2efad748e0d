"""What every model family's training shares: the settings every trainer has, the device and
autocast choice, the fixed linear heads (fitted once by L-BFGS, then frozen), the seeded order in
which examples are drawn, the learning-rate schedule, the loss bookkeeping, (IA)³ vectors as state
dicts, and checkpoints written once and reused while their resolved parameters are unchanged.

Every trainer is seeded and deterministic on a given machine (same parameters, same seed →
the same checkpoint, bit for bit), shows a progress bar, and writes its checkpoint atomically as
safetensors plus ``params.json`` (the resolved parameters). Where CUDA is present it is used.
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

from . import __version__
from .checkpoints import save_state_dict
from .errors import TiesnbError

# ----------------------------------------------------------------------------------------------
# configuration


@dataclass
class TrainConfig:
    """How one model is trained, the settings every family shares (a family's own config adds its
    fields). ``tasks`` holds one task (a task model) or several (the multitask model)."""

    tasks: list[str]
    mode: str = "full"  # full | ia3
    steps: int = 250
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps with a linear warm-up, then linear decay to 0
    seed: int = 0
    autocast: str = "auto"  # auto | bf16 | off: bf16 autocast where the CPU has native bf16, or on CUDA
    threads: int = 0  # torch CPU threads (0: torch's default)

    def check(self) -> None:
        if self.mode not in ("full", "ia3"):
            raise TiesnbError(f"training mode must be full or ia3, got {self.mode!r}")
        for k in ("steps", "batch_size"):
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
# the fixed heads


class Heads(torch.nn.Module):
    """One linear classifier per task on the encoder's pooled features, fitted once on the frozen
    pretrained encoder (a linear probe) and then kept fixed: every encoder — pretrained,
    fine-tuned, multitask, merged — is read through the same heads (the paper's ViT protocol)."""

    def __init__(self, shapes: Mapping[str, tuple[int, int]]):
        super().__init__()
        self.heads = torch.nn.ModuleDict({t: torch.nn.Linear(d, k) for t, (k, d) in shapes.items()})

    def forward(self, task: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.heads[task](pooled)


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


def heads_module(state: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None) -> Heads:
    tasks = tasks or sorted({k.rsplit(".", 1)[0] for k in state})
    missing = [t for t in tasks if f"{t}.weight" not in state]
    if missing:
        raise TiesnbError(f"no fitted head for task(s) {', '.join(missing)}: run the probe step first")
    heads = Heads({t: tuple(state[f"{t}.weight"].shape) for t in tasks})
    with torch.no_grad():
        for t in tasks:
            heads.heads[t].weight.copy_(state[f"{t}.weight"])
            heads.heads[t].bias.copy_(state[f"{t}.bias"])
    heads.requires_grad_(False)
    return heads


# ----------------------------------------------------------------------------------------------
# (IA)^3


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


def linear_schedule(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then linear decay to 0."""
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (cfg.steps - step) / max(1, cfg.steps - warm))


def cosine_schedule(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then half a cosine down to 0 (task arithmetic's
    and the CLIP fine-tuning recipes' schedule)."""
    warm = int(cfg.warmup * cfg.steps)
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, cfg.steps - warm))))


SCHEDULES = {"linear": linear_schedule, "cosine": cosine_schedule}


def check_schedule(name: str, where: str = "") -> None:
    """A one-line error for a schedule :func:`fine_tune_loop` does not know (``where``: what the
    setting is called, e.g. ``study vision: vision.``)."""
    if name not in SCHEDULES:
        raise TiesnbError(f"{where}schedule must be one of {', '.join(SCHEDULES)}, got {name!r}")


@dataclass
class ScheduledTrainConfig(TrainConfig):
    """The settings of a trainer that runs :func:`fine_tune_loop` (vision, clip): after the
    warm-up, ``schedule`` (one of ``SCHEDULES``)."""

    schedule: str = "cosine"

    def check(self) -> None:
        super().check()
        check_schedule(self.schedule)


class Sampler:
    """The order in which training examples are drawn, seeded: each task's examples in epochs of
    random permutations; a multitask batch draws each example's task uniformly, then sorts the
    batch by task (each head reads one contiguous slice)."""

    def __init__(self, sizes: Mapping[str, int], seed: int):
        self.tasks, self.sizes = list(sizes), dict(sizes)
        self.gen = torch.Generator().manual_seed(seed)
        self.orders: dict[str, list[int]] = {t: [] for t in self.tasks}

    def draw(self, task: str) -> int:
        if not self.orders[task]:
            self.orders[task] = torch.randperm(self.sizes[task], generator=self.gen).tolist()
        return self.orders[task].pop()

    def batch(self, size: int) -> list[tuple[str, int]]:
        """``size`` (task, example index) pairs, grouped by task in the order of ``tasks``."""
        if len(self.tasks) == 1:
            picks = [(self.tasks[0], self.draw(self.tasks[0])) for _ in range(size)]
        else:
            which = torch.randint(len(self.tasks), (size,), generator=self.gen).tolist()
            picks = [(self.tasks[w], self.draw(self.tasks[w])) for w in which]
        picks.sort(key=lambda p: self.tasks.index(p[0]))
        return picks


def heads_loss(heads: "Heads", picks: Sequence[tuple[str, int]], pooled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of a batch grouped by task (:meth:`Sampler.batch`), each slice through
    its task's head."""
    loss, pos = 0.0, 0
    for t in dict.fromkeys(p[0] for p in picks):
        n = sum(1 for p in picks if p[0] == t)
        loss = loss + F.cross_entropy(heads(t, pooled[pos:pos + n].float()), y[pos:pos + n], reduction="sum")
        pos += n
    return loss / len(picks)


def fine_tune_loop(encoder: torch.nn.Module, heads: "Heads", cfg: ScheduledTrainConfig, sizes: Mapping[str, int], batch,
                   progress: bool = True, history: list | None = None) -> None:
    """The fine-tuning loop of a family with one optimiser (vision, clip): AdamW over every
    parameter of ``encoder``, the config's ``schedule``, batches from :class:`Sampler` over ``sizes``
    (training examples per task); ``batch(picks) -> (inputs, labels)`` builds a batch. The
    caller puts the encoder in the mode it trains in (dropout, BatchNorm) beforehand."""
    from . import progress as progress_

    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    factor = SCHEDULES[cfg.schedule]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: factor(s, cfg))
    sampler = Sampler(sizes, cfg.seed)
    name = "+".join(cfg.tasks) if len(cfg.tasks) < 3 else "multitask"
    bar = progress_.bar(range(cfg.steps), desc=f"train {name} (seed {cfg.seed})", disable=not progress)
    for step in bar:
        picks = sampler.batch(cfg.batch_size)
        x, y = batch(picks)
        loss = heads_loss(heads, picks, encoder(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        record_step(loss, step, cfg, bar, history)


# ----------------------------------------------------------------------------------------------
# checkpoints with skip-if-identical


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def train_checkpoint(trainer, cfg: TrainConfig, data: Mapping, heads_state: Mapping[str, torch.Tensor],
                     out: str | os.PathLike, extra: Mapping | None = None, progress: bool = True) -> Path:
    """Train (``trainer(cfg, data, heads_state, progress=, history=)``, a family's) and save to ``out`` (``model.safetensors``
    + ``params.json``), unless ``out`` already holds a checkpoint made with the identical resolved
    parameters (then it is reused)."""
    out = Path(out)
    # the heads of the tasks trained, not of every task: another task's head does not enter this model
    heads_fp = _fingerprint({k: v for k, v in heads_state.items() if k.split(".", 1)[0] in cfg.tasks})
    resolved = {"train": asdict(cfg), "data": {t: data[t].fingerprint for t in cfg.tasks}, "heads": heads_fp,
                "autocast_bf16": resolve_autocast(cfg.autocast), "device": device().type,
                "versions": {"tiesnb": __version__, "torch": torch.__version__}, **(extra or {})}
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:  # absent: one process (the checkpoints trained before it entered the key stay valid)
        resolved["world_size"] = world
    existing = out / "params.json"
    if existing.exists() and (out / "model.safetensors").exists():
        try:
            if _canonical(json.loads(existing.read_text())["resolved"]) == _canonical(resolved):
                return out
        except (json.JSONDecodeError, KeyError):
            pass
    history: list[float] = []
    t0 = time.time()
    state = trainer(cfg, data, heads_state, progress=progress, history=history)
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

