"""What several model families share beyond training: quieting ``transformers``, and the input
Gram matrices RegMean needs, collected by forward hooks."""

from __future__ import annotations

import torch


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


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
