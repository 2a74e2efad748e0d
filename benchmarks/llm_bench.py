"""LLM-scale merge benchmark: tiesnb beside mergekit on the files LLM users merge.

    python benchmarks/llm_bench.py                     # ~1.5 B parameters, 3 fine-tuned + base, median of 3
    python benchmarks/llm_bench.py --layers 2 --repeats 1 --keep   # a quick look

Generates, locally, a base and ``--models`` fine-tuned checkpoints in a real LLM layout: a
Llama config (``config.json``; hidden 2048, 16 layers, MLP 8192, 32 heads / 8 KV heads, vocab
128,256, untied head — ~1.5 B parameters, Llama-3.2-1B's shapes with its head untied), bf16,
sharded into safetensors files of at most 2 GB with ``model.safetensors.index.json``. Fine-tuned
= base + Gaussian deltas of std 2e-4 rounded to bf16 (the coarsely quantized task vectors of
real bf16 fine-tunes). Then one mergekit config per method is run, as it is, by ``tiesnb merge``
and by ``mergekit-yaml`` (when mergekit is installed: ``pip install -e '.[dev]'``), each as its
own process: whole-process wall time (median of ``--repeats``) and peak RSS (``wait4``). The
paper's global TIES (``tiesnb``'s own config) and the floors (read every input once; read and
write one checkpoint) run beside them. mergekit runs with ``dtype: bfloat16`` as published
configs do (it computes in bf16); tiesnb computes in float32 and writes bf16.

The generated files (``--work``, ~4 × 3 GB) are deleted at the end unless ``--keep``; results
are printed and written to ``docs/performance.md`` (``--out``).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from merge_bench import cheapest_copy, run_measured, update_doc  # noqa: E402

SHARD = 2_000_000_000  # bytes per shard at most


def llama_config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
            "intermediate_size": 8192, "num_hidden_layers": layers, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "hidden_act": "silu", "bos_token_id": 128000, "eos_token_id": 128001}


def shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, inter, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    out = {"model.embed_tokens.weight": (v, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                    p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                    p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                    p + "post_attention_layernorm.weight": (h,)})
    out.update({"model.norm.weight": (h,), "lm_head.weight": (v, h)})
    return out


def write_checkpoint(folder: Path, cfg: dict, tensor_of) -> None:
    """``folder``: config.json + bf16 shards of at most SHARD bytes + the index."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    groups, size = [[]], 0
    for name, shape in shapes(cfg).items():
        nbytes = 2 * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > SHARD:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for k, names in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        state = {n: tensor_of(n) for n in names}
        total += sum(t.numel() * 2 for t in state.values())
        save_file(state, str(folder / fname), metadata={"format": "pt"})
        weight_map.update({n: fname for n in names})
        del state
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def generate(work: Path, layers: int, n: int) -> None:
    import torch

    stamp = work / f"llama-{layers}L-{n}.json"
    if stamp.exists():
        return
    shutil.rmtree(work, ignore_errors=True)
    cfg = llama_config(layers)
    names = list(shapes(cfg))

    def base_tensor(name):  # a function of the name: every checkpoint regenerates the same base
        g = torch.Generator().manual_seed(names.index(name))
        shape = shapes(cfg)[name]
        if len(shape) == 1:
            return torch.ones(shape, dtype=torch.bfloat16)
        return (0.02 * torch.randn(shape, generator=g)).to(torch.bfloat16)

    write_checkpoint(work / "base", cfg, base_tensor)
    print("  wrote base", file=sys.stderr)
    for i in range(n):
        def ft(name, i=i):
            g = torch.Generator().manual_seed(10_000 * (i + 1) + names.index(name))
            b = base_tensor(name)
            return (b.float() + 2e-4 * torch.randn(b.shape, generator=g)).to(torch.bfloat16)
        write_checkpoint(work / f"ft{i}", cfg, ft)
        print(f"  wrote ft{i}", file=sys.stderr)
    stamp.write_text(json.dumps({"layers": layers, "models": n}))


def child_floor(folders: list[str], out: str | None) -> None:
    """Read every tensor of every input once (safetensors); with ``out``, then write one
    checkpoint's bytes as cheaply as it can be done (kernel-side copies of the base's shards,
    written behind: :func:`merge_bench.cheapest_copy`)."""
    from safetensors import safe_open

    total = 0.0
    for folder in folders:
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    total += float(st.get_tensor(k).float().sum())
    print(total)
    if out:
        tmp = Path(out + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in sorted(Path(folders[0]).glob("*.safetensors")):
            cheapest_copy(f, tmp / f.name)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)


def mergekit_config(method: str, base: Path, models: list[Path]) -> dict:
    params = {"ties": {"weight": 1.0, "density": 0.2}, "task_arithmetic": {"weight": 1.0},
              "dare_linear": {"weight": 1.0, "density": 0.2}}[method]
    top = {"ties": {"normalize": True}, "task_arithmetic": {"lambda": 0.4}, "dare_linear": {}}[method]
    cfg = {"merge_method": method, "base_model": str(base), "dtype": "bfloat16",
           "models": [{"model": str(m), "parameters": dict(params)} for m in models]}
    if top:
        cfg["parameters"] = top
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=16, help="transformer layers (16: ~1.5 B parameters)")
    ap.add_argument("--models", type=int, default=3, help="fine-tuned checkpoints")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mergekit-repeats", type=int, default=None, help="runs of each mergekit config (default: --repeats)")
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "_work" / "llm")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "performance.md")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--child", choices=["generate", "floor"], help=argparse.SUPPRESS)
    ap.add_argument("--inputs", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "generate":
        return generate(args.work, args.layers, args.models)
    if args.child == "floor":
        return child_floor(args.inputs, args.dest)

    import yaml

    py = sys.executable
    print(f"generating base + {args.models} checkpoints ({args.layers} layers) in {args.work} …", file=sys.stderr)
    subprocess.run([py, __file__, "--child", "generate", "--work", str(args.work), "--layers", str(args.layers),
                    "--models", str(args.models)], check=True)
    base, models = args.work / "base", [args.work / f"ft{i}" for i in range(args.models)]
    size = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    shards = len(list(base.glob("*.safetensors")))
    params = json.loads((base / "model.safetensors.index.json").read_text())["metadata"]["total_size"] // 2
    out = args.work / "out"
    inputs = [str(base), *map(str, models)]
    commands: dict[str, tuple[str, list[str]]] = {
        "floor: read every input once": ("floor", [py, __file__, "--child", "floor", "--inputs", *inputs]),
        "floor + write: read every input, write one checkpoint": (
            "floor", [py, __file__, "--child", "floor", "--inputs", *inputs, "--dest", str(out)]),
    }
    have_mergekit = shutil.which("mergekit-yaml", path=str(Path(py).parent)) is not None
    for method, label in [("task_arithmetic", "task arithmetic"), ("ties", "TIES (mergekit's: per-tensor trim)"),
                          ("dare_linear", "DARE (dare_linear)")]:
        cfg_file = args.work / f"{method}.yml"
        cfg_file.write_text(yaml.safe_dump(mergekit_config(method, base, models), sort_keys=False))
        commands[f"tiesnb: {label}"] = ("tiesnb", [py, "-m", "tiesnb.cli", "merge", str(cfg_file), "--out", str(out),
                                                   "--force", "--quiet", "--no-checksums"])
        if have_mergekit:
            commands[f"mergekit: {label}"] = ("mergekit", [str(Path(py).parent / "mergekit-yaml"), str(cfg_file), str(out),
                                                           "--quiet", "--no-copy-tokenizer", "--no-write-model-card",
                                                           "--out-shard-size", "1B"])
    own = args.work / "ties-global.yml"
    own.write_text(yaml.safe_dump({"method": "ties", "base": str(base), "models": [str(m) for m in models],
                                   "params": {"k": 0.2, "lam": 1.0}, "dtype": "bfloat16"}))
    commands["tiesnb: TIES, global trim (the paper)"] = ("tiesnb", [py, "-m", "tiesnb.cli", "merge", str(own), "--out",
                                                                     str(out), "--force", "--quiet", "--no-checksums"])
    results: dict[str, tuple[float, float, int]] = {}
    for label, (tool, cmd) in commands.items():
        reps = args.mergekit_repeats if (tool == "mergekit" and args.mergekit_repeats) else args.repeats
        runs = []
        for _ in range(reps):
            shutil.rmtree(out, ignore_errors=True)
            runs.append(run_measured(cmd, args.work / "checksums.json"))
            print(f"  {label}: {runs[-1][0]:.1f} s, {runs[-1][1]:.0f} MiB", file=sys.stderr)
        results[label] = (statistics.median(w for w, _ in runs), max(m for _, m in runs), reps)
    shutil.rmtree(out, ignore_errors=True)
    fw = results["floor + write: read every input, write one checkpoint"][0]
    lines = ["| configuration | runs | wall time (s) | × floor + write | peak RSS (MiB) |", "|---|---:|---:|---:|---:|"]
    for label, (wall, rss, reps) in results.items():
        lines.append(f"| {label} | {reps} | {wall:.1f} | {wall / fw:.2f} | {rss:.0f} |")
    if not have_mergekit:
        lines.append("| mergekit | not installed (pip install -e '.[dev]') | | | |")
    import torch

    machine = (f"{os.cpu_count()} CPU cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB "
               f"RAM, torch {torch.__version__}, Python {platform.python_version()}")
    cmdline = (f"python benchmarks/llm_bench.py --layers {args.layers} --models {args.models} --repeats {args.repeats}"
               + (f" --mergekit-repeats {args.mergekit_repeats}" if args.mergekit_repeats else ""))
    section = (f"## LLM layout: base + {args.models} fine-tuned, {params / 1e9:.2f} B parameters, bf16, "
               f"{shards} shards of ≤ 2 GB ({size / 1e9:.2f} GB each)\n\n"
               f"`{cmdline}` — {time.strftime('%Y-%m-%d')}, {machine}. The same mergekit config file through "
               f"`tiesnb merge` and `mergekit-yaml` (mergekit computes in bf16 as the config says, tiesnb in "
               f"float32); whole-process wall time (median of the runs) and peak RSS. The inputs ({args.models + 1} × "
               f"{size / 1e9:.1f} GB) exceed this machine's page cache, so every run reads from disk.\n\n"
               + "\n".join(lines) + "\n")
    print(section)
    update_doc(args.out, f"llm-{args.layers}L-x{args.models}", section)
    if not args.keep:
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
