"""Running the study's notebooks headlessly: parameters checked, then papermill.

    tiesnb run merge_sweep --study default              # params/default/merge_sweep.yaml
    tiesnb run train --study default --params params/default/train-trec.yaml

A notebook is a jupytext percent-format ``notebooks/<name>.py`` with exactly one cell tagged
``parameters`` of typed, literal assignments (``lam: float = 1.0  # λ``). Before it runs, its
parameter file is checked against that cell — an unknown key or a wrong type stops the run with
the key and the valid names (papermill itself would only warn) — and the resolved parameters are
written beside the executed notebook (``runs/<study>/notebooks/<run>.ipynb``, the workflow's
output: tiesnb/workflow.py) as ``<run>.params.json``. The executed notebook appears last, whole
(a rename), and only when every cell ran: a failed run keeps its executed notebook as
``<run>.failed.ipynb`` for reading instead.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import paths
from .config import read_yaml, validate
from .errors import TiesnbError
from .io import atomic_path, write_json
from .progress import Relay

# The study's notebooks in the order they run, and the figures and tables each one writes
# (each output is written by exactly one notebook, under a fixed name).
NOTEBOOKS = ["probe", "train", "evaluate", "merge_sweep", "interference", "ablations", "num_tasks"]
OUTPUTS = {
    "probe": [],
    "train": [],
    "evaluate": ["individual", "gains", "cross_task"],
    "merge_sweep": ["table1", "merge_sweep", "comparisons", "contributions", "sensitivity"],
    "interference": ["redundancy", "sign_conflicts", "magnitudes"],
    "ablations": ["ablations"],
    "num_tasks": ["num_tasks"],
}

# the outputs that are tables (CSV + Markdown); the others are figures (PNG + PDF + CSV)
TABLES = {"individual", "gains", "table1", "merge_sweep", "comparisons", "contributions", "ablations"}

_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "None": type(None)}


def _ipc_kernel_manager():
    """A kernel manager whose kernel talks over local sockets (IPC) in a private temporary folder,
    not TCP: nothing listens on a network port, and the kernel has no reason to warn that its
    traffic is unencrypted."""
    import tempfile

    from jupyter_client.manager import KernelManager

    class IPCKernelManager(KernelManager):
        def __init__(self, **kwargs):
            folder = tempfile.mkdtemp(prefix="tiesnb-kernel-")
            super().__init__(transport="ipc", ip=os.path.join(folder, "kernel"), **kwargs)

        def cleanup_resources(self, restart: bool = False) -> None:
            super().cleanup_resources(restart)
            if not restart:
                import shutil

                shutil.rmtree(os.path.dirname(self.ip), ignore_errors=True)

    return IPCKernelManager


def notebook_path(name: str) -> Path:
    path = paths.NOTEBOOKS / f"{name}.py"
    if not path.exists():
        raise TiesnbError(f"no notebook {name!r} ({path}); notebooks: {', '.join(NOTEBOOKS)}")
    return path


def _annotation(node: ast.expr, where: str) -> Any:
    """A type annotation from the parameters cell: str, int, float, bool, list[X], dict[str, X],
    X | None."""
    if isinstance(node, ast.Name) and node.id in _TYPES:
        return _TYPES[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in ("list", "dict"):
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        args = tuple(_annotation(a, where) for a in inner)
        return list[args[0]] if node.value.id == "list" else dict[args[0], args[1]]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _annotation(node.left, where) | _annotation(node.right, where)
    raise TiesnbError(f"{where}: unsupported parameter type {ast.unparse(node)!r}")


def parameters_of(notebook: str | Path) -> dict[str, tuple[Any, Any]]:
    """``{name: (type, default)}`` from the notebook's one ``parameters`` cell."""
    path = Path(notebook) if str(notebook).endswith(".py") else notebook_path(str(notebook))
    cells, current, tagged = [], None, []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            current = []
            cells.append(current)
            if 'tags=["parameters"]' in line.replace("'", '"'):
                tagged.append(current)
        elif current is not None:
            current.append(line)
    if len(tagged) != 1:
        raise TiesnbError(f"{path}: needs exactly one cell tagged parameters, found {len(tagged)}")
    out = {}
    for stmt in ast.parse("\n".join(tagged[0])).body:
        if not isinstance(stmt, ast.AnnAssign) or not isinstance(stmt.target, ast.Name) or stmt.value is None:
            raise TiesnbError(f"{path}: the parameters cell may only hold typed assignments "
                              f"(name: type = literal), not {ast.unparse(stmt)!r}")
        try:
            default = ast.literal_eval(stmt.value)
        except ValueError:
            raise TiesnbError(f"{path}: parameter {stmt.target.id} needs a literal default, got {ast.unparse(stmt.value)!r}") from None
        out[stmt.target.id] = (_annotation(stmt.annotation, str(path)), default)
    return out


def resolve(notebook: str, params_file: str | Path | None, overrides: dict | None = None) -> dict:
    """The notebook's defaults updated by the parameter file; unknown keys and wrong types are
    errors naming the key and the valid names."""
    spec = parameters_of(notebook)
    given = read_yaml(params_file) if params_file else {}
    given.update(overrides or {})
    validate(given, {k: t for k, (t, _) in spec.items()}, str(params_file or notebook))
    return {**{k: d for k, (_, d) in spec.items()}, **given}


def run(notebook: str, study: str, params_file: str | Path | None = None, run_name: str | None = None,
        progress: bool = True) -> Path:
    """Execute a notebook with checked parameters; returns the executed notebook's path."""
    import jupytext
    import papermill

    IPCKernelManager = _ipc_kernel_manager()

    if params_file is None:
        from .study import params_file as study_params_file

        params_file = study_params_file(study, notebook)
    params_file = Path(params_file)
    if not params_file.exists():
        raise TiesnbError(f"parameter file not found: {params_file}")
    params = resolve(notebook, params_file, {"study": study} if "study" in parameters_of(notebook) else None)
    if params.get("study", study) != study:
        raise TiesnbError(f"{params_file} says study {params['study']!r} but the run is for study {study!r}")
    run_name = run_name or params_file.stem
    out_dir = paths.RUNS / study / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / f".{run_name}.source.ipynb"
    jupytext.write(jupytext.read(notebook_path(notebook)), source)
    final = out_dir / f"{run_name}.ipynb"
    failed = out_dir / f"{run_name}.failed.ipynb"
    failed.unlink(missing_ok=True)
    t0 = time.time()
    relay = Relay(out_dir / f".{run_name}.progress", f"{study} {run_name}") if progress else contextlib.nullcontext()
    if progress:
        print(f"[{study} {run_name}] running notebooks/{notebook}.py", file=sys.stderr, flush=True)
    from .workflow import claimed_gpus

    try:
        # a workflow job that asks for GPUs (TIESNB_GPUS) holds free ones of this machine's
        with atomic_path(final) as tmp, relay, claimed_gpus(int(os.environ.get("TIESNB_GPUS") or 0)):
            try:
                papermill.execute_notebook(str(source), str(tmp), parameters=params, kernel_name="python3",
                                           cwd=str(paths.ROOT), progress_bar=False, log_output=False,
                                           report_mode=False, kernel_manager_class=IPCKernelManager)
            except papermill.PapermillExecutionError as e:
                os.replace(tmp, failed)
                raise TiesnbError(f"notebook {notebook} ({run_name}) failed in cell {e.exec_count}: {e.ename}: "
                                  f"{str(e.evalue).splitlines()[0] if e.evalue else ''} — see {failed}") from None
            write_json(out_dir / f"{run_name}.params.json",
                       {"notebook": notebook, "params_file": str(params_file), "parameters": params,
                        "seconds": round(time.time() - t0, 1), "executed": str(final)})
    finally:
        source.unlink(missing_ok=True)
    if progress:
        print(f"[{study} {run_name}] done in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return final


def owner(output: str) -> str:
    """The notebook that writes a figure or table (by name, with or without extension)."""
    name = Path(output).name.split(".")[0]
    for nb, outs in OUTPUTS.items():
        if name in outs:
            return nb
    raise TiesnbError(f"no notebook writes {output!r}; outputs: {', '.join(o for v in OUTPUTS.values() for o in v)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tiesnb run", description="run a study notebook headlessly")
    ap.add_argument("notebook", help=f"one of {', '.join(NOTEBOOKS)}")
    ap.add_argument("--study", default="default")
    ap.add_argument("--params", help="parameter file (default params/<study>/<notebook>.yaml)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    run(args.notebook, args.study, args.params, progress=not args.quiet)
    return 0


if __name__ == "__main__":  # python -m tiesnb.pipeline owner NAME  (used by the Makefile)
    if len(sys.argv) == 3 and sys.argv[1] == "owner":
        try:
            print(owner(sys.argv[2]))
        except TiesnbError as e:
            print(f"tiesnb: error: {e}", file=sys.stderr)
            sys.exit(2)
    else:
        sys.exit(main())
