"""The embedded study's model: the pretrained MiniLM-L6 encoder, mean pooling, and one linear
head per task.

Only the encoder is fine-tuned and merged. Each task's head is fitted once on the frozen
pretrained encoder (a linear probe) and then kept fixed — the paper's ViT protocol — so every
encoder (pretrained, fine-tuned, multitask, merged) is evaluated through the same heads.
Encoders travel as state dicts (name → tensor, the names of ``transformers``' ``BertModel``).
"""

from __future__ import annotations

import functools
import os
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from .data import Example
from .data.sources import minilm_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@functools.lru_cache(maxsize=1)
def tokenizer():
    """MiniLM's fast WordPiece tokenizer (from the offline package)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


def load_encoder(state: Mapping[str, torch.Tensor] | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The MiniLM encoder (``BertModel`` without pooler), pretrained, or with ``state`` loaded."""
    from transformers import AutoModel

    _quiet_transformers()
    model = AutoModel.from_pretrained(str(minilm_dir()), add_pooling_layer=False)
    if state is not None:
        load_state(model, state)
    return model.to(device)


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load an encoder state dict; every parameter must be there, with its shape."""
    from .errors import TiesnbError

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


class Heads(nn.Module):
    """One linear classifier per task on the pooled 384-d sentence embedding."""

    def __init__(self, labels: Mapping[str, int]):
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Linear(hidden_size(), k) for t, k in labels.items()})

    def forward(self, task: str, pooled: torch.Tensor) -> torch.Tensor:
        return self.heads[task](pooled)


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
