"""The vision study's groundwork: image readers on the real small packages (their pixels checked
against the pinned fingerprints), seeded class-balanced splits, EfficientNet-Lite0
from its wheel, prototype heads against a hand computation, the cosine schedule, deterministic
fine-tuning with BatchNorm's statistics kept, and the vision study's pipeline on a few images."""

import io

import numpy as np
import pytest
import torch

from tiesnb.data import images as img
from tiesnb.errors import TiesnbError


def test_digit_and_fashion_sources_read_from_their_packages():
    x, y = img.read_mnist()
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8 and np.bincount(y).tolist() == [500] * 10
    assert x.max() == 255 and (x[:, 0, 0] == 0).all()  # bright ink on a dark ground
    d, dy = img.read_digits()
    assert d.shape == (1797, 8, 8) and set(np.unique(dy)) == set(range(10)) and d.max() == 255
    f, fy = img.read_fashion()
    assert f.shape == (70000, 28, 28) and np.bincount(fy).tolist() == [7000] * 10
    # a trouser (class 1) is taller than wide; a bag (class 8) is not
    tall = lambda im: (im > 40).any(1).sum() / max(1, (im > 40).any(0).sum())  # noqa: E731
    assert np.median([tall(im) for im in f[fy == 1][:200]]) > 1.5 > np.median([tall(im) for im in f[fy == 8][:200]])


def test_animal_silhouettes_read_from_their_pickles_with_numpy_only():
    from tiesnb.data import assets

    assets.fetch(["animals"], quiet=True)
    x, y = img.read_animals()
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
    assert img.arrays_fingerprint(x, y) == img.READERS["animals"].fingerprint
    # a pickle that asks for anything but numpy arrays is refused
    import gzip
    import pickle

    evil = gzip.compress(pickle.dumps(print))
    with pytest.raises(TiesnbError, match="asks for builtins.print: refused"):
        img._NumpyOnly(io.BytesIO(gzip.decompress(evil))).load()


def test_an_image_source_with_other_pixels_is_refused(monkeypatch):
    x, y = img.read_digits()
    monkeypatch.setitem(img.READERS, "digits_reversed", img.ImageSource(lambda: (x[::-1].copy(), y[::-1].copy()),
                                                                        "sklearn", img.READERS["digits"].fingerprint))
    with pytest.raises(TiesnbError, match="image source digits_reversed: the images read from pypi:scikit-learn==1.7.2 "
                                          "differ from the pinned content"):
        img.source_images("digits_reversed")
    assert not (img.paths.DATA_CACHE / "images" / "digits_reversed-32.npz").exists()


def test_tasks_split_class_balanced_and_seeded():
    d = img.load_image_task("fashion_gear", 300, 40, 80, seed=3)
    assert d.labels == ("sandal", "sneaker", "bag", "ankle boot")
    assert d.train[0].shape == (300, 32, 32, 3) and np.bincount(d.test[1]).tolist() == [20] * 4
    assert np.bincount(d.val[1]).tolist() == [10] * 4
    again = img.load_image_task("fashion_gear", 300, 40, 80, seed=3)  # from the cache now
    assert again.fingerprint == d.fingerprint and (img.paths.DATA_CACHE / "images" / "fashion-32.npz").exists()
    assert img.load_image_task("fashion_gear", 300, 40, 80, seed=4).fingerprint != d.fingerprint
    every = np.concatenate([d.train[0], d.val[0], d.test[0]]).reshape(420, -1)
    assert len({r.tobytes() for r in every}) == 420  # no image twice, in a split or across splits
    with pytest.raises(TiesnbError, match="too few for 1000 test"):
        img.load_image_task("digits", 10, 900, 1000)
    with pytest.raises(TiesnbError, match="unknown image task 'svhn'"):
        img.load_image_task("svhn", 10, 10, 10)


def test_each_image_task_has_the_distinct_images_its_spec_states():
    import hashlib

    for name, spec in img.IMAGE_TASKS.items():
        x, y = img.source_images(spec.source)
        keep = np.flatnonzero(np.isin(y, spec.classes))
        assert len({hashlib.blake2b(x[i].tobytes(), digest_size=16).digest() for i in keep}) == spec.images, name


def test_resize_keeps_constant_images_and_makes_rgb():
    x = np.full((3, 8, 8), 200, dtype=np.uint8)
    out = img.resize(x)
    assert out.shape == (3, 32, 32, 3) and (out == 200).all()


def test_prototype_head_is_the_scaled_normalised_mean_of_normalised_embeddings():
    from tiesnb.families import vision

    # class 0: the first two of three examples (per_class = 2); class 1: its one example
    feats = torch.tensor([[3.0, 4.0, 0.0], [0.0, 2.0, 0.0], [9.0, 9.0, 9.0], [0.0, 0.0, 5.0]])
    labels = np.array([0, 0, 0, 1])
    pick = vision.prototype_examples(labels, 2, per_class=2)
    assert pick.tolist() == [0, 1, 3]
    h = vision.prototype_head(feats[pick], torch.from_numpy(labels[pick]), 2, scale=10.0)
    # by hand: class 0's normalised embeddings (0.6, 0.8, 0) and (0, 1, 0), mean (0.3, 0.9, 0),
    # normalised (1, 3, 0)/√10; class 1: (0, 0, 1); the mean norm of the three used: (5 + 2 + 5)/3 = 4
    want0 = torch.tensor([1.0, 3.0, 0.0]) / 10 ** 0.5 * (10.0 / 4)
    assert torch.allclose(h["weight"][0], want0) and torch.allclose(h["weight"][1], torch.tensor([0, 0, 2.5]))
    assert torch.equal(h["bias"], torch.zeros(2))
    # the logits of an embedding of the average norm: scale × cosine
    x = torch.tensor([0.0, 4.0, 0.0])
    assert torch.allclose(h["weight"] @ x, 10.0 * torch.tensor([3 / 10 ** 0.5, 0.0]))
    with pytest.raises(TiesnbError, match="prototype head of task 'x': no training example of class 1 among 3"):
        vision.prototype_examples(labels[:3], 2, per_class=2, task="x")


def test_cosine_schedule_warms_up_then_follows_half_a_cosine_to_zero():
    import math

    from tiesnb.training import TrainConfig, cosine_schedule

    cfg = TrainConfig(tasks=["t"], steps=110, warmup=10 / 110)
    assert [cosine_schedule(s, cfg) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear warm-up over 10 steps
    assert cosine_schedule(10, cfg) == 1.0 and cosine_schedule(110, cfg) == pytest.approx(0.0, abs=1e-12)
    assert cosine_schedule(60, cfg) == pytest.approx(0.5)  # half way down: cos(π/2)
    assert cosine_schedule(35, cfg) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


def _tiny_task(n=24, seed=1):
    from tiesnb.data.images import ImageTaskData

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    return ImageTaskData("t", ("a", "b"), (x, y), (x[:4], y[:4]), (x[:8], y[:8]), "fp")


def test_fine_tuning_is_deterministic_and_keeps_the_batchnorm_statistics():
    pytest.importorskip("efficientnet_lite_pytorch")
    from tiesnb.families import vision

    d = _tiny_task()
    x, y = d.train
    enc = vision.load_encoder(size=32)
    head = vision.prototype_head(vision.features(enc, x), torch.from_numpy(y), 2, scale=30.0)
    heads = {"t.weight": head["weight"], "t.bias": head["bias"]}
    cfg = lambda **k: vision.VisionTrainConfig(**{"tasks": ["t"], "steps": 2, "batch_size": 8, "lr": 1e-3,  # noqa: E731
                                                  "seed": 5, "image_size": 32, "autocast": "off", **k})
    states = [vision.finetune(cfg(), {"t": d}, heads, progress=False) for _ in range(2)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # same seed: the same bits
    other = vision.finetune(cfg(seed=6), {"t": d}, heads, progress=False)
    assert not torch.equal(other["_conv_stem.weight"], states[0]["_conv_stem.weight"])
    pre = vision.encoder_state(vision.load_encoder(size=32))
    assert all(torch.equal(states[0][k], pre[k]) for k in pre if "running" in k)  # the pretrained statistics
    assert not torch.equal(states[0]["_conv_stem.weight"], pre["_conv_stem.weight"])
    linear = vision.finetune(cfg(schedule="linear", steps=3), {"t": d}, heads, progress=False)
    cosine = vision.finetune(cfg(steps=3), {"t": d}, heads, progress=False)
    assert not torch.equal(linear["_conv_stem.weight"], cosine["_conv_stem.weight"])  # the schedule is used
    with pytest.raises(TiesnbError, match="schedule must be one of linear, cosine, got 'step'"):
        vision.finetune(cfg(schedule="step"), {"t": d}, heads, progress=False)


def test_grams_of_pointwise_convolutions_and_regmean_on_them():
    """A 1 × 1 convolution's Gram matrix is that of its input channels over every pixel
    (computed here by hand from a hook on the input); RegMean merges its 4-D weight as the
    least-squares solution of the same linear map."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from tiesnb.families import vision
    from tiesnb.merge import merge

    d = _tiny_task(6)
    state = vision.encoder_state(vision.load_encoder(size=32))
    grams = vision.gram_matrices(state, d.train[0], 6, image_size=32, batch_size=4, progress=False)
    enc = vision.load_encoder(state, 32).eval()
    conv = enc.net._blocks[1]._expand_conv
    seen = []
    conv.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    with torch.no_grad():
        enc(torch.from_numpy(d.train[0]))
    x = seen[0].permute(0, 2, 3, 1).reshape(-1, seen[0].shape[1])
    key = "_blocks.1._expand_conv.weight"
    assert torch.allclose(grams[key], x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)
    assert all(tuple(state[k].shape[2:]) == (1, 1) for k in grams)  # only pointwise convolutions
    assert "_conv_stem.weight" not in grams and "_blocks.0._depthwise_conv.weight" not in grams
    # RegMean on one 4-D weight: W = (Σ W_t G_t)(Σ G_t)⁻¹, flattened to (out, in)
    w = state[key]
    models = [{key: w + 0.01 * torch.randn_like(w)} for _ in range(2)]
    g = [{key: grams[key] + i * torch.eye(grams[key].shape[0])} for i in range(2)]
    got = merge("regmean", {key: w}, models, grams=g, alpha=1.0)[key]
    W = [m[key].reshape(w.shape[0], -1).double() for m in models]
    G = [gg[key].double() for gg in g]
    want = (sum(Wi @ Gi for Wi, Gi in zip(W, G)) @ torch.linalg.inv(sum(G))).float().reshape(w.shape)
    assert torch.allclose(got, want, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the vision study's pipeline on a few images (params/vision-smoke)


@pytest.fixture(scope="module")
def vision_smoke_run(tmp_path_factory):
    pytest.importorskip("efficientnet_lite_pytorch")
    import os
    import subprocess
    import sys

    from tiesnb import paths

    runs = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "TIESNB_RUNS": str(runs), "PYTHONWARNINGS": "ignore"}
    for run in ["probe", "train-digits", "train-fashion_gear", "train-multitask", "evaluate", "merge_sweep",
                "interference", "ablations", "num_tasks"]:
        nb = run.split("-")[0]
        own = paths.PARAMS / "vision-smoke" / f"{run}.yaml"
        params = own if own.exists() else paths.PARAMS / "vision" / f"{run}.yaml"
        r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", nb, "--study", "vision-smoke", "--quiet",
                            "--params", str(params)], env=env, capture_output=True, text=True, cwd=paths.ROOT)
        assert r.returncode == 0, f"{run} failed:\n{r.stderr[-3000:]}"
    return runs / "vision-smoke"


def test_the_vision_study_writes_every_output_with_the_prototype_head(vision_smoke_run):
    import pandas as pd

    from tiesnb import pipeline

    figures = vision_smoke_run / "figures"
    for name in [o for outs in pipeline.OUTPUTS.values() for o in outs]:
        assert (figures / f"{name}.csv").stat().st_size > 0, name
    assert not list(figures.glob("batchnorm.*"))
    for seed in (0, 1):
        for task in ("digits", "fashion_gear", "multitask"):
            assert (vision_smoke_run / f"seed-{seed}" / "checkpoints" / task / "model.safetensors").exists()
    t1 = pd.read_csv(figures / "table1.csv")
    assert {"prototype head", "fine-tuned", "TIES", "RegMean", "Fisher"} <= set(t1.method)
    assert "zero-shot" not in set(t1.method) and "probe" not in set(t1.method)
    # the family's paper columns: ViT-B/32 only (the paper's vision setting)
    assert [c for c in t1.columns if c.startswith("paper ")] == ["paper ViT-B/32"]
    # prototype heads: no bias, and every class's row of a task has the same norm (scale / the mean
    # embedding norm), which a fitted probe's rows would not
    import json

    from tiesnb.checkpoints import load_state_dict

    heads = load_state_dict(vision_smoke_run / "heads")
    assert json.loads((vision_smoke_run / "heads" / "params.json").read_text())["resolved"]["head"] == "prototype"
    for task in ("digits", "fashion_gear"):
        norms = heads[f"{task}.weight"].norm(dim=1)
        assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-5) and not heads[f"{task}.bias"].any()
