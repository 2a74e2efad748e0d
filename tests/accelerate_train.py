"""Train the tiny T5 for a few steps on fixture data and write this process's trace (learning
rate per optimiser step, example ids per micro-batch) to ``<out>/rank<i>.json``. Run alone or
under ``accelerate launch`` by tests/test_seq2seq.py."""

import json
import os
import sys
from pathlib import Path

from tiesnb.families import seq2seq
from tiesnb.data.paper import load_paper_task

out, model, data, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
d = {"rte": load_paper_task("rte", 16, 4, 4, data_dir=data, prompts="tiesnb")}
cfg = seq2seq.Seq2SeqTrainConfig(tasks=["rte"], steps=4, batch_size=batch, grad_accum=2, lr=1e-3, warmup=0.5,
                                 schedule="linear", templates="all", autocast="off", model_path=model, max_len=32,
                                 max_target_len=4, threads=1)
trace: dict = {}
seq2seq.finetune(cfg, d, progress=False, trace=trace)
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{os.environ.get('RANK', '0')}.json").write_text(json.dumps(trace))
