"""mergekit configs, run as they are: ``tiesnb merge config.yml`` reads mergekit's YAML format
for the methods both share and translates it to tiesnb's, keeping mergekit's semantics.

| mergekit ``merge_method`` | tiesnb                                                              |
|---------------------------|---------------------------------------------------------------------|
| ``ties``                  | ``ties``, preset ``mergekit`` (per-tensor top-k, at least one entry kept, election on weighted deltas, ≥ 0 elects +); ``normalize`` → Σwτ/Σw over agreeing entries, else their sum |
| ``dare_ties``             | ``dare_ties`` with the same election and weighting; ``rescale``      |
| ``task_arithmetic``       | ``task_arithmetic``                                                  |
| ``linear``                | ``average`` (``normalize: false`` is refused: no tiesnb equivalent)  |
| ``breadcrumbs``           | ``breadcrumbs``                                                      |
| ``dare_linear``           | ``dare``                                                             |

**mergekit's parameter language.** ``weight``, ``density`` and ``gamma`` are per model (each
model's ``parameters``, else the slice's, else the top-level ones); ``lambda``, ``normalize``,
``rescale`` and ``int8_mask`` are shared (the slice's, else the top-level ones). Each value may
be a number; a *gradient* (a list, interpolated linearly across the layers, ``t = i / (L − 1)``
for layer ``i`` of a slice of ``L`` layers, as mergekit's planner does); or *filtered* values
(``[{filter: mlp, value: 0.5}, {value: 0}]``: the first entry whose ``filter`` is a substring of
the tensor's name, or has no filter, gives the value — itself a number or a gradient; when none
matches, the next scope's value is used). Tensors outside the layers (embeddings before, final
norm and head after) take ``t = 0`` and the first slice's values (embeddings) or the last's
(the rest), as mergekit's ``pre_weights``/``post_weights``. A tensor's layer is the number after
``layers.``, ``layer.``, ``h.``, ``blocks.`` or ``block.`` in its name; the layer count is the base's
``num_hidden_layers`` (``config.json``), else the highest layer found plus one. Every tensor's
values are resolved here, and the ones that differ from the most common are passed to the engine
as ``tensor_params`` (with every model's density, which may differ between models).

``slices`` are read when every slice's sources take the same ``layer_range``, the slices follow
each other from layer 0 to the last, and every slice lists the same models: the merge is then
layer by layer, as with ``models``, with the slices' own parameters and gradients. Stacking or
reordering layers (a "frankenmerge") is refused, naming the slice.

``tokenizer_source`` (``union``, ``base`` or a model) and ``tokenizer: {source: …}`` run when every
model's vocabulary equals the base's (``tokenizer.json``'s model and added tokens,
``tokenizer.model``, ``vocab.json``/``merges.txt``/``vocab.txt``, added tokens): mergekit's
embedding permutation is then the identity, and the base's tokenizer files are copied. A real
difference is a one-line error naming the model and the files that differ.

Known differences from mergekit's output: mergekit computes in ``dtype`` (tiesnb always in
float32, then writes ``out_dtype`` or ``dtype``), so with ``dtype: float16`` or ``bfloat16`` the
two differ by rounding; ``linear`` and normalized task arithmetic agree to float32 rounding, not
bit for bit (mergekit accumulates with fused multiply-adds and divides by Σw after summing); with exactly equal magnitudes at a trim threshold mergekit keeps
whichever entries its (unstable) sort puts first, tiesnb the earliest positions; DARE's random
masks come from different generators.

Models given as hub ids (``org/name`` that is not a local folder) are fetched with
``huggingface_hub`` when a hub is reachable; otherwise the error names the id.

Why one module (~460 lines): it is one translation — mergekit's keys, scopes, gradients, filters,
slices and tokenizer recipes into one tiesnb call — and each check names the config key it
refuses; split apart, the scopes would be resolved in one file and checked in another.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import TiesnbError

KEYS = {"merge_method", "base_model", "models", "slices", "parameters", "dtype", "out_dtype", "tokenizer_source",
        "tokenizer"}
UNSUPPORTED = {"modules": "modules (multi-module architectures)", "chat_template": "a chat template"}
METHODS = {"ties": "ties", "dare_ties": "dare_ties", "task_arithmetic": "task_arithmetic", "linear": "average",
           "breadcrumbs": "breadcrumbs", "dare_linear": "dare"}
# mergekit's defaults per method: normalize (divide by the weights' sum), rescale (DARE's 1/k)
NORMALIZE = {"ties": True, "dare_ties": False, "task_arithmetic": False, "linear": True, "breadcrumbs": False,
             "dare_linear": False}
RESCALE = {"dare_ties": True, "dare_linear": True}
SHARED = {"normalize": bool, "lambda": float, "int8_mask": bool, "rescale": bool}  # one per tensor
PER_MODEL = {"weight": 1.0, "density": 1.0, "gamma": 0.01}  # one per model and tensor, with defaults
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")
PRE = re.compile(r"embed|wte|wpe|word_embeddings")  # tensors before the layers (mergekit's pre_weights)


def is_mergekit(cfg: Any) -> bool:
    return isinstance(cfg, dict) and "merge_method" in cfg


def resolve_model(ref: Any, where: str) -> str:
    """A local checkpoint path, or a hub id fetched into the local cache (or a one-line error)."""
    if not isinstance(ref, str) or not ref.strip():
        raise TiesnbError(f"{where} must be a model path or hub id (a string), got {ref!r}")
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    if "@" in ref or "+" in ref:
        raise TiesnbError(f"{where}: '{ref}' (a revision or LoRA reference) is not supported by tiesnb; give a folder")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, allow_patterns=["*.safetensors", "*.json", "*.model", "*.txt", "tokenizer*"])
    except Exception as e:  # offline, unknown repository, no permission: all say the same to the user
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TiesnbError(f"{where}: '{ref}' is not a local folder and could not be fetched from the Hugging Face "
                          f"hub ({type(e).__name__}: {reason[:120]})") from None


# ----------------------------------------------------------------------------------------------
# one setting's value for one tensor (mergekit's evaluate_setting)


def _number(value: Any, where: str, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise TiesnbError(f"{where} must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TiesnbError(f"{where} must be a number, a gradient (a list of numbers) or filtered values, got {value!r}")
    return float(value)


def check_setting(value: Any, where: str, kind: type = float) -> None:
    """A one-line error for a setting mergekit would not read (before any tensor is resolved)."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for j, cond in enumerate(value):
            extra = sorted(set(cond) - {"filter", "value"})
            if extra or "value" not in cond:
                raise TiesnbError(f"{where}[{j}] must be {{filter: ..., value: ...}}, got {cond!r}")
            if cond.get("filter") is not None and not isinstance(cond["filter"], str):
                raise TiesnbError(f"{where}[{j}].filter must be a string, got {cond['filter']!r}")
            check_setting(cond["value"], f"{where}[{j}].value", kind)
    elif isinstance(value, list):
        if any(isinstance(v, (dict, list)) for v in value):
            raise TiesnbError(f"{where}: a list mixes filtered values with numbers; give one or the other")
        for v in value:
            _number(v, where, kind)
    else:
        _number(value, where, kind)


def evaluate(value: Any, tensor: str, t: float, kind: type = float) -> Any:
    """The value of a setting for ``tensor`` at gradient position ``t``; None when filtered out."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        if not value:
            return None
        if all(not isinstance(v, dict) for v in value):
            if kind is bool:  # discrete values are picked, not interpolated
                return value[int(t * (len(value) - 1))]
            scaled = t * (len(value) - 1)  # mergekit's interpolation, in the same float operations
            i0 = int(scaled)
            i1 = min(len(value) - 1, i0 + 1)
            frac = scaled - i0
            return float((1 - frac) * value[i0] + frac * value[i1])
        for cond in value:
            f = cond.get("filter")
            if f is None or f == "*" or (tensor and f in tensor):
                return evaluate(cond["value"], tensor, t, kind)
        return None
    return kind(value) if kind is bool else float(value)


def _first(scopes: list[dict | None], key: str, tensor: str, t: float, kind: type, default: Any) -> Any:
    for scope in scopes:
        if scope and key in scope:
            v = evaluate(scope[key], tensor, t, kind)
            if v is not None:
                return v
    return default


# ----------------------------------------------------------------------------------------------
# the layout: models or slices → per output tensor, its slice and gradient position


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TiesnbError(f"{where} must be a mapping, got {value!r}")
    return value


def _check_params(params: dict, where: str, method: str) -> None:
    known = set(SHARED) | set(PER_MODEL)
    for key, value in params.items():
        if key not in known:
            raise TiesnbError(f"mergekit parameter '{where}.{key}' is not supported by tiesnb for {method}; "
                              f"supported: {', '.join(sorted(known))}")
        check_setting(value, f"{where}.{key}", SHARED.get(key, float))


def _slices(cfg: dict, where: str, method: str) -> list[dict]:
    """``[{"range": (a, b) or None, "params": {...}, "sources": [(model ref, params)]}]``."""
    if "slices" in cfg and "models" in cfg:
        raise TiesnbError(f"{where} gives both 'models' and 'slices': mergekit takes exactly one")
    if "models" in cfg:
        models = cfg["models"]
        if not isinstance(models, list) or not models:
            raise TiesnbError(f"'models' in {where} must be a non-empty list of {{model: ..., parameters: ...}}")
        sources = []
        for i, entry in enumerate(models):
            if not isinstance(entry, dict) or "model" not in entry:
                raise TiesnbError(f"models[{i}] in {where} must be a mapping with 'model', got {entry!r}")
            extra = sorted(set(entry) - {"model", "parameters"})
            if extra:
                raise TiesnbError(f"mergekit key 'models[{i}].{extra[0]}' in {where} is not supported by tiesnb")
            params = _mapping(entry.get("parameters"), f"models[{i}].parameters in {where}")
            _check_params(params, f"models[{i}].parameters", method)
            sources.append((entry["model"], params))
        return [{"range": None, "params": {}, "sources": sources}]
    slices = cfg.get("slices")
    if not isinstance(slices, list) or not slices:
        raise TiesnbError(f"{where} needs 'models' (or 'slices'): a non-empty list")
    out = []
    for j, sl in enumerate(slices):
        at = f"slices[{j}]"
        if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list) or not sl["sources"]:
            raise TiesnbError(f"{at} in {where} must be a mapping with 'sources' (a non-empty list)")
        extra = sorted(set(sl) - {"sources", "parameters", "base_model"})
        if extra:
            raise TiesnbError(f"mergekit key '{at}.{extra[0]}' in {where} is not supported by tiesnb")
        if sl.get("base_model") not in (None, cfg.get("base_model")):
            raise TiesnbError(f"{at}.base_model in {where} differs from base_model: tiesnb merges onto one base")
        params = _mapping(sl.get("parameters"), f"{at}.parameters in {where}")
        _check_params(params, f"{at}.parameters", method)
        sources, ranges = [], set()
        for i, src in enumerate(sl["sources"]):
            if not isinstance(src, dict) or "model" not in src or "layer_range" not in src:
                raise TiesnbError(f"{at}.sources[{i}] in {where} must be a mapping with 'model' and 'layer_range'")
            bad = sorted(set(src) - {"model", "layer_range", "parameters"})
            if bad:
                raise TiesnbError(f"mergekit key '{at}.sources[{i}].{bad[0]}' in {where} is not supported by tiesnb")
            r = src["layer_range"]
            if (not isinstance(r, list) or len(r) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                    or r[0] < 0 or r[1] <= r[0]):
                raise TiesnbError(f"{at}.sources[{i}].layer_range in {where} must be [start, stop] with 0 <= start < stop, "
                                  f"got {r!r}")
            ranges.add(tuple(r))
            sp = _mapping(src.get("parameters"), f"{at}.sources[{i}].parameters in {where}")
            _check_params(sp, f"{at}.sources[{i}].parameters", method)
            sources.append((src["model"], sp))
        if len(ranges) > 1:
            raise TiesnbError(f"{at} in {where} takes different layer ranges from its sources "
                              f"({', '.join(map(str, sorted(ranges)))}): tiesnb merges layer i of every model with "
                              f"layer i of the others, not stacked or shifted layers")
        out.append({"range": ranges.pop(), "params": params, "sources": sources})
    refs = [sorted(str(m) for m, _ in sl["sources"]) for sl in out]
    for j, r in enumerate(refs[1:], 1):
        if r != refs[0]:
            raise TiesnbError(f"slices[{j}] in {where} lists other models than slices[0]: tiesnb merges the same "
                              f"models in every layer")
    for j in range(len(out)):
        want = 0 if j == 0 else out[j - 1]["range"][1]
        if out[j]["range"][0] != want:
            raise TiesnbError(f"slices[{j}] in {where} starts at layer {out[j]['range'][0]}, not {want}: the slices must "
                              f"follow each other from layer 0 (stacking or skipping layers is not supported)")
    return out


def _num_layers(base: str, names: list[str]) -> int:
    found = [int(m.group(1)) for n in names if (m := LAYER.search(n))]
    cfg_file = Path(base) / "config.json" if Path(base).is_dir() else None
    if cfg_file is not None and cfg_file.exists():
        try:
            cfg = json.loads(cfg_file.read_text())
            for key in ("num_hidden_layers", "n_layer", "num_layers"):
                if isinstance(cfg.get(key), int):
                    return cfg[key]
        except (OSError, ValueError):
            pass
    return max(found) + 1 if found else 0


def _placement(name: str, slices: list[dict], L: int) -> tuple[int, float]:
    """The slice a tensor belongs to and its gradient position t."""
    m = LAYER.search(name)
    if m is None:  # outside the layers: mergekit's pre/post weights, t = 0
        return (0 if PRE.search(name) else len(slices) - 1), 0.0
    i = int(m.group(1))
    for j, sl in enumerate(slices):
        a, b = sl["range"] or (0, L)
        if a <= i < b:
            return j, ((i - a) / (b - a - 1) if b - a > 1 else 1.0)
    raise TiesnbError(f"'{name}' is in layer {i}, which no slice covers (the slices end at layer "
                      f"{(slices[-1]['range'] or (0, L))[1]})")


# ----------------------------------------------------------------------------------------------
# tokenizers


def _vocabulary(folder: Path) -> dict[str, Any]:
    """What fixes a tokenizer's vocabulary and the embedding rows' order, per file."""
    out: dict[str, Any] = {}
    for name in ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt"):
        if (folder / name).exists():
            out[name] = (folder / name).read_bytes()
    for name, keys in (("tokenizer.json", ("model", "added_tokens")), ("tokenizer_config.json", ("added_tokens_decoder",)),
                       ("added_tokens.json", None)):
        f = folder / name
        if f.exists():
            try:
                data = json.loads(f.read_text())
            except ValueError:
                out[name] = f.read_bytes()
                continue
            out[name] = data if keys is None else {k: data.get(k) for k in keys}
    return out


def _check_tokenizers(source: Any, base: str, models: list[str], where: str) -> None:
    folders = {"base_model": Path(base), **{f"models[{i}]": Path(m) for i, m in enumerate(models)}}
    if isinstance(source, str) and source not in ("union", "base"):
        folders["tokenizer source"] = Path(resolve_model(source, "tokenizer_source"))
    ref = _vocabulary(folders["base_model"])
    if not ref:
        raise TiesnbError(f"tokenizer recipe in {where}: the base model ({base}) has no tokenizer files")
    for label, folder in folders.items():
        if label == "base_model":
            continue
        voc = _vocabulary(folder)
        differ = sorted(k for k in set(ref) | set(voc) if ref.get(k) != voc.get(k))
        if differ:
            raise TiesnbError(f"tokenizer recipe in {where}: {label} ({folder}) has another vocabulary than the base "
                              f"({', '.join(differ)} differ): tiesnb merges models that share the base's tokenizer")


# ----------------------------------------------------------------------------------------------
# the translation


def translate(cfg: dict, where: str = "config") -> dict:
    """A tiesnb merge config (method, base, models, params, dtype) for a mergekit config."""
    for key in sorted(set(cfg) - KEYS):
        what = UNSUPPORTED.get(key)
        raise TiesnbError(f"mergekit key '{key}' in {where} is not supported by tiesnb"
                          + (f" ({what})" if what else f"; supported: {', '.join(sorted(KEYS))}"))
    method = cfg["merge_method"]
    if method not in METHODS:
        raise TiesnbError(f"mergekit merge_method '{method}' in {where} is not one tiesnb runs; supported: "
                          f"{', '.join(METHODS)}")
    top = _mapping(cfg.get("parameters"), f"'parameters' in {where}")
    _check_params(top, "parameters", method)
    slices = _slices(cfg, where, method)
    base_ref = cfg.get("base_model")
    if base_ref is None and method != "linear":
        raise TiesnbError(f"'base_model' in {where} is required for {method}")
    base = resolve_model(base_ref, "base_model") if base_ref is not None else None
    # the models, in order; the base may be listed among them (mergekit: it is the base)
    refs = [m for m, _ in slices[0]["sources"] if base_ref is None or m != base_ref]
    if not refs:
        raise TiesnbError(f"'models' in {where} lists only the base model: nothing to merge")
    if len(set(map(str, refs))) != len(refs):
        raise TiesnbError(f"a model is listed twice in {where}: {', '.join(sorted({str(r) for r in refs if refs.count(r) > 1}))}")
    paths = [resolve_model(m, f"models[{i}].model") for i, m in enumerate(refs)]
    if base is None:  # linear without a base: names and shapes come from the first model
        base = paths[0]
    tok = cfg.get("tokenizer_source")
    if cfg.get("tokenizer") is not None:
        t = _mapping(cfg["tokenizer"], f"'tokenizer' in {where}")
        bad = sorted(set(t) - {"source"})
        if bad:
            raise TiesnbError(f"mergekit key 'tokenizer.{bad[0]}' in {where} is not supported by tiesnb (it changes the "
                              f"vocabulary or the embeddings' shape)")
        if tok is not None:
            raise TiesnbError(f"{where} gives both tokenizer_source and tokenizer: mergekit takes one")
        tok = t.get("source", "union")
    if tok is not None:
        _check_tokenizers(tok, base, paths, where)

    from ..checkpoints import open_source

    src = open_source(base, "base")
    try:
        names = [n for n in src.names() if src.spec(n).is_float]
    finally:
        src.close()
    L = _num_layers(base, names)
    if any(sl["range"] for sl in slices) and slices[-1]["range"][1] != L:
        raise TiesnbError(f"the slices in {where} end at layer {slices[-1]['range'][1]} but the base has {L} layers: "
                          f"tiesnb writes every layer")
    per_tensor = {n: _resolve_tensor(method, n, slices, top, refs, base_ref, L, where) for n in names}
    out: dict[str, Any] = {"method": METHODS[method], "base": base, "models": paths}
    out["params"] = _common(per_tensor)
    for key in ("dtype", "out_dtype"):
        if key in cfg and not isinstance(cfg[key], str):
            raise TiesnbError(f"'{key}' in {where} must be a dtype name, got {cfg[key]!r}")
    dtype = cfg.get("out_dtype") or cfg.get("dtype")
    if dtype is not None:
        out["dtype"] = dtype
    return out


def _resolve_tensor(method: str, name: str, slices: list[dict], top: dict, refs: list, base_ref: Any, L: int,
                    where: str) -> dict:
    """tiesnb's parameters for one tensor, from mergekit's settings."""
    j, t = _placement(name, slices, L)
    sl = slices[j]
    shared_scopes = [sl["params"], top]
    own = {str(m): p for m, p in sl["sources"]}

    def shared(key, kind, default):
        return _first(shared_scopes, key, name, t, kind, default)

    def model_values(key):
        return [_first([own[str(m)], *shared_scopes], key, name, t, float, PER_MODEL[key]) for m in refs]

    normalize = shared("normalize", bool, NORMALIZE[method])
    lam = shared("lambda", float, 1.0)
    shared("int8_mask", bool, False)  # the mask's storage type: no effect on the result
    weights = model_values("weight")
    densities = model_values("density")
    for i, d in enumerate(densities):
        if not 0 <= d <= 1:
            raise TiesnbError(f"the density of models[{i}] for '{name}' in {where} is {d:g}: it must lie in [0, 1]")
    total = sum(weights)
    one = lambda v: v[0] if len(set(v)) == 1 else v  # noqa: E731 — one number when every model agrees
    if method == "linear":
        if not normalize:
            raise TiesnbError(f"mergekit 'linear' with normalize: false (an unnormalized weighted sum of weights, for "
                              f"'{name}') has no tiesnb equivalent")
        if total == 0:
            raise TiesnbError(f"the weights of the models sum to 0 for '{name}' in {where}: 'linear' divides by their sum")
        return {"weights": weights}
    if method in ("task_arithmetic", "breadcrumbs", "dare_linear"):
        # mergekit: Σ w τ (divided by Σ w with normalize), times λ
        w = [x / total for x in weights] if normalize and abs(total) >= 1e-8 else weights
        p = {"weights": w, "lam": lam}
        if method == "breadcrumbs":
            p.update(k=one(densities), gamma=one(model_values("gamma")), trim="per_tensor")
        if method == "dare_linear":
            p.update(k=one(densities), rescale=shared("rescale", bool, RESCALE[method]))
        return p
    if method == "ties":
        return {"preset": "mergekit", "k": one(densities), "weights": weights, "lam": lam,
                "disjoint": "weighted_mean" if normalize else "sum"}
    return {"k": one(densities), "weights": weights, "lam": lam,  # dare_ties
            "rescale": shared("rescale", bool, RESCALE[method]), "weighted_election": True, "zero_sign": "positive",
            "disjoint": "weighted_mean" if normalize else "sum"}


VARYING = {"weights", "k", "gamma", "lam"}  # what tiesnb takes per tensor


def _common(per_tensor: dict[str, dict]) -> dict:
    """The most common values as the method's parameters; each tensor's others as ``tensor_params``."""
    keys = set().union(*per_tensor.values())
    params: dict[str, Any] = {}
    for key in sorted(keys):
        values = Counter(json.dumps(p.get(key)) for p in per_tensor.values())
        if key not in VARYING and len(values) > 1:
            what = {"disjoint": "normalize"}.get(key, key)
            raise TiesnbError(f"mergekit parameter '{what}' takes different values in different tensors: tiesnb "
                              f"applies one to the whole model")
        params[key] = json.loads(values.most_common(1)[0][0])
    over = {}
    for name, p in per_tensor.items():
        diff = {k: v for k, v in p.items() if k in VARYING and v != params[k]}
        if diff:
            over[name] = diff
    if over:
        params["tensor_params"] = over
    return params
