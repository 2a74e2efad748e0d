"""tiesnb: a reproducible, notebook-centric study of TIES-Merging and the toolkit it runs on.

Modules, in the order the study uses them:

* :mod:`tiesnb.paths`       — every location the project reads or writes
* :mod:`tiesnb.checkpoints` — safetensors sources and streaming writer
* :mod:`tiesnb.merge`       — the merge methods behind one call (``merge``, ``merge_checkpoints``)
* :mod:`tiesnb.cli`         — ``tiesnb merge CONFIG.yaml --out DIR``
"""

__version__ = "0.1.0"
