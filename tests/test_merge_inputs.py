"""Every input a user can bring gets a one-line error naming it, nothing is left behind, and no
input hangs: tied groups, sign vectors, every value of the merge YAML (a property-based test
throws random values at every key), and files that end early."""

import contextlib
import io
import itertools
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tiesnb.checkpoints import SafetensorsWriter, TensorSpec, save_state_dict
from tiesnb.cli import CONFIG_KEYS, main
from tiesnb.errors import TiesnbError
from tiesnb.merge import merge, merge_checkpoints


def tied_inputs(tmp: Path, v_shape=(4,), v_dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    base = {"w": torch.randn(8, 8, generator=g), "v": torch.randn(v_shape, generator=g).to(v_dtype)}
    models = [{k: t + 0.1 * torch.randn(t.shape, generator=g).to(t.dtype) for k, t in base.items()} for _ in range(2)]
    save_state_dict(base, tmp / "base")
    for i, m in enumerate(models):
        save_state_dict(m, tmp / f"m{i}")
    return base, models


def run_cli(tmp: Path, cfg: dict, out: str = "out") -> tuple[int, str]:
    path = tmp / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["merge", str(path), "--out", str(tmp / out), "--quiet", "--no-checksums"])
    return rc, err.getvalue()


def assert_one_line(rc: int, err: str, *words: str):
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("tiesnb: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture
def no_hang():
    """Fail (instead of hanging the suite) if the test runs over a minute."""
    import signal

    def alarm(*_):
        raise TimeoutError("hung for 60 s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_tied_tensors_of_different_shapes_end_in_an_error_not_a_hang(tmp_path, no_hang):
    base, models = tied_inputs(tmp_path)
    cfg = {"method": "task_arithmetic", "base": str(tmp_path / "base"), "models": [str(tmp_path / "m0"), str(tmp_path / "m1")],
           "tied": [["w", "v"]]}
    rc, err = run_cli(tmp_path, cfg)
    assert_one_line(rc, err, "'tied'", "'w' is (8, 8) float32 but 'v' is (4,) float32")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    with pytest.raises(TiesnbError, match="tied tensors must match"):  # in memory: no silent (4,)-shaped w
        merge("task_arithmetic", base, models, tied=[["w", "v"]])


def test_tied_tensors_of_different_dtypes_are_refused(tmp_path):
    base, models = tied_inputs(tmp_path, v_shape=(8, 8), v_dtype=torch.float16)
    with pytest.raises(TiesnbError, match="'w' is \\(8, 8\\) float32 but 'v' is \\(8, 8\\) float16"):
        merge("task_arithmetic", base, models, tied=[["w", "v"]])
    same = {**base, "v": base["w"].clone()}
    out = merge("task_arithmetic", same, [{**m, "v": m["w"]} for m in models], tied=[["w", "v"]])
    assert out["w"].dtype == torch.float32 and torch.equal(out["w"], out["v"])


@pytest.mark.parametrize("tied, message", [
    ("w", "'tied' must be a list of groups"),
    (["w", "v"], "'tied' must be a list of groups, each a list of two or more parameter names, e.g. [[shared.weight, "
                 "lm_head.weight]]; got the group 'w'"),
    ([["w", "nope"]], "'tied': 'nope' is not a tensor of the base"),
    ([["w"]], "needs two or more distinct names"),
    ([["w", "w"]], "needs two or more distinct names"),
    ([["w", "v"], ["v", "x"]], "'v' is in two groups"),
])
def test_bad_tied_groups_are_named(tmp_path, tied, message):
    tied_inputs(tmp_path, v_shape=(8, 8))
    cfg = {"method": "average", "base": str(tmp_path / "base"), "models": [str(tmp_path / "m0")], "tied": tied}
    rc, err = run_cli(tmp_path, cfg)
    assert_one_line(rc, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value, message", [
    ("dtype", ["float32"], "'dtype' must be one of auto, float32, bfloat16, float16; got ['float32']"),
    ("dtype", "float8", "'dtype' must be one of"),
    ("device", "gpu", "'device' must be cpu or cuda, got 'gpu'"),
    ("device", "mps", "'device' must be cpu or cuda, got 'mps'"),
    ("device", 3, "'device' must be cpu or cuda, got 3"),
    ("chunk", "big", "'chunk' must be a positive integer"),
    ("chunk", 1000.5, "'chunk' must be a positive integer"),
    ("chunk", 0, "'chunk' must be between 1 and"),
    ("chunk", True, "'chunk' must be a positive integer"),
    ("include", "layer.*", "'include' must be a list of glob patterns"),
    ("exclude", [1, 2], "'exclude' must be a list of glob patterns"),
    ("models", "m0", "'models'"),
    ("base", ["a", "b"], "'base'"),
    ("params", [1], "'params'"),
])
def test_every_bad_value_is_one_line_naming_its_key(tmp_path, key, value, message):
    tied_inputs(tmp_path)
    cfg = {"method": "ties", "base": str(tmp_path / "base"), "models": [str(tmp_path / "m0"), str(tmp_path / "m1")]}
    cfg[key] = value
    rc, err = run_cli(tmp_path, cfg)
    assert_one_line(rc, err, message)
    assert not (tmp_path / "out").exists()


def test_cuda_without_cuda_says_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    tied_inputs(tmp_path)
    cfg = {"method": "ties", "base": str(tmp_path / "base"), "models": [str(tmp_path / "m0")], "device": "cuda"}
    assert_one_line(*run_cli(tmp_path, cfg), "'device' is 'cuda' but CUDA is not available")


def test_sign_vectors_are_checked_name_by_name_and_shape_by_shape():
    g = torch.Generator().manual_seed(1)
    base = {"w": torch.randn(8, 8, generator=g)}
    models = [{"w": base["w"] + torch.randn(8, 8, generator=g)} for _ in range(3)]
    with pytest.raises(TiesnbError, match="'signs': 'w' has shape \\(9, 9\\), the parameter has \\(8, 8\\)"):
        merge("ties", base, models, signs={"w": torch.randn(9, 9)})
    with pytest.raises(TiesnbError, match="'signs': 'w' has shape \\(4,\\)"):
        merge("ties", base, models, signs={"w": torch.randn(4)})
    with pytest.raises(TiesnbError, match="lacks 1 merged parameter"):
        merge("ties", base, models, signs={"x": torch.randn(8, 8)})
    ok = merge("ties", base, models, signs={"w": torch.randn(8, 8, generator=g)})
    assert ok["w"].shape == (8, 8)


def test_a_copy_from_a_file_that_ends_early_stops_with_an_error(tmp_path):
    specs = {"a": TensorSpec(torch.float32, (1000,)), "b": TensorSpec(torch.float32, (1000,))}
    w = SafetensorsWriter(tmp_path, specs)
    w.write("a", torch.ones(1000))
    w._file.flush()
    path = tmp_path / w.shard_files[0]
    with open(path, "r+b") as f:  # the file loses its end (another process, a full disk)
        f.truncate(path.stat().st_size - 2000)
    w._file.seek(0, 2)
    with pytest.raises(TiesnbError, match="ended while copying 'a' to 'b'"):
        w.copy_written("a", "b")


# ---------------------------------------------------------------------------------------------
# property-based: random values of every type and shape at every key of the merge YAML


def yaml_values():
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                        max_leaves=6)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prop")
    tied_inputs(tmp, v_shape=(8, 8))
    return tmp


_counter = itertools.count()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(CONFIG_KEYS)), value=yaml_values())
def test_random_values_at_every_key_fail_cleanly(checkpoints, key, value):
    tmp = checkpoints
    cfg = {"method": "ties", "base": str(tmp / "base"), "models": [str(tmp / "m0"), str(tmp / "m1")],
           "params": {"k": 0.5}}
    cfg[key] = value
    out = f"out{next(_counter)}"
    rc, err = run_cli(tmp, cfg, out)
    if rc == 0:  # the value happened to be valid (an include pattern, a chunk size, ...)
        assert (tmp / out / "model.safetensors").exists()
        return
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("tiesnb: error: ") and "Traceback" not in err, err
    names = {key, "model" if key == "models" else key}
    if key == "params" and isinstance(value, dict):
        names |= {str(k) for k in value} | {repr(str(k))[1:-1] for k in value}
    assert any(re.search(re.escape(n), err) for n in names), (key, value, err)
    assert not (tmp / out).exists() and not list(tmp.glob(f".{out}*"))
