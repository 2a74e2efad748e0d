"""What the Snakemake workflow costs against the Make DAG it replaced, on the smoke study.

    python benchmarks/workflow_overhead.py --baseline a872a3a --repeats 3

For each repeat, in turn: the smoke study from nothing with the baseline commit's Makefile (its
own worktree, the same .venv and data cache), then with this tree's workflow; then a second run
with nothing changed, each way. Prints the median wall time of each and their ratios, and
writes them to benchmarks/_work/workflow_overhead.json (docs/performance.md keeps the numbers). Run it alone: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="a872a3a", help="the commit whose Makefile is the baseline")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--study", default="smoke")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tiesnb-wf-bench-"))
    old = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    bin_dir = Path(sys.executable).parent
    base_env = {**os.environ, "PYTHONWARNINGS": "ignore", "TIESNB_DATA": str(ROOT / ".cache" / "data")}
    base_env.pop("TIESNB_THREADS", None)
    # the baseline's package, not this tree's (the editable install points here)
    old_env = {**base_env, "PYTHONPATH": str(old)}
    make_old = ["make", "--no-print-directory", f"VENV={bin_dir.parent}", f"STAMP={work / 'stamp'}",
                "notebooks", f"STUDY={args.study}", "-j2", f"THREADS={max(1, (os.cpu_count() or 2) // 2)}"]
    (work / "stamp").touch()
    new_cmd = [str(bin_dir / "tiesnb"), "workflow", "--study", args.study]
    times: dict[str, list[float]] = {"make": [], "snakemake": [], "make_noop": [], "snakemake_noop": []}
    try:
        for i in range(args.repeats):
            for name, cmd, cwd, env in (("make", make_old, old, old_env), ("snakemake", new_cmd, ROOT, base_env)):
                if name == "make":  # its stamps live under the tree's own runs/ (the Makefile's path)
                    runs = old / "runs"
                    env = {**env, "TIESNB_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
                else:
                    runs = work / f"runs-{name}-{i}"
                    env = {**env, "TIESNB_RUNS": str(runs)}
                times[name].append(timed(cmd, cwd, env))
                times[f"{name}_noop"].append(timed(cmd, cwd, env))
                print(f"repeat {i + 1}: {name} {times[name][-1]:.1f} s, again with nothing changed "
                      f"{times[name + '_noop'][-1]:.1f} s", flush=True)
                shutil.rmtree(runs, ignore_errors=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"study": args.study, "repeats": args.repeats, "baseline_commit": args.baseline, "seconds": times,
              "median_s": med, "ratio_fresh": med["snakemake"] / med["make"],
              "ratio_noop": med["snakemake_noop"] / med["make_noop"], "cpus": os.cpu_count()}
    out = ROOT / "benchmarks" / "_work" / "workflow_overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    print(f"median of {args.repeats}: Make {med['make']:.1f} s, Snakemake {med['snakemake']:.1f} s "
          f"(×{result['ratio_fresh']:.2f}); nothing changed: Make {med['make_noop']:.1f} s, "
          f"Snakemake {med['snakemake_noop']:.1f} s")


if __name__ == "__main__":
    main()
