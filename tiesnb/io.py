"""Writing that never leaves a half-written file behind, plus checksums and JSON helpers.

Every output of the project (checkpoints, tables, figures, results) goes through
:func:`atomic_path` or :func:`atomic_dir`: the data is written to a hidden temporary sibling and
renamed into place only once complete, so an interrupted run leaves either the old output or
none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

from .errors import TiesnbError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(final: Path) -> None:
    """Remove temporaries that a killed run (SIGKILL, power loss) could not clean up."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1].removesuffix(final.suffix)
        if pid.isdigit() and not _pid_alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write one file to; on success it replaces ``final`` atomically,
    on any exception (KeyboardInterrupt included) it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}{final.suffix}"  # same extension: tools that look at it
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes ``final`` (replacing an existing one
    only when ``overwrite``), on any exception it is removed with everything in it."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise TiesnbError(f"output folder {final} already exists (use --force to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _sync_file_range():
    """libc's ``sync_file_range`` (Linux), or None where there is none."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE = _sync_file_range() if hasattr(os, "posix_fadvise") else None
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_* of <fcntl.h>


class WriteBehind:
    """Write a large file to disk while it is being written, holding little of it in memory.

    A plain ``write`` puts the whole file in the page cache as dirty pages and the closing
    ``fsync`` then waits for all of them: a merged checkpoint's bytes pass through fresh memory
    (on a VM that returns free memory to its host, 1 GB of fresh page cache costs ~2 s to fault
    back in) and the disk starts work only at the end. Here, each completed ``window`` of the
    file is handed to the disk at once (``sync_file_range``, asynchronous), and windows ``lag``
    behind are waited for and dropped from the page cache (``POSIX_FADV_DONTNEED``), so the pages
    are reused and the disk works alongside the merge. Durability is unchanged: the writer still
    ``fsync``s the file before it is renamed into place. Where the calls are missing (not Linux)
    it does nothing. Call :meth:`advance` with the file's length after each write (the data must
    have reached the kernel: flush a buffered file first; :meth:`due` says when it matters).
    ``TIESNB_WRITE_BEHIND=0`` turns it off (to measure what it saves)."""

    def __init__(self, fd: int, window: int = 16 << 20, lag: int = 4, enabled: bool | None = None,
                 path: str | os.PathLike | None = None):
        self.fd = fd
        self.path = path  # named in an error
        self.window = window
        self.lag = lag
        if enabled is None:
            enabled = os.environ.get("TIESNB_WRITE_BEHIND", "1") != "0"
        self.enabled = enabled and _SYNC_FILE_RANGE is not None
        self.started = 0  # windows handed to the disk
        self.dropped = 0  # windows waited for and dropped from the page cache

    def due(self, length: int) -> bool:
        """Whether a file of ``length`` bytes completes a window not yet handed to the disk."""
        return self.enabled and (self.started + 1) * self.window <= length

    def advance(self, length: int) -> None:
        if not self.enabled:
            return
        w = self.window
        while (self.started + 1) * w <= length:
            self._call(self.started * w, w, _WRITE)
            self.started += 1
        while self.dropped < self.started - self.lag:
            off = self.dropped * w
            self._call(off, w, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            os.posix_fadvise(self.fd, off, w, os.POSIX_FADV_DONTNEED)
            self.dropped += 1

    def _call(self, offset: int, nbytes: int, flags: int) -> None:
        if _SYNC_FILE_RANGE(self.fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            # a file system or device without it (ESPIPE, EINVAL): write as a plain file does
            self.enabled = False
            if err not in (22, 29, 95):  # EINVAL, ESPIPE, EOPNOTSUPP
                raise OSError(err, f"writing to disk failed: {os.strerror(err)}", self.path)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def sha256_file(path: str | os.PathLike, block: int = 1 << 23) -> str:
    """Hex SHA-256 of a file's bytes (the same as ``sha256sum``)."""
    h = hashlib.sha256()
    buf = bytearray(block)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            h.update(view[:n])
    return h.hexdigest()


def _checksum_cache_path() -> Path:
    from . import paths

    return Path(os.environ.get("TIESNB_CHECKSUM_CACHE", paths.ROOT / ".cache" / "checksums.json"))


def sha256_cached(path: str | os.PathLike) -> str:
    """:func:`sha256_file`, remembered per (path, size, mtime, inode) so that a sweep merging
    the same checkpoints again does not hash them again (as git's index does)."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    cache_path = _checksum_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = sha256_file(path)
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except (OSError, ValueError):
        cache = {}
    cache[key] = digest
    try:
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps(cache, indent=0))
    except OSError:
        pass  # a read-only cache location only costs speed
    return digest
