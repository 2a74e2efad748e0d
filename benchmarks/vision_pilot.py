"""Vision pilot: does fine-tuning EfficientNet-Lite0 with its probe frozen beat the probe, and how
does BatchNorm's mode during fine-tuning decide it? For each image task: a linear probe on the
frozen pretrained encoder's features, then the encoder fine-tuned with the probe frozen, with
BatchNorm ``frozen`` (running statistics kept and used) or ``train`` (batch statistics, running
ones updated); test accuracy of each. Writes ``docs/vision-pilot.md``.

    python benchmarks/vision_pilot.py                # 64 px, 200 steps, one seed (≈ 6 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="input resolution the 32-px images are upsampled to")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "vision-pilot.md")
    args = ap.parse_args()

    from tiesnb.data.images import IMAGE_TASKS, load_image_task
    from tiesnb.io import atomic_path
    from tiesnb.training import fit_linear
    from tiesnb.families import vision

    rows = []
    for name in IMAGE_TASKS:
        d = load_image_task(name, 2000, 256, 400, seed=args.seed)
        row = {"task": name, "classes": len(d.labels), "n_train": len(d.train[1])}
        for bn in ("frozen", "train"):
            t0 = time.time()
            enc = vision.load_encoder(size=args.size)
            head = fit_linear(vision.features(enc, d.train[0][:1000]), torch.from_numpy(d.train[1][:1000]), len(d.labels))
            row["probe"] = vision.accuracy(enc, head, *d.test)
            cfg = vision.VisionTrainConfig(tasks=[name], steps=args.steps, batch_size=32, lr=args.lr, weight_decay=0.0,
                                           warmup=0.0, seed=args.seed, image_size=args.size, batchnorm=bn)
            state = vision.finetune(cfg, {name: d}, {f"{name}.weight": head.weight.detach(), f"{name}.bias": head.bias.detach()},
                                    progress=False)
            enc = vision.load_encoder(state, size=args.size)
            row[bn] = vision.accuracy(enc, head, *d.test)
            row[f"{bn} s"] = time.time() - t0
        rows.append(row)
        print(f"{name}: probe {row['probe']:.3f}, fine-tuned BN frozen {row['frozen']:.3f}, BN train {row['train']:.3f}",
              flush=True)
    lines = ["| task | classes | train images | probe | fine-tuned, BN frozen | fine-tuned, BN train |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['classes']} | {r['n_train']} | {100 * r['probe']:.1f} | {100 * r['frozen']:.1f} | "
                     f"{100 * r['train']:.1f} |")
    secs = sum(r["frozen s"] for r in rows) / len(rows)
    text = (f"# Vision pilot: probe and fine-tuning of EfficientNet-Lite0 on the image tasks\n\n"
            f"`python benchmarks/vision_pilot.py --size {args.size} --steps {args.steps} --lr {args.lr:g} --seed {args.seed}` — "
            f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, torch {torch.__version__}. Test accuracy (%) on 400 "
            f"class-balanced test images per task, one seed (no interval: a pilot, not a finding). Probe: L-BFGS "
            f"logistic regression on 1,000 training images' features; fine-tuning: AdamW lr {args.lr:g}, batch 32, "
            f"{args.steps} steps, the probe frozen, stochastic depth on; one task ≈ {secs:.0f} s (probe + fine-tuning).\n\n"
            + "\n".join(lines) + "\n")
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
