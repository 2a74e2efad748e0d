"""Streaming over checkpoints on disk: same bits as in memory, atomic output, the CLI and its
one-line errors for every bad input, and nothing left behind when a merge fails."""

import json
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
