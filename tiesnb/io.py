"""Writing that never leaves a half-written file behind, plus checksums and JSON helpers.

Every output of the project (checkpoints, tables, figures, results) goes through
:func:`atomic_path` or :func:`atomic_dir`: the data is written to a hidden temporary sibling and
renamed into place only once complete, so an interrupted run leaves either the old output or
none, never a truncated one.
"""

from __future__ import annotations

import contextlib
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
