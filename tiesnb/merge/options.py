"""The options of a merge besides the method's own parameters — which tensors merge, tied groups,
output dtype, device, chunk size — checked before anything is read or written.

Each check names the option and says what it accepts; :func:`check` runs them all and returns the
values in the form the engine uses. The method's parameters are checked by the registry
(:mod:`.registry`); the inputs themselves (names, shapes, dtypes, tied groups against the base)
by :class:`.engine.MergeJob`.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import TiesnbError

DTYPE_NAMES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_CHUNK = 1 << 30


def _type(value: Any) -> str:
    return type(value).__name__


def globs(key: str, value: Any) -> tuple[str, ...]:
    """``include`` / ``exclude``: a list of shell-style patterns."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
        raise TiesnbError(f"'{key}' must be a list of glob patterns (strings), got {value!r}")
    return tuple(value)


def tied_groups(value: Any) -> tuple[tuple[str, ...], ...]:
    """``tied``: a list of groups, each a list of two or more distinct parameter names."""
    form = "a list of groups, each a list of two or more parameter names, e.g. [[shared.weight, lm_head.weight]]"
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TiesnbError(f"'tied' must be {form}; got {value!r}")
    out = []
    for g in value:
        if isinstance(g, str) or not isinstance(g, (list, tuple)) or not all(isinstance(n, str) for n in g):
            raise TiesnbError(f"'tied' must be {form}; got the group {g!r}")
        if len(g) < 2 or len(set(g)) != len(g):
            raise TiesnbError(f"'tied': the group {list(g)} needs two or more distinct names")
        out.append(tuple(g))
    seen: dict[str, int] = {}
    for i, g in enumerate(out):
        for n in g:
            if n in seen:
                raise TiesnbError(f"'tied': '{n}' is in two groups ({seen[n] + 1} and {i + 1})")
            seen[n] = i
    return tuple(out)


def out_dtype(value: Any) -> torch.dtype | None:
    """``dtype``: auto (the base's) or a floating-point dtype, by name or as a torch dtype."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise TiesnbError(f"'dtype' must be a floating-point dtype, got {value}")
        return value
    if value is None:
        return None
    if not isinstance(value, str) or value not in DTYPE_NAMES:
        raise TiesnbError(f"'dtype' must be one of {', '.join(DTYPE_NAMES)}; got {value!r}")
    return DTYPE_NAMES[value]


def device(value: Any) -> torch.device:
    """``device``: cpu, or cuda / cuda:N where CUDA is available."""
    if isinstance(value, torch.device):
        value = str(value)
    if not isinstance(value, str):
        raise TiesnbError(f"'device' must be cpu or cuda, got {value!r}")
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise TiesnbError(f"'device' must be cpu or cuda, got {value!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise TiesnbError(f"'device' must be cpu or cuda, got {value!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TiesnbError(f"'device' is {value!r} but CUDA is not available on this machine; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TiesnbError(f"'device' is {value!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def chunk(value: Any) -> int:
    """``chunk``: elements per model read at a time, a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TiesnbError(f"'chunk' must be a positive integer (elements per model read at a time), got {value!r}")
    if not 1 <= value <= MAX_CHUNK:
        raise TiesnbError(f"'chunk' must be between 1 and {MAX_CHUNK}, got {value}")
    return value


def check(include: Any = ("*",), exclude: Any = (), tied: Any = (), dtype: Any = None, device_: Any = "cpu",
          chunk_: Any = 1 << 18) -> dict:
    """Every option checked, in the form the engine takes."""
    return {"include": globs("include", include), "exclude": globs("exclude", exclude),
            "tied": tied_groups(tied), "out_dtype": out_dtype(dtype), "device": device(device_),
            "chunk": chunk(chunk_)}
