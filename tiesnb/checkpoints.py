"""Checkpoints as *sources* of tensors, read piece by piece, and a streaming safetensors writer.

The merge engine never needs a whole model in memory: it asks a source for an element range of
one tensor (``read_into``). Three kinds of source look the same to it:

* :class:`DictSource` — an in-memory state dict (name → tensor);
* :class:`SafetensorsSource` — one ``.safetensors`` file or a Hugging Face folder (single file,
  or shards with ``model.safetensors.index.json``).

Files are read with ``preadv`` into buffers the caller owns, or — where a merge can compute from
the stored numbers without a copy (:meth:`Source.view`) — through a read-only memory map. A map
keeps every page it touched resident (merging eight 300 MB files through one shows 2.4 GB of RSS),
so :class:`SafetensorsSource` drops the pages behind a reader from its map (``MADV_DONTNEED``; they
stay in the page cache) and at most ~4 MB per file (plus the chunk in use) stays mapped in.

:class:`SafetensorsWriter` writes the safetensors format (8-byte header length, JSON header,
raw little-endian data) tensor by tensor, chunk by chunk, so an output is never held whole.

Why one module (~480 lines): the reader and the streaming writer share the safetensors header
logic and the shard naming; the file format is the unit.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .errors import TiesnbError
from .io import WriteBehind, atomic_dir

# safetensors dtype codes <-> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}
INDEX_NAME = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    @property
    def is_float(self) -> bool:
        return self.dtype.is_floating_point


class Source:
    """A read-only collection of named tensors, readable by flat element range."""

    label: str = "?"

    def names(self) -> list[str]:
        raise NotImplementedError

    def spec(self, name: str) -> TensorSpec:
        raise NotImplementedError

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy elements ``[start, stop)`` of the flattened tensor ``name`` into the 1-D tensor
        ``out`` (converting the dtype if they differ)."""
        raise NotImplementedError

    def view(self, name: str, start: int, stop: int) -> torch.Tensor | None:
        """Elements ``[start, stop)`` of the flattened tensor ``name`` as stored, without a copy —
        or None where this source cannot give one. Read-only (writing to it is an error, or a
        crash for a file's map); valid until the source is closed."""
        return None

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """A fresh 1-D tensor of ``name``'s elements ``[start, stop)`` in its own dtype."""
        spec = self.spec(name)
        stop = spec.numel if stop is None else stop
        out = torch.empty(stop - start, dtype=spec.dtype)
        self.read_into(name, start, stop, out)
        return out

    def tensor(self, name: str) -> torch.Tensor:
        """The whole tensor, in its shape and dtype."""
        return self.read(name).reshape(self.spec(name).shape)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label})"


class DictSource(Source):
    """A state dict held in memory."""

    def __init__(self, state: Mapping[str, torch.Tensor], label: str = "state dict"):
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise TiesnbError(f"{label}: values must be tensors; not for {', '.join(map(str, bad[:5]))}")
        self.state = state
        self.label = label
        self._flat: dict[str, torch.Tensor] = {}

    def names(self) -> list[str]:
        return list(self.state.keys())

    def spec(self, name: str) -> TensorSpec:
        t = self.state[name]
        return TensorSpec(t.dtype, tuple(t.shape))

    def _flatten(self, name: str) -> torch.Tensor:
        flat = self._flat.get(name)
        if flat is None:
            flat = self._flat[name] = self.state[name].detach().contiguous().reshape(-1)
        return flat

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        out.copy_(self._flatten(name)[start:stop])

    def view(self, name: str, start: int, stop: int) -> torch.Tensor | None:
        flat = self._flatten(name)
        return flat[start:stop] if flat.device.type == "cpu" else None

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        return self._flatten(name)[start:stop].clone()


@dataclass
class _Entry:
    file: Path
    spec: TensorSpec
    offset: int  # absolute byte offset of the tensor's data in the file


def _parse_header(path: Path) -> tuple[dict[str, _Entry], dict]:
    """Read and validate one safetensors header; every inconsistency is reported as corruption."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise TiesnbError(f"corrupt safetensors file {path}: {size} bytes, too short")
            (n,) = struct.unpack("<Q", raw)
            if n == 0 or n > size - 8 or n > 100_000_000:
                raise TiesnbError(f"corrupt safetensors file {path}: header length {n} does not fit a {size}-byte file")
            header_bytes = f.read(n)
    except FileNotFoundError:
        raise TiesnbError(f"checkpoint file not found: {path}") from None
    except IsADirectoryError:
        raise TiesnbError(f"expected a .safetensors file, got a folder: {path}") from None
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TiesnbError(f"corrupt safetensors file {path}: header is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(header, dict):
        raise TiesnbError(f"corrupt safetensors file {path}: header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    entries: dict[str, _Entry] = {}
    for name, info in header.items():
        try:
            dtype = DTYPES[info["dtype"]]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise TiesnbError(f"corrupt safetensors file {path}: bad header entry for '{name}': {info}") from None
        spec = TensorSpec(dtype, shape)
        if end - begin != spec.nbytes or begin < 0 or data_start + end > size:
            raise TiesnbError(
                f"corrupt safetensors file {path}: tensor '{name}' claims bytes {begin}..{end} "
                f"({spec.nbytes} needed) of a {size - data_start}-byte data section (truncated file?)")
        entries[name] = _Entry(path, spec, data_start + begin)
    return entries, metadata


def resolve_checkpoint_files(path: str | os.PathLike) -> list[Path]:
    """The safetensors files a checkpoint path stands for: the file itself, a folder's index
    shards, or a folder's single ``*.safetensors`` files."""
    path = Path(path)
    if not path.exists():
        raise TiesnbError(f"checkpoint not found: {path}")
    if path.is_file():
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt"):
            raise TiesnbError(f"{path}: pickled checkpoints are not read (unsafe); convert it to safetensors first")
        return [path]
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise TiesnbError(f"corrupt checkpoint index {index}: {e}") from None
        return [path / f for f in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TiesnbError(f"no .safetensors files in checkpoint folder {path}")
    return files


class SafetensorsSource(Source):
    """A checkpoint on disk: one safetensors file or a (sharded) Hugging Face folder."""

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        self.path = Path(path)
        self.label = label or str(path)
        self.files = resolve_checkpoint_files(self.path)
        self.entries: dict[str, _Entry] = {}
        self.metadata: dict = {}
        for f in self.files:
            entries, meta = _parse_header(f)
            for name in entries:
                if name in self.entries:
                    raise TiesnbError(f"checkpoint {self.path}: tensor '{name}' appears in two files")
            self.entries.update(entries)
            self.metadata.update(meta)
        index = self.path / INDEX_NAME if self.path.is_dir() else None
        if index is not None and index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            missing = [k for k, f in weight_map.items() if k not in self.entries]
            if missing:
                raise TiesnbError(f"checkpoint {self.path}: index lists tensors missing from its shards: {', '.join(missing[:5])}")
        self._fds: dict[Path, int] = {}
        self._scratch = torch.empty(0, dtype=torch.uint8)
        self._maps: dict[Path, _FileMap] = {}

    def names(self) -> list[str]:
        return list(self.entries.keys())

    def spec(self, name: str) -> TensorSpec:
        return self.entries[name].spec

    def _fd(self, file: Path) -> int:
        fd = self._fds.get(file)
        if fd is None:
            fd = self._fds[file] = os.open(file, os.O_RDONLY)
        return fd

    def _pread(self, entry: _Entry, start: int, stop: int, into: torch.Tensor) -> None:
        item = entry.spec.dtype.itemsize
        offset = entry.offset + start * item
        view = memoryview(into.view(torch.uint8).numpy()).cast("B")
        want = (stop - start) * item
        got = 0
        while got < want:  # preadv may return short reads
            n = os.preadv(self._fd(entry.file), [view[got:want]], offset + got)
            if n <= 0:
                raise TiesnbError(f"corrupt safetensors file {entry.file}: ended while reading a tensor")
            got += n

    def read_into(self, name: str, start: int, stop: int, out: torch.Tensor) -> None:
        entry = self.entries[name]
        dtype = entry.spec.dtype
        if out.dtype == dtype and out.is_contiguous() and out.device.type == "cpu":
            self._pread(entry, start, stop, out)
            return
        nbytes = (stop - start) * dtype.itemsize
        if self._scratch.numel() < nbytes:
            self._scratch = torch.empty(nbytes, dtype=torch.uint8)
        raw = self._scratch[:nbytes].view(dtype)
        self._pread(entry, start, stop, raw)
        out.copy_(raw)

    def read(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        spec = self.spec(name)
        stop = spec.numel if stop is None else stop
        out = torch.empty(stop - start, dtype=spec.dtype)
        self._pread(self.entries[name], start, stop, out)
        return out

    def view(self, name: str, start: int, stop: int) -> torch.Tensor | None:
        entry = self.entries[name]
        fmap = self._maps.get(entry.file)
        if fmap is None:
            fmap = self._maps[entry.file] = _FileMap(self._fd(entry.file))
        item = entry.spec.dtype.itemsize
        return fmap.view(entry.offset + start * item, (stop - start) * item, entry.spec.dtype)

    def close(self) -> None:
        for fmap in self._maps.values():
            fmap.close()
        self._maps.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class _FileMap:
    """A file mapped read-only, handing out views of it, and dropping from the map the pages a
    forward-reading caller has left behind (every ``release`` bytes), so the process keeps little of
    the file resident. Dropped pages stay in the page cache: reading them again costs a page
    fault, not a read from disk. (A file truncated while mapped makes a read of the lost part
    fail with SIGBUS, as with any memory-mapped reader: inputs must not change during a merge.)"""

    PAGE = mmap.PAGESIZE

    def __init__(self, fd: int, release: int = 4 << 20):
        size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else None
        if self.map is not None:
            with warnings.catch_warnings():  # read-only by contract: nothing writes to a view
                warnings.simplefilter("ignore", UserWarning)
                self.bytes = torch.frombuffer(self.map, dtype=torch.uint8)
        self.release = release
        self.mark = 0  # start of the mapped-in part not yet dropped
        self.high = 0  # end of the furthest view handed out

    def view(self, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor | None:
        if self.map is None or offset % dtype.itemsize or nbytes == 0:
            return None
        if offset < self.mark:  # a new pass from an earlier place: drop what the last one left
            self._drop(self.mark, self.high)
            self.mark = self.high = offset
        elif offset - self.mark >= self.release:
            self._drop(self.mark, offset)
            self.mark = offset
        self.high = max(self.high, offset + nbytes)
        return self.bytes[offset:offset + nbytes].view(dtype)

    def _drop(self, lo: int, hi: int) -> None:
        lo = -(-lo // self.PAGE) * self.PAGE  # whole pages only: the ends may still be in use
        hi = hi // self.PAGE * self.PAGE
        if hi > lo:
            self.map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        if self.map is not None:
            self.bytes = None
            try:
                self.map.close()
            except BufferError:  # a view is still alive: the map goes with it
                pass
            self.map = None


def open_source(obj, label: str | None = None) -> Source:
    """A :class:`Source` for a state dict, a path (file or folder), or a source."""
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, Mapping):
        return DictSource(obj, label or "state dict")
    if isinstance(obj, (str, os.PathLike)):
        try:
            return SafetensorsSource(obj, label)
        except TiesnbError as e:  # say which input it was
            raise TiesnbError(f"{label}: {e}" if label else str(e)) from None
    raise TiesnbError(f"{label + ': ' if label else ''}cannot read a checkpoint from {type(obj).__name__}: "
                      f"give a state dict or a path")


# ----------------------------------------------------------------------------------------------
# writing


def _shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


class SafetensorsWriter:
    """Write tensors, declared up front, into ``folder`` as safetensors shards, chunk by chunk.

    Tensors must be written in the declared order and each from its first element to its last;
    the header is written first, so memory holds only the chunk being written.
    """

    def __init__(self, folder: str | os.PathLike, specs: Mapping[str, TensorSpec],
                 max_shard_bytes: int = 4 << 30, metadata: Mapping[str, str] | None = None):
        self.folder = Path(folder)
        self.order = list(specs)
        self.specs = dict(specs)
        shards: list[list[str]] = [[]]
        size = 0
        for name in self.order:
            nbytes = self.specs[name].nbytes
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(name)
            size += nbytes
        self.shard_files = _shard_names(len(shards))
        self.where: dict[str, tuple[int, int]] = {}  # name -> (shard index, absolute data offset)
        self._headers: list[bytes] = []
        meta = {"format": "pt", **(metadata or {})}
        for i, names in enumerate(shards):
            header: dict = {"__metadata__": {k: str(v) for k, v in meta.items()}}
            offset = 0
            for name in names:
                spec = self.specs[name]
                header[name] = {"dtype": DTYPE_CODES[spec.dtype], "shape": list(spec.shape),
                                "data_offsets": [offset, offset + spec.nbytes]}
                offset += spec.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)  # keep tensor data 8-byte aligned, as safetensors does
            self._headers.append(struct.pack("<Q", len(raw)) + raw)
            data_start = 8 + len(raw)
            for name in names:
                self.where[name] = (i, data_start + header[name]["data_offsets"][0])
        self._shard_of = {name: self.where[name][0] for name in self.order}
        self._next = 0  # index in self.order of the tensor being written
        self._written = 0  # elements of that tensor written so far
        self._file = None
        self._file_index = -1
        self._length = 0  # bytes written to the open shard
        self._behind: WriteBehind | None = None

    def _open(self, shard: int):
        if self._file is not None:  # the previous shard, on disk before the next is begun
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        path = self.folder / self.shard_files[shard]
        self._file = open(path, "wb")
        self._behind = WriteBehind(self._file.fileno(), path=path)  # on disk as it is written, see io.WriteBehind
        self._length = 0
        self._file_index = shard
        self._append(self._headers[shard])

    def _append(self, data) -> None:
        self._file.write(data)
        self._length += len(data)
        if self._behind.due(self._length):
            self._file.flush()
            self._behind.advance(self._length)

    def _advance(self, name: str) -> TensorSpec:
        if self._next >= len(self.order) or self.order[self._next] != name:
            expected = self.order[self._next] if self._next < len(self.order) else "nothing"
            raise RuntimeError(f"writer expected tensor {expected}, got {name}")
        if self._shard_of[name] != self._file_index:
            self._open(self._shard_of[name])
        return self.specs[name]

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next elements of tensor ``name`` (cast to its declared dtype)."""
        spec = self._advance(name)
        data = chunk.detach().reshape(-1).to(device="cpu", dtype=spec.dtype).contiguous()
        if self._written + data.numel() > spec.numel:
            raise RuntimeError(f"too many elements written for {name}")
        self._append(memoryview(data.view(torch.uint8).numpy()))
        self._written += data.numel()
        if self._written == spec.numel:
            self._next += 1
            self._written = 0

    def write_tensor(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.specs[name]
        if tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"{name}: shape {tuple(tensor.shape)} != declared {spec.shape}")
        if spec.numel == 0:
            self._advance(name)
            self._next += 1
            return
        self.write(name, tensor)

    def copy_written(self, src: str, dst: str) -> None:
        """Write ``dst`` as a byte copy of the already written ``src`` (tied parameters)."""
        spec = self._advance(dst)
        self._file.flush()
        shard, offset = self.where[src]
        if self.specs[src].nbytes != spec.nbytes:  # a guard: the engine checks tied groups first
            raise TiesnbError(f"cannot write '{dst}' as a copy of '{src}': {spec.shape} {spec.dtype} vs "
                              f"{self.specs[src].shape} {self.specs[src].dtype}")
        path = self.folder / self.shard_files[shard]
        with open(path, "rb") as f:
            f.seek(offset)
            remaining = spec.nbytes
            while remaining:
                block = f.read(min(remaining, 1 << 24))
                if not block:  # end of file before the tensor's end: never loop forever
                    raise TiesnbError(f"{path} ended while copying '{src}' to '{dst}' ({remaining} bytes short)")
                self._append(block)
                remaining -= len(block)
        self._next += 1

    def patch(self, name: str, positions: torch.Tensor, values: torch.Tensor, window: int = 1 << 22) -> None:
        """Overwrite elements (ascending flat ``positions``) of an already written tensor, by
        reading, changing and rewriting windows of the file."""
        spec = self.specs[name]
        data = values.detach().to("cpu", spec.dtype).contiguous()
        positions = positions.to(torch.int64)
        item = spec.dtype.itemsize
        shard, offset = self.where[name]
        if self._file is not None:
            self._file.flush()
        fd = os.open(self.folder / self.shard_files[shard], os.O_RDWR)
        try:
            i, n = 0, positions.numel()
            while i < n:
                lo = int(positions[i])
                j = int(torch.searchsorted(positions, lo + window))
                hi = int(positions[j - 1]) + 1
                buf = bytearray(os.pread(fd, (hi - lo) * item, offset + lo * item))
                if len(buf) < (hi - lo) * item:
                    raise TiesnbError(f"{self.folder / self.shard_files[shard]} ended while patching '{name}'")
                view = torch.frombuffer(buf, dtype=torch.uint8).view(spec.dtype)
                view[positions[i:j] - lo] = data[i:j]
                os.pwrite(fd, buf, offset + lo * item)
                i = j
        finally:
            os.close(fd)

    def close(self) -> list[str]:
        """Finish: check every tensor was written, write the index if sharded; returns files."""
        if self._next != len(self.order):
            raise RuntimeError(f"writer closed before {self.order[self._next]} was written")
        if self._file_index == -1:  # no tensors at all: still a valid (empty) safetensors file
            self._open(0)
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if len(self.shard_files) > 1:
            total = sum(s.nbytes for s in self.specs.values())
            index = {"metadata": {"total_size": total},
                     "weight_map": {n: self.shard_files[self._shard_of[n]] for n in self.order}}
            (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        return list(self.shard_files)


def save_state_dict(state: Mapping[str, torch.Tensor], folder: str | os.PathLike,
                    overwrite: bool = False, metadata: Mapping[str, str] | None = None,
                    extra_files: Mapping[str, str] | None = None) -> Path:
    """Save a state dict as ``folder/model.safetensors`` atomically (plus small text files)."""
    folder = Path(folder)
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        specs = {k: TensorSpec(v.dtype, tuple(v.shape)) for k, v in state.items()}
        writer = SafetensorsWriter(tmp, specs, metadata=metadata)
        for k in specs:
            writer.write_tensor(k, state[k])
        writer.close()
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
    return folder


def load_state_dict(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Load (some of) a checkpoint's tensors into memory."""
    with SafetensorsSource(path) as src:
        wanted = src.names() if names is None else list(names)
        missing = [n for n in wanted if n not in src.entries]
        if missing:
            raise TiesnbError(f"checkpoint {path} lacks {', '.join(missing[:5])}")
        return {n: src.tensor(n) for n in wanted}
