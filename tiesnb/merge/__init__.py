"""Model merging: every method behind one call.

    >>> from tiesnb.merge import merge
    >>> merged = merge("ties", base, [ft_a, ft_b, ft_c], k=0.2, lam=1.0)      # state dicts
    >>> merge_checkpoints("ties", "base/", ["a/", "b/"], "out/", params={"k": 0.2})  # on disk

Methods (``tiesnb methods`` prints them with their parameters): ``average``,
``task_arithmetic``, ``ties``, ``dare``, ``dare_ties``, ``breadcrumbs``, ``fisher``, ``regmean``.
Both calls stream tensor by tensor in chunks, so memory stays bounded whatever the model size;
``merge`` returns the result in memory, ``merge_checkpoints`` writes safetensors shards atomically
with a ``merge_config.json`` of the resolved configuration and the inputs' checksums.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..checkpoints import open_source, resolve_checkpoint_files, Source
from ..errors import TiesnbError
from ..io import atomic_dir, sha256_cached, write_json
from . import methods as _methods  # noqa: F401  (registers the methods)
from . import options
from .engine import DEFAULT_CHUNK, DictSink, FileSink, MergeJob
from .registry import METHODS, Method, get_method
from .task_vector import TaskVector

__all__ = ["merge", "merge_checkpoints", "METHODS", "TaskVector", "describe", "TIES_PRESETS"]

TIES_PRESETS = _methods._ties_presets


def describe(method: str | None = None) -> str:
    """Human-readable list of the methods (or one) and their parameters."""
    if method is not None:
        return get_method(method).describe()
    return "\n\n".join(m.describe() for m in METHODS.values())


def _run(job: MergeJob, method: Method, p: dict, sink) -> dict:
    """Prepare (statistics passes), then write every output tensor in order."""
    t0 = time.perf_counter()
    state = method.impl.prepare(job, p)
    t1 = time.perf_counter()
    merged = set(job.merged)
    with job.bar(job.total, f"{method.name}: merge") as bar:
        for name in job.order:
            spec = job.specs[name]
            if name in job.alias_of:
                sink.copy_written(job.alias_of[name], name)
            elif spec.numel == 0 or name not in merged:
                for start, stop in job.ranges(name) if spec.numel else ():
                    sink.write(name, job.base.read(name, start, stop))
                if spec.numel == 0:
                    sink.write_tensor(name, torch.empty(spec.shape, dtype=spec.dtype))
            else:
                for chunk in method.impl.tensor(job, p, state, name):
                    sink.write(name, chunk)
                    bar.update(chunk.numel())
                if hasattr(method.impl, "finish"):  # complete what waited for this tensor
                    method.impl.finish(job, p, state, sink, final=False)
    if hasattr(method.impl, "finish"):
        method.impl.finish(job, p, state, sink, final=True)
    sink.close()
    report = {"seconds_prepare": round(t1 - t0, 3), "seconds_merge": round(time.perf_counter() - t1, 3),
              "merged_parameters": len(job.merged), "merged_entries": job.total,
              "copied_from_base": job.copied, "tied": {k: v for k, v in job.alias_of.items()}}
    if hasattr(state, "report"):
        report.update(state.report())
    return report


def _make_job(base, models, include, exclude, tied, multiplicity, dtype, device, chunk, progress) -> MergeJob:
    opts = options.check(include, exclude, tied, dtype, device, chunk)  # before anything is read
    if isinstance(models, (str, bytes, os.PathLike, Mapping)) or not hasattr(models, "__iter__"):
        raise TiesnbError(f"'models' must be a list of checkpoints (paths or state dicts), got {models!r}")
    models = list(models)
    base_src = open_source(base, "base")
    model_srcs = [open_source(m, f"model {i}") for i, m in enumerate(models)]
    return MergeJob(base_src, model_srcs, include=opts["include"], exclude=opts["exclude"], tied=opts["tied"],
                    multiplicity=dict(multiplicity or {}), out_dtype=opts["out_dtype"], device=opts["device"],
                    chunk=opts["chunk"], progress=progress)


def merge(method: str, base: Mapping[str, torch.Tensor] | str | os.PathLike,
          models: Sequence[Mapping[str, torch.Tensor] | str | os.PathLike], *,
          include: Sequence[str] = ("*",), exclude: Sequence[str] = (), tied: Sequence[Sequence[str]] = (),
          multiplicity: Mapping[str, int] | None = None, dtype: str | torch.dtype | None = None,
          device: str = "cpu", chunk: int = DEFAULT_CHUNK, progress: bool = False,
          **params: Any) -> dict[str, torch.Tensor]:
    """Merge ``models`` (state dicts or checkpoint paths) into ``base`` with a registered method
    and its parameters; returns the merged state dict (same names, shapes and dtypes as the base
    unless ``dtype`` is given). See :func:`describe` for the methods and their parameters."""
    m = get_method(method)
    p = m.resolve(params)
    job = _make_job(base, models, include, exclude, tied, multiplicity, dtype, device, chunk, progress)
    sink = DictSink(job.output_specs())
    _run(job, m, p, sink)
    return {name: sink.state[name] for name in job.order}


def _describe_input(obj) -> Any:
    if isinstance(obj, (str, os.PathLike)):
        return str(obj)
    if isinstance(obj, Source):
        return obj.label
    if isinstance(obj, Mapping):
        return f"<state dict of {len(obj)} tensors>"
    if isinstance(obj, (list, tuple)):
        return [_describe_input(o) for o in obj]
    return obj


def merge_checkpoints(method: str, base: str | os.PathLike, models: Sequence[str | os.PathLike],
                      out: str | os.PathLike, params: Mapping[str, Any] | None = None, *,
                      include: Sequence[str] = ("*",), exclude: Sequence[str] = (),
                      tied: Sequence[Sequence[str]] = (), multiplicity: Mapping[str, int] | None = None,
                      dtype: str | None = None, device: str = "cpu", chunk: int = DEFAULT_CHUNK,
                      progress: bool = True, overwrite: bool = False, checksums: bool = True,
                      max_shard_size: int = 4 << 30, extra_config: Mapping[str, Any] | None = None) -> Path:
    """Merge checkpoints on disk into the folder ``out`` (safetensors shards, the base folder's
    small config/tokenizer files, and ``merge_config.json``). Atomic: on any error or interrupt
    nothing is left at ``out``."""
    m = get_method(method)
    p = m.resolve(dict(params or {}))
    job = _make_job(base, models, include, exclude, tied, multiplicity, dtype, device, chunk, progress)
    inputs = [Path(base)] + [Path(x) for x in models]
    for extra in ("signs",):
        if isinstance(p.get(extra), (str, os.PathLike)):
            inputs.append(Path(p[extra]))
    for extra in ("fishers", "grams"):
        inputs += [Path(x) for x in (p.get(extra) or []) if isinstance(x, (str, os.PathLike))]
    files = sorted({f for x in inputs for f in resolve_checkpoint_files(x)})
    pool = ThreadPoolExecutor(max_workers=1) if checksums else None
    sums = {str(f): pool.submit(sha256_cached, f) for f in files} if pool else {}
    out = Path(out)
    try:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            sink = FileSink(tmp, job.output_specs(), max_shard_bytes=max_shard_size,
                            metadata={"merged_with": f"tiesnb {method}"})
            report = _run(job, m, p, sink)
            base_dir = Path(base) if Path(base).is_dir() else None
            if base_dir is not None:  # config.json, tokenizer files: what loads the merged model
                for f in base_dir.iterdir():
                    if (f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json"
                            and f.name != "merge_config.json" and f.stat().st_size < 50 << 20):
                        (tmp / f.name).write_bytes(f.read_bytes())
            config = {
                "method": method,
                "params": {k: (v if k == "tensor_params" else _describe_input(v)) for k, v in p.items()},
                "base": str(base), "models": [str(x) for x in models],
                "include": list(include), "exclude": list(exclude), "tied": [list(g) for g in tied],
                "dtype": dtype or "auto", "device": str(device), "chunk": chunk,
                "checksums_sha256": {k: v.result() for k, v in sums.items()} if sums else None,
                "versions": {"tiesnb": _version(), "torch": torch.__version__},
                **(dict(extra_config) if extra_config else {}),
                "report": report,
            }
            write_json(tmp / "merge_config.json", config)
            if extra_config and "mergekit_config" in extra_config:  # where mergekit keeps its recipe
                import yaml

                (tmp / "mergekit_config.yml").write_text(yaml.safe_dump(extra_config["mergekit_config"], sort_keys=False))
    finally:
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)
        job.base.close()
        for s in job.models:
            s.close()
    return out


def _version() -> str:
    from .. import __version__
    return __version__
