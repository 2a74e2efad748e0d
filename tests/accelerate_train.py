"""Train the tiny T5 for a few steps on fixture data through ``train_checkpoint`` and write this
process's trace (learning rate and gradient size per optimiser step, example ids per micro-batch,
validation scores) to ``<out>/rank<i>.json`` and the checkpoint to ``<out>/ckpt-rank<i>/``. Run
alone or under torchrun (2 processes, gloo) by tests/test_seq2seq.py. Process 1 is given a
validation score of its own (-1) so that the test can see whose score decides."""

import json
import os
import sys
from pathlib import Path

from tiesnb.data.paper import load_paper_task
from tiesnb.families import seq2seq
from tiesnb.training import train_checkpoint

out, model, data, batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
rank = os.environ.get("RANK", "0")
if rank == "1":
    seq2seq.validation_score = lambda *a, **k: -1.0
d = {"rte": load_paper_task("rte", 16, 4, 4, data_dir=data, prompts="tiesnb")}
cfg = seq2seq.Seq2SeqTrainConfig(tasks=["rte"], steps=4, batch_size=batch, grad_accum=2, lr=1e-3, warmup=0.5,
                                 schedule="linear", templates="all", autocast="off", model_path=model, max_len=32,
                                 max_target_len=4, threads=1, eval_every=1, patience=2)
trace: dict = {}


def trainer(cfg, data, heads, progress=False, history=None):
    return seq2seq.finetune(cfg, data, progress=False, trace=trace)


train_checkpoint(trainer, cfg, d, {}, out / f"ckpt-rank{rank}", progress=False)
out.mkdir(parents=True, exist_ok=True)
(out / f"rank{rank}.json").write_text(json.dumps(trace))
