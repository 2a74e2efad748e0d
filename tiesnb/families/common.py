"""What several model families share beyond training: quieting ``transformers``, reading existing
(released) models, and the input Gram matrices RegMean needs, collected by forward hooks."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch

from ..errors import TiesnbError


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def local_path(source: str) -> Path | None:
    """``source`` as a local path (relative ones from the repository) when it names one: it exists,
    starts with ``/``, ``.`` or ``~``, or has more folders than a hub id (``owner/name``); None
    for a hub id."""
    from .. import paths

    path = Path(source).expanduser()
    path = path if path.is_absolute() else paths.ROOT / path
    local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    return path.resolve() if local else None


def released_folder(source: str) -> Path:
    """An existing model's folder: ``source`` itself when it is a local folder, else the hub's copy
    of the repository ``source`` (its JSON and safetensors files; the hub's cache when offline)."""
    path = local_path(source)
    if path is not None:
        if not path.is_dir():
            raise TiesnbError(f"existing model {source}: {'not a folder' if path.exists() else 'not found'} ({path}; "
                              f"a folder in the Hugging Face layout with safetensors files)")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as e:  # no hub, not in its cache, no such repository
        raise TiesnbError(f"cannot get the existing model {source!r} from the hub ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:160]}); offline, name a local folder instead") from None


def released_tensors(source: str) -> tuple[dict[str, torch.Tensor], Path]:
    """Every tensor of an existing model's safetensors files (one file, or an index's shards)."""
    from ..checkpoints import load_state_dict

    folder = released_folder(source)
    return load_state_dict(folder), folder


def released_fingerprint(source: str) -> str:
    """A content hash of an existing model's weight files (each remembered by path and mtime)."""
    from ..checkpoints import resolve_checkpoint_files
    from ..io import sha256_cached

    h = hashlib.sha256()
    for f in resolve_checkpoint_files(released_folder(source)):
        h.update(f.name.encode() + sha256_cached(f).encode())
    return h.hexdigest()[:16]


def check_like(state: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], where: Path | str) -> None:
    """One line naming the file and the first key that is missing or has another shape."""
    for name, ref in reference.items():
        if name not in state:
            raise TiesnbError(f"{where}: no tensor {name!r} (the model it should fine-tune has it, shape {tuple(ref.shape)})")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise TiesnbError(f"{where}: {name!r} has shape {tuple(state[name].shape)}, the model's is {tuple(ref.shape)}")


class LinearGrams:
    """Accumulates, for every ``nn.Linear`` of ``model`` (and every 1 × 1 convolution: a linear map
    of the channels at each pixel, its inputs the channel vectors of every pixel), ``XᵀX`` over the
    unmasked positions of its inputs while the model runs inside ``with``. Which mask applies to a
    layer is named by ``mask_of(layer_name)`` (an encoder-decoder has one mask per side; None: every
    position counts); set ``masks[...]`` before each forward pass. ``mean()`` gives ``XᵀX / N``
    keyed by the layer's weight name (RegMean)."""

    def __init__(self, model: torch.nn.Module, mask_of=lambda name: "mask"):
        self.model, self.mask_of = model, mask_of
        self.masks: dict[str, torch.Tensor] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._hooks = []

    def __enter__(self) -> "LinearGrams":
        for name, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear) or (
                    isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1
                    and module.stride == (1, 1)):
                self._hooks.append(module.register_forward_hook(self._hook(f"{name}.weight", self.mask_of(name))))
        return self

    def _hook(self, key: str, mask: str):
        def hook(_mod, inputs, _out):
            x = inputs[0].float()
            if isinstance(_mod, torch.nn.Conv2d):  # (N, C, H, W) → one row per pixel
                x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            else:
                x = x.reshape(-1, x.shape[-1])
            if mask is not None:
                x = x[self.masks[mask].reshape(-1).bool()]
            self.grams[key] = self.grams[key] + x.T @ x if key in self.grams else x.T @ x
            self.counts[key] = self.counts.get(key, 0) + x.shape[0]
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def mean(self) -> dict[str, torch.Tensor]:
        return {k: (g / self.counts[k]).cpu() for k, g in self.grams.items()}


def expected_fisher(params: dict[str, torch.Tensor], log_probs, n: int, desc: str = "Fisher",
                    progress: bool = True) -> dict[str, torch.Tensor]:
    """Diagonal Fisher ``E_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)²`` — the exact expectation over the
    labels, per example (Matena & Raffel 2022) — for the tensors ``params`` (name → parameter);
    ``log_probs(i)`` is example i's vector of log-probabilities, with its graph."""
    from .. import progress as progress_

    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    for i in progress_.bar(range(n), desc=desc, disable=not progress):
        logp = log_probs(i)
        probs = logp.exp().detach()
        for y in range(logp.shape[0]):
            grads = torch.autograd.grad(logp[y], list(params.values()), retain_graph=y + 1 < logp.shape[0])
            for k, g in zip(params, grads):
                fisher[k].add_(probs[y] * g.square())
    return {k: (f / max(1, n)).detach().cpu() for k, f in fisher.items()}
