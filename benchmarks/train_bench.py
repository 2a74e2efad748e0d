"""What training the word embeddings costs: seconds per fine-tuning step of MiniLM-L6 with the
embedding tables frozen, trained sparsely (lazy Adam on the rows a batch uses — the default
study's setting), and trained densely (AdamW over all 11.7 M entries).

    python benchmarks/train_bench.py                  # 2 tasks × 3 settings, median of 3 runs each
    python benchmarks/train_bench.py --steps 40 --repeats 5

Each measurement trains one task from the pretrained encoder in this process (the model load is
timed separately and not counted), with the study's batch size, sequence length and autocast;
nothing else should run meanwhile. Prints a Markdown table with ratios to the frozen setting of
the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

SETTINGS = {"frozen embeddings": dict(train_embeddings=False),
            "embeddings trained, sparse (lazy Adam)": dict(train_embeddings=True, sparse_embeddings=True),
            "embeddings trained, dense (AdamW)": dict(train_embeddings=True, sparse_embeddings=False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["fever", "winowhy"], help="tasks of the default study")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import torch

    from tiesnb.data import load_task
    from tiesnb.study import Study
    from tiesnb.families.text import TextTrainConfig as TrainConfig, finetune, fit_heads

    study = Study.load("default")
    c = study.config
    data = {t: load_task(t, c.n_train, c.n_val, c.n_test, c.split_seed) for t in args.tasks}
    heads = fit_heads(data, c.probe_examples, c.probe_l2, c.max_len, c.autocast, progress=False)
    results = {}
    for label, extra in SETTINGS.items():
        per_step = []
        for _ in range(args.repeats):
            total = 0.0
            for t in args.tasks:
                common = dict(tasks=[t], batch_size=c.batch_size, lr=c.lr, max_len=c.max_len, autocast=c.autocast, **extra)
                cfg = TrainConfig(steps=args.steps, **common)
                t0 = time.perf_counter()
                finetune(cfg, data, heads, progress=False)
                # the model load (≈ 0.3 s) is the same for every setting; a step-free run measures it
                cfg0 = TrainConfig(steps=1, **common)
                t1 = time.perf_counter()
                finetune(cfg0, data, heads, progress=False)
                t2 = time.perf_counter()
                total += (t1 - t0) - (t2 - t1)
            per_step.append(total / ((args.steps - 1) * len(args.tasks)))
        results[label] = statistics.median(per_step)
        print(f"  {label}: {results[label]:.3f} s/step", flush=True)
    base = results["frozen embeddings"]
    print(f"\n`python benchmarks/train_bench.py --steps {args.steps} --repeats {args.repeats}` — tasks "
          f"{', '.join(args.tasks)}, batch {c.batch_size}, length {c.max_len}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); median of {args.repeats}.\n")
    print("| setting | s / step | × frozen |\n|---|---:|---:|")
    for label, v in results.items():
        print(f"| {label} | {v:.3f} | {v / base:.2f} |")


if __name__ == "__main__":
    main()
