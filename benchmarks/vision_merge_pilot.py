"""Vision merge pilot: the six image task models (EfficientNet-Lite0, BatchNorm frozen while
fine-tuning, as ``vision_pilot.py`` decided) merged by averaging, task arithmetic and TIES; each
method's λ (and TIES's k) chosen on validation (mean over tasks), reported on test, with the merged
model's BatchNorm statistics (a) kept — merged like any parameter, which here leaves the shared
pretrained ones — and (b) re-estimated on 4 unlabelled batches of 64 training images from each task.
One seed, no intervals: a pilot to plan the study, not a finding. Writes ``docs/vision-merge-pilot.md``.

    python benchmarks/vision_merge_pilot.py        # ≈ 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "vision-merge-pilot.md")
    args = ap.parse_args()

    from tiesnb.families import vision
    from tiesnb.data.images import IMAGE_TASKS, load_image_task
    from tiesnb.io import atomic_path
    from tiesnb.merge import merge
    from tiesnb.training import fit_linear

    t0 = time.time()
    tasks = list(IMAGE_TASKS)
    data = {t: load_image_task(t, 2000, 256, 400, seed=args.seed) for t in tasks}
    pre = vision.load_encoder()
    base = vision.encoder_state(pre)
    heads, models, individual = {}, {}, {}
    for t in tasks:
        d = data[t]
        heads[t] = fit_linear(vision.features(pre, d.train[0][:1000]), torch.from_numpy(d.train[1][:1000]), len(d.labels))
        cfg = vision.VisionTrainConfig(tasks=[t], steps=args.steps, batch_size=32, lr=1e-4, weight_decay=0.0, warmup=0.0,
                                       seed=args.seed, batchnorm="frozen")
        models[t] = vision.finetune(cfg, {t: d}, {f"{t}.weight": heads[t].weight.detach(), f"{t}.bias": heads[t].bias.detach()},
                                    progress=False)
        enc = vision.load_encoder(models[t])
        individual[t] = {s: vision.accuracy(enc, heads[t], *getattr(d, s)) for s in ("val", "test")}
        print(f"{t}: fine-tuned test {individual[t]['test']:.3f}", flush=True)
    rng = np.random.default_rng(args.seed)
    bn_batches = [d.train[0][rng.choice(len(d.train[0]), 64, replace=False)] for d in data.values() for _ in range(4)]

    def evaluate(state, split: str, bn: str) -> float:
        enc = vision.load_encoder(state)
        if bn == "re-estimated":
            vision.reestimate_batchnorm(enc, bn_batches)
        return float(np.mean([vision.accuracy(enc, heads[t], *getattr(data[t], split)) for t in tasks]))

    grids = {"averaging": [("average", {})],
             "task arithmetic": [("task_arithmetic", {"lam": lam}) for lam in (0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6)],
             "TIES": [("ties", {"k": k, "lam": lam}) for k in (0.01, 0.05, 0.2) for lam in (0.3, 0.6, 1.0, 1.4)]}
    ordered = [models[t] for t in tasks]
    rows = [("zero-shot (probes)", "", evaluate(base, "test", "kept"), evaluate(base, "test", "re-estimated")),
            ("fine-tuned (each task's own model)", "", float(np.mean([individual[t]["test"] for t in tasks])), None)]
    for label, grid in grids.items():
        scored = []
        for method, hp in grid:
            merged = merge(method, base, ordered, **hp)
            scored.append((evaluate(merged, "val", "kept"), method, hp, merged))
        val, method, hp, merged = max(scored, key=lambda s: s[0])
        values = {k: sorted({h[k] for _, h in grid}) for k in hp}
        edge = lambda k, v: len(values[k]) > 1 and v in (values[k][0], values[k][-1])  # noqa: E731
        shown = ", ".join(f"{k} = {v:g}" + (" (edge)" if edge(k, v) else "") for k, v in hp.items())
        rows.append((label, shown, evaluate(merged, "test", "kept"), evaluate(merged, "test", "re-estimated")))
        print(f"{label} ({shown}): test {rows[-1][2]:.3f} kept, {rows[-1][3]:.3f} re-estimated", flush=True)
    lines = ["| model | chosen on validation (BN kept) | test: BN statistics kept | test: BN re-estimated |",
             "|---|---|---:|---:|"]
    for label, shown, kept, re in rows:
        lines.append(f"| {label} | {shown} | {100 * kept:.1f} | {'' if re is None else f'{100 * re:.1f}'} |")
    text = (f"# Vision merge pilot: six EfficientNet-Lite0 task models merged\n\n"
            f"`python benchmarks/vision_merge_pilot.py --steps {args.steps} --seed {args.seed}` — {time.strftime('%Y-%m-%d')}, "
            f"torch {torch.__version__}; {time.time() - t0:.0f} s. Mean test accuracy (%) over the six tasks "
            f"({', '.join(tasks)}), 400 test images each, every model read through its task's probe. One seed and "
            f"no intervals: a pilot to plan the vision study, not a finding.\n\n" + "\n".join(lines) + "\n")
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
