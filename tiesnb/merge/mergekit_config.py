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

Per-model ``weight`` and ``density`` (``gamma`` for breadcrumbs) are read from each model's
``parameters`` or, as in mergekit, from the top-level ``parameters``; ``lambda`` scales the
merged task vector. Where tiesnb cannot do what the config asks, the key is named in a one-line
error: layer gradients (a list as a value), ``filter``-conditional values, ``slices``, ``modules``,
a tokenizer recipe, densities that differ between models (tiesnb trims every model to one k).

Known differences from mergekit's output: mergekit computes in ``dtype`` (tiesnb always in
float32, then writes ``out_dtype`` or ``dtype``), so with ``dtype: float16`` or ``bfloat16`` the
two differ by rounding; ``linear`` and normalized task arithmetic agree to float32 rounding, not
bit for bit (mergekit accumulates with fused multiply-adds and divides by Σw after summing); with exactly equal magnitudes at a trim threshold mergekit keeps
whichever entries its (unstable) sort puts first, tiesnb the earliest positions; DARE's random
masks come from different generators.

Models given as hub ids (``org/name`` that is not a local folder) are fetched with
``huggingface_hub`` when a hub is reachable; otherwise the error names the id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import TiesnbError

KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}
UNSUPPORTED = {"slices": "layer slices", "modules": "modules", "tokenizer_source": "a tokenizer recipe",
               "tokenizer": "a tokenizer recipe", "chat_template": "a chat template"}
METHODS = {"ties": "ties", "dare_ties": "dare_ties", "task_arithmetic": "task_arithmetic", "linear": "average",
           "breadcrumbs": "breadcrumbs", "dare_linear": "dare"}
# mergekit's defaults per method: normalize (divide by the weights' sum), rescale (DARE's 1/k)
NORMALIZE = {"ties": True, "dare_ties": False, "task_arithmetic": False, "linear": True, "breadcrumbs": False,
             "dare_linear": False}
RESCALE = {"dare_ties": True, "dare_linear": True}
GLOBAL_PARAMS = {"normalize", "lambda", "int8_mask", "rescale", "weight", "density", "gamma"}
MODEL_PARAMS = {"weight", "density", "gamma"}


def is_mergekit(cfg: Any) -> bool:
    return isinstance(cfg, dict) and "merge_method" in cfg


def _scalar(value: Any, where: str) -> float:
    if isinstance(value, list):
        raise TiesnbError(f"{where}: a gradient (a list of values across layers) is a mergekit feature tiesnb "
                          f"does not have; give one number")
    if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
        raise TiesnbError(f"{where}: filter-conditional values are not supported by tiesnb; give one number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TiesnbError(f"{where} must be a number, got {value!r}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TiesnbError(f"{where} must be true or false, got {value!r}")
    return value


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


def translate(cfg: dict, where: str = "config") -> dict:
    """A tiesnb merge config (method, base, models, params, dtype) for a mergekit config."""
    unknown = sorted(set(cfg) - KEYS)
    for key in unknown:
        what = UNSUPPORTED.get(key)
        raise TiesnbError(f"mergekit key '{key}' in {where} is not supported by tiesnb"
                          + (f" ({what})" if what else f"; supported: {', '.join(sorted(KEYS))}"))
    method = cfg["merge_method"]
    if method not in METHODS:
        raise TiesnbError(f"mergekit merge_method '{method}' in {where} is not one tiesnb runs; supported: "
                          f"{', '.join(METHODS)}")
    top = cfg.get("parameters") or {}
    if not isinstance(top, dict):
        raise TiesnbError(f"'parameters' in {where} must be a mapping, got {top!r}")
    for key in top:
        if key not in GLOBAL_PARAMS:
            raise TiesnbError(f"mergekit parameter '{key}' in {where} is not supported by tiesnb for {method}; "
                              f"supported: {', '.join(sorted(GLOBAL_PARAMS))}")
    models = cfg.get("models")
    if not isinstance(models, list) or not models:
        raise TiesnbError(f"'models' in {where} must be a non-empty list of {{model: ..., parameters: ...}}")
    base_ref = cfg.get("base_model")
    if base_ref is None and method != "linear":
        raise TiesnbError(f"'base_model' in {where} is required for {method}")
    base = resolve_model(base_ref, "base_model") if base_ref is not None else None
    paths, weights, densities, gammas = [], [], [], []
    for i, entry in enumerate(models):
        if not isinstance(entry, dict) or "model" not in entry:
            raise TiesnbError(f"models[{i}] in {where} must be a mapping with 'model', got {entry!r}")
        extra = sorted(set(entry) - {"model", "parameters"})
        if extra:
            raise TiesnbError(f"mergekit key 'models[{i}].{extra[0]}' in {where} is not supported by tiesnb")
        if base_ref is not None and entry["model"] == base_ref:
            continue  # mergekit lets the base be listed among the models: it is the base
        params = entry.get("parameters") or {}
        if not isinstance(params, dict):
            raise TiesnbError(f"models[{i}].parameters in {where} must be a mapping, got {params!r}")
        for key in params:
            if key not in MODEL_PARAMS:
                raise TiesnbError(f"mergekit parameter 'models[{i}].parameters.{key}' is not supported by tiesnb")
        get = lambda k, default: params.get(k, top.get(k, default))  # noqa: E731 — model's, else global
        paths.append(resolve_model(entry["model"], f"models[{i}].model"))
        weights.append(_scalar(get("weight", 1.0), f"models[{i}].parameters.weight"))
        densities.append(_scalar(get("density", 1.0), f"models[{i}].parameters.density"))
        gammas.append(_scalar(get("gamma", 0.01), f"models[{i}].parameters.gamma"))
    if not paths:
        raise TiesnbError(f"'models' in {where} lists only the base model: nothing to merge")
    if base is None:  # linear without a base: names and shapes come from the first model
        base = paths[0]
    normalize = _flag(top.get("normalize", NORMALIZE[method]), "parameters.normalize")
    lam = _scalar(top.get("lambda", 1.0), "parameters.lambda")
    if "int8_mask" in top:
        _flag(top["int8_mask"], "parameters.int8_mask")  # the mask's storage type: no effect on the result
    total = sum(weights)

    def one(values, name):
        if len(set(values)) > 1:
            raise TiesnbError(f"the models' {name} values differ ({', '.join(f'{v:g}' for v in values)}): tiesnb applies "
                              f"one {name} to every model")
        return values[0]

    out: dict[str, Any] = {"method": METHODS[method], "base": base, "models": paths}
    if method == "linear":
        if not normalize:
            raise TiesnbError("mergekit 'linear' with normalize: false (an unnormalized weighted sum of weights) has no "
                              "tiesnb equivalent")
        out["params"] = {"weights": weights}
    elif method in ("task_arithmetic", "breadcrumbs", "dare_linear"):
        # mergekit: Σ w τ (divided by Σ w with normalize), times λ
        w = [x / total for x in weights] if normalize and abs(total) >= 1e-8 else weights
        out["params"] = {"weights": w, "lam": lam}
        if method == "breadcrumbs":
            out["params"].update(k=one(densities, "density"), gamma=one(gammas, "gamma"), trim="per_tensor")
        if method == "dare_linear":
            out["params"].update(k=one(densities, "density"),
                                 rescale=_flag(top.get("rescale", RESCALE[method]), "parameters.rescale"))
    elif method == "ties":
        out["params"] = {"preset": "mergekit", "k": one(densities, "density"), "weights": weights, "lam": lam,
                         "disjoint": "weighted_mean" if normalize else "sum"}
    elif method == "dare_ties":
        out["params"] = {"k": one(densities, "density"), "weights": weights, "lam": lam,
                         "rescale": _flag(top.get("rescale", RESCALE[method]), "parameters.rescale"),
                         "weighted_election": True, "zero_sign": "positive",
                         "disjoint": "weighted_mean" if normalize else "sum"}
    for key in ("dtype", "out_dtype"):
        if key in cfg and not isinstance(cfg[key], str):
            raise TiesnbError(f"'{key}' in {where} must be a dtype name, got {cfg[key]!r}")
    dtype = cfg.get("out_dtype") or cfg.get("dtype")
    if dtype is not None:
        out["dtype"] = dtype
    return out
