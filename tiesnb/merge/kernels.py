"""Pure tensor kernels of the merge methods. No I/O, no state: each takes tensors, returns tensors.

Shapes: ``D`` is a stack of task-vector pieces, one row per model, ``(n, C)`` float32; a sign
vector ``s`` is ``(C,)`` with values in {-1, 0, +1}. The engine calls these on chunks of
columns; the reference implementation calls them on whole flattened models, and since every
kernel works column by column the two agree bit for bit.

Speed notes (they decide how the kernels are written): on CPU, ``torch.where`` with a broadcast
threshold costs ~2 ns per element, while ``hardshrink`` (keep ``|x| > λ``) on one contiguous row
costs ~0.1 ns; the agreeing entries are found as ``clamp_min(D * s, 0)``, which equals
``|D|`` where the sign of ``D`` agrees with ``s`` and 0 elsewhere.
"""

from __future__ import annotations

import torch

def rowsum(X: torch.Tensor) -> torch.Tensor:
    """Σ over the rows (models) in row order. ``X.sum(0)`` changes its summation order with the
    number of columns, so chunked and whole-model runs would differ in the last bit; adding rows
    one by one is the same for every chunking (and what ``sum(0)`` does on long rows)."""
    acc = X[0].clone()
    for i in range(1, X.shape[0]):
        acc += X[i]
    return acc


# ----------------------------------------------------------------------------------------------
# trim


def below(x: float) -> float:
    """The largest float32 strictly below ``x`` (x > 0): ``|v| > below(t)`` ⟺ ``|v| >= t``."""
    t = torch.tensor(x, dtype=torch.float32)
    return float(torch.nextafter(t, torch.zeros((), dtype=torch.float32)))


def first_ties(row: torch.Tensor, value: float, count: int) -> torch.Tensor:
    """Flat indices of the first ``count`` entries of ``row`` whose magnitude equals ``value``."""
    idx = torch.nonzero(row.abs() == value).flatten()
    return idx[:count]


# ----------------------------------------------------------------------------------------------
# elect


def elect_mass(D: torch.Tensor) -> torch.Tensor:
    """The paper's election: the sign of the summed mass, ``sign(Σ_t τ̂_t)``."""
    return rowsum(D).sign_()


def elect_count(D: torch.Tensor) -> torch.Tensor:
    """A vote: the sign of ``Σ_t sign(τ̂_t)``."""
    return rowsum(D.sign()).sign_()


def _norm_fractions(D: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """``τ̂² / ‖τ̂_row‖²`` with each row's squared norm over the whole (trimmed) model; a model
    whose trimmed task vector is all zero contributes 0 (the original divides 0 by 0 there)."""
    safe = torch.where(sq_norms > 0, sq_norms, torch.inf).to(D.dtype)
    return D.square() / safe.unsqueeze(1)


def elect_normfrac(D: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """The original code's ``normfrac``: the sign of the single model whose entry carries the
    largest fraction of its own squared norm (first model on ties)."""
    frac = _norm_fractions(D, sq_norms)
    winner = frac.argmax(0, keepdim=True)
    return D.gather(0, winner).squeeze(0).sign_()


def elect_normmass(D: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """The original code's ``normmass``: ``sign(Σ_t sign(τ̂_t) · τ̂_t² / ‖τ̂_t‖²)``."""
    frac = _norm_fractions(D, sq_norms)
    return rowsum(D.sign() * frac).sign_()


def resolve_zero_signs(s: torch.Tensor, rule: str, majority: float = 0.0) -> torch.Tensor:
    """What an elected sign of 0 (all entries zero, or exact cancellation) becomes.

    ``zero``: stays 0, so no entry agrees and the merged value is 0 (the paper's formula).
    ``positive``: +1 (mergekit, peft: ``sum >= 0`` elects +).
    ``majority``: the sign of the sum of the whole elected sign vector (the original code); pass
    that global sum as ``majority``.
    """
    if rule == "zero":
        return s
    if rule == "positive":
        return torch.where(s == 0, 1.0, s)
    if rule == "majority":
        m = float(torch.sign(torch.tensor(majority)))
        return torch.where(s == 0, m, s) if m != 0 else s
    raise ValueError(rule)


# ----------------------------------------------------------------------------------------------
# disjoint merge


def disjoint_merge(D: torch.Tensor, s: torch.Tensor, mode: str,
                   value_weights: torch.Tensor | None = None,
                   divisor_weights: torch.Tensor | None = None,
                   select_negative_on_zero: bool = False, work: torch.Tensor | None = None) -> torch.Tensor:
    """Combine the entries of ``D`` whose sign agrees with ``s`` (zeros never agree).

    ``mean``: their sum over their count (the paper's disjoint mean);
    ``weighted_mean``: their sum over the sum of their models' ``divisor_weights`` (mergekit);
    ``mean_all``: their sum over the number of models (the ablation without disjoint mean);
    ``sum``: their sum (FusionBench's default);
    ``max``: the largest agreeing magnitude, with the elected sign.

    ``value_weights`` (n,) multiply the agreeing entries after the election (peft's order); to
    weight before the election (mergekit's order) scale ``D`` before electing instead.
    ``select_negative_on_zero`` reproduces the original code for a sign left at 0: it keeps the
    negative entries of such columns (and ``max`` gives 0 there). ``work``, if given, is an
    (n, C) buffer the function may overwrite (it saves an allocation per call).
    """
    s_sel = torch.where(s == 0, -1.0, s) if select_negative_on_zero else s
    R = torch.mul(D, s_sel, out=work).clamp_min_(0)  # |τ̂| where the sign agrees, else 0
    if mode == "max":
        return R.amax(0) * s
    num = rowsum(R if value_weights is None else R * value_weights.to(D.dtype).unsqueeze(1))
    num = num * s_sel
    if mode == "sum":
        return num
    if mode == "mean_all":
        return num / D.shape[0]
    agree = R.sign_()
    if mode == "mean":
        return num / agree.sum(0).clamp_min_(1)
    if mode == "weighted_mean":
        if divisor_weights is not None:
            agree = agree * divisor_weights.to(D.dtype).unsqueeze(1)
        den = rowsum(agree)
        return num / torch.where(den == 0, 1.0, den)
    raise ValueError(mode)


def nonzero_merge(D: torch.Tensor, mode: str,
                  value_weights: torch.Tensor | None = None,
                  divisor_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Combine without an election (the ablation without elect): every non-zero entry counts,
    whatever its sign (the original code's disjoint step with no sign vector)."""
    num = rowsum(D if value_weights is None else D * value_weights.to(D.dtype).unsqueeze(1))
    if mode == "sum":
        return num
    if mode == "mean_all":
        return num / D.shape[0]
    nz = D.ne(0).to(D.dtype)
    if mode == "mean":
        return num / nz.sum(0).clamp_min_(1)
    if mode == "weighted_mean":
        if divisor_weights is not None:
            nz = nz * divisor_weights.to(D.dtype).unsqueeze(1)
        den = rowsum(nz)
        return num / torch.where(den == 0, 1.0, den)
    raise ValueError(f"disjoint={mode!r} needs an elected sign (elect is 'none')")


# ----------------------------------------------------------------------------------------------
# counter-based random numbers for DARE


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding [0, 2³²).
    The multipliers are < 2³¹ so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x297A2D39) & _MASK32
    return x ^ (x >> 15)


def keep_random(key: int, start: int, stop: int, density: float, device=None) -> torch.Tensor:
    """Boolean keep-mask for flat positions ``[start, stop)`` of one tensor of one model: each
    kept with probability ``density``, independently, as a pure function of ``(key, position)``,
    so the mask is the same whatever the chunking and on any device."""
    pos = torch.arange(start, stop, dtype=torch.int64, device=device)
    h = _mix32((pos & _MASK32) ^ (key & _MASK32))
    h = _mix32(h ^ (pos >> 32) ^ ((key >> 32) & _MASK32))
    return h < int(density * 4294967296.0)
