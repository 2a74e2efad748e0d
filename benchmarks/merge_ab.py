"""Same-run A/B of the merge engine between commits: which change made a merge faster.

    python benchmarks/merge_ab.py CONFIG.yaml 5d4e180 HEAD --repeats 5
    python benchmarks/merge_ab.py CONFIG.yaml 15e6a1a WORKTREE     # WORKTREE: this checkout as it is

Each commit's ``tiesnb/`` is exported (``git archive``) into a temporary folder; then every
round runs ``tiesnb merge CONFIG`` once per commit, in turn, as its own process, from a neutral
working directory with ``PYTHONPATH`` pointing at that commit's copy (and checks that this copy is
what was imported: run from the repository, ``python -m`` would import the checkout's ``tiesnb``
whatever ``PYTHONPATH`` says). Interleaving spreads the machine's drift over every commit.
Prints each run, then per commit the median wall time and peak RSS and the ratio to the first.
The first round also compiles each copy's numba kernels (cached in the copy): it is run, shown and
left out of the medians. Build CONFIG with ``benchmarks/merge_bench.py`` (its work folder keeps
the generated checkpoints and one config per method).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_bench import ROOT, run_measured  # noqa: E402


def export(commit: str, dest: Path) -> Path:
    """``commit``'s ``tiesnb/`` under ``dest`` (``WORKTREE``: this checkout's files as they are)."""
    dest.mkdir(parents=True)
    if commit == "WORKTREE":
        shutil.copytree(ROOT / "tiesnb", dest / "tiesnb", ignore=shutil.ignore_patterns("__pycache__"))
        return dest
    got = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "tiesnb"], capture_output=True)
    if got.returncode != 0:
        raise SystemExit(f"merge_ab: cannot export tiesnb/ at {commit!r}: {got.stderr.decode().strip()}")
    archive = got.stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def run_once(tree: Path, config: Path, out: Path, cwd: Path) -> tuple[float, float]:
    """One merge as its own process, importing ``tree``'s tiesnb: wall seconds and peak RSS (MiB)."""
    code = ("import sys, tiesnb; from pathlib import Path\n"
            f"assert Path(tiesnb.__file__).is_relative_to({str(tree)!r}), tiesnb.__file__\n"
            "from tiesnb.cli import main; sys.exit(main(sys.argv[1:]))")
    cmd = [sys.executable, "-c", code, "merge", str(config), "--out", str(out), "--force", "--quiet", "--no-checksums"]
    return run_measured(cmd, cwd / "checksums.json", pythonpath=tree, cwd=cwd)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path, help="a tiesnb merge config (YAML)")
    ap.add_argument("commits", nargs="+", help="commits to compare (WORKTREE: this checkout as it is)")
    ap.add_argument("--repeats", type=int, default=5, help="measured rounds (after one warm-up round)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tiesnb-ab-") as tmp:
        tmp = Path(tmp)
        trees = {c: export(c, tmp / f"tree{i}") for i, c in enumerate(args.commits)}
        out = tmp / "out"  # the merged checkpoint, rewritten by every run and gone with tmp
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in trees}
        for r in range(args.repeats + 1):
            for c, tree in trees.items():
                wall, rss = run_once(tree, args.config.resolve(), out, tmp)
                print(f"{'warm-up' if r == 0 else f'round {r}'}  {c}: {wall:.2f} s, {rss:.0f} MiB", flush=True)
                if r:
                    results[c].append((wall, rss))
    first = statistics.median(w for w, _ in results[args.commits[0]])
    print(f"\n{args.config.name}, median of {args.repeats} rounds (interleaved):")
    for c, runs in results.items():
        med = statistics.median(w for w, _ in runs)
        print(f"  {c}: {med:.2f} s (× {med / first:.2f}), runs {', '.join(f'{w:.2f}' for w, _ in runs)}; "
              f"peak RSS {max(m for _, m in runs):.0f} MiB")


if __name__ == "__main__":
    main()
