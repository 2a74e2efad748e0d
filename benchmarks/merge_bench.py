"""Merge benchmark: wall time and peak RSS of tiesnb's merges against two baselines.

    python benchmarks/merge_bench.py --size-mb 1000 --models 7                   # fp32, the README's numbers
    python benchmarks/merge_bench.py --size-mb 1000 --models 7 --dtype bfloat16  # bf16
    python benchmarks/merge_bench.py --size-mb 50 --models 3 --repeats 1         # a quick look

Generates synthetic checkpoints in a Llama-like layout (untied embeddings), ``--size-mb`` each in
their dtype. fp32: fine-tuned = base + heavy-tailed deltas whose scale differs by tensor, signs
conflicting between models. bf16 / fp16: base weights of std 0.02 stored in that dtype,
fine-tuned = base + Gaussian deltas of std 2e-4, rounded to the dtype — the coarsely quantized
task vectors of real half-precision checkpoints, whose magnitudes take few distinct values.
Warms the page cache, then runs each configuration as its own process and measures the whole
process: wall time and peak RSS (``wait4``), in rounds that interleave the configurations.
Baselines, in the same run:

* **floor**: read every input tensor once with the official safetensors library and sum it;
* **floor + write**: the same, then write one checkpoint's bytes as every merge must, as cheaply as
  it can be done (a kernel-side copy of the base file to a temporary file, handed to the disk as
  it goes with the write-behind of ``tiesnb.io.WriteBehind``, fsync, rename — the safe write
  tiesnb's writer does, without computing anything);
* **in-memory original**: the original TIES algorithm, every model flattened into memory
  (``tiesnb.merge.reference``), skipped when it would not fit in RAM.

Results are printed and written to ``docs/performance.md`` (``--out`` to change) with the
command that produced them; ratios are against task arithmetic and the floor of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# synthetic checkpoints


ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def layout(size_mb: float, itemsize: int = 4) -> dict[str, tuple[int, ...]]:
    """A Llama-like state dict of about ``size_mb`` MB of ``itemsize``-byte numbers."""
    h, inter = 512, 1376
    numel = size_mb * 1e6 / itemsize
    vocab = int(min(32000, 0.2 * numel / h))  # embeddings ≈ 40 % of the model, as in small LMs
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    budget = numel - sum(int.__mul__(*s) if len(s) == 2 else s[0] for s in shapes.values())
    layers = max(1, round(budget / per_layer))
    for i in range(layers):
        p = f"model.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[p + f"self_attn.{n}.weight"] = (h, h)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    return shapes


def generate(work: Path, size_mb: float, n: int, seed: int = 0, dtype: str = "float32") -> tuple[Path, list[Path]]:
    import torch
    from safetensors.torch import save_file

    stamp = work / f"synthetic-{size_mb}MB-{n}-{seed}-{dtype}.json"
    base_path = work / "base.safetensors"
    paths = [work / f"ft{i}.safetensors" for i in range(n)]
    if stamp.exists() and base_path.exists() and all(p.exists() for p in paths):
        return base_path, paths
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    half = dtype != "float32"
    torch_dtype = getattr(torch, dtype)
    shapes = layout(size_mb, ITEMSIZE[dtype])
    base = {k: (torch.randn(s, generator=g) * 0.02).to(torch_dtype) for k, s in shapes.items()}
    save_file(base, str(base_path))
    for i, p in enumerate(paths):
        ft = {}
        for k, v in base.items():
            if half:  # small Gaussian deltas, rounded to the dtype: few distinct magnitudes
                ft[k] = (v.float() + 2e-4 * torch.randn(v.shape, generator=g)).to(torch_dtype)
                continue
            scale = 10 ** (-4 + torch.rand((), generator=g).item())  # 1e-4 … 1e-3, differs by tensor
            heavy = torch.randn(v.shape, generator=g) * torch.exp(0.7 * torch.randn(v.shape, generator=g))
            ft[k] = v + scale * heavy
        save_file(ft, str(p))
        del ft
        print(f"  wrote {p.name}", file=sys.stderr)
    stamp.write_text(json.dumps({"size_mb": size_mb, "n": n, "seed": seed, "dtype": dtype}))
    return base_path, paths


# ---------------------------------------------------------------------------------------------
# baselines, run in a child process (``--child floor|original``)


def child_floor(base: str, models: list[str]) -> None:
    import torch
    from safetensors import safe_open

    total = torch.zeros((), dtype=torch.float64)
    for path in [base, *models]:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():
                total += f.get_tensor(k).sum()
    print(float(total))


def cheapest_copy(src_path: str | Path, dst_path: str | Path) -> None:
    """The cheapest write of a file's bytes we know: a kernel-side copy, handed to the disk as it
    goes (the write-behind tiesnb's writer uses, ``tiesnb.io.WriteBehind``), then fsync."""
    from tiesnb.io import WriteBehind

    with open(src_path, "rb") as src, open(dst_path, "wb") as dst:
        behind = WriteBehind(dst.fileno())
        size, done = os.fstat(src.fileno()).st_size, 0
        while done < size:
            done += os.sendfile(dst.fileno(), src.fileno(), done, min(size - done, 16 << 20))
            behind.advance(done)
        os.fsync(dst.fileno())


def child_floor_write(base: str, models: list[str], out: str) -> None:
    child_floor(base, models)
    tmp = out + ".tmp"  # written, then renamed into place: the safe write tiesnb's writer does
    cheapest_copy(base, tmp)
    os.replace(tmp, out)


def child_original(base: str, models: list[str], out: str) -> None:
    from safetensors.torch import load_file, save_file

    from tiesnb.merge.reference import ties_original

    b = load_file(base)
    merged = ties_original(b, [load_file(m) for m in models], k=0.2, lam=1.0)
    save_file(merged, out)


# ---------------------------------------------------------------------------------------------
# measurement


def run_measured(cmd: list[str], checksum_cache: Path, pythonpath: Path = ROOT,
                 cwd: Path | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one process (with no remembered input checksums), with
    ``pythonpath`` (the tiesnb it imports) and, when given, ``cwd`` as its working directory."""
    checksum_cache.unlink(missing_ok=True)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "TIESNB_CHECKSUM_CACHE": str(checksum_cache)}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=300, help="size of each checkpoint (fp32)")
    ap.add_argument("--models", type=int, default=7, help="number of fine-tuned checkpoints")
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work", help="scratch folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--no-original", action="store_true", help="skip the in-memory original")
    ap.add_argument("--dtype", choices=list(ITEMSIZE), default="float32", help="dtype of the checkpoints")
    ap.add_argument("--child", choices=["floor", "floor-write", "original", "generate"], help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "floor":
        return child_floor(args.base, args.inputs)
    if args.child == "floor-write":
        return child_floor_write(args.base, args.inputs, args.dest)
    if args.child == "original":
        return child_original(args.base, args.inputs, args.dest)
    if args.child == "generate":
        return generate(Path(args.dest), args.size_mb, args.models, dtype=args.dtype) and None

    import yaml

    tag = f"{args.size_mb:g}MB-x{args.models}" + ("" if args.dtype == "float32" else f"-{args.dtype}")
    work = args.work / tag
    print(f"generating {args.models} + 1 checkpoints of ~{args.size_mb:g} MB in {work} …", file=sys.stderr)
    # generated in a child: a forked process inherits its parent's peak RSS on Linux, so the
    # measuring parent must stay small (it never imports torch before the measurements)
    subprocess.run([sys.executable, __file__, "--child", "generate", "--dest", str(work),
                    "--size-mb", str(args.size_mb), "--models", str(args.models), "--dtype", args.dtype], check=True)
    base, models = work / "base.safetensors", [work / f"ft{i}.safetensors" for i in range(args.models)]
    os.sync()  # freshly generated files: their writeback must not overlap the measurements
    for p in [base, *models]:  # warm the page cache: every configuration reads from memory
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    size = base.stat().st_size
    py = sys.executable
    configs = {
        "task arithmetic": ("task_arithmetic", {"lam": 0.4}),
        "averaging": ("average", {}),
        "TIES, global trim (paper)": ("ties", {"k": 0.2, "lam": 1.0}),
        "TIES, per-tensor trim": ("ties", {"k": 0.2, "lam": 1.0, "trim": "per_tensor"}),
        "TIES, global trim, with input SHA-256": ("ties", {"k": 0.2, "lam": 1.0}),
    }
    commands: dict[str, list[str]] = {
        "floor: read every input once": [py, __file__, "--child", "floor", "--base", str(base), "--inputs", *map(str, models)],
        "floor + write: read every input once, write one checkpoint": [
            py, __file__, "--child", "floor-write", "--base", str(base), "--inputs", *map(str, models),
            "--dest", str(work / "floor-write.safetensors")],
    }
    for label, (method, params) in configs.items():
        cfg = work / f"{method}-{len(commands)}.yaml"
        cfg.write_text(yaml.safe_dump({"method": method, "base": str(base), "models": [str(m) for m in models], "params": params}))
        cmd = [py, "-m", "tiesnb.cli", "merge", str(cfg), "--out", str(work / "out"), "--force", "--quiet"]
        commands[label] = cmd + ([] if "SHA" in label else ["--no-checksums"])
    need = 8 * (args.models + 1) * size * 4 // ITEMSIZE[args.dtype]  # the original's fp32 n×d copies, see ties-spec.md
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    if args.no_original:
        skipped = "skipped (--no-original)"
    elif need > 0.8 * avail:
        skipped = f"skipped: needs ≈ {need / 2**30:.0f} GiB, {avail / 2**30:.0f} GiB available"
    else:
        skipped = None
        commands["in-memory original algorithm (global trim)"] = [
            py, __file__, "--child", "original", "--base", str(base), "--inputs", *map(str, models),
            "--dest", str(work / "original.safetensors")]

    # rounds interleave the configurations, so that a slow spell of a shared machine falls on all
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for r in range(args.repeats):
        for label, cmd in commands.items():
            runs[label].append(run_measured(cmd, work / "checksums.json"))
            print(f"  round {r + 1}, {label}: {runs[label][-1][0]:.2f} s, {runs[label][-1][1]:.0f} MiB", file=sys.stderr)
    results = {label: (statistics.median(w for w, _ in rs), max(m for _, m in rs)) for label, rs in runs.items()}

    ta = results["task arithmetic"][0]
    floor = results["floor: read every input once"][0]
    floor_w = results["floor + write: read every input once, write one checkpoint"][0]
    lines = [
        f"| configuration | wall time (s) | × task arithmetic | × floor | × floor + write | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, (wall, rss) in results.items():
        lines.append(f"| {label} | {wall:.2f} | {wall / ta:.2f} | {wall / floor:.2f} | {wall / floor_w:.2f} | {rss:.0f} |")
    if skipped:
        lines.append(f"| in-memory original algorithm (global trim) | {skipped} | | | | |")
    table = "\n".join(lines)
    cmdline = (f"python benchmarks/merge_bench.py --size-mb {args.size_mb:g} --models {args.models} --repeats {args.repeats}"
               + ("" if args.dtype == "float32" else f" --dtype {args.dtype}"))
    import torch

    machine = (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
               f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
               f"torch {torch.__version__} ({torch.get_num_threads()} threads), Python {platform.python_version()}")
    kind = {"float32": "fp32", "bfloat16": "bf16, deltas of std 2e-4 rounded to bf16",
            "float16": "fp16, deltas of std 2e-4 rounded to fp16"}[args.dtype]
    section = (f"## {args.models} fine-tuned checkpoints + base, {size / 1e6:.0f} MB each ({kind})\n\n"
               f"`{cmdline}` — {time.strftime('%Y-%m-%d')}, {machine}.\n"
               f"Whole-process wall time (median of {args.repeats}; Python and torch start-up included, "
               f"≈ 1.5 s) and peak RSS; page cache warm. One checkpoint = {size / 2**20:.0f} MiB.\n\n{table}\n")
    print(section)
    update_doc(args.out, tag, section)


HEADER = """# Merge performance

Measured with `benchmarks/merge_bench.py` (rerun it to check on your machine). Each
configuration runs as its own process on the same synthetic checkpoints; ratios are against task
arithmetic (the cheapest real merge, one pass) and the floor (reading every input once) of the
same run. What the other implementations cost on this kind of machine is in
`performance-anchors.md` of the reference material: for 7 × 270 MB, peft's per-tensor `ties`
took 37.1 s and 4.8 GiB, mergekit 72.8 s and 3.5 GiB, the in-memory original 30.1 s and 16.9 GiB.
"""


def update_doc(path: Path, key: str, section: str) -> None:
    """Replace this size's section of the document, keep the others."""
    from tiesnb.io import atomic_path

    text = path.read_text() if path.exists() else HEADER
    begin, end = f"<!-- bench {key} -->", f"<!-- /bench {key} -->"
    block = f"{begin}\n{section}{end}\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    with atomic_path(path) as tmp:
        tmp.write_text(text)


if __name__ == "__main__":
    main()
