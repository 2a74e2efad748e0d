"""Compiled kernels for the two loops a global TIES merge spends its time in.

In eager torch every elementwise step of a chunk (absolute value, bit shifts, a histogram; trim,
sum, sign, agreement, count, divide) streams the whole ``(n, C)`` chunk through memory again: a
dozen passes where one would do. These kernels (numba, compiled once and cached on disk) make one
pass each, split into column blocks over the threads torch uses:

* :func:`histogram` — pass 1 of the radix select (:mod:`.select`): per model, the counts of the
  top 16 bits of ``|x|`` (and, for bf16 inputs, of those whose low 16 bits are not 0);
* :func:`merge` — trim, sign election by mass, disjoint merge, ``base + λ·merged``, and the flags
  of the columns the deferred cut sets aside (see ``methods.DEFER``).

For bf16 and float32 checkpoints :func:`histogram_stored` and :func:`merge_stored` take the chunk
as stored (the base in row 0) — the inputs' own mapped rows where the engine has them — and form
the float32 task vectors inside the kernel, a tile at a time, so they are never written out;
:func:`stored_delta` writes them out for the other methods (one pass, no copy of the inputs).
A per-tensor trim over mapped inputs takes each tensor whole: :func:`tensor_cuts_stored` finds its
exact cuts and where each model's last kept tie lies, :func:`merge_stored` given those places
merges it in one call (no float32 task vectors held).
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
STORED = {torch.bfloat16: np.uint16, torch.float32: np.uint32}  # what the kernels read as stored


def _stored(raw) -> np.ndarray | tuple[np.ndarray, ...]:
    """A chunk as stored (bf16 or float32, the base in row 0), as the kernels read it (the bits:
    uint16 or uint32): one (n + 1, C) array, or — where the engine hands the inputs' own memory,
    the rows of their mapped files — a tuple of n + 1 rows (numba compiles the kernels once per
    row count and dtype; they read either the same way)."""
    bits = lambda t: t.view(torch.int16 if t.dtype == torch.bfloat16 else torch.int32).numpy().view(STORED[t.dtype])
    return tuple(bits(r) for r in raw) if isinstance(raw, tuple) else bits(raw)


def histogram(D: torch.Tensor, hist: np.ndarray, low_bits: bool, times: int = 1) -> None:
    """Add the key counts of ``|D|`` (n, C float32) to ``hist`` (blocks, n, keys) int64: key =
    the top 16 bits of the float32 ``|x|``, plus 32,768 when ``low_bits`` and its low 16 bits
    are not 0 (the layout of :class:`.select.TopK`'s bf16 histogram)."""
    bits = D.view(torch.int32).numpy()
    _k()._histogram(bits, hist, hist.shape[0], low_bits, times)


HI_KEYS, NONFINITE = 1 << 15, 0x7F80  # pass 1's keys: top 16 bits of |x|; from 0x7F80, inf and NaN


def histogram_stored(raw: Stored, hist: np.ndarray, low_bits: bool, times: int = 1,
                     window: tuple[np.ndarray, np.ndarray] | None = None) -> bool:
    """:func:`histogram` of the task vectors of ``raw`` (n + 1, C) as stored (see :func:`_stored`)
    — rows 1… minus row 0, in float32 — without writing them out. ``window = (lo, fine)``: also
    count, per model ``i``, the low 16 bits of its entries in bins ``lo[i] … lo[i] + W − 1`` into
    ``fine`` (blocks, n, W, 65,536) int64 — pass 2 of the radix select for a bin guessed in advance.
    False when some input is not finite (inf or NaN): the caller then reads the chunk the
    ordinary way, whose check names the input."""
    # an inf or NaN difference (from a non-finite input, or an overflow, which the caller's check
    # lets pass) lands in the bins of exponent 255: counted before and after, not per entry
    top = np.s_[..., NONFINITE:HI_KEYS]
    before = hist[top].sum() + (hist[..., HI_KEYS + NONFINITE:].sum() if low_bits else 0)
    if window is None:
        _k()._histogram_stored(_stored(raw), hist, low_bits, times)
    elif low_bits:
        raise ValueError("histogram_stored: a window counts float32 keys, not low-bits keys")
    else:
        _k()._histogram_window(_stored(raw), hist, times, *window)
    return hist[top].sum() + (hist[..., HI_KEYS + NONFINITE:].sum() if low_bits else 0) == before


def stored_delta(raw: Stored, base: torch.Tensor, D: torch.Tensor, at: int = 0) -> bool:
    """Rows 1… of ``raw`` (n + 1, C) as stored minus its row 0, as float32, into ``D[:, at:at + C]``
    (``D`` C-contiguous); row 0 as float32 into ``base[at:at + C]``: what converting to float32
    and subtracting gives, in one pass. False when some input is not finite (inf or NaN)."""
    bad = np.zeros(_threads(), np.bool_)
    _k()._delta_stored(_stored(raw), base.numpy(), D.numpy(), at, bad)
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


def merge_stored(raw: Stored, thr, tie, left, low, zero_positive: bool, disjoint: str, lam: float,
                 out: torch.Tensor, flags: torch.Tensor, blocks: int | None = None, upto=None) -> np.ndarray | None:
    """:func:`merge` of the task vectors of ``raw`` (n + 1, C) as stored (see :func:`_stored`; rows 1…
    minus row 0, in float32) onto row 0, without writing them out. The column blocks work in
    parallel, each as if it could keep ``left[i]`` ties: right whenever the chunk holds no more
    ties than are left to keep (the tie value of a global cut is met a few dozen times in a
    model) — otherwise None, and the caller merges the chunk with :func:`merge`, which counts
    each block's ties first. ``upto`` (a whole tensor, from :func:`tensor_cuts_stored`): the kept
    ties known by place instead — model ``i`` keeps those before column ``upto[i]`` (0: none);
    ``left`` is then ignored (and the ties used not counted: zeros), and the merge is exact in one
    call whatever the number of ties."""
    n = len(raw) - 1
    places = np.full(n, -1, np.int64) if upto is None else np.asarray(upto, np.int64)
    left = np.zeros(n, np.int64) if upto is not None else np.asarray(left, np.int64)
    used = np.zeros(n, np.int64)
    _k()._merge_stored(_stored(raw), thr, tie, left, places, low, zero_positive,
                       DISJOINT[disjoint], np.float32(lam), out.numpy(), flags.numpy(), used, blocks or _threads())
    return None if upto is None and (used > left).any() else used


LINEAR = {"task_arithmetic": 0, "average": 1}


def linear(rows: Stored, kind: str, w: np.ndarray, lam: float, divisor: float, out: torch.Tensor) -> bool:
    """Task arithmetic (``b + λ Σ_i w_i (x_i − b)``) or a weighted average (``Σ_i w_i x_i / divisor``)
    of one chunk in one pass: ``rows`` (n + 1, C), the base in row 0, float32 — or bf16 as stored,
    widened inside the kernel, or a tuple of rows (see :func:`_stored`). The float32 operations and their order are those of the torch path
    (``rowsum`` of the weighted differences, then ``b + λ·``), so the results are equal bit for bit.
    Returns False when some output (or, averaging, the base, which is not in the mean) may not be
    finite — as it is whenever an input is: NaN and inf propagate through both sums, and inf · 0
    is NaN — the caller then checks the chunk the ordinary way, which names the input, or accepts
    an overflow of finite inputs."""
    bad = np.zeros(_threads(), np.bool_)
    args = (w.astype(np.float32), np.float32(lam), LINEAR[kind], np.float32(divisor), out.numpy(), bad, len(bad))
    if isinstance(rows, tuple) or rows.dtype == torch.bfloat16:
        _k()._linear_stored(_stored(rows), *args)
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
    return _cuts(value, greater, equal)


def _cuts(value, greater, equal) -> list[tuple[float, int, int]]:
    """(value as float32, greater, equal) per model, from the kernels' bit patterns and counts."""
    values = value.astype(np.uint32).view(np.float32)
    return [(float(values[i]), int(greater[i]), int(equal[i])) for i in range(len(value))]


def tensor_cuts_stored(raw: Stored, K: list[int], low_bits: bool = False
                       ) -> tuple[list[tuple[float, int, int]], list[int]] | None:
    """:func:`tensor_cuts` of one whole tensor as stored (``raw``, n + 1 rows, the base first; see
    :func:`_stored`): the task vectors are formed a tile at a time, never written out. Also per
    model the column after the last tie the flat-order rule keeps (``upto``, for
    :func:`merge_stored`; the row's length when the cut keeps every tie). None when some
    task vector is not finite (the caller then reads the tensor the ordinary way, which names
    the input)."""
    n, C = len(raw) - 1, raw[0].shape[-1]
    if C >= 2 ** 31:
        raise ValueError(f"tensor_cuts_stored: rows of {C} entries; at most 2**31 - 1")
    value, greater, equal, upto = (np.zeros(n, np.int64) for _ in range(4))
    bad = np.zeros(n, np.bool_)
    _threads()
    _k()._tensor_cuts_stored(_stored(raw), np.asarray(K, np.int64), value, greater, equal, upto, bad, low_bits)
    if bad.any():
        return None
    return _cuts(value, greater, equal), [int(u) for u in upto]


def keep_random(key: int, start: int, stop: int, density: float) -> torch.Tensor:
    """:func:`.kernels.keep_random` compiled: the same mask, bit for bit (tested), at a fraction
    of the cost (the torch version streams a dozen int64 passes over the chunk)."""
    out = torch.empty(stop - start, dtype=torch.bool)
    _threads()
    _k()._keep_random(np.uint64(key & 0xFFFFFFFF), np.uint64((key >> 32) & 0xFFFFFFFF), np.int64(start),
                      np.uint64(int(density * 4294967296.0)), out.numpy())
    return out
