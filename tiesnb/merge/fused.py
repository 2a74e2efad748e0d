"""Compiled kernels for the two loops a global TIES merge spends its time in.

In eager torch every elementwise step of a chunk (absolute value, bit shifts, a histogram; trim,
sum, sign, agreement, count, divide) streams the whole ``(n, C)`` chunk through memory again: a
dozen passes where one would do. These kernels (numba, compiled once and cached on disk) make one
pass each, split into column blocks over the threads torch uses:

* :func:`histogram` — pass 1 of the radix select (:mod:`.select`): per model, the counts of the
  top 16 bits of ``|x|`` (and, for bf16 inputs, of those whose low 16 bits are not 0);
* :func:`merge` — trim, sign election by mass, disjoint merge, ``base + λ·merged``, and the flags
  of the columns the deferred cut sets aside (see ``methods.DEFER``).

For bf16 checkpoints :func:`histogram_bf16` and :func:`merge_bf16` take the chunk as stored (the
base in row 0) and widen it to float32 inside the kernel, a tile at a time, so the float32 task
vectors are never written out; :func:`bf16_delta` does the widening alone for the other methods.
Loops index slices from 0 (``row = D[i, lo:hi]``; ``row[j]``): numba then knows no index is
negative and vectorizes them (indexing ``D[i, j]`` with ``j`` from ``range(lo, hi)`` ran 1.5-4 ×
slower).

They compute what the torch kernels compute, in the same float32 operations and order, so the
results are equal (tested against the torch path; only the sign of a zero may differ). Without
numba, or with ``TIESNB_FUSED=0``, the engine uses the torch kernels alone.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch

# an optional speed-up: everything works without numba; it is imported on first use
ENABLED = importlib.util.find_spec("numba") is not None and os.environ.get("TIESNB_FUSED", "1") != "0"

# the disjoint merges the kernel does (others take the torch path)
DISJOINT = {"mean": 0, "sum": 1, "mean_all": 2}


def available(device: torch.device | str = "cpu") -> bool:
    return ENABLED and torch.device(device).type == "cpu"


_KERNELS = None


def _k():
    """The compiled kernels (:mod:`.fused_kernels`), imported on first use."""
    global _KERNELS
    if _KERNELS is None:
        from . import fused_kernels

        _KERNELS = fused_kernels
    return _KERNELS


def loaded() -> bool:
    """Whether the kernels are already imported (their start-up paid)."""
    return _KERNELS is not None


def _threads() -> int:
    import numba

    n = torch.get_num_threads()
    t = max(1, min(n, numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(t)
    # numba's OpenMP layer starts by setting the process's OpenMP thread count to all cores, and
    # torch shares that runtime: put torch's count back, or two 1-thread study runs each become
    # 2-thread runs and, spinning against each other on 2 cores, go 10-20x slower
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return t


Stored = "torch.Tensor | tuple[torch.Tensor, ...]"  # a chunk as stored: (n + 1, C), or n + 1 rows


def _u16(raw) -> np.ndarray | tuple[np.ndarray, ...]:
    """A bf16 chunk as stored, as the kernels read it (uint16): one (n + 1, C) array, or — where the
    engine hands the inputs' own memory, the rows of their mapped files — a tuple of n + 1 rows
    (numba compiles the kernels once per row count; they read either the same way)."""
    if isinstance(raw, tuple):
        return tuple(r.view(torch.int16).numpy().view(np.uint16) for r in raw)
    return raw.view(torch.int16).numpy().view(np.uint16)


def histogram(D: torch.Tensor, hist: np.ndarray, low_bits: bool, times: int = 1) -> None:
    """Add the key counts of ``|D|`` (n, C float32) to ``hist`` (blocks, n, keys) int64: key =
    the top 16 bits of the float32 ``|x|``, plus 32,768 when ``low_bits`` and its low 16 bits
    are not 0 (the layout of :class:`.select.TopK`'s bf16 histogram)."""
    bits = D.view(torch.int32).numpy()
    _k()._histogram(bits, hist, hist.shape[0], low_bits, times)


def histogram_bf16(raw: Stored, hist: np.ndarray, low_bits: bool, times: int = 1) -> bool:
    """:func:`histogram` of the task vectors of ``raw`` (n + 1, C) bf16 (see :func:`_u16`) — rows 1… minus row 0,
    in float32 — without writing them out. False when some input is not finite (inf or NaN):
    the caller then reads the chunk the ordinary way, whose check names the input."""
    bad = np.zeros(hist.shape[0], np.bool_)
    _k()._histogram_bf16(_u16(raw), hist, low_bits, times, bad)
    return not bad.any()


def bf16_delta(raw: Stored, base: torch.Tensor, D: torch.Tensor, at: int = 0) -> bool:
    """Rows 1… of ``raw`` (n + 1, C) bf16 minus its row 0, as float32, into ``D[:, at:at + C]``
    (``D`` C-contiguous); row 0 as float32 into ``base[at:at + C]``: what converting to float32
    and subtracting gives, in one pass. False when some input is not finite (inf or NaN)."""
    bad = np.zeros(_threads(), np.bool_)
    _k()._bf16_delta(_u16(raw), base.numpy(), D.numpy(), at, bad)
    return not bad.any()


def blocks() -> int:
    """Column blocks a kernel splits a chunk into: one per thread torch uses."""
    return _threads()


def merge(D: torch.Tensor, base: torch.Tensor, thr, tie, left, low, zero_positive: bool, disjoint: str,
          lam: float, out: torch.Tensor, flags: torch.Tensor, blocks: int | None = None) -> np.ndarray:
    """TIES on one chunk: keep ``|x| > thr[i]`` (and the first ``left[i]`` entries with
    ``|x| == tie[i]``), elect the sign of the kept mass, merge the agreeing entries (``disjoint``),
    write ``base + lam · merged`` to ``out`` and, per column, whether an entry was not kept though
    ``|x| >= low[i]`` (``low[i] < 0``: no such test) to ``flags``. Returns the ties used per model.
    ``blocks``: column blocks worked on in parallel (default: one per thread)."""
    n = D.shape[0]
    used = np.zeros(n, np.int64)
    _k()._merge(D.numpy(), base.numpy(), thr, tie, left, low, zero_positive, DISJOINT[disjoint], np.float32(lam),
           out.numpy(), flags.numpy(), used, blocks or _threads())
    return used


def merge_bf16(raw: Stored, thr, tie, left, low, zero_positive: bool, disjoint: str, lam: float,
               out: torch.Tensor, flags: torch.Tensor, blocks: int | None = None) -> np.ndarray:
    """:func:`merge` of the task vectors of ``raw`` (n + 1, C) bf16 (see :func:`_u16`; rows 1… minus
    row 0, in float32) onto row 0, without writing them out. Every ``left[i]`` must be 0 or at least C."""
    C = raw[0].numel()
    if any(0 < x < C for x in left):
        raise ValueError("merge_bf16: the ties to keep could run out inside this chunk; use merge()")
    used = np.zeros(len(raw) - 1, np.int64)
    _k()._merge_bf16(_u16(raw), thr, tie, left, low, zero_positive,
                DISJOINT[disjoint], np.float32(lam), out.numpy(), flags.numpy(), used, blocks or _threads())
    return used


LINEAR = {"task_arithmetic": 0, "average": 1}


def linear(rows: Stored, kind: str, w: np.ndarray, lam: float, divisor: float, out: torch.Tensor) -> bool:
    """Task arithmetic (``b + λ Σ_i w_i (x_i − b)``) or a weighted average (``Σ_i w_i x_i / divisor``)
    of one chunk in one pass: ``rows`` (n + 1, C), the base in row 0, float32 — or bf16 as stored,
    widened inside the kernel. The float32 operations and their order are those of the torch path
    (``rowsum`` of the weighted differences, then ``b + λ·``), so the results are equal bit for bit.
    Returns False when some output or input may not be finite (the caller then checks the chunk
    the ordinary way, which names the input, or accepts an overflow of finite inputs)."""
    bad = np.zeros(_threads(), np.bool_)
    args = (w.astype(np.float32), np.float32(lam), LINEAR[kind], np.float32(divisor), out.numpy(), bad, len(bad))
    if isinstance(rows, tuple) or rows.dtype == torch.bfloat16:
        _k()._linear_bf16(_u16(rows), *args)
    else:
        _k()._linear(rows.numpy(), *args)
    return not bad.any()


def tensor_cuts(D: torch.Tensor, K: list[int], low_bits: bool = False) -> list[tuple[float, int, int]]:
    """Per model (row of ``D``, (n, C) float32, C-contiguous): the ``K[i]``-th largest magnitude,
    the number of larger ones and of equal ones — the exact selection :class:`.select.TopK` finds,
    in one compiled call (no per-call histograms to allocate and scan in Python: a per-tensor trim
    makes one call per tensor). ``K[i]`` must lie in 1…C (the caller handles 0 and C).
    ``low_bits``: the values are task vectors of bf16 checkpoints, whose cut pass 1 alone usually
    finds (the same answer either way; a speed switch)."""
    n = D.shape[0]
    if D.shape[1] >= 2 ** 31:  # the kernel counts in int32 (held tensors are far smaller)
        raise ValueError(f"tensor_cuts: rows of {D.shape[1]} entries; at most 2**31 - 1")
    value = np.zeros(n, np.int64)
    greater = np.zeros(n, np.int64)
    equal = np.zeros(n, np.int64)
    _threads()
    _k()._tensor_cuts(D.view(torch.int32).numpy().view(np.uint32), np.asarray(K, np.int64), value, greater, equal, low_bits)
    out = []
    for i in range(n):
        v = float(torch.tensor(int(value[i]), dtype=torch.int64).to(torch.int32).view(torch.float32))
        out.append((v, int(greater[i]), int(equal[i])))
    return out


def keep_random(key: int, start: int, stop: int, density: float) -> torch.Tensor:
    """:func:`.kernels.keep_random` compiled: the same mask, bit for bit (tested), at a fraction
    of the cost (the torch version streams a dozen int64 passes over the chunk)."""
    out = torch.empty(stop - start, dtype=torch.bool)
    _threads()
    _k()._keep_random(np.uint64(key & 0xFFFFFFFF), np.uint64((key >> 32) & 0xFFFFFFFF), np.int64(start),
                      np.uint64(int(density * 4294967296.0)), out.numpy())
    return out
