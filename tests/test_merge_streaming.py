"""Streaming over checkpoints on disk: same bits as in memory, atomic output, the CLI and its
one-line errors for every bad input, and nothing left behind when a merge fails."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tiesnb.checkpoints import SafetensorsSource, SafetensorsWriter, TensorSpec, load_state_dict, save_state_dict
from tiesnb.cli import main
from tiesnb.errors import TiesnbError
from tiesnb.merge import merge, merge_checkpoints
from tiesnb.merge.select import TopK, cut_of_tensor

from conftest import make_models


def save_sharded(state, folder: Path, per_shard: int = 2):
    """A Hugging Face sharded folder written with the official safetensors library."""
    folder.mkdir(parents=True)
    names = sorted(state)
    weight_map = {}
    for i in range(0, len(names), per_shard):
        fname = f"model-{i // per_shard + 1:05d}.safetensors"
        save_file({n: state[n].contiguous() for n in names[i:i + per_shard]}, str(folder / fname))
        weight_map.update({n: fname for n in names[i:i + per_shard]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "toy"}')
    return folder


@pytest.fixture
def on_disk(tmp_path):
    base, models = make_models(4, seed=11)
    save_sharded(base, tmp_path / "base")
    paths = []
    for i, m in enumerate(models):
        if i % 2:
            save_sharded(m, tmp_path / f"ft{i}")
            paths.append(tmp_path / f"ft{i}")
        else:  # mix single files and folders
            save_file({k: v.contiguous() for k, v in m.items()}, str(tmp_path / f"ft{i}.safetensors"))
            paths.append(tmp_path / f"ft{i}.safetensors")
    return tmp_path, base, models, paths


@pytest.mark.parametrize("method, params", [
    ("ties", {}), ("ties", {"preset": "original"}), ("ties", {"preset": "mergekit", "weights": [1, 2, 1, 0.5]}),
    ("ties", {"trim": "per_tensor", "k": 0.1}), ("task_arithmetic", {"lam": 0.4}), ("average", {}),
    ("dare", {"k": 0.3}), ("breadcrumbs", {"k": 0.5, "gamma": 0.05}),
])
def test_streaming_equals_in_memory_bit_for_bit(on_disk, method, params):
    tmp, base, models, paths = on_disk
    expected = merge(method, base, models, **params)
    out = merge_checkpoints(method, tmp / "base", paths, tmp / "out", params=params, chunk=37,
                            progress=False, max_shard_size=2000)
    got = load_state_dict(out)
    assert set(got) == set(expected)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    # readable by the official library too, sharded with an index, with the base's config
    assert (out / "model.safetensors.index.json").exists() and (out / "config.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    for f in set(index.values()):
        for n, t in load_file(str(out / f)).items():
            assert torch.equal(t, expected[n])
    cfg = json.loads((out / "merge_config.json").read_text())
    files = sorted(tmp.glob("base/*.safetensors")) + sorted(tmp.glob("ft*/*.safetensors")) + sorted(tmp.glob("ft*.safetensors"))
    assert cfg["method"] == method and len(cfg["checksums_sha256"]) == len(files) == 11
    import hashlib
    assert cfg["checksums_sha256"][str(paths[0])] == hashlib.sha256(paths[0].read_bytes()).hexdigest()


def test_streaming_with_tiny_chunks_equals_one_chunk(on_disk):
    tmp, base, models, paths = on_disk
    a = merge("ties", tmp / "base", paths, chunk=1)
    b = merge("ties", base, models, chunk=1 << 20)
    assert all(torch.equal(a[n], b[n]) for n in b)


def test_bf16_checkpoints(tmp_path):
    base, models = make_models(3, seed=12)
    base16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in base.items()}
    m16 = [{k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in m.items()} for m in models]
    save_state_dict(base16, tmp_path / "b")
    for i, m in enumerate(m16):
        save_state_dict(m, tmp_path / f"m{i}")
    out = merge_checkpoints("ties", tmp_path / "b", [tmp_path / f"m{i}" for i in range(3)], tmp_path / "o", progress=False)
    got = load_state_dict(out)
    assert got["layer0.w"].dtype == torch.bfloat16
    expected = merge("ties", base16, m16)
    assert all(torch.equal(got[n], expected[n]) for n in expected)


# ---------------------------------------------------------------------------------------------
# exact selection


@pytest.mark.parametrize("seed", range(6))
def test_radix_select_equals_sorting(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(5000, generator=g).abs() * 10 ** float(torch.randint(-3, 3, (), generator=g))
    if seed % 2:
        a = (a * 4).round() / 4  # many ties, many zeros
    desc = a.sort(descending=True).values
    for K in [0, 1, 17, 2500, 4999, 5000]:
        for ties in ("index", "keep"):
            c = cut_of_tensor(a, K, ties)
            kept = int((a >= c.value).sum()) if c.inclusive else int((a > c.value).sum()) + c.extra
            if ties == "index" or K in (0, 5000):
                assert kept == K
            else:
                assert kept == int((a >= desc[K - 1]).sum())
            assert c.kept == kept


def test_radix_select_over_a_stream_equals_one_tensor():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10_000, generator=g).abs()
    whole = cut_of_tensor(a, 1234)
    sel = TopK(1234)
    for stage in (1, 2):
        for piece in a.split(333):
            sel.add(piece)
        if not sel.advance():
            break
    assert sel.cut() == whole


# ---------------------------------------------------------------------------------------------
# the writer


def test_writer_refuses_out_of_order_and_incomplete(tmp_path):
    specs = {"a": TensorSpec(torch.float32, (2,)), "b": TensorSpec(torch.float32, (3,))}
    w = SafetensorsWriter(tmp_path, specs)
    with pytest.raises(RuntimeError, match="expected tensor a"):
        w.write("b", torch.zeros(3))
    w.write("a", torch.ones(2))
    with pytest.raises(RuntimeError, match="closed before b"):
        w.close()


def test_save_state_dict_is_atomic(tmp_path, monkeypatch):
    state = {"a": torch.ones(3)}
    save_state_dict(state, tmp_path / "ck")
    with pytest.raises(TiesnbError, match="already exists"):
        save_state_dict(state, tmp_path / "ck")

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(SafetensorsWriter, "close", boom)
    with pytest.raises(KeyboardInterrupt):
        save_state_dict({"a": torch.zeros(3)}, tmp_path / "ck", overwrite=True)
    assert torch.equal(load_state_dict(tmp_path / "ck")["a"], torch.ones(3))  # the old one survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporaries left


# ---------------------------------------------------------------------------------------------
# the CLI


def write_config(tmp, **cfg):
    path = tmp / "merge.yaml"
    path.write_text(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in cfg.items()}))
    return path


def test_cli_merges(on_disk, capsys):
    tmp, base, models, paths = on_disk
    cfg = write_config(tmp, method="ties", base=tmp / "base", models=[str(p) for p in paths],
                       params={"k": 0.2, "lam": 1.0, "trim": "global"}, exclude=["norm.*"])
    assert main(["merge", str(cfg), "--out", str(tmp / "out"), "--quiet"]) == 0
    got = load_state_dict(tmp / "out")
    expected = merge("ties", base, models, k=0.2, lam=1.0, exclude=["norm.*"])
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    resolved = json.loads((tmp / "out" / "merge_config.json").read_text())
    assert resolved["params"]["preset"] == "paper" and resolved["params"]["ties"] == "index"


def _corrupt(tmp, paths):
    bad = tmp / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return bad


def _truncated(tmp, paths):
    data = paths[0].read_bytes()
    bad = tmp / "trunc.safetensors"
    bad.write_bytes(data[: len(data) - 100])
    return bad


def _reshaped(tmp, paths):
    state = load_state_dict(paths[0])
    state["layer1.w"] = torch.zeros(12, 6)
    save_state_dict(state, tmp / "reshaped")
    return tmp / "reshaped"


def _missing_key(tmp, paths):
    state = load_state_dict(paths[0])
    del state["norm.w"]
    save_state_dict(state, tmp / "missing")
    return tmp / "missing"


def _nan(tmp, paths):
    state = load_state_dict(paths[0])
    state["layer1.w"][0, 0] = float("inf")
    save_state_dict(state, tmp / "nan")
    return tmp / "nan"


@pytest.mark.parametrize("make_bad, message", [
    (lambda tmp, paths: tmp / "nope.safetensors", "model 1: checkpoint not found: .*nope.safetensors"),
    (_corrupt, "corrupt safetensors file .*bad.safetensors: header is not valid JSON"),
    (_truncated, "corrupt safetensors file .*trunc.safetensors: tensor .* claims bytes"),
    (_reshaped, "shape mismatch for 'layer1.w'"),
    (_missing_key, "lacks 1 parameter\\(s\\) of the base: 'norm.w'"),
    (_nan, "non-finite values \\(NaN or inf\\) in 'layer1.w' of model 1"),
])
def test_cli_bad_checkpoints_one_line_and_no_output(on_disk, capsys, make_bad, message):
    tmp, base, models, paths = on_disk
    bad = make_bad(tmp, paths)
    cfg = write_config(tmp, method="ties", base=tmp / "base", models=[str(paths[1]), str(bad), str(paths[2])])
    assert main(["merge", str(cfg), "--out", str(tmp / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tiesnb: error: ")
    assert __import__("re").search(message, err), err
    assert not (tmp / "out").exists()
    assert not list(tmp.glob(".out*"))


@pytest.mark.parametrize("cfg, message", [
    (dict(metod="ties"), "unknown config key 'metod'.*valid keys: method, base, models"),
    (dict(params={"k": 2}), "parameter 'k' of method 'ties' out of range: 2.0 \\(needs 0 <= k <= 1\\)"),
    (dict(params={"lamda": 1}), "unknown parameter 'lamda' for method 'ties'; valid: preset, k, trim"),
    (dict(method="tie"), "unknown merge method 'tie'; valid methods: average"),
    (dict(models=[]), "'models' .* must be a non-empty list"),
    (dict(dtype="float8"), "'dtype' must be one of auto, float32, bfloat16, float16; got 'float8'"),
])
def test_cli_bad_configs(on_disk, capsys, cfg, message):
    tmp, base, models, paths = on_disk
    full = dict(method="ties", base=str(tmp / "base"), models=[str(p) for p in paths])
    full.update(cfg)
    if "metod" in cfg:
        del full["method"]
    path = write_config(tmp, **full)
    assert main(["merge", str(path), "--out", str(tmp / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and __import__("re").search(message, err), err
    assert not (tmp / "out").exists()


def test_cli_refuses_to_overwrite_without_force(on_disk, capsys):
    tmp, base, models, paths = on_disk
    cfg = write_config(tmp, method="average", base=str(tmp / "base"), models=[str(p) for p in paths])
    assert main(["merge", str(cfg), "--out", str(tmp / "out"), "--quiet"]) == 0
    assert main(["merge", str(cfg), "--out", str(tmp / "out"), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["merge", str(cfg), "--out", str(tmp / "out"), "--quiet", "--force"]) == 0


def test_a_failure_midway_leaves_nothing(on_disk):
    tmp, base, models, paths = on_disk
    state = load_state_dict(paths[0])
    state["norm.w"][3] = float("nan")  # the last tensor in order: most output is already written
    save_state_dict(state, tmp / "late_nan")
    with pytest.raises(TiesnbError, match="'norm.w'"):
        merge_checkpoints("task_arithmetic", tmp / "base", [tmp / "late_nan"], tmp / "out", progress=False)
    assert not (tmp / "out").exists() and not list(tmp.glob(".out*"))


def test_console_script_runs_as_a_process(on_disk):
    tmp, base, models, paths = on_disk
    cfg = write_config(tmp, method="ties", base=str(tmp / "base"), models=[str(p) for p in paths], params={"k": 3})
    r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "merge", str(cfg), "--out", str(tmp / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "out of range" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "methods", "ties"], capture_output=True, text=True)
    assert r.returncode == 0 and "zero_sign" in r.stdout


def test_merge_ab_runs_each_commit_from_its_own_copy(on_disk):
    """benchmarks/merge_ab.py: every arm imports its own copy of tiesnb (the check inside each
    run), the warm-up round is left out, and the summary names each commit."""
    tmp, base, models, paths = on_disk
    cfg = write_config(tmp, method="task_arithmetic", base=str(tmp / "base"), models=[str(p) for p in paths],
                       params={"lam": 0.3})
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_ab.py"
    r = subprocess.run([sys.executable, str(script), str(cfg), "HEAD", "WORKTREE", "--repeats", "1"],
                       capture_output=True, text=True, cwd=tmp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("warm-up") == 2 and r.stdout.count("round 1") == 2
    assert "median of 1 rounds" in r.stdout and "  HEAD: " in r.stdout and "  WORKTREE: " in r.stdout


def test_source_reads_ranges(on_disk):
    tmp, base, models, paths = on_disk
    with SafetensorsSource(tmp / "base") as src:
        assert torch.equal(src.read("embed.weight", 5, 29), base["embed.weight"].reshape(-1)[5:29])
        out = torch.empty(24, dtype=torch.float64)
        src.read_into("embed.weight", 5, 29, out)
        assert torch.equal(out, base["embed.weight"].reshape(-1)[5:29].double())


# ---------------------------------------------------------------------------------------------
# reading through memory maps, writing behind: the same bytes, little kept resident


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method, params", [
    ("task_arithmetic", {"lam": 0.37}), ("task_arithmetic", {"lam": 1.3, "weights": [0.1, 2, 0.3, -1]}),
    ("average", {}), ("average", {"weights": [0.1, 2, 0.3, 1]}),
    ("ties", {"k": 0.2}), ("ties", {"k": 0.3, "trim": "per_tensor"}), ("dare", {"k": 0.5}),
])
def test_merges_from_memory_maps_equal_the_copying_path(tmp_path, monkeypatch, dtype, method, params):
    from tiesnb.checkpoints import _FileMap
    from tiesnb.merge import engine, methods

    base, models = make_models(4, seed=12, shapes={"emb.w": (100, 64), "layer0.w": (64, 300), "layer0.b": (300,)})
    cast = lambda s: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in s.items()}
    save_sharded(cast(base), tmp_path / "base")
    for i, m in enumerate(models):
        save_sharded(cast(m), tmp_path / f"m{i}")
    paths = [tmp_path / f"m{i}" for i in range(4)]
    # drop mapped pages every 4 KB, so that every chunk after the first drops some and re-faults
    monkeypatch.setattr(_FileMap.__init__, "__defaults__", (4096,))
    drops = []
    real_drop = _FileMap._drop
    monkeypatch.setattr(_FileMap, "_drop", lambda self, lo, hi: (drops.append((lo, hi)), real_drop(self, lo, hi)))
    from tiesnb.merge import fused

    monkeypatch.setattr(engine, "VIEW_ROWS_BYTES", 0)  # small files: read as rows all the same
    stored = []  # kernels on numbers as stored: fed the files' own rows (a tuple of views), not copies
    real_stored = fused._stored
    monkeypatch.setattr(fused, "_stored", lambda raw: (stored.append(type(raw)), real_stored(raw))[1])
    viewed = merge_checkpoints(method, tmp_path / "base", paths, tmp_path / "viewed", params, chunk=700, checksums=False)
    assert drops, "no mapped pages were dropped"
    if dtype != torch.float16 and method in ("ties", "dare") and fused.available():
        assert stored and set(stored) == {tuple}
    monkeypatch.setattr(methods, "VIEWS", False)
    monkeypatch.setattr(engine, "VIEWS", False)
    copied = merge_checkpoints(method, tmp_path / "base", paths, tmp_path / "copied", params, chunk=700, checksums=False)
    a = (Path(viewed) / "model.safetensors").read_bytes()
    b = (Path(copied) / "model.safetensors").read_bytes()
    assert a == b


def test_file_map_views_and_drops(tmp_path):
    from tiesnb.checkpoints import _FileMap

    data = torch.arange(50_000, dtype=torch.float32)
    path = tmp_path / "x.bin"
    path.write_bytes(b"1234" + data.numpy().tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        fmap = _FileMap(fd, release=16384)
        assert fmap.view(4 + 4 * 10, 4 * 5, torch.float32).tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
        assert fmap.view(3, 8, torch.float32) is None  # misaligned for float32: the caller copies instead
        for start in range(0, 50_000, 1000):  # a forward pass: what lies 16 KB behind is dropped
            v = fmap.view(4 + 4 * start, 4000, torch.float32)
            assert torch.equal(v, data[start:start + 1000])
            assert fmap.high - fmap.mark <= 16384 + 4000
        v = fmap.view(4, 400, torch.float32)  # a second pass from the start: re-read after the drops
        assert torch.equal(v, data[:100]) and fmap.mark == 4
        fmap.close()
        assert _FileMap(os.open(tmp_path / "empty", os.O_RDONLY | os.O_CREAT)).view(0, 4, torch.float32) is None
    finally:
        os.close(fd)


def test_write_behind_hands_windows_to_the_disk_and_writes_the_same_bytes(tmp_path, monkeypatch):
    from tiesnb import io

    if io._SYNC_FILE_RANGE is None:
        pytest.skip("no sync_file_range here")
    payload = os.urandom(100_000)
    with open(tmp_path / "f", "wb") as f:
        wb = io.WriteBehind(f.fileno(), window=8192, lag=2, enabled=True)
        for i in range(0, len(payload), 3000):
            f.write(payload[i:i + 3000])
            if wb.due(f.tell()):
                f.flush()
                wb.advance(f.tell())
        assert wb.started == 100_000 // 8192 and wb.dropped == wb.started - 2
        os.fsync(f.fileno())
    assert (tmp_path / "f").read_bytes() == payload
    # switched off by the environment: nothing is handed over
    monkeypatch.setenv("TIESNB_WRITE_BEHIND", "0")
    assert not io.WriteBehind(0).enabled and not io.WriteBehind(0).due(1 << 40)


def test_writer_output_is_the_same_with_and_without_write_behind(on_disk, tmp_path, monkeypatch):
    from tiesnb import io

    root, _, _, paths = on_disk
    monkeypatch.setattr(io.WriteBehind.__init__, "__defaults__", (512, 1, None, None))  # tiny windows: many calls
    a = merge_checkpoints("ties", root / "base", paths, tmp_path / "a", {"k": 0.3}, checksums=False)
    monkeypatch.setenv("TIESNB_WRITE_BEHIND", "0")
    b = merge_checkpoints("ties", root / "base", paths, tmp_path / "b", {"k": 0.3}, checksums=False)
    assert (Path(a) / "model.safetensors").read_bytes() == (Path(b) / "model.safetensors").read_bytes()


@pytest.mark.parametrize("method", ["ties", "task_arithmetic"])
def test_views_path_names_a_non_finite_input_and_lets_an_overflow_pass(tmp_path, method):
    base, models = make_models(3, seed=13)
    save_file({k: v.contiguous() for k, v in base.items()}, str(tmp_path / "base.safetensors"))
    bad = [dict(m) for m in models]
    bad[1]["layer1.w"] = bad[1]["layer1.w"].clone()
    bad[1]["layer1.w"].view(-1)[3] = float("inf")
    paths = []
    for i, m in enumerate(bad):
        save_file({k: v.contiguous() for k, v in m.items()}, str(tmp_path / f"m{i}.safetensors"))
        paths.append(tmp_path / f"m{i}.safetensors")
    with pytest.raises(TiesnbError, match=r"non-finite values .* 'layer1.w' of model 1"):
        merge_checkpoints(method, tmp_path / "base.safetensors", paths, tmp_path / "out", checksums=False)
    assert not (tmp_path / "out").exists()
    # finite inputs whose differences overflow float32: not an input error
    huge = [dict(m) for m in models]
    huge[0]["layer1.w"] = torch.full_like(models[0]["layer1.w"], 3e38)
    b = dict(base)
    b["layer1.w"] = torch.full_like(base["layer1.w"], -3e38)
    save_file({k: v.contiguous() for k, v in b.items()}, str(tmp_path / "base.safetensors"))
    save_file({k: v.contiguous() for k, v in huge[0].items()}, str(tmp_path / "m0.safetensors"))
    save_file({k: v.contiguous() for k, v in models[1].items()}, str(tmp_path / "m1.safetensors"))
    out = merge_checkpoints(method, tmp_path / "base.safetensors", paths, tmp_path / "out2", checksums=False)
    assert (Path(out) / "model.safetensors").exists()


def test_bench_floor_writes_the_base_bytes(tmp_path):
    """The benchmark's floor + write copies the base exactly (its cost is a real checkpoint write)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        from merge_bench import cheapest_copy
    finally:
        sys.path.pop(0)
    payload = os.urandom(40 << 20 | 123)  # several 16 MB windows and a ragged tail
    (tmp_path / "src").write_bytes(payload)
    cheapest_copy(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst").read_bytes() == payload


def test_a_disk_error_while_writing_behind_names_the_file_and_leaves_nothing(on_disk, tmp_path, monkeypatch, capsys):
    import ctypes

    from tiesnb import io

    if io._SYNC_FILE_RANGE is None:
        pytest.skip("no sync_file_range here")

    def failing(fd, offset, nbytes, flags):
        ctypes.set_errno(5)  # EIO: what a failing disk reports
        return -1

    monkeypatch.setattr(io, "_SYNC_FILE_RANGE", failing)
    monkeypatch.setattr(io.WriteBehind.__init__, "__defaults__", (512, 1, None, None))  # the first window fails
    root, _, _, paths = on_disk
    cfg = write_config(tmp_path, method="task_arithmetic", base=str(root / "base"), models=[str(p) for p in paths],
                       params={"lam": 0.3})
    assert main(["merge", str(cfg), "--out", str(tmp_path / "merged"), "--quiet", "--no-checksums"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "writing to disk failed: Input/output error" in err[0] and "model.safetensors" in err[0], err
    assert not (tmp_path / "merged").exists() and not list(tmp_path.glob(".merged*"))
