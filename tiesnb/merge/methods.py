"""The merge methods and their registration.

Each implementation has two steps: ``prepare`` (statistics passes over the whole model, e.g. the
global trim thresholds) and ``tensor`` (yield one merged tensor as float32 chunks). The engine
(:mod:`.engine`) does the reading, checking and writing; the arithmetic is in :mod:`.kernels`.

Why one module (~910 lines): the registry — every merge method's parameters, checks and
streaming hooks, one short class each — read as one list, like mergekit's method table; split
by method, each file would repeat the same imports and hooks.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ..checkpoints import open_source
from ..errors import TiesnbError
from . import fused
from . import kernels as K
from .engine import VIEW_DTYPES, MergeJob
from .registry import Method, Param, register
from .select import LO_BINS, Cut, TopK, bin_of_rank, cut_of_rank, float_of_bits, top_count


def _weights(job: MergeJob, p: dict, name: str = "weights") -> torch.Tensor | None:
    w = p.get(name)
    if w is None:
        return None
    if len(w) != job.n:
        raise TiesnbError(f"'{name}' has {len(w)} values but there are {job.n} models")
    if all(x == 1.0 for x in w):  # weights of 1 are no weights (the same bits): the fastest path runs
        return None
    return torch.tensor(w, dtype=torch.float32, device=job.device)


def for_tensor(p: dict, name: str) -> dict:
    """The parameters for one tensor: ``p`` with that tensor's ``tensor_params`` over it."""
    over = p.get("tensor_params")
    return {**p, **over[name]} if over and name in over else p


def per_model(p: dict, key: str, i: int) -> float:
    """Model ``i``'s value of a parameter given as one number or one per model."""
    v = p[key]
    return v[i] if isinstance(v, list) else v


def _check_per_model(job: MergeJob, p: dict, keys=("k", "gamma")) -> None:
    for src in [p, *(p.get("tensor_params") or {}).values()]:
        for key in keys:
            if isinstance(src.get(key), list) and len(src[key]) != job.n:
                raise TiesnbError(f"'{key}' has {len(src[key])} values but there are {job.n} models")


def _check_tensor_names(job: MergeJob, p: dict) -> None:
    over = p.get("tensor_params") or {}
    unknown = sorted(set(over) - set(job.merged))
    if unknown:
        raise TiesnbError(f"'tensor_params' names {len(unknown)} tensor(s) that are not merged parameters: "
                          f"{', '.join(map(repr, unknown[:5]))}")
    for name, o in over.items():
        if "weights" in o:
            _weights(job, o)


# ----------------------------------------------------------------------------------------------
# average and task arithmetic: one pass, no statistics


# Speed: both read each input once. Where every input can hand out its stored numbers without a
# copy (a memory-mapped file, a state dict in memory: Source.view), torch computes from them
# directly, model by model, into cache-sized buffers: no copy of the inputs at all (7 × 1 GB fp32:
# 1.7 → 0.8 s of reading and arithmetic) and no numba start-up. The compiled pass over the same
# mapped rows (fused.linear, one load and one multiply-add a model) does the arithmetic in less
# time but does not win back numba's start-up (≈ 0.55 s, +115 MiB of RSS): bf16 7 × 1 GB, whole
# process, 4.25 s on the views against 4.38 s compiled (median of 5, README). Otherwise, for bf16
# inputs that one compiled pass per chunk; for float32 the torch path on reused buffers. All
# compute the same float32 operations in the same order: the results are equal bit for bit (tested).
FUSED_LINEAR = True
VIEWS = True  # (the engine's VIEWS does the same for the task vectors of the other methods)


def _viewed(job: MergeJob, name: str, kind: str, w: torch.Tensor | None, lam: float,
            divisor: float) -> Iterator[torch.Tensor] | None:
    """The chunks of a task arithmetic or average merge of ``name`` computed from the inputs'
    views (:meth:`.Source.view`), or None where some input has none."""
    if not (VIEWS and job.device.type == "cpu" and job.specs[name].numel):
        return None
    sources = [job.base, *job.models]
    first = [src.view(name, 0, 1) for src in sources]
    if any(v is None or v.dtype not in VIEW_DTYPES for v in first):
        return None
    delta = kind == "task_arithmetic"
    w = None if w is None else w.cpu()

    def chunks():
        for start, stop in job.ranges(name):
            views = [src.view(name, start, stop) for src in sources]
            if any(v is None for v in views):  # cannot happen for one tensor's aligned ranges
                raise RuntimeError(f"{name}: an input gave no view of [{start}, {stop})")
            C = stop - start
            b = views[0]
            if delta and b.dtype != torch.float32:  # x − b in float32: x widens exactly, b must too
                b = job.scratch("base", (C,)).copy_(b)
            acc = job.scratch("merged", (C,))
            tmp = job.scratch("weighted", (C,))
            for i, x in enumerate(views[1:]):
                # term i: x − b (task arithmetic) or x, widened, times w_i — the roundings of
                # _weighted_rowsum — summed in model order
                # (half-precision x is widened by a copy first: torch's mixed-dtype sub and add
                # run 1.7 – 3 × slower)
                t = acc if i == 0 else tmp
                if delta and x.dtype != torch.float32:
                    t.copy_(x).sub_(b)
                elif delta:
                    torch.sub(x, b, out=t)
                elif w is not None or i == 0 or x.dtype != torch.float32:
                    t.copy_(x)
                else:
                    acc.add_(x)
                    continue
                if w is not None:
                    t.mul_(w[i])
                if i:
                    acc.add_(t)
            out = acc.mul_(lam).add_(b) if delta else acc.div_(divisor)
            job.check_result(name, start, stop, out, also=None if delta else views[0])
            yield out
    return chunks()


def _linear(job: MergeJob, name: str, kind: str, w: torch.Tensor | None, lam: float,
            divisor: float) -> Iterator[torch.Tensor] | None:
    """The chunks of a task arithmetic or average merge of ``name`` from views or compiled, or None."""
    viewed = _viewed(job, name, kind, w, lam, divisor)
    if viewed is not None:
        return viewed
    if not (FUSED_LINEAR and fused.available(job.device) and (job.raw_bf16 or fused.loaded())):
        return None
    weights = np.ones(job.n, np.float32) if w is None else w.cpu().numpy()

    def chunks():
        for start, stop in job.ranges(name):
            R = job.stored_rows(name, start, stop)
            out = job.scratch("merged", (stop - start,))
            if not fused.linear(R, kind, weights, lam, divisor, out):
                job.check_rows(name, start, stop, R)  # raises for a non-finite input
            yield out
    return chunks()


def _weighted_rowsum(job: MergeJob, X: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """``K.rowsum(X if w is None else X * w[:, None])`` — the same operations in the same order —
    into a reused buffer."""
    acc = job.scratch("merged", (X.shape[1],))
    if w is None:
        acc.copy_(X[0])
        for i in range(1, X.shape[0]):
            acc.add_(X[i])
        return acc
    tmp = job.scratch("weighted", (X.shape[1],))
    torch.mul(X[0], w[0], out=acc)
    for i in range(1, X.shape[0]):
        acc.add_(torch.mul(X[i], w[i], out=tmp))
    return acc


class Average:
    """The mean of the fine-tuned weights (a model soup), optionally weighted: Σ w_t θ_t / Σ w_t."""

    def prepare(self, job: MergeJob, p: dict) -> Any:
        _check_tensor_names(job, p)
        for name, o in [("", p), *(p.get("tensor_params") or {}).items()]:
            w = _weights(job, o)
            if w is not None and float(w.sum()) == 0:
                raise TiesnbError(f"'weights' of method 'average' sum to 0{f' for {name!r}' if name else ''}")
        return _weights(job, p)

    def tensor(self, job: MergeJob, p: dict, w, name: str) -> Iterator[torch.Tensor]:
        if p.get("tensor_params") and name in p["tensor_params"]:
            w = _weights(job, for_tensor(p, name))
        fast = _linear(job, name, "average", w, 1.0, job.n if w is None else float(w.sum()))
        if fast is not None:
            yield from fast
            return
        divisor = job.n if w is None else w.sum()
        for start, stop in job.ranges(name):
            base, X = job.read_chunk(name, start, stop, delta=False, verify=False)
            out = _weighted_rowsum(job, X, w).div_(divisor)
            job.check_result(name, start, stop, out, also=base)  # the base is not in the mean: checked too
            yield out


class TaskArithmetic:
    """θ0 + λ Σ_t w_t τ_t (Ilharco et al. 2023): a plain sum of task vectors, scaled."""

    def prepare(self, job: MergeJob, p: dict) -> Any:
        _check_tensor_names(job, p)
        return _weights(job, p)

    def tensor(self, job: MergeJob, p: dict, w, name: str) -> Iterator[torch.Tensor]:
        if p.get("tensor_params") and name in p["tensor_params"]:
            p = for_tensor(p, name)
            w = _weights(job, p)
        lam = p["lam"]
        fast = _linear(job, name, "task_arithmetic", w, lam, 1.0)
        if fast is not None:
            yield from fast
            return
        for start, stop in job.ranges(name):
            base, D = job.read_chunk(name, start, stop, verify=False)
            out = _weighted_rowsum(job, D, w).mul_(lam).add_(base)  # base + λ·tv: the same two roundings
            job.check_result(name, start, stop, out)
            yield out


# ----------------------------------------------------------------------------------------------
# the sparsify / elect / disjoint-merge family: ties, dare, dare_ties, breadcrumbs


# Speed: the exact global top-k needs a radix select, two histogram passes over the model. The
# second pass is avoided: after the first, each model's cut is known up to one histogram bin, and
# only ~1 % of columns hold an entry in that bin. The merge pass merges every other column for
# good, sets those aside (values and positions), and once the pass has seen them all the exact
# cut is found from them alone; the set-aside columns are then merged and written over their
# provisional values. The result is the same, bit for bit, as with the second pass (tested).
DEFER = True
# The set-aside columns get a memory budget. Coarsely quantized deltas (bf16 checkpoints: fp32
# differences of bf16 weights take few distinct values) can put most of the model in the undecided
# bin; past the budget the exact cut is found by a second histogram pass over that bin instead,
# which costs a read of the inputs but no memory.
SET_ASIDE_BYTES = 256 << 20
# The statistics passes read big chunks (one histogram call per model and chunk); the merge pass,
# a dozen elementwise operations over (n, C), runs far faster when (n, C) stays in the CPU cache.
MERGE_CHUNK = None  # None: the job's chunk
# A per-tensor trim finds each tensor's cuts (up to MergeJob.hold_bytes) in one compiled call —
# from the inputs' mapped rows where the merge reads them (MergeJob.stored_tensor), else from its
# task vectors held as float32 (MergeJob.hold); the histogram passes of the streaming select cost
# ~4 ms of fixed work per tensor (allocating, summing and scanning 65,536-key histograms per
# model), 5 s over a 1,300-tensor model.
COMPILED_CUTS = True
# the guess of each cut's bin (SparseMerge._guess_window): runs of GUESS_SPAN entries, one every
# GUESS_SAMPLE runs of each tensor (0: no guess); GUESS_WIDTH bins counted around the guessed one
GUESS_SAMPLE, GUESS_SPAN, GUESS_WIDTH = 32, 8192, 3


def _partial_ties(cut: Cut) -> int:
    """The entries tied at an exact cut that keeps some but not all of them (else 0; ties at 0 do
    not count: a kept 0 and a dropped one merge alike)."""
    return cut.equal if (not cut.inclusive and 0 < cut.extra < cut.equal and cut.value > 0) else 0


class _Scope:
    """One trim scope (the whole model, or one tensor) whose cuts are still one bin wide, and the
    columns it set aside, in flat order: positions, the n task-vector values, the base value (and
    the given sign) of each. Storage is allocated once: a set-aside column holds an entry of some
    model's undecided bin, so there are at most as many as those bins hold."""

    @staticmethod
    def capacity(sel: list[TopK]) -> int:
        """Columns the scope may set aside: the entries of every model's undecided bin, and the
        ties of every model whose exact cut keeps only some of its ties (see _Trimmer.set_cuts)."""
        return sum(int(s.hist[s.bin]) if s.stage == 2 else _partial_ties(s.cut()) for s in sel)

    @staticmethod
    def nbytes(sel: list[TopK], job: MergeJob, with_signs: bool) -> int:
        """Memory the scope would take: per column n values, the base value, the position (and the sign)."""
        return _Scope.capacity(sel) * (4 * job.n + 4 + 8 + (4 if with_signs else 0))

    def __init__(self, sel: list[TopK], job: MergeJob, with_signs: bool):
        self.sel = sel
        self.complete = False  # every column of the scope has been through the merge pass
        cap = self.capacity(sel)
        self.vals = torch.empty(job.n, cap, device=job.device)
        self.base = torch.empty(cap, device=job.device)
        self.pos = torch.empty(cap, dtype=torch.int64)
        self.signs = torch.empty(cap, device=job.device) if with_signs else None
        self.segments: list[list] = []  # [name, begin, end] runs of the arrays
        self.size = 0

    def add(self, name: str, idx: torch.Tensor, start: int, D: torch.Tensor, base: torch.Tensor,
            given: torch.Tensor | None) -> None:
        self._append(name, idx, start, D[:, idx], base[idx], given)

    def add_stored(self, name: str, idx: torch.Tensor, start: int, raw) -> None:
        """:meth:`add` from a chunk as stored (rows, the base first; see :meth:`.MergeJob.read_raw`):
        the task vectors of the set-aside columns formed as the kernels form them (widened to
        float32, then subtracted)."""
        R = torch.stack([r[idx] for r in raw]).float()
        self._append(name, idx, start, R[1:].sub_(R[0]), R[0], None)

    def _append(self, name: str, idx: torch.Tensor, start: int, vals: torch.Tensor, base: torch.Tensor,
                given: torch.Tensor | None) -> None:
        a, b = self.size, self.size + idx.numel()
        self.vals[:, a:b] = vals
        self.base[a:b] = base
        self.pos[a:b] = (idx + start).cpu()
        if self.signs is not None:
            self.signs[a:b] = given[idx]
        if self.segments and self.segments[-1][0] == name:
            self.segments[-1][2] = b
        else:
            self.segments.append([name, a, b])
        self.size = b


def _fused_disjoint(p: dict) -> str:
    """The disjoint merge as the compiled kernel names it (without weights, mergekit's
    ``weighted_mean`` divides by the count of agreeing entries: the paper's mean)."""
    return "mean" if p["disjoint"] == "weighted_mean" else p["disjoint"]


@dataclass
class SparseState:
    cuts: list[list[Cut]] | None  # global trim: per model [cut] (magnitude) or [outer, inner] (band)
    sq_norms: torch.Tensor | None  # per model: squared norm of the trimmed task vector (normfrac/normmass)
    majority: float  # sum of the whole elected sign vector (zero_sign = majority)
    weights: torch.Tensor | None
    signs: Any  # a Source of given signs (the oracle experiment) or None
    trim: "_Trimmer | None" = None  # the merge pass's trimmer (tie counters run across tensors)
    scopes: list[_Scope] = field(default_factory=list)  # scopes with set-aside columns
    kept: list[list[int]] | None = None

    def report(self) -> dict:
        return {} if self.kept is None else {"kept_entries": self.kept}


class _Trimmer:
    """Applies the sparsification to chunks, in model order; keeps the running tie counters of
    the deterministic tie rule, so a fresh trimmer is made for each pass over the model. With a
    pending scope, its cuts keep only the entries certainly kept and :meth:`uncertain` flags the
    columns holding an entry in a model's undecided bin."""

    def __init__(self, impl: "SparseMerge", job: MergeJob, p: dict, cuts=None, scope: _Scope | None = None,
                 per_tensor: bool = False, defer: bool = False):
        self.impl, self.job, self.p = impl, job, p
        self.tp = p  # the current tensor's parameters (see for_tensor)
        self.per_tensor, self.defer = per_tensor, defer
        self.set_cuts(cuts, scope)

    def set_cuts(self, cuts, scope: _Scope | None = None) -> None:
        self.scope = scope
        self.low: list[float | None] = [None] * self.job.n  # lower edge of the undecided bin
        if scope is not None:
            cuts = []
            for i, sel in enumerate(scope.sel):
                if sel.stage == 2:  # undecided: keep bins above, flag the bin itself
                    cuts.append([Cut(float_of_bits((sel.bin + 1) << 16), True)])
                    self.low[i] = float_of_bits(sel.bin << 16)
                elif _partial_ties(sel.cut()):
                    # exact, but keeping only the first `extra` of its ties in flat order: the ties are
                    # set aside too, so that the finish grants them in flat order with the others
                    # (granting some here would restart the count there: more ties kept than `extra`)
                    cuts.append([Cut(sel.cut().value, False)])
                    self.low[i] = sel.cut().value
                else:
                    cuts.append([sel.cut()])
        self.cuts = cuts
        self.extra_left = None if cuts is None else [[c.extra for c in cs] for cs in cuts]

    def begin(self, name: str, stored: bool = False) -> None:
        """Start tensor ``name``: with a per-tensor trim, find its cuts. ``stored``: the merge can
        take the compiled kernel, so the cuts may come from the inputs as stored (see
        :meth:`_cuts_from_stored`)."""
        self.tp = for_tensor(self.p, name)
        self.rows = self.upto = None
        if self.per_tensor:
            if stored and self.impl.compiled_cuts(self.job, self.tp, name) and self._cuts_from_stored(name):
                return
            held = self.job.hold(name)  # statistics and merge of this tensor then read the files once
            if held and self.impl.compiled_cuts(self.job, self.tp, name):
                self.set_cuts(self.impl.held_cuts(self.job, self.tp, name))
                return
            sel = self.impl.select(self.job, self.tp, [name], None)
            if any(s.stage == 2 for row in sel for s in row):
                if self.defer and self.impl.can_defer(self.tp, sel, self.job):
                    scope = _Scope([row[0] for row in sel], self.job, self.p.get("signs") is not None)
                    self.set_cuts(None, scope)
                    return
                self.impl.second_pass(self.job, sel, [name], None)
            self.set_cuts([[s.cut() for s in row] for row in sel])

    def _cuts_from_stored(self, name: str) -> bool:
        """The exact cuts of a whole tensor from the inputs' mapped rows (:meth:`.MergeJob.stored_tensor`),
        with the place of each model's last kept tie, so that :meth:`fused_merge_tensor` merges it in
        one pass over the same rows: no float32 task vectors held (7 × 1 GB bf16: 28 bytes a
        parameter written and read twice). False where the rows are not at hand or a value is not
        finite (the held path then names the input)."""
        rows = self.job.stored_tensor(name)
        if rows is None:
            return False
        d = self.job.specs[name].numel
        K = [self.impl.counts(self.tp, d, i)[0] for i in range(self.job.n)]
        found = fused.tensor_cuts_stored(rows, [min(max(k, 1), d) for k in K], self.job.bf16_inputs)
        if found is None:
            return False
        self.set_cuts([[cut_of_rank(k, d, *c, self.p["ties"])] for k, c in zip(K, found[0])])
        # a cut that keeps some of its ties keeps those before the place found; others keep none
        self.upto = [u if not cs[0].inclusive and cs[0].extra else 0 for u, cs in zip(found[1], self.cuts)]
        self.rows = rows
        self.job.verified(name)
        return True

    def fused_merge_tensor(self, out: torch.Tensor, flags: torch.Tensor, zero_positive: bool, disjoint: str,
                           lam: float) -> None:
        """:meth:`fused_merge` of the whole tensor whose cuts came from :meth:`_cuts_from_stored`."""
        thr, tie, _, low = self._fused_args()
        fused.merge_stored(self.rows, thr, tie, None, low, zero_positive, disjoint, lam, out, flags, upto=self.upto)
        self.rows = None

    def _top(self, row: torch.Tensor, out: torch.Tensor, i: int, j: int) -> None:
        cut = self.cuts[i][j]
        if cut.inclusive:
            lam = K.below(cut.value) if cut.value > 0 else -1.0
        else:
            lam = cut.value
        if lam < 0:
            out.copy_(row)
        else:
            torch.ops.aten.hardshrink.out(row, lam, out=out)
        left = self.extra_left[i][j]
        if left and not cut.inclusive:
            idx = K.first_ties(row, cut.value, left)
            if idx.numel():
                out[idx] = row[idx]
                self.extra_left[i][j] = left - idx.numel()

    def __call__(self, name: str, start: int, stop: int, D: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        mode = self.p["sparsify"]
        if mode == "none":
            return D
        T = self.job.scratch("trim", D.shape) if out is None else out
        for i in range(D.shape[0]):
            if mode == "magnitude":
                self._top(D[i], T[i], i, 0)
            elif mode == "band":  # top(γ + k) minus top(γ): drop the largest γ, keep the next k
                self._top(D[i], T[i], i, 0)
                inner = torch.empty_like(T[i])
                self._top(D[i], inner, i, 1)
                T[i].sub_(inner)
            elif mode == "random":
                k = per_model(self.tp, "k", i)
                key = self.impl.rng_key(self.p, i, name)
                keep = (fused.keep_random(key, start, stop, k) if fused.available(D.device)
                        else K.keep_random(key, start, stop, k, D.device))
                torch.mul(D[i], keep, out=T[i])
                if self.p["rescale"] and k > 0:
                    T[i].div_(k)
        return T

    def _fused_args(self):
        """Per model: the strict threshold, the tie value, the ties still to keep, the undecided
        bin's lower edge (-1: none), as :func:`.fused.merge` takes them."""
        n = self.job.n
        thr = np.empty(n, np.float32)
        tie = np.zeros(n, np.float32)
        left = np.zeros(n, np.int64)
        low = np.full(n, -1.0, np.float32)
        for i in range(n):
            cut = self.cuts[i][0]
            if cut.inclusive:  # |x| >= v  <=>  |x| > below(v), as in _top
                thr[i] = K.below(cut.value) if cut.value > 0 else -1.0
            else:
                thr[i] = tie[i] = cut.value
                left[i] = self.extra_left[i][0]
            if self.low[i] is not None:
                low[i] = self.low[i]
        return thr, tie, left, low

    def _used(self, used: np.ndarray) -> None:
        for i, u in enumerate(used):
            if u:
                self.extra_left[i][0] -= int(u)

    def fused_merge(self, D: torch.Tensor, base: torch.Tensor, out: torch.Tensor, flags: torch.Tensor,
                    zero_positive: bool, disjoint: str, lam: float) -> torch.Tensor | None:
        """The compiled path (:func:`.fused.merge`) of trim + :meth:`SparseMerge._combine` +
        :meth:`uncertain` for a magnitude trim; writes the merged chunk to ``out`` and returns the
        set-aside columns (None without a pending scope)."""
        thr, tie, left, low = self._fused_args()
        self._used(fused.merge(D, base, thr, tie, left, low, zero_positive, disjoint, lam, out, flags))
        if self.scope is None or (low < 0).all():
            return None
        return torch.nonzero(flags).flatten()

    def fused_merge_raw(self, raw, out: torch.Tensor, flags: torch.Tensor,
                        zero_positive: bool, disjoint: str, lam: float) -> tuple[bool, torch.Tensor | None]:
        """:meth:`fused_merge` of a chunk as stored (:meth:`.MergeJob.read_raw`): whether it could
        (not when some model's ties to keep run out in the chunk), and the set-aside columns."""
        thr, tie, left, low = self._fused_args()
        used = fused.merge_stored(raw, thr, tie, left, low, zero_positive, disjoint, lam, out, flags)
        if used is None:
            return False, None
        self._used(used)
        if self.scope is None or (low < 0).all():
            return True, None
        return True, torch.nonzero(flags).flatten()

    def uncertain(self, D: torch.Tensor, T: torch.Tensor) -> torch.Tensor | None:
        """Column indices of the chunk holding an entry in some model's undecided bin."""
        if self.scope is None:
            return None
        rows = [i for i, low in enumerate(self.low) if low is not None]
        if not rows:
            return None
        W = self.job.scratch("undecided", (len(rows), D.shape[1]))
        for r, i in enumerate(rows):  # |x| >= the bin's floor, minus |x| >= the next bin's floor
            torch.ops.aten.hardshrink.out(D[i], K.below(self.low[i]), out=W[r])
            W[r].sub_(T[i]).abs_()
        return torch.nonzero(K.rowsum(W)).flatten()  # |·| first: opposite entries must not cancel


class SparseMerge:
    """Sparsify each task vector, optionally elect a sign per coordinate, merge the agreeing
    entries, scale by λ and add to the base. ``ties``, ``dare``, ``dare_ties`` and ``breadcrumbs``
    are this with different switches."""

    # ---- statistics
    def counts(self, p: dict, d: int, i: int) -> list[int]:
        """Model ``i``'s entries kept by the trim of ``d`` entries (band: the outer and inner counts)."""
        k = per_model(p, "k", i)
        if p["sparsify"] == "magnitude":
            return [top_count(k, d, p["count"])]
        # band: keep ranks (γd, γd + kd]: the top (γ + k) minus the top γ; where γ + k > 1 fewer of the
        # largest are dropped, so that k is always kept (mergekit's rule; k = 1 keeps everything)
        K = top_count(k, d, "floor")
        g = min(top_count(per_model(p, "gamma", i), d, "floor"), d - K)
        return [g + K, g]

    def rng_key(self, p: dict, i: int, name: str) -> int:
        return zlib.crc32(f"{p['seed']}|{i}|{name}".encode()) | (zlib.crc32(f"{name}|{i}|{p['seed']}".encode()) << 32)

    def _pass(self, job: MergeJob, sel: list[list[TopK]], names: list[str], desc: str | None, stage: int) -> None:
        mult = job.multiplicity
        if stage == 1 and fused.available(job.device):  # one compiled pass, every model's counts at once
            H = np.zeros((fused.blocks(), job.n, sel[0][0].keys()), np.int64)
            total = 0
            if job.raw_stored and not any(job.is_held(n) for n in names):  # from the numbers as stored
                window = self._guess_window(job, sel, names)
                for name, start, stop, raw in job.raw_chunks(desc, names):
                    times = mult.get(name, 1)
                    if not fused.histogram_stored(raw, H, job.bf16_inputs, times, window):
                        job.read_chunk(name, start, stop)  # raises: its check names the input
                    total += (stop - start) * times
                for name in names:
                    job.verified(name)
                if window is not None:
                    fine = window[1].sum(0)
                    for i, row in enumerate(sel):
                        row[0].add_window(int(window[0][i]), fine[i])
            else:
                for name, _, _, _, D in job.chunks(desc, names):
                    times = mult.get(name, 1)
                    fused.histogram(job.contiguous(D), H, job.bf16_inputs, times)
                    total += D.shape[1] * times
            counts = torch.from_numpy(H.sum(0))
            for i, row in enumerate(sel):
                for s in row:
                    s.add_counts(counts[i], total)
                    s.advance()
            return
        for name, _, _, _, D in job.chunks(desc, names):
            A = torch.abs(D, out=job.scratch("abs", D.shape))
            times = mult.get(name, 1)
            for i in range(job.n):
                for s in sel[i]:
                    if s.stage == stage:
                        s.add(A[i], times)
        for row in sel:
            for s in row:
                if s.stage == stage:
                    s.advance()

    @staticmethod
    def _guess_window(job: MergeJob, sel: list[list[TopK]], names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Where pass 1 can also do pass 2: per model, the bins likely to hold its cut, guessed
        from a sample (:data:`GUESS_SAMPLE`), and an array for pass 1 to count their entries' low
        16 bits in (see :func:`.fused.histogram_stored`). A right guess makes the cut exact after
        one pass: no second pass over the inputs, no columns set aside and patched afterwards
        (global TIES, 7 × 1 GB fp32: those took ≈ 1.2 s of 7; the sample ≈ 0.1 s, the window
        counts ≈ 0.2 s). A wrong guess costs the sample and the counts, nothing else.
        None where it does not apply: bf16 inputs (their cuts are mostly exact after pass 1
        anyway), band trims, or a cut that needs no bin."""
        if job.bf16_inputs or any(len(row) != 1 for row in sel) or not GUESS_SAMPLE:
            return None
        span = min(GUESS_SPAN, job.chunk)
        stride = span * GUESS_SAMPLE
        H = np.zeros((fused.blocks(), job.n, sel[0][0].keys()), np.int64)
        total = sampled = 0
        for name in names:
            numel, times = job.specs[name].numel, job.multiplicity.get(name, 1)
            ranges = [(a, min(numel, a + span)) for a in range(0, numel, stride)]
            # each tensor weighs as much in the sample as in the model (a short one is read whole)
            weight = times * max(1, round(numel / sum(b - a for a, b in ranges)))
            for a, b in ranges:
                fused.histogram_stored(job.stored_chunk(name, a, b), H, False, weight)  # pass 1 checks
                sampled += (b - a) * weight
            total += numel * times
        counts = H.sum(0)
        first = np.full(job.n, -1, np.int64)
        for i, row in enumerate(sel):
            K = row[0].K
            if 0 < K < total:
                b, _ = bin_of_rank(counts[i], max(1, round(K * sampled / total)))
                first[i] = max(0, b - GUESS_WIDTH // 2)
        if (first < 0).all():
            return None
        return first, np.zeros((fused.blocks(), job.n, GUESS_WIDTH, LO_BINS), np.int64)

    def select(self, job: MergeJob, p: dict, names: list[str], desc: str | None) -> list[list[TopK]]:
        """Per model, the radix selection(s) of its top-K over ``names`` (all merged parameters
        for the global trim, one tensor for per-tensor), after the first histogram pass."""
        d = sum(job.specs[n].numel * job.multiplicity.get(n, 1) for n in names)
        sel = [[TopK(c, p["ties"], device=job.device, low_bits=job.bf16_inputs) for c in self.counts(p, d, i)]
               for i in range(job.n)]
        self._pass(job, sel, names, desc and f"{desc}, pass 1", 1)
        return sel

    @staticmethod
    def compiled_cuts(job: MergeJob, p: dict, name: str) -> bool:
        """Whether a held tensor's cuts come from one compiled call (:func:`.fused.tensor_cuts`)."""
        return (COMPILED_CUTS and fused.available(job.device) and p["sparsify"] in ("magnitude", "band")
                and job.multiplicity.get(name, 1) == 1)

    def held_cuts(self, job: MergeJob, p: dict, name: str) -> list[list[Cut]]:
        """The exact cuts of a held tensor, per model: the same as :meth:`select` and its passes find."""
        d = job.specs[name].numel
        counts = [self.counts(p, d, i) for i in range(job.n)]
        _, hX = job.held()
        cuts: list[list[Cut]] = [[] for _ in range(job.n)]
        for j in range(len(counts[0])):  # magnitude: one cut per model; band: outer and inner
            K = [c[j] for c in counts]
            found = fused.tensor_cuts(hX, [min(max(k, 1), d) for k in K], job.bf16_inputs)
            for i, (value, greater, equal) in enumerate(found):
                cuts[i].append(cut_of_rank(K[i], d, value, greater, equal, p["ties"]))
        return cuts

    def second_pass(self, job: MergeJob, sel: list[list[TopK]], names: list[str], desc: str | None) -> None:
        self._pass(job, sel, names, desc and f"{desc}, pass 2", 2)

    @staticmethod
    def can_defer(p: dict, sel: list[list[TopK]], job: MergeJob | None = None) -> bool:
        # bin 0 holds the zeros, which the set-aside test cannot see: take the second pass then;
        # and past the memory budget (see SET_ASIDE_BYTES)
        if p["sparsify"] != "magnitude" or any(s.stage == 2 and s.bin == 0 for row in sel for s in row):
            return False
        return job is None or _Scope.nbytes([row[0] for row in sel], job, p.get("signs") is not None) <= SET_ASIDE_BYTES

    def prepare(self, job: MergeJob, p: dict) -> SparseState:
        if p["elect"] == "none" and p["disjoint"] == "max":
            raise TiesnbError("disjoint='max' needs an elected sign; elect is 'none'")
        if p["ties"] == "index" and any(m > 1 for m in job.multiplicity.values()):
            raise TiesnbError("ties='index' cannot be combined with parameters counted more than once; use ties='keep'")
        _check_tensor_names(job, p)
        _check_per_model(job, p)
        if p.get("tensor_params") and p["trim"] == "global" and p["sparsify"] != "random":
            raise TiesnbError("'tensor_params' (values for some tensors) needs trim='per_tensor': a global trim "
                              "takes one cut over the whole model")
        w = _weights(job, p)
        signs = None
        if p.get("signs") is not None:
            signs = open_source(p["signs"], "signs")
            have = set(signs.names())
            missing = [n for n in job.merged if n not in have]
            if missing:
                raise TiesnbError(f"the given sign vector lacks {len(missing)} merged parameter(s), e.g. {missing[0]!r}")
            for n in job.merged:  # read position by position: every shape must be the parameter's
                if signs.spec(n).shape != job.specs[n].shape:
                    raise TiesnbError(f"'signs': '{n}' has shape {signs.spec(n).shape}, the parameter has "
                                      f"{job.specs[n].shape}")
        state = SparseState(None, None, 0.0, w, signs)
        needs_norms = p["elect"] in ("normfrac", "normmass") and signs is None
        needs_majority = p["zero_sign"] == "majority" and p["elect"] != "none"
        per_tensor = p["sparsify"] in ("magnitude", "band") and p["trim"] == "per_tensor"
        defer_ok = DEFER and not needs_norms and not needs_majority
        scope = None
        if p["sparsify"] in ("magnitude", "band") and p["trim"] == "global":
            sel = self.select(job, p, job.merged, "trim thresholds")
            if any(s.stage == 2 for row in sel for s in row):
                if defer_ok and self.can_defer(p, sel, job):
                    scope = _Scope([row[0] for row in sel], job, signs is not None)
                else:
                    self.second_pass(job, sel, job.merged, "trim thresholds")
            if scope is None:
                state.cuts = [[s.cut() for s in row] for row in sel]
                state.kept = [[c.kept for c in cs] for cs in state.cuts]
        if needs_norms or needs_majority:
            # the norms come before the majority: normfrac/normmass elections need them
            if needs_norms:
                sq = torch.zeros(job.n, dtype=torch.float64, device=job.device)
                for name, start, stop, T in self._trimmed(job, p, state, "trimmed norms", per_tensor):
                    sq += T.double().square().sum(1) * job.multiplicity.get(name, 1)
                state.sq_norms = sq
            if needs_majority:
                total = 0.0
                for name, start, stop, T in self._trimmed(job, p, state, "sign majority", per_tensor):
                    s = self._elect(p, state, T, state.signs and self._signs_chunk(state, name, start, stop, T.device))
                    total += float(s.sum()) * job.multiplicity.get(name, 1)
                state.majority = total
        state.trim = _Trimmer(self, job, p, state.cuts, scope, per_tensor=per_tensor, defer=defer_ok)
        return state

    def _trimmed(self, job, p, state, desc, per_tensor):
        """Every trimmed chunk of the model (a statistics pass needing the exact cuts)."""
        trim = _Trimmer(self, job, p, state.cuts, per_tensor=per_tensor, defer=False)
        current = None
        for name, start, stop, _, D in job.chunks(desc):
            if name != current:
                trim.begin(name)
                current = name
            yield name, start, stop, trim(name, start, stop, D)

    # ---- merging
    @staticmethod
    def _signs_chunk(state, name, start, stop, device):
        return state.signs.read(name, start, stop).to(device, torch.float32).sign_()

    def _elect(self, p: dict, state: SparseState, T: torch.Tensor, given: torch.Tensor | None) -> torch.Tensor:
        if given is not None:
            return given
        e = p["elect"]
        if e == "mass":
            return K.elect_mass(T)
        if e == "count":
            return K.elect_count(T)
        if e == "normfrac":
            return K.elect_normfrac(T, state.sq_norms)
        if e == "normmass":
            return K.elect_normmass(T, state.sq_norms)
        raise ValueError(e)

    @staticmethod
    def _tensor_weights(job: MergeJob, p: dict, state: SparseState, name: str) -> torch.Tensor | None:
        return _weights(job, p) if name in (p.get("tensor_params") or {}) else state.weights

    def _combine(self, job: MergeJob, p: dict, state: SparseState, T: torch.Tensor, base: torch.Tensor,
                 given: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
        """Merged values of trimmed columns ``T`` (n, C): weights ``w``, election, disjoint merge, λ."""
        before = w is not None and p["weighted_election"]
        value_w = w if (w is not None and not before) else None
        if before:
            T = torch.mul(T, w.unsqueeze(1), out=job.scratch("weighted", T.shape))
        if p["elect"] == "none" and given is None:
            merged = K.nonzero_merge(T, p["disjoint"], value_w, w)
        else:
            s = self._elect(p, state, T, given)
            s = K.resolve_zero_signs(s, p["zero_sign"], state.majority)
            quirk = p["zero_sign"] == "majority" and state.majority == 0
            merged = K.disjoint_merge(T, s, p["disjoint"], value_w, w, select_negative_on_zero=quirk,
                                      work=job.scratch("agree", T.shape))
        return base + p["lam"] * merged

    @staticmethod
    def fusable(job: MergeJob, p: dict, state: SparseState) -> bool:
        """Whether the merge pass can take the compiled kernel (:mod:`.fused`): TIES with a
        magnitude trim, the election by mass, no weights, no given signs."""
        return (fused.available(job.device) and p["sparsify"] == "magnitude" and p["elect"] == "mass"
                and _weights(job, p) is None and state.signs is None and p["zero_sign"] in ("zero", "positive")
                and _fused_disjoint(p) in fused.DISJOINT)

    def tensor(self, job: MergeJob, p: dict, state: SparseState, name: str) -> Iterator[torch.Tensor]:
        p = for_tensor(p, name)
        w = self._tensor_weights(job, p, state, name)
        trim = state.trim
        fast = self.fusable(job, p, state)
        trim.begin(name, stored=fast)
        scope = trim.scope
        if scope is not None and (not state.scopes or state.scopes[-1] is not scope):
            state.scopes.append(scope)
        if fast and trim.rows is not None:  # cuts and merge from the inputs as stored
            numel = job.specs[name].numel
            out, flags = job.scratch("merged", (numel,)), job.scratch("flags", (numel,), torch.uint8)
            trim.fused_merge_tensor(out, flags, p["zero_sign"] == "positive", _fused_disjoint(p), p["lam"])
            yield out
            return
        if fast and scope is None and job.is_held(name):  # the whole tensor in one compiled call
            hb, hX = job.held()
            out, flags = job.scratch("merged", hb.shape), job.scratch("flags", hb.shape, torch.uint8)
            trim.fused_merge(hX, hb, out, flags, p["zero_sign"] == "positive", _fused_disjoint(p), p["lam"])
            yield out
            job.hold(None)
            return
        for start, stop in job.ranges(name, MERGE_CHUNK):
            if fast:
                C = stop - start
                out, flags = job.scratch("merged", (C,)), job.scratch("flags", (C,), torch.uint8)
                args = (p["zero_sign"] == "positive", _fused_disjoint(p), p["lam"])
                raw = job.read_raw(name, start, stop)
                if raw is not None:  # merged from the numbers as stored
                    done, idx = trim.fused_merge_raw(raw, out, flags, *args)
                    if idx is not None and idx.numel():
                        scope.add_stored(name, idx, start, raw)
                    if done:
                        yield out
                        continue
                base, D = job.read_chunk(name, start, stop)
                idx = trim.fused_merge(job.contiguous(D), base, out, flags, *args)
                if idx is not None and idx.numel():
                    scope.add(name, idx, start, D, base, None)
                yield out
                continue
            base, D = job.read_chunk(name, start, stop)
            given = state.signs and self._signs_chunk(state, name, start, stop, D.device)
            T = trim(name, start, stop, D)
            idx = trim.uncertain(D, T)
            if idx is not None and idx.numel():
                scope.add(name, idx, start, D, base, given)
            yield self._combine(job, p, state, T, base, given, w)
        if trim.per_tensor and scope is not None:
            scope.complete = True
        job.hold(None)

    def finish(self, job: MergeJob, p: dict, state: SparseState, sink, final: bool) -> None:
        """Merge the set-aside columns of every complete scope with the exact cuts and write them
        over the provisional values (and over every tied alias of their tensors)."""
        kept = []
        done = [s for s in state.scopes if s.complete or final]
        state.scopes = [s for s in state.scopes if s not in done]
        for scope in done:
            M = scope.size
            if not M:
                continue
            # a per-tensor scope holds one tensor: its own parameters (global trim has no tensor_params)
            sp = for_tensor(p, scope.segments[0][0])
            w = self._tensor_weights(job, sp, state, scope.segments[0][0])
            mult = job.multiplicity
            for i, sel in enumerate(scope.sel):
                if sel.stage == 2:  # every entry of the undecided bin is in the set-aside columns
                    if not mult:
                        sel.add(scope.vals[i, :M].abs())
                    else:
                        for name, a, b in scope.segments:
                            sel.add(scope.vals[i, a:b].abs(), mult.get(name, 1))
                    sel.advance()
            cuts = [s.cut() for s in scope.sel]
            kept.append([c.kept for c in cuts])
            exact = _Trimmer(self, job, p, [[c] for c in cuts])  # its tie counters run in flat order
            out = torch.empty(M, device=job.device)
            for a in range(0, M, job.chunk):
                b = min(M, a + job.chunk)
                D = scope.vals[:, a:b].contiguous()
                T = exact("", 0, 0, D)
                given = None if scope.signs is None else scope.signs[a:b]
                out[a:b] = self._combine(job, sp, state, T, scope.base[a:b], given, w)
            for name, a, b in scope.segments:
                for target in [name] + [x for x, src in job.alias_of.items() if src == name]:
                    sink.patch(target, scope.pos[a:b], out[a:b])
        if final and state.cuts is None and kept and p["trim"] == "global":
            state.kept = [[k] for k in kept[0]]


# ----------------------------------------------------------------------------------------------
# Fisher merging and RegMean: statistics computed elsewhere, given as inputs


class Fisher:
    """Fisher merging (Matena & Raffel 2022): θ = Σ_t w_t F_t θ_t / Σ_t w_t F_t per parameter,
    with each model's diagonal Fisher ``F_t`` given (floored at ``floor``). Parameters without a
    Fisher in every model are averaged; where all Fishers are 0 the plain mean is used."""

    def prepare(self, job: MergeJob, p: dict) -> Any:
        if p["fishers"] is None:
            raise TiesnbError("method 'fisher' needs 'fishers': one diagonal Fisher (state dict or checkpoint) per model")
        fishers = [open_source(f, f"fisher {i}") for i, f in enumerate(p["fishers"])]
        job.check_aux(fishers, "fisher")
        have = [set(f.names()) for f in fishers]
        partial = sorted((set.union(*have) - set.intersection(*have)))
        if partial:
            raise TiesnbError(f"Fisher given for some models but not all: {', '.join(partial[:5])}")
        return fishers, _weights(job, p), set.intersection(*have)

    def tensor(self, job: MergeJob, p: dict, state, name: str) -> Iterator[torch.Tensor]:
        fishers, w, covered = state
        for start, stop in job.ranges(name):
            _, X = job.read_chunk(name, start, stop, delta=False)
            if name not in covered:
                yield K.rowsum(X) / job.n
                continue
            Fm = torch.stack([f.read(name, start, stop).to(job.device, torch.float32) for f in fishers])
            if not bool(torch.isfinite(Fm).all()):
                raise TiesnbError(f"non-finite values in the Fisher of '{name}'")
            Fm = Fm.clamp_min_(p["floor"])
            if w is not None:
                Fm.mul_(w.unsqueeze(1))
            den = K.rowsum(Fm)
            num = K.rowsum(Fm * X)
            yield torch.where(den > 0, num / torch.where(den > 0, den, 1.0), K.rowsum(X) / job.n)


class RegMean:
    """RegMean (Jin et al. 2023): each linear layer's weight W (out × in; a 1 × 1 convolution's
    (out, in, 1, 1) the same map per pixel) is the least-squares
    merge W = (Σ_t W_t G̃_t)(Σ_t G̃_t)⁻¹, with ``G_t`` the Gram matrix of the layer's inputs on
    task t's data (given, keyed by the weight's name) and ``G̃ = α G + (1 − α) diag(G)``.
    Every other parameter is averaged."""

    def prepare(self, job: MergeJob, p: dict) -> Any:
        if p["grams"] is None:
            raise TiesnbError("method 'regmean' needs 'grams': one state dict or checkpoint of input Gram matrices per model")
        grams = [open_source(g, f"grams {i}") for i, g in enumerate(p["grams"])]

        def gram_shape(n):
            shape = job.specs[n].shape  # a linear weight, or a 1 × 1 convolution's (out, in, 1, 1)
            if len(shape) < 2 or any(s != 1 for s in shape[2:]):
                raise TiesnbError(f"Gram matrix given for '{n}', which is not a linear (or 1 × 1 convolution) weight {shape}")
            return (shape[1], shape[1])

        job.check_aux(grams, "grams", shape_of=gram_shape)
        have = [set(g.names()) for g in grams]
        partial = sorted(set.union(*have) - set.intersection(*have))
        if partial:
            raise TiesnbError(f"Gram matrices given for some models but not all: {', '.join(partial[:5])}")
        return grams, set.intersection(*have)

    def tensor(self, job: MergeJob, p: dict, state, name: str) -> Iterator[torch.Tensor]:
        grams, covered = state
        if name not in covered:
            for start, stop in job.ranges(name):
                _, X = job.read_chunk(name, start, stop, delta=False)
                yield K.rowsum(X) / job.n
            return
        alpha = p["alpha"]
        out_dim, in_dim = job.specs[name].shape[:2]
        lhs = torch.zeros(in_dim, in_dim, dtype=torch.float64, device=job.device)
        rhs = torch.zeros(in_dim, out_dim, dtype=torch.float64, device=job.device)
        for i, g in enumerate(grams):
            G = g.tensor(name).to(job.device, torch.float64)
            if not bool(torch.isfinite(G).all()):
                raise TiesnbError(f"non-finite values in Gram matrix {i} of '{name}'")
            G = alpha * G + (1 - alpha) * torch.diag_embed(torch.diagonal(G))
            W = job.full_row(name, i, delta=False).reshape(out_dim, in_dim).double()
            lhs += G
            rhs += G @ W.T
        try:
            merged = torch.linalg.solve(lhs, rhs).T
        except RuntimeError:  # singular: an input feature never active on any task
            merged = (torch.linalg.pinv(lhs) @ rhs).T
        yield merged.float().reshape(-1)


# ----------------------------------------------------------------------------------------------
# registration

_frac = lambda v: 0 <= v <= 1  # noqa: E731  (k = 0 keeps nothing, as mergekit's density 0)
_unit0 = lambda v: 0 <= v < 1  # noqa: E731
TENSOR_PARAMS = Param(None, "values for some tensors: {tensor name: {parameter: value}} over the ones above "
                      "(mergekit's layer gradients and filters; per-tensor trims only)", "tensor_params")


def _k(default: float, doc: str) -> Param:
    return Param(default, doc + "; one number, or one per model", "per_model", check=_frac, rule="0 <= k <= 1")
LAM = Param(1.0, "scaling λ of the merged task vector: θ = θ0 + λ τ_m")
WEIGHTS = Param(None, "one weight per model (default: all 1)", "weights")

register(Method("average", "mean of the fine-tuned weights (model soup); no task vectors, no λ",
                {"weights": Param(None, "one weight per model for a weighted mean (default: plain mean)", "weights"),
                 "tensor_params": TENSOR_PARAMS},
                Average(), per_tensor=("weights",)))

register(Method("task_arithmetic", "θ0 + λ Σ_t w_t (θ_t − θ0) (Ilharco et al. 2023)",
                {"lam": Param(1.0, "scaling λ of the summed task vectors (paper default without validation: 0.4)"),
                 "weights": WEIGHTS, "tensor_params": TENSOR_PARAMS},
                TaskArithmetic(), per_tensor=("weights", "lam")))

_SPARSE = SparseMerge()
_ties_presets = {
    # the paper: global top-k% (exactly int(k·d), ties by position), mass election, a sign of 0
    # merges to 0, disjoint mean
    "paper": dict(trim="global", count="floor", ties="index", elect="mass", zero_sign="zero",
                  disjoint="mean", weighted_election=False, lam=1.0),
    # prateeky2806/ties-merging: kthvalue threshold (int(k·d)+1 kept, ties at it kept), zero
    # signs from the global majority
    "original": dict(trim="global", count="original", ties="keep", elect="mass", zero_sign="majority",
                     disjoint="mean", weighted_election=False, lam=1.0),
    # FusionBench ties_merging: the original's kernel, disjoint sum, scaling factor 0.3
    "fusionbench": dict(trim="global", count="original", ties="keep", elect="mass", zero_sign="majority",
                        disjoint="sum", weighted_election=False, lam=0.3),
    # mergekit ties (computing in float32): per-tensor top-k keeping at least one entry, election
    # on weighted deltas, sum >= 0 elects +, Σ w τ / Σ w over agreeing entries
    "mergekit": dict(trim="per_tensor", count="at_least_one", ties="index", elect="mass", zero_sign="positive",
                     disjoint="weighted_mean", weighted_election=True, lam=1.0),
    # peft ties: per-tensor topk, election on unweighted pruned deltas, weights after, Σ w τ / count
    "peft": dict(trim="per_tensor", count="floor", ties="index", elect="mass", zero_sign="positive",
                 disjoint="mean", weighted_election=False, lam=1.0),
}
_COMMON = {
    "lam": LAM,
    "weights": WEIGHTS,
    "weighted_election": Param(False, "apply the weights before the election (mergekit) rather than after (peft)", "bool"),
    "tensor_params": TENSOR_PARAMS,
}
_ELECT = {
    "elect": Param("mass", "sign election: mass = sign(Σ τ̂) (paper); count = majority vote; normfrac, "
                   "normmass (original code's variants); none = no election (ablation)", "choice",
                   ("mass", "count", "normfrac", "normmass", "none")),
    "signs": Param(None, "a given sign vector (state dict or checkpoint; its signs are used) instead of "
                   "electing: the oracle experiment with the multitask model's task vector", "source"),
    "zero_sign": Param("zero", "an elected sign of 0: zero (merges to 0, paper), positive (mergekit, peft), "
                       "majority (sign of the whole elected vector's sum, original)", "choice",
                       ("zero", "positive", "majority")),
    "disjoint": Param("mean", "merge of the agreeing entries: mean over them (paper), weighted_mean "
                      "(Σwτ/Σw, mergekit), mean_all (over all n models: ablation), sum, max", "choice",
                      ("mean", "weighted_mean", "mean_all", "sum", "max")),
}
_TRIM = {
    "trim": Param("global", "where the top-k is taken: global = over the whole model (paper, original) "
                  "or per_tensor (mergekit, peft)", "choice", ("global", "per_tensor")),
    "ties": Param("index", "entries equal to the threshold: index = keep exactly the count, earlier "
                  "positions first (deterministic); keep = keep them all (original)", "choice", ("index", "keep")),
}

register(Method(
    "ties", "TIES-Merging (Yadav et al. 2023): trim to the top-k% magnitudes, elect a sign per "
    "coordinate, average the agreeing entries, scale by λ",
    {"preset": Param("paper", "sets every switch as one implementation does: paper, original, "
                     "fusionbench, mergekit, peft (explicit parameters override it)", "choice", tuple(_ties_presets)),
     "k": _k(0.2, "fraction of each task vector kept (paper default 0.2)"),
     **_TRIM,
     "count": Param("floor", "entries kept: floor = int(k·d); at_least_one = max(1, int(k·d)) (mergekit); "
                    "original = int(k·d) + 1 (the original's kthvalue)", "choice", ("floor", "at_least_one", "original")),
     **_ELECT, **_COMMON},
    _SPARSE, fixed={"sparsify": "magnitude", "gamma": 0.0, "rescale": False, "seed": 0}, presets=_ties_presets,
    per_tensor=("k", "weights", "lam")))

register(Method(
    "dare", "DARE (Yu et al. 2024): drop each task-vector entry with probability 1 − k, rescale "
    "the rest by 1/k, then task arithmetic",
    {"k": _k(0.1, "fraction of entries kept (DARE's drop rate p = 1 − k)"),
     "rescale": Param(True, "divide the kept entries by k", "bool"),
     "seed": Param(0, "seed of the random drop (the mask is a function of seed, model, name, position)", "int"),
     **_COMMON},
    _SPARSE, fixed={"sparsify": "random", "elect": "none", "signs": None, "zero_sign": "zero",
                    "disjoint": "sum", "trim": "per_tensor", "count": "floor", "ties": "index", "gamma": 0.0},
    per_tensor=("k", "weights", "lam")))

register(Method(
    "dare_ties", "DARE's random drop and rescale, then TIES's sign election and disjoint merge",
    {"k": _k(0.1, "fraction of entries kept (drop rate p = 1 − k)"),
     "rescale": Param(True, "divide the kept entries by k", "bool"),
     "seed": Param(0, "seed of the random drop", "int"),
     **_ELECT, **_COMMON},
    _SPARSE, fixed={"sparsify": "random", "trim": "per_tensor", "count": "floor", "ties": "index", "gamma": 0.0},
    per_tensor=("k", "weights", "lam")))

register(Method(
    "breadcrumbs", "Model Breadcrumbs (Davari & Belilovsky 2024): drop the largest γ and the "
    "smallest magnitudes, keeping a fraction k, then task arithmetic",
    {"k": _k(0.8, "fraction of entries kept"),
     "gamma": Param(0.01, "fraction of largest-magnitude entries dropped (fewer where gamma + k > 1: k is always "
                    "kept); one number, or one per model", "per_model",
                    check=_unit0, rule="0 <= gamma < 1"),
     **_TRIM, **_COMMON},
    _SPARSE, fixed={"sparsify": "band", "count": "floor", "elect": "none", "signs": None, "zero_sign": "zero",
                    "disjoint": "sum", "rescale": False, "seed": 0}, per_tensor=("k", "gamma", "weights", "lam")))

register(Method(
    "fisher", "Fisher merging (Matena & Raffel 2022): per-parameter weighted mean with diagonal Fishers",
    {"fishers": Param(None, "one diagonal Fisher per model (state dict or checkpoint, keyed by parameter name)", "sources"),
     "weights": Param(None, "one scalar weight per model", "weights"),
     "floor": Param(0.0, "Fisher values below this are raised to it", check=lambda v: v >= 0, rule=">= 0")},
    Fisher()))

register(Method(
    "regmean", "RegMean (Jin et al. 2023): closed-form least-squares merge of linear layers from "
    "their input Gram matrices; other parameters averaged",
    {"grams": Param(None, "one set of Gram matrices per model (state dict or checkpoint, keyed by the linear weight's name)", "sources"),
     "alpha": Param(0.9, "scale of the Gram matrices' off-diagonal entries", check=lambda v: 0 <= v <= 1, rule="0 <= alpha <= 1")},
    RegMean()))
