"""Model families, one module each, and the registry that names them (``model:`` in study.yaml).

| family   | module        | what                                                                 |
|----------|---------------|----------------------------------------------------------------------|
| minilm   | ``text``      | MiniLM-L6 sentence encoder, fixed linear heads (the embedded default) |
| vision   | ``vision``    | EfficientNet-Lite0 (ImageNet), fixed prototype heads (the embedded vision study) |
| seq2seq  | ``seq2seq``   | T5 / T0 scored by rank classification (the paper's NLP settings)      |
| clip     | ``clip``      | CLIP's ViT image tower, zero-shot heads from its text tower (the paper's vision setting) |

Each module holds its family's model, training, evaluation and statistics and a
:class:`~tiesnb.families.base.Family` subclass; what they share is in :mod:`tiesnb.training`
(heads, sampling, schedule, checkpoints), :mod:`tiesnb.families.common` and :mod:`tiesnb.study`
(seeds, caching, evaluation rows, merging). A new family is a new module and one line below.
"""

from __future__ import annotations

import importlib

from ..errors import TiesnbError
from .base import Family

FAMILIES = {  # name → "module:class", imported when a study uses it
    "minilm": "tiesnb.families.text:MiniLM",
    "vision": "tiesnb.families.vision:EfficientNetLite",
    "seq2seq": "tiesnb.families.seq2seq:Seq2Seq",
    "clip": "tiesnb.families.clip:CLIPVision",
}

_loaded: dict[str, Family] = {}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise TiesnbError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    if name not in _loaded:
        module, cls = FAMILIES[name].split(":")
        _loaded[name] = getattr(importlib.import_module(module), cls)()
    return _loaded[name]


def settings_fields(name: str) -> set[str]:
    """The keys of a family's section."""
    import dataclasses

    return {f.name for f in dataclasses.fields(family(name).Settings)}
