"""tiesnb: a reproducible, notebook-centric study of TIES-Merging and the toolkit it runs on.

Modules, in the order the study uses them:

* :mod:`tiesnb.merge`       — the merge methods behind one call (``merge``, ``merge_checkpoints``)
* :mod:`tiesnb.checkpoints` — safetensors sources and the streaming writer
* :mod:`tiesnb.data`        — offline assets, readers, the task registry (and the paper's datasets)
* :mod:`tiesnb.families`    — one module per model family (text, vision, seq2seq, clip): its
  model, heads, training, evaluation and statistics; :mod:`tiesnb.training` what trainers share
* :mod:`tiesnb.study`       — one study's steps, as the notebooks call them
* :mod:`tiesnb.analysis`, :mod:`tiesnb.plots` — the paper's analyses and the figure style
* :mod:`tiesnb.pipeline`, :mod:`tiesnb.cli` — running notebooks headlessly; ``tiesnb`` commands
* :mod:`tiesnb.paths`, :mod:`tiesnb.io`, :mod:`tiesnb.config` — locations, atomic writes, strict YAML
"""

__version__ = "0.1.0"
