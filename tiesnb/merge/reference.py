"""The original TIES algorithm as the original code runs it: every model flattened into one
vector, all n of them in memory at once.

This is the yardstick, not the tool: the tests compare the streaming engine against it, and the
benchmark measures it as the in-memory baseline (it needs ~6-9 × n·d·4 bytes). It is written from
the description in ``ties-spec.md`` with plain torch calls (``kthvalue`` over the whole model,
``torch.sign``, boolean masks) so it shares no selection code with the engine.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch


def sum_models(M: torch.Tensor) -> torch.Tensor:
    """Σ over the model axis, in model order: what ``M.sum(dim=0)`` computes on long rows (torch
    changes the order for some row lengths, which would only move the last bit)."""
    acc = M[0].clone()
    for row in M[1:]:
        acc += row
    return acc


def flatten(state: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[k].detach().float().reshape(-1) for k in names])


def unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in like.items()}
    i = 0
    for k in names:
        n = like[k].numel()
        out[k] = flat[i:i + n].reshape(like[k].shape).to(like[k].dtype)
        i += n
    return out


def trim_original(M: torch.Tensor, k: float) -> torch.Tensor:
    """Keep, in each row, every entry with ``|x| >=`` the ``(d − int(d·k))``-th smallest ``|x|``."""
    d = M.shape[1]
    kth = d - int(d * k)
    if kth < 1:  # k = 1: the original's kthvalue(0) fails; keep everything
        return M.clone()
    thresholds = M.abs().kthvalue(kth, dim=1, keepdim=True).values
    return M * (M.abs() >= thresholds)


def elect_original(M: torch.Tensor, method: str = "mass") -> torch.Tensor:
    if method == "mass":
        s = torch.sign(sum_models(M))
    elif method in ("normfrac", "normmass"):
        frac = M ** 2 / torch.norm(M, dim=1, keepdim=True) ** 2
        if method == "normfrac":
            s = M[frac.argmax(dim=0), torch.arange(M.shape[1])].sign()
        else:
            s = sum_models(M.sign() * frac.abs()).sign()
    else:
        raise ValueError(method)
    majority = torch.sign(s.sum())
    s[s == 0] = majority
    return s


def disjoint_original(M: torch.Tensor, s: torch.Tensor, how: str = "mean") -> torch.Tensor:
    keep = torch.where(s.unsqueeze(0) > 0, M > 0, M < 0)
    selected = M * keep
    if how == "mean":
        count = (selected != 0).sum(dim=0).float()
        return sum_models(selected) / torch.clamp(count, min=1)
    if how == "sum":
        return sum_models(selected)
    if how == "max":
        return selected.abs().max(dim=0).values * s
    raise ValueError(how)


def ties_original(base: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]],
                  k: float = 0.2, lam: float = 1.0, elect: str = "mass", disjoint: str = "mean",
                  names: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """TIES exactly as the original code computes it, on the float parameters (sorted names)."""
    names = sorted(names if names is not None else [n for n, v in base.items() if v.is_floating_point()])
    flat_base = flatten(base, names)
    tvs = torch.stack([flatten(m, names) for m in models]) - flat_base
    trimmed = trim_original(tvs, k)
    signs = elect_original(trimmed, elect)
    merged = disjoint_original(trimmed, signs, disjoint)
    return unflatten(flat_base + lam * merged, base, names)


def task_arithmetic_original(base, models, lam: float = 1.0, names=None) -> dict[str, torch.Tensor]:
    names = sorted(names if names is not None else [n for n, v in base.items() if v.is_floating_point()])
    flat_base = flatten(base, names)
    tvs = torch.stack([flatten(m, names) for m in models]) - flat_base
    return unflatten(flat_base + lam * sum_models(tvs), base, names)


def average_original(base, models, names=None) -> dict[str, torch.Tensor]:
    names = sorted(names if names is not None else [n for n, v in base.items() if v.is_floating_point()])
    return unflatten(sum_models(torch.stack([flatten(m, names) for m in models])) / len(models), base, names)
