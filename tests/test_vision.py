"""The vision study's groundwork: image readers on the real small packages (and CIFAR-10's reader
on an archive built here in BIG-bench's layout), seeded class-balanced splits, EfficientNet-Lite0
from its wheel, deterministic fine-tuning, and BatchNorm re-estimation against an independent
computation."""

import base64
import io
import json
import tarfile

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


def test_cifar_reader_on_bigbench_layout(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    pics = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    examples = []
    for i, p in enumerate(pics):
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        examples.append({"input": base64.b64encode(buf.getvalue()).decode(),
                         "target_scores": {c: int(c == img.CIFAR10[i % 10]) for c in img.CIFAR10}})
    raw = json.dumps({"examples": examples}).encode()
    archive = tmp_path / "bigbench.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json")
        info.size = len(raw)
        tf.addfile(info, io.BytesIO(raw))
    monkeypatch.setattr(img, "asset_path", lambda name: archive)
    x, y = img.read_cifar10()
    assert np.array_equal(x, pics) and y.tolist() == [i % 10 for i in range(12)]


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


def test_resize_keeps_constant_images_and_makes_rgb():
    x = np.full((3, 8, 8), 200, dtype=np.uint8)
    out = img.resize(x)
    assert out.shape == (3, 32, 32, 3) and (out == 200).all()


def test_batchnorm_reestimation_against_an_independent_computation():
    pytest.importorskip("efficientnet_lite_pytorch")
    from tiesnb import vision

    enc = vision.load_encoder(size=32)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    vision.reestimate_batchnorm(enc, [batch])
    # independently: the stem convolution's output on the batch, its per-channel mean and
    # unbiased variance (what BatchNorm's running statistics hold after one batch, momentum None)
    x = (torch.from_numpy(batch).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        stem = enc.net._conv_stem(x)
    bn0 = enc.net._bn0
    assert torch.allclose(bn0.running_mean, stem.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn0.running_var, stem.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4, atol=1e-6)
    assert bn0.momentum is not None and not enc.training
    # two batches: the average of their statistics
    other = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    vision.reestimate_batchnorm(enc, [batch, other])
    y = (torch.from_numpy(other).permute(0, 3, 1, 2).float() - 127.0) / 128.0
    with torch.no_grad():
        stem2 = enc.net._conv_stem(y)
    assert torch.allclose(bn0.running_mean, (stem.mean(dim=(0, 2, 3)) + stem2.mean(dim=(0, 2, 3))) / 2, atol=1e-5)


def test_fine_tuning_is_deterministic_and_keeps_frozen_statistics():
    pytest.importorskip("efficientnet_lite_pytorch")
    from tiesnb import vision
    from tiesnb.train import fit_linear

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    y = np.arange(24) % 2
    states = []
    for _ in range(2):
        enc = vision.load_encoder(size=32)
        head = fit_linear(vision.features(enc, x), torch.from_numpy(y), 2)
        vision.fine_tune(enc, head, x, y, steps=2, batch_size=8, lr=1e-3, seed=5, batchnorm="frozen")
        states.append(vision.encoder_state(enc))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    pre = vision.encoder_state(vision.load_encoder(size=32))
    assert torch.equal(states[0]["_bn0.running_mean"], pre["_bn0.running_mean"])  # frozen: statistics kept
    assert not torch.equal(states[0]["_conv_stem.weight"], pre["_conv_stem.weight"])
    enc = vision.load_encoder(size=32)
    vision.fine_tune(enc, head, x, y, steps=1, batch_size=8, batchnorm="train")
    assert not torch.equal(vision.encoder_state(enc)["_bn0.running_mean"], pre["_bn0.running_mean"])
    with pytest.raises(TiesnbError, match="batchnorm must be frozen or train"):
        vision.fine_tune(enc, head, x, y, steps=1, batchnorm="eval")
