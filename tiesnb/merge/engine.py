"""The streaming engine: which parameters merge, checking the inputs, and reading them in chunks.

A merge method sees a :class:`MergeJob`. It may make statistics passes over the task vectors
(:meth:`MergeJob.chunks`), then produces each merged tensor as a sequence of float32 chunks; the
engine writes them to a sink (an in-memory state dict, or safetensors shards on disk). At no point
are n models' worth of values in memory: a chunk holds ``n × chunk`` floats.

Which parameters merge: floating-point tensors of the base whose names match ``include`` (default:
all) and no ``exclude`` pattern (shell-style globs, e.g. ``"*.bias"``); everything else
(integer and bool buffers, excluded names) is copied from the base. Parameters tied to one another
(the same storage in an in-memory state dict, or groups given as ``tied``) are merged once and the
result written under every name.

Why one module (~370 lines): the input checks, chunk planning and output sinks share one
notion of a checkpoint's names, shapes and dtypes; split apart, each half would need the other.
"""

from __future__ import annotations

import fnmatch
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..checkpoints import DictSource, SafetensorsWriter, Source, TensorSpec
from ..errors import TiesnbError
from . import fused, options

DEFAULT_CHUNK = 1 << 18  # elements per model per chunk: (n, chunk) float32 stays in the CPU cache
VIEWS = True  # task vectors computed from the inputs' views where they give them (Source.view)
VIEW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # views of these widen to float32 exactly
VIEW_ROWS = 33  # the compiled kernels read up to this many inputs' views directly (compiled once per count)
# ... for merges of at least this many input bytes: a kernel reading n + 1 views is compiled once
# per input count (2 - 4 s each, paid once per machine), which a small merge never earns back —
# it copies into one (n + 1, C) buffer instead (one compiled version for every count)
VIEW_ROWS_BYTES = 1 << 30


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _short(names: Iterable[str], limit: int = 5) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def detect_tied(state: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of names in an in-memory state dict that share storage (tied weights)."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        if t.numel() == 0:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        groups.setdefault(key, []).append(name)
    return [sorted(g) for g in groups.values() if len(g) > 1]


@dataclass
class MergeJob:
    """The inputs of one merge, checked, and the ways to read them."""

    base: Source
    models: list[Source]
    include: Sequence[str] = ("*",)
    exclude: Sequence[str] = ()
    tied: Sequence[Sequence[str]] = ()
    multiplicity: Mapping[str, int] = field(default_factory=dict)
    out_dtype: torch.dtype | None = None
    device: str = "cpu"
    chunk: int = DEFAULT_CHUNK
    progress: bool = True
    hold_bytes: int = 128 << 20  # a tensor's n task vectors up to this size are read once and held

    def __post_init__(self):
        if not self.models:
            raise TiesnbError("no models to merge: give at least one fine-tuned checkpoint")
        self.chunk = options.chunk(self.chunk)
        self.device = options.device(self.device)
        self.tied = options.tied_groups(self.tied)
        self.n = len(self.models)
        base_names = self.base.names()
        self.order = sorted(base_names)
        # tied groups: given ones (every name a tensor of the base, all of one shape and dtype)
        # plus storage-sharing ones of an in-memory base
        known = set(base_names)
        for g in self.tied:
            missing = [n for n in g if n not in known]
            if missing:
                raise TiesnbError(f"'tied': {_short(missing)} {'is not a tensor' if len(missing) == 1 else 'are not tensors'} "
                                  f"of the base ({self.base.label})")
            specs = {n: self.base.spec(n) for n in g}
            first = g[0]
            for n in g[1:]:
                a, b = specs[first], specs[n]
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise TiesnbError(f"'tied': '{first}' is {a.shape} {str(a.dtype).removeprefix('torch.')} but '{n}' is "
                                      f"{b.shape} {str(b.dtype).removeprefix('torch.')} in the base: tied tensors must match")
        groups = [sorted(g) for g in self.tied]
        if isinstance(self.base, DictSource):
            groups += detect_tied(self.base.state)
        self.alias_of: dict[str, str] = {}
        for g in groups:
            present = [n for n in g if n in base_names]
            for n in present[1:]:
                self.alias_of[n] = present[0]
        # what merges, what is copied
        self.merged: list[str] = []
        self.copied: list[str] = []
        for name in self.order:
            if name in self.alias_of:
                continue
            spec = self.base.spec(name)
            if spec.is_float and _matches(name, self.include) and not _matches(name, self.exclude):
                self.merged.append(name)
            else:
                self.copied.append(name)
        if not self.merged:
            raise TiesnbError(f"no parameter of the base matches include={list(self.include)} "
                              f"exclude={list(self.exclude)}: nothing to merge")
        self._check_models()
        self.specs = {n: self.base.spec(n) for n in self.order}
        self.total = sum(self.specs[n].numel for n in self.merged)
        # bf16 checkpoints: task vectors take few distinct values (see select.TopK's low_bits)
        dtypes = {src.spec(n).dtype for src in [self.base, *self.models] for n in self.merged}
        self.bf16_inputs = dtypes == {torch.bfloat16}
        # every input bf16, or every one float32: the compiled kernels read the chunks as stored
        stored = next(iter(dtypes)) if len(dtypes) == 1 and next(iter(dtypes)) in fused.STORED else None
        self.rows_from_views = VIEWS and self.n + 1 <= VIEW_ROWS and stored is not None and \
            (self.n + 1) * sum(self.base.spec(n).numel for n in self.merged) * stored.itemsize >= VIEW_ROWS_BYTES
        self._verified: set[str] = set()
        self._held: tuple[str, torch.Tensor, torch.Tensor] | None = None
        self._scratch: dict[str, torch.Tensor] = {}
        # a chunk's base and models as (n + 1, C) float32 rows, the base in row 0
        self._rows = torch.empty((self.n + 1) * self.chunk, dtype=torch.float32)
        # on CPU, chunks as stored (bf16 or float32) for the compiled kernels, copied here where
        # the inputs give no views
        self._raw = torch.empty((self.n + 1) * self.chunk, dtype=stored) \
            if stored is not None and fused.available(self.device) else None
        if self.device.type == "cuda":
            self._rows = self._rows.pin_memory()

    # ------------------------------------------------------------------ checks
    def _check_models(self) -> None:
        base_names = set(self.base.names())
        merged = set(self.merged)
        for i, m in enumerate(self.models):
            names = set(m.names())
            missing = sorted(merged - names)
            if missing:
                raise TiesnbError(f"model {i} ({m.label}) lacks {len(missing)} parameter(s) of the base: {_short(missing)}")
            extra = sorted(n for n in names - base_names
                           if _matches(n, self.include) and not _matches(n, self.exclude))
            if extra:
                raise TiesnbError(f"model {i} ({m.label}) has {len(extra)} parameter(s) the base lacks: {_short(extra)}")
            for n in self.merged:
                b, s = self.base.spec(n), m.spec(n)
                if b.shape != s.shape:
                    raise TiesnbError(f"shape mismatch for '{n}': base {b.shape} vs model {i} ({m.label}) {s.shape}")
                if not s.is_float:
                    raise TiesnbError(f"'{n}' is {b.dtype} in the base but {s.dtype} in model {i} ({m.label})")

    def check_aux(self, sources: Sequence[Source], what: str, names: Iterable[str] | None = None,
                  shape_of=None) -> None:
        """Check per-model auxiliary inputs (Fisher, Gram matrices): one per model, known names,
        the expected shapes."""
        if len(sources) != self.n:
            raise TiesnbError(f"{what}: got {len(sources)}, need one per model ({self.n})")
        merged = set(self.merged)
        for i, src in enumerate(sources):
            unknown = sorted(set(src.names()) - merged)
            if unknown:
                raise TiesnbError(f"{what} {i} ({src.label}) has names that are not merged parameters: {_short(unknown)}")
            for n in src.names():
                want = shape_of(n) if shape_of else self.specs[n].shape
                if src.spec(n).shape != want:
                    raise TiesnbError(f"{what} {i} ({src.label}): '{n}' has shape {src.spec(n).shape}, expected {want}")

    def _verify(self, name: str, base: torch.Tensor, X: torch.Tensor, rows: Sequence[int] | None = None) -> None:
        # a finite sum proves every entry finite (NaN and inf propagate) at 1/40 the cost of
        # isfinite(); only a non-finite sum (which a huge but finite sum can also give) is
        # checked entry by entry
        if bool(torch.isfinite(X.sum(1)).all()) and bool(torch.isfinite(base.sum())):
            return
        if not bool(torch.isfinite(base).all()):
            raise TiesnbError(f"non-finite values (NaN or inf) in '{name}' of the base ({self.base.label})")
        bad = ~torch.isfinite(X).all(dim=1)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            i = rows[i] if rows is not None else i
            raise TiesnbError(f"non-finite values (NaN or inf) in '{name}' of model {i} ({self.models[i].label})")

    # ------------------------------------------------------------------ reading
    def scratch(self, key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A reusable work buffer (float32 unless told) of at most ``n × chunk`` elements. Allocating
        a fresh tensor per chunk costs page faults that make up a third of a merge's time on CPU."""
        numel = 1
        for d in shape:
            numel *= d
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = self._scratch[key] = torch.empty(max(numel, self.n * self.chunk), dtype=dtype, device=self.device)
        return buf[:numel].view(shape)

    def ranges(self, name: str, size: int | None = None) -> Iterator[tuple[int, int]]:
        """Element ranges covering tensor ``name``, ``size`` (at most ``chunk``) at a time."""
        numel = self.specs[name].numel
        size = min(size or self.chunk, self.chunk)
        for start in range(0, numel, size):
            yield start, min(numel, start + size)

    def read_chunk(self, name: str, start: int, stop: int, delta: bool = True,
                   verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Base chunk (C,) and the models' task-vector chunk (n, C) — or, with ``delta=False``,
        their weights — float32 on the device. Read-only: they may be reused buffers or views of
        a held tensor, valid until the next read. ``verify=False``: the caller checks the values
        (e.g. from its result, see :meth:`check_result`)."""
        C = stop - start
        if delta and self._held is not None and self._held[0] == name:
            _, hb, hX = self._held
            return hb[start:stop], hX[:, start:stop]
        R = self._rows[: (self.n + 1) * C].view(self.n + 1, C)
        base, X = R[0], R[1:]  # contiguous rows
        if delta and self.device.type == "cpu":
            viewed = self._view_delta(name, start, stop, X, base, verify)
            if viewed is not None:
                return viewed, X
        if delta and self.raw_bf16:
            fused.stored_delta(self._read_raw(name, start, stop), base, X)
            if name not in self._verified:  # a non-finite weight gives a non-finite difference
                self._verify(name, base, X)
            return base, X
        self.base.read_into(name, start, stop, base)
        for i, m in enumerate(self.models):
            m.read_into(name, start, stop, X[i])
        if verify and name not in self._verified:
            self._verify(name, base, X)
        if self.device.type != "cpu":
            base, X = base.to(self.device, non_blocking=True), X.to(self.device, non_blocking=True)
        return base, (X.sub_(base) if delta else X)

    def _view_delta(self, name: str, start: int, stop: int, X: torch.Tensor, base: torch.Tensor,
                    verify: bool = True, at: int = 0) -> torch.Tensor | None:
        """Inputs that hand out their stored numbers (:meth:`.Source.view`): the task vectors
        ``x − b`` into ``X[:, at:at + C]`` straight from them, with no copy of the inputs (reading
        and subtracting 7 × 1 GB fp32: 1.3 → 0.7 s); returns the base — its view for float32
        inputs, else widened into ``base[at:at + C]``. bf16 numbers (and float32 ones, once numba is
        loaded anyway) are widened and subtracted in one compiled pass (:func:`.fused.stored_delta`),
        fp16 ones by a copy, then subtracted: the float32 operations of the copying path. None where some input gives no
        view (or of another dtype than the base), or some value may not be finite: the copying
        path then checks the inputs themselves, naming the one at fault."""
        if not VIEWS:
            return None
        views = [src.view(name, start, stop) for src in [self.base, *self.models]]
        if any(v is None or v.dtype not in VIEW_DTYPES or v.dtype != views[0].dtype for v in views):
            return None
        C = stop - start
        b = views[0]
        if (self.rows_from_views and fused.available(self.device)
                and (b.dtype == torch.bfloat16 or (b.dtype == torch.float32 and fused.loaded()))):
            # one compiled pass (float32: once numba's start-up is paid), which also sees a
            # non-finite input (an overflow of finite ones passes, as on the copying path)
            return base[at:at + C] if fused.stored_delta(tuple(views), base, X, at) else None
        X, base = X[:, at:at + C], base[at:at + C]
        if b.dtype == torch.float32:
            for i, x in enumerate(views[1:]):
                torch.sub(x, b, out=X[i])
        else:
            b = base.copy_(b)
            for i, x in enumerate(views[1:]):
                X[i].copy_(x).sub_(b)
        # a non-finite input gives a non-finite difference (finite inputs may too, by overflow:
        # the copying path tells the two apart)
        if verify and name not in self._verified and not (
                bool(torch.isfinite(X.sum(1)).all()) and bool(torch.isfinite(b.sum()))):
            return None
        return b

    def raw_chunks(self, desc: str | None, names: Sequence[str]) -> Iterator[tuple[str, int, int, fused.Stored]]:
        """With bf16 or float32 inputs on CPU (``self.raw_stored``), every chunk as stored: ``(name,
        start, stop, raw)`` with ``raw`` the n + 1 rows, the base in row 0 (see :meth:`_read_raw`).
        Unchecked: the caller checks the values (and calls :meth:`verified` for each tensor it
        found finite)."""
        total = sum(self.specs[n].numel for n in names)
        with self.bar(total, desc) as bar:
            for name in names:
                for start, stop in self.ranges(name):
                    yield name, start, stop, self._read_raw(name, start, stop)
                    bar.update(stop - start)

    def stored_chunk(self, name: str, start: int, stop: int) -> fused.Stored:
        """Any range of a tensor as stored (:meth:`_read_raw`; needs :attr:`raw_stored`), unchecked."""
        return self._read_raw(name, start, stop)

    def _read_raw(self, name: str, start: int, stop: int) -> fused.Stored:
        """The chunk as stored (bf16 or float32): the inputs' own rows where they give views (their
        mapped files: a histogram pass over 7 × 1 GB reads them in 2.4 s instead of 3.3 s through
        copies, bf16; 1.8 → 1.4 s float32 against views subtracted by torch), else copied into
        one (n + 1, C) buffer."""
        sources = [self.base, *self.models]
        if self.rows_from_views:
            views = tuple(src.view(name, start, stop) for src in sources)
            if all(v is not None and v.dtype == self._raw.dtype for v in views):
                return views
        C = stop - start
        raw = self._raw[: (self.n + 1) * C].view(self.n + 1, C)
        for i, src in enumerate(sources):
            src.read_into(name, start, stop, raw[i])
        return raw

    def stored_tensor(self, name: str) -> tuple[torch.Tensor, ...] | None:
        """A whole tensor as stored, as the inputs' own mapped rows (base first), for the compiled
        per-tensor trim (:func:`.fused.tensor_cuts_stored`) — where the chunks come from views
        (:attr:`rows_from_views`) and the tensor is small enough to hold (``hold_bytes``: its
        pages stay mapped in until the next tensor's are read). Unchecked; None otherwise."""
        if self._raw is None or not self.rows_from_views or not self._holdable(name):
            return None
        views = tuple(src.view(name, 0, self.specs[name].numel) for src in [self.base, *self.models])
        if any(v is None or v.dtype != self._raw.dtype for v in views):
            return None
        return views

    def stored_rows(self, name: str, start: int, stop: int) -> fused.Stored | None:
        """The chunk for the compiled one-pass kernels (:func:`.fused.linear`): ``(n + 1, C)``, the
        base in row 0 — as stored (:meth:`_read_raw`) when every input is bf16 or every one
        float32, else float32. Unchecked (see :meth:`check_rows`). None when the compiled kernels
        are off or the device is not the CPU."""
        if not fused.available(self.device):
            return None
        if self._raw is not None:
            return self._read_raw(name, start, stop)
        C = stop - start
        R = self._rows[: (self.n + 1) * C].view(self.n + 1, C)
        for i, src in enumerate([self.base, *self.models]):
            src.read_into(name, start, stop, R[i])
        return R

    def check_result(self, name: str, start: int, stop: int, out: torch.Tensor,
                     also: torch.Tensor | None = None) -> None:
        """For a merge whose every output is non-finite when an input is (task arithmetic and
        averaging: NaN and inf propagate, and inf · 0 is NaN): a finite sum of the chunk's output
        proves every input finite — one pass over C values instead of (n + 1) × C (``also``: inputs
        the output does not hold, summed too). Otherwise the
        chunk is read again and checked, naming the input (an overflow of finite inputs passes)."""
        total = out.sum() if also is None else out.sum() + also.sum(dtype=torch.float32)
        if not bool(torch.isfinite(total)):
            self._verified.discard(name)
            self.read_chunk(name, start, stop)

    def check_rows(self, name: str, start: int, stop: int, R: torch.Tensor) -> None:
        """A kernel found a value that may not be finite in a chunk of :meth:`stored_rows`: raise
        naming the input that holds it (an overflow of finite inputs passes)."""
        if isinstance(R, tuple) or R.dtype == torch.bfloat16:
            self._verified.discard(name)
            self.read_chunk(name, start, stop)  # widened and checked: raises naming the input
            return
        self._verified.discard(name)
        self._verify(name, R[0], R[1:])

    def contiguous(self, D: torch.Tensor) -> torch.Tensor:
        """``D`` with contiguous rows (a chunk of a held tensor is a column slice): the compiled
        kernels vectorize only over rows they know are contiguous; a copy is far cheaper."""
        return D if D.is_contiguous() else self.scratch("contiguous", D.shape).copy_(D)

    def held(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held tensor's base (numel,) and task vectors (n, numel), float32, contiguous."""
        _, hb, hX = self._held
        return hb, hX

    def is_held(self, name: str) -> bool:
        return self._held is not None and self._held[0] == name

    def read_raw(self, name: str, start: int, stop: int) -> fused.Stored | None:
        """The chunk as stored (:meth:`_read_raw`), the base in row 0 — when the inputs are all
        bf16 or all float32 on CPU, the tensor is not held in memory, and its values were found
        finite; else None."""
        if self._raw is None or name not in self._verified or self.is_held(name):
            return None
        return self._read_raw(name, start, stop)

    @property
    def raw_stored(self) -> bool:
        """Whether chunks can be read as stored (:meth:`_read_raw`): every input bf16 or every
        one float32, on CPU with the compiled kernels."""
        return self._raw is not None

    @property
    def raw_bf16(self) -> bool:
        return self._raw is not None and self._raw.dtype == torch.bfloat16

    def verified(self, name: str) -> None:
        """Every value of ``name`` in every input was found finite."""
        self._verified.add(name)

    def _holdable(self, name: str) -> bool:
        """Whether tensor ``name``'s n + 1 rows, as float32, fit ``hold_bytes``."""
        return (self.n + 1) * self.specs[name].numel * 4 <= self.hold_bytes

    def hold(self, name: str | None) -> bool:
        """Read tensor ``name``'s base and task vectors into memory once, if they fit
        ``hold_bytes``, so that several passes over it (per-tensor statistics, then the merge)
        read the files once; ``None`` releases. True when held."""
        self._held = None
        if name is None or not self._holdable(name):
            return False
        numel = self.specs[name].numel
        hX = torch.empty(self.n, numel, dtype=torch.float32)
        hb = torch.empty(numel, dtype=torch.float32)
        if self.device.type == "cpu" and self._hold_from_views(name, hb, hX):
            self._verified.add(name)
            self._held = (name, hb, hX)
            return True
        self.base.read_into(name, 0, numel, hb)  # whole rows at once, straight into place
        for i, m in enumerate(self.models):
            m.read_into(name, 0, numel, hX[i])
        if name not in self._verified:
            self._verify(name, hb, hX)
        hb, hX = hb.to(self.device), hX.to(self.device)
        hX.sub_(hb)
        self._verified.add(name)
        self._held = (name, hb, hX)
        return True

    def _hold_from_views(self, name: str, hb: torch.Tensor, hX: torch.Tensor) -> bool:
        """:meth:`hold` from the inputs' views, a chunk at a time (a whole tensor's view would
        keep all of it mapped in, in every input: +130 MB of RSS at 7 × 135 MB bf16)."""
        for start, stop in self.ranges(name):
            b = self._view_delta(name, start, stop, hX, hb, at=start)
            if b is None:
                return False
            if b.data_ptr() != hb[start:stop].data_ptr():  # float32: the base's own view
                hb[start:stop].copy_(b)
        return True

    def chunks(self, desc: str | None = None, names: Sequence[str] | None = None
               ) -> Iterator[tuple[str, int, int, torch.Tensor, torch.Tensor]]:
        """Every chunk of the task vectors: ``(name, start, stop, base, D)`` with ``D`` (n, C).
        The tensors are read-only, valid until the next chunk is asked for."""
        names = self.merged if names is None else names
        total = sum(self.specs[n].numel for n in names)
        with self.bar(total, desc) as bar:
            for name in names:
                for start, stop in self.ranges(name):
                    base, D = self.read_chunk(name, start, stop)
                    yield name, start, stop, base, D
                    bar.update(stop - start)
                self._verified.add(name)

    def full_row(self, name: str, i: int, delta: bool = True) -> torch.Tensor:
        """Model ``i``'s whole task vector (or, ``delta=False``, weights) for one tensor, flat
        float32 on the device."""
        base = self.base.read(name).to(self.device, torch.float32)
        x = self.models[i].read(name).to(self.device, torch.float32)
        if name not in self._verified:
            self._verify(name, base, x.unsqueeze(0), rows=[i])
        return x.sub_(base) if delta else x

    def bar(self, total: int, desc: str | None):
        if not self.progress or desc is None:
            return nullcontext(_NoBar())
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1000,
                    leave=False, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} params [{elapsed}<{remaining}]")

    def output_specs(self) -> dict[str, TensorSpec]:
        merged = set(self.merged)
        out = {}
        for name in self.order:
            spec = self.specs[name]
            if self.alias_of.get(name, name) in merged and self.out_dtype is not None:
                spec = TensorSpec(self.out_dtype, spec.shape)
            out[name] = spec
        return out


class _NoBar:
    def update(self, n):
        pass


# ----------------------------------------------------------------------------------------------
# sinks: where merged tensors go


class DictSink:
    """Collects the merged tensors into a state dict (tied names share one tensor)."""

    def __init__(self, specs: Mapping[str, TensorSpec]):
        self.specs = specs
        self.state: dict[str, torch.Tensor] = {}
        self._pos: dict[str, int] = {}

    def write(self, name: str, chunk: torch.Tensor) -> None:
        spec = self.specs[name]
        if name not in self.state:
            self.state[name] = torch.empty(spec.shape, dtype=spec.dtype)
            self._pos[name] = 0
        flat = self.state[name].view(-1)
        p = self._pos[name]
        flat[p:p + chunk.numel()].copy_(chunk.reshape(-1))
        self._pos[name] = p + chunk.numel()

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        self.state[name] = tensor.detach().to("cpu", self.specs[name].dtype, copy=True).reshape(self.specs[name].shape)

    def copy_written(self, src: str, dst: str) -> None:
        self.state[dst] = self.state[src]

    def patch(self, name: str, positions: torch.Tensor, values: torch.Tensor) -> None:
        """Overwrite elements of an already written tensor."""
        flat = self.state[name].view(-1)
        flat[positions] = values.to("cpu", flat.dtype)

    def close(self) -> None:
        pass


class FileSink(SafetensorsWriter):
    """Writes the merged tensors as safetensors shards (see :class:`SafetensorsWriter`)."""
