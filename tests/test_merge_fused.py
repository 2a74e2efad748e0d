"""The compiled kernels (tiesnb.merge.fused) against the torch kernels and a plain reference."""

import numpy as np
import pytest
import torch

from tiesnb.merge import fused, merge
from tiesnb.merge import kernels as K
from tiesnb.merge.select import HI_BINS

from conftest import make_models

pytestmark = pytest.mark.skipif(not fused.ENABLED, reason="numba not installed (or TIESNB_FUSED=0)")


def _coarse(n, C, seed):
    """Deltas with few distinct magnitudes (bf16-like), so ties at any threshold abound."""
    g = torch.Generator().manual_seed(seed)
    D = (torch.randint(-4, 5, (n, C), generator=g) * 0.25).float()
    D[:, :5] = 0.0
    return D, torch.randn(C, generator=g)


def _reference(D, base, thr, tie, left, low, zero_positive, disjoint, lam):
    """Trim (the first left[i] ties in flat order), elect, merge with the torch kernels."""
    n, C = D.shape
    T = torch.where(D.abs() > torch.from_numpy(thr).unsqueeze(1), D, torch.zeros(()))
    used = np.zeros(n, np.int64)
    for i in range(n):
        if left[i] > 0:
            ties = torch.nonzero((D[i].abs() == float(tie[i])) & (T[i] == 0)).flatten()[: left[i]]
            T[i, ties] = D[i, ties]
            used[i] = ties.numel()
    s = K.resolve_zero_signs(K.elect_mass(T), "positive" if zero_positive else "zero")
    merged = K.disjoint_merge(T, s, disjoint)
    flags = torch.zeros(C, dtype=torch.bool)
    for i in range(n):
        if low[i] >= 0:
            flags |= (D[i].abs() >= float(low[i])) & (T[i] == 0)
    return base + lam * merged, flags, used


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
@pytest.mark.parametrize("disjoint, zero_positive", [("mean", False), ("sum", True), ("mean_all", False)])
def test_merge_kernel_equals_the_reference(blocks, disjoint, zero_positive):
    n, C = 5, 3001  # tiles of 1,024 columns: blocks end inside tiles
    D, base = _coarse(n, C, seed=blocks)
    thr = np.array([0.5, 0.75, 0.25, -1.0, 0.5], np.float32)
    tie = np.array([0.5, 0.75, 0.25, 0.0, 0.5], np.float32)
    # no ties; run out in the first block; in a later one; never (more than the chunk holds)
    left = np.array([0, 40, 900, 0, 10**6], np.int64)
    low = np.array([0.25, -1, 0.125, -1, -1], np.float32)
    out, flags = torch.empty(C), torch.empty(C, dtype=torch.uint8)
    used = fused.merge(D, base, thr, tie, left, low, zero_positive, disjoint, 0.7, out, flags, blocks=blocks)
    want, want_flags, want_used = _reference(D, base, thr, tie, left, low, zero_positive, disjoint, 0.7)
    assert torch.equal(out, want)
    assert torch.equal(flags.bool(), want_flags) and want_flags.any()
    assert used.tolist() == want_used.tolist() and 0 < used[1] == 40 and used[4] < 10**6


@pytest.mark.parametrize("low_bits", [False, True])
def test_histogram_equals_bincount(low_bits):
    g = torch.Generator().manual_seed(3)
    D = torch.randn(4, 5000, generator=g) * torch.exp(3 * torch.randn(4, 5000, generator=g))
    D[:, :100] = D[:, :100].to(torch.bfloat16).float()  # low 16 bits 0
    keys = 2 * HI_BINS if low_bits else HI_BINS
    H = np.zeros((3, 4, keys), np.int64)
    fused.histogram(D, H, low_bits, times=2)
    bits = D.abs().view(torch.int32)
    want = bits >> 16
    if low_bits:
        want = want | ((bits & 0xFFFF) != 0).int() << 15
    for i in range(4):
        assert torch.equal(torch.from_numpy(H.sum(0)[i]), 2 * torch.bincount(want[i], minlength=keys))


def _bf16(seed, n=4):
    g = torch.Generator().manual_seed(seed)
    base = {f"l{i}.w": (0.02 * torch.randn(48, 40, generator=g)).to(torch.bfloat16) for i in range(3)}
    models = [{k: (v.float() + 2e-4 * torch.randn(v.shape, generator=g)).to(torch.bfloat16) for k, v in base.items()}
              for _ in range(n)]
    return base, models


@pytest.mark.parametrize("rows", ["copied", "views"])
@pytest.mark.parametrize("inputs", ["fp32", "bf16"])
@pytest.mark.parametrize("params", [
    {}, {"k": 0.05}, {"trim": "per_tensor"}, {"preset": "peft"}, {"disjoint": "sum", "zero_sign": "positive"},
    {"disjoint": "mean_all", "ties": "keep", "count": "original"}, {"k": 1.0},
])
def test_merges_equal_with_and_without_the_compiled_kernels(monkeypatch, inputs, params, rows):
    from tiesnb.merge import engine

    # "views": the kernels read the in-memory tensors themselves, as they read big files' maps
    monkeypatch.setattr(engine, "VIEW_ROWS_BYTES", 0 if rows == "views" else engine.VIEW_ROWS_BYTES)
    base, models = make_models(4, seed=5) if inputs == "fp32" else _bf16(6)
    for chunk in (97, 1 << 20):
        fast = merge("ties", base, models, chunk=chunk, **params)
        monkeypatch.setattr(fused, "ENABLED", False)
        slow = merge("ties", base, models, chunk=chunk, **params)
        monkeypatch.setattr(fused, "ENABLED", True)
        assert all(torch.equal(fast[n], slow[n]) for n in slow), (params, chunk)


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_histogram_from_stored_numbers_equals_the_float32_one(dtype, rows):
    """The kernels reading chunks as stored — one (n + 1, C) array, or a tuple of rows (the
    inputs' mapped files) — against the float32 task vectors formed by torch."""
    g = torch.Generator().manual_seed(4)
    raw = (0.02 * torch.randn(4, 9000, generator=g)).to(dtype)
    raw[2, :3000] = (raw[0, :3000].float() + 2e-4 * torch.randn(3000, generator=g)).to(dtype)
    stored = tuple(raw) if rows else raw
    low_bits = dtype == torch.bfloat16
    keys = 2 * HI_BINS if low_bits else HI_BINS
    H = np.zeros((3, 3, keys), np.int64)
    assert fused.histogram_stored(stored, H, low_bits, times=3)
    D = raw[1:].float() - raw[0].float()
    want = np.zeros((1, 3, keys), np.int64)
    fused.histogram(D, want, low_bits, times=3)
    assert np.array_equal(H.sum(0), want[0])
    base, out = torch.empty(9100), torch.zeros(3, 9100)
    assert fused.stored_delta(stored, base, out, at=50)  # into columns 50…9049 of a wider array
    assert torch.equal(base[50:9050], raw[0].float()) and torch.equal(out[:, 50:9050], D)
    assert not out[:, :50].any() and not out[:, 9050:].any()
    raw[3, 5000] = float("nan")
    assert not fused.histogram_stored(tuple(raw) if rows else raw, H, low_bits)
    assert not fused.stored_delta(tuple(raw) if rows else raw, base, out)


@pytest.mark.parametrize("trim", ["global", "per_tensor"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bf16_non_finite_input_is_named(monkeypatch, tmp_path, bad, trim):
    from tiesnb.checkpoints import save_state_dict
    from tiesnb.errors import TiesnbError
    from tiesnb.merge import engine, merge_checkpoints

    # the kernels read the files' maps, as for big inputs (per-tensor: cuts from the stored rows)
    monkeypatch.setattr(engine, "VIEW_ROWS_BYTES", 0)
    base, models = _bf16(7, n=3)
    models[2]["l1.w"][3, 4] = bad
    save_state_dict(base, tmp_path / "b")
    for i, m in enumerate(models):
        save_state_dict(m, tmp_path / f"m{i}")
    with pytest.raises(TiesnbError, match=r"non-finite values \(NaN or inf\) in 'l1.w' of model 2"):
        merge_checkpoints("ties", tmp_path / "b", [tmp_path / f"m{i}" for i in range(3)], tmp_path / "o",
                          {"trim": trim}, progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_merge_kernel_on_stored_numbers_equals_the_float32_one(blocks, dtype, rows):
    g = torch.Generator().manual_seed(blocks)
    raw = (0.02 * torch.randn(5, 3001, generator=g)).to(dtype)
    raw[1:] = (raw[0].float() + 2e-3 * torch.randint(-3, 4, (4, 3001), generator=g)).to(dtype)
    D, base = raw[1:].float() - raw[0].float(), raw[0].float()
    thr = np.array([2e-3, 1e-3, -1.0, 3e-3], np.float32)
    mags = D[1].abs()
    thr[1] = float(mags[mags > 0].mode().values)  # a magnitude many entries share: ties at the cut
    tie, left = thr.copy(), np.array([0, 10**6, 0, 3001], np.int64)
    low = np.array([-1.0, -1.0, -1.0, 1e-3], np.float32)  # model 3: an undecided bin, columns flagged
    out, flags, want, want_flags = torch.empty(3001), torch.empty(3001, dtype=torch.uint8), torch.empty(3001), torch.empty(3001, dtype=torch.uint8)
    stored = tuple(raw) if rows else raw
    used = fused.merge_stored(stored, thr, tie, left, low, False, "mean", 0.5, out, flags, blocks=blocks)
    want_used = fused.merge(D, base, thr, tie, left, low, False, "mean", 0.5, want, want_flags, blocks=blocks)
    assert torch.equal(out, want) and used.tolist() == want_used.tolist() and used[1] > 0
    assert torch.equal(flags, want_flags) and flags.any()
    # model 1's ties run out inside the chunk: blocks working in parallel cannot know where, and
    # the caller is told (one block can: it keeps the first 5, as the float32 kernel does)
    few = np.array([0, 5, 0, 0], np.int64)
    used = fused.merge_stored(stored, thr, tie, few, low, False, "mean", 0.5, out, flags, blocks=blocks)
    want_used = fused.merge(D, base, thr, tie, few, low, False, "mean", 0.5, want, want_flags, blocks=blocks)
    if blocks == 1:
        assert torch.equal(out, want) and used.tolist() == want_used.tolist() == [0, 5, 0, 0]
    else:
        assert used is None


# ---------------------------------------------------------------------------------------------
# task arithmetic and averaging in one compiled pass (fused.linear)


def _in_dtype(state, dtype):
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("method, params", [
    ("task_arithmetic", {"lam": 0.37}), ("task_arithmetic", {"lam": 1.3, "weights": [0.1, 2, 0.3, -1, 0.5]}),
    ("average", {}), ("average", {"weights": [0.1, 2, 0.3, 1, 0.5]}),
])
def test_linear_kernel_equals_the_torch_path_bit_for_bit(monkeypatch, dtype, method, params):
    from tiesnb.merge import methods

    fused._k()  # loaded: the compiled pass then runs for float32 inputs too
    base, models = make_models(5, seed=3)
    base, models = _in_dtype(base, dtype), [_in_dtype(m, dtype) for m in models]
    viewed = merge(method, base, models, dtype="float32", chunk=1000, **params)  # from the dicts' own storage
    monkeypatch.setattr(methods, "VIEWS", False)
    fast = merge(method, base, models, dtype="float32", chunk=1000, **params)  # chunks end inside tiles
    monkeypatch.setattr(methods, "FUSED_LINEAR", False)
    slow = merge(method, base, models, dtype="float32", chunk=1000, **params)
    for other in (fast, viewed):
        for n in other:
            assert torch.equal(other[n], slow[n]) and (other[n].view(-1)[:5].sign() == slow[n].view(-1)[:5].sign()).all(), n
    # the torch path is the old expression: λ·Σ(w·τ) added to the base, rows summed in order
    n = "layer0.w"
    X = torch.stack([m[n].float() for m in models])
    w = torch.tensor(params.get("weights", [1.0] * 5))
    if method == "average":
        want = K.rowsum(X * w[:, None, None]) / (w.sum() if "weights" in params else 5)
    else:
        D = X - base[n].float()
        want = base[n].float() + params["lam"] * K.rowsum(D * w[:, None, None] if "weights" in params else D)
    assert torch.equal(slow[n], want)


@pytest.mark.parametrize("views", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_kernel_names_a_non_finite_input_and_lets_an_overflow_pass(monkeypatch, dtype, views):
    from tiesnb.merge import methods

    monkeypatch.setattr(methods, "VIEWS", views)
    fused._k()
    base, models = make_models(3, seed=4)
    base, models = _in_dtype(base, dtype), [_in_dtype(m, dtype) for m in models]
    bad = [dict(m) for m in models]
    bad[2]["layer1.w"] = bad[2]["layer1.w"].clone()
    bad[2]["layer1.w"].view(-1)[17] = float("nan")
    for method in ("task_arithmetic", "average"):
        with pytest.raises(Exception, match="model 2"):
            merge(method, base, bad)
    # the base is not in an average: the kernel checks it apart (an inf would not reach the output)
    bad_base = dict(base)
    bad_base["layer0.w"] = bad_base["layer0.w"].clone()
    bad_base["layer0.w"].view(-1)[3] = float("inf")
    with pytest.raises(Exception, match="base"):
        merge("average", bad_base, models)
    huge = [dict(m) for m in models]  # finite inputs whose sum overflows float32: no error, inf out
    if dtype == torch.float32:
        for m in huge:
            m["layer1.w"] = torch.full_like(m["layer1.w"], 3e38)
        out = merge("task_arithmetic", base, huge, lam=1.0)
        assert torch.isinf(out["layer1.w"]).all()


# ---------------------------------------------------------------------------------------------
# per-tensor trims: each held tensor's cuts in one compiled call, then one merge call


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params", [
    {"trim": "per_tensor", "k": 0.2}, {"trim": "per_tensor", "k": 0.2, "ties": "keep"},
    {"preset": "mergekit", "k": 0.05, "weights": [1.0, 2.0, 0.5, 1.0]}, {"preset": "peft", "k": 0.3},
    {"trim": "per_tensor", "k": [0.0, 1.0, 0.2, 0.5]},
])
@pytest.mark.parametrize("rows", ["held", "stored"])
def test_compiled_per_tensor_cuts_equal_the_streaming_select(monkeypatch, dtype, params, rows):
    from tiesnb.merge import engine, methods

    # "stored": cuts and merge from the inputs' own rows (tensor_cuts_stored, merge_stored by place)
    monkeypatch.setattr(engine, "VIEW_ROWS_BYTES", 0 if rows == "stored" else engine.VIEW_ROWS_BYTES)
    g = torch.Generator().manual_seed(11)
    base, models = make_models(4, seed=12)
    for m in models:  # deltas on a grid: many magnitudes equal the threshold
        for n, v in m.items():
            if v.is_floating_point():
                m[n] = base[n] + torch.round((v - base[n]) * 8) / 8 + 0 * torch.rand(v.shape, generator=g)
    base, models = _in_dtype(base, dtype), [_in_dtype(m, dtype) for m in models]
    fast = merge("ties", base, models, chunk=777, **params)
    monkeypatch.setattr(methods, "COMPILED_CUTS", False)
    slow = merge("ties", base, models, chunk=777, **params)
    for n in fast:
        assert torch.equal(fast[n], slow[n]), n
    monkeypatch.setattr(methods, "COMPILED_CUTS", True)
    band = merge("breadcrumbs", base, models, k=0.5, gamma=0.1)
    monkeypatch.setattr(methods, "COMPILED_CUTS", False)
    assert all(torch.equal(band[n], v) for n, v in merge("breadcrumbs", base, models, k=0.5, gamma=0.1).items())


@pytest.mark.parametrize("width", [10_003, 777])
@pytest.mark.parametrize("low_bits", [False, True])
@pytest.mark.parametrize("values", ["continuous", "quantized", "mixed"])
def test_tensor_cuts_equal_sorting(values, low_bits, width):
    """Every way of the kernel against sorting: pass 2 with a branch (few entries in the cut's
    bin) and branch-free (many, as bf16 task vectors have); with ``low_bits``, a cut on a bin's
    floor found by pass 1 alone or, above it, by pass 2; rows shorter than SORT_BELOW sorted."""
    g = torch.Generator().manual_seed(5)
    D = torch.randn(5, width, generator=g) * 2e-4
    if values != "continuous":  # bf16 weights' differences: few distinct magnitudes
        b = (torch.randn(width, generator=g) * 0.02).to(torch.bfloat16).float()
        D = (b + D).to(torch.bfloat16).float() - b
    if values == "mixed":  # many low bits set: some cuts fall above their bin's floor
        D[:, ::3] *= 1.0 + 2.0 ** -20
    K = [1, 17, width // 5, width * 7 // 9, width]
    for i, (value, greater, equal) in enumerate(fused.tensor_cuts(D, K, low_bits)):
        mags = D[i].abs().sort(descending=True).values
        want = float(mags[K[i] - 1])
        assert (value, greater, equal) == (want, int((mags > want).sum()), int((mags == want).sum()))


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("width", [10_003, 777])
def test_tensor_cuts_from_stored_numbers(dtype, width, rows):
    """tensor_cuts_stored against tensor_cuts of the float32 task vectors, and its place of the
    last kept tie against counting them in flat order; merge_stored given those places against the counting
    merge kernel."""
    g = torch.Generator().manual_seed(width)
    base = (0.02 * torch.randn(width, generator=g)).to(dtype)
    X = (base.float() + 2e-3 * torch.randint(-3, 4, (4, width), generator=g)).to(dtype)
    raw = torch.cat([base[None], X])
    D = X.float() - base.float()
    stored = tuple(raw) if rows else raw
    K = [1, width // 5, width * 7 // 9, width]
    low_bits = dtype == torch.bfloat16
    cuts, upto = fused.tensor_cuts_stored(stored, K, low_bits)
    assert cuts == fused.tensor_cuts(D, K, low_bits)
    for i, (value, greater, equal) in enumerate(cuts):
        ties = torch.nonzero(D[i].abs() == value).flatten()
        take = K[i] - greater
        assert upto[i] == (int(ties[take - 1]) + 1 if take < equal else width)
    assert any(u < width for u in upto)  # ties split at some cut
    upto_kept = [u if u < width else 0 for u in upto]  # a cut keeping every tie: inclusive
    thr_incl = np.array([np.nextafter(np.float32(v), np.float32(0)) if u == width else v
                         for (v, _, _), u in zip(cuts, upto)], np.float32)
    tie = np.array([v if u < width else 0 for (v, _, _), u in zip(cuts, upto)], np.float32)
    left = np.array([K[i] - cuts[i][1] if upto[i] < width else 0 for i in range(4)], np.int64)
    low = np.full(4, -1.0, np.float32)
    out, flags, want, want_flags = (torch.empty(width), torch.empty(width, dtype=torch.uint8),
                                    torch.empty(width), torch.empty(width, dtype=torch.uint8))
    for blocks in (1, 2, 3):
        fused.merge_stored(stored, thr_incl, tie, None, low, False, "mean", 0.5, out, flags, blocks=blocks, upto=upto_kept)
        fused.merge(D, base.float(), thr_incl, tie, left, low, False, "mean", 0.5, want, want_flags, blocks=1)
        assert torch.equal(out, want), blocks
    raw[2, width // 2] = float("nan")
    assert fused.tensor_cuts_stored(tuple(raw) if rows else raw, K, low_bits) is None
    raw[2, width // 2] = float("-inf")
    assert fused.tensor_cuts_stored(tuple(raw) if rows else raw, K, low_bits) is None


def test_tensor_cuts_by_hand():
    D = torch.tensor([[0.5, -2.0, 0.5, 3.0, -0.5, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    # row 0: the 3rd largest magnitude is 0.5, 2 larger, 3 equal; row 1: all six equal 1.0
    assert fused.tensor_cuts(D, [3, 2]) == [(0.5, 2, 3), (1.0, 0, 6)]


def test_compiled_dare_mask_is_the_torch_mask():
    for key in (0, 12345, 2**64 - 1, 0xDEADBEEF12345678):
        for start in (0, 2**32 - 5, 10**12):
            for density in (0.0, 0.1, 0.5, 1.0):
                assert torch.equal(fused.keep_random(key, start, start + 10007, density),
                                   K.keep_random(key, start, start + 10007, density)), (key, start, density)


def test_weights_of_one_are_no_weights():
    # mergekit configs spell `weight: 1.0` for every model: the same bits as no weights, by the
    # compiled kernel (weighted_mean without weights is the mean)
    base, models = make_models(3, seed=6)
    plain = merge("ties", base, models, preset="mergekit", k=0.3)
    ones = merge("ties", base, models, preset="mergekit", k=0.3, weights=[1.0, 1.0, 1.0])
    assert all(torch.equal(plain[n], ones[n]) for n in plain)
    from oracle import ties_oracle
    from tiesnb.merge import TIES_PRESETS
    want = ties_oracle(base, models, **{**TIES_PRESETS["mergekit"], "k": 0.3, "weights": [1.0, 1.0, 1.0]})
    assert all(torch.allclose(ones[n], want[n], atol=1e-6) for n in want if want[n].is_floating_point())


def test_a_compiled_merge_leaves_torch_threads_alone():
    """numba's OpenMP layer sets the process's OpenMP thread count to every core when it starts;
    torch shares that runtime, so a 1-thread study run became a 2-thread one (10-20x slower beside
    another run on 2 cores). In a fresh process, since the layer starts once per process."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from tiesnb.merge import fused, merge\n"
            "g = torch.Generator().manual_seed(0)\n"
            "ms = [{'w': torch.randn(300, 300, generator=g)} for _ in range(3)]\n"
            "merge('ties', {'w': torch.zeros(300, 300)}, ms, k=0.2, lam=1.0)\n"
            "assert fused.loaded(), 'the compiled kernels did not run'\n"
            "print(torch.get_num_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
