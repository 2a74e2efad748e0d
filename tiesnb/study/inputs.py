"""What every model of a study is trained and evaluated on: each task's splits, and the heads.

Both are the same for every training seed (the splits come from ``split_seed``), read or fitted
once and kept under the run folder: the splits as JSON (``data/<task>-<key>.json``), the heads
as a checkpoint (``heads/``) beside the resolved settings that made them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..checkpoints import load_state_dict, save_state_dict
from ..errors import TiesnbError
from ..io import sha256_cached, write_json


class Inputs:
    def __init__(self, study):
        self.study = study  # its config, family and run folder (the same for every seed)
        self._data: dict | None = None

    def data(self) -> dict:
        """Every task's splits, read once and kept as JSON under the run folder."""
        if self._data is None:
            s, family = self.study, self.study.family
            data = {}
            key = family.data_key(s)
            for task in s.tasks:
                path = s.run_dir / "data" / f"{task}-{key}.json"
                if not family.cache_data:  # read directly (the reader keeps its own cache)
                    data[task] = family.load_task(s, task)
                elif path.exists():
                    data[task] = family.task_data(s, task, json.loads(path.read_text()))
                else:
                    d = data[task] = family.load_task(s, task)
                    write_json(path, d.to_json())
            self._data = data
        return self._data

    def summary(self):
        """One row per task: examples per split, classes or prompt templates."""
        import pandas as pd

        rows = []
        for t, d in self.data().items():
            row = {"task": t, **{s: d.size(s) for s in ("train", "val", "test")}}
            if hasattr(d, "labels"):
                row["classes"] = len(d.labels)
            if hasattr(d, "templates"):
                row["templates"] = len(d.templates)
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def heads_dir(self) -> Path:
        return self.study.run_dir / "heads"

    def fit_heads(self, progress: bool = True) -> dict[str, torch.Tensor]:
        """The linear probes (reused when data and settings are unchanged); none for seq2seq and
        (fitted from the text tower, not probed) for clip."""
        s = self.study
        data = self.data()
        # the thread count too: probes fitted on features computed with another count differ in
        # their last bits, and every model trained on them with it
        resolved = {"data": {t: data[t].fingerprint for t in s.tasks}, **s.family.heads_settings(s),
                    "version": __version__, "threads": torch.get_num_threads()}
        meta = self.heads_dir / "params.json"
        if meta.exists() and json.loads(meta.read_text()).get("resolved") == json.loads(json.dumps(resolved)):
            return self.heads()
        heads = s.family.fit_heads(s, progress)
        save_state_dict(heads, self.heads_dir, overwrite=True,
                        extra_files={"params.json": json.dumps({"resolved": resolved}, indent=2) + "\n"})
        return heads

    def heads(self) -> dict[str, torch.Tensor]:
        if not (self.heads_dir / "model.safetensors").exists():
            name = self.study.config.name
            raise TiesnbError(f"study {name}: the heads are not fitted yet: run `make probe STUDY={name}`")
        return load_state_dict(self.heads_dir)

    def heads_fingerprint(self) -> str:
        return sha256_cached(self.heads_dir / "model.safetensors")[:16]
