"""A study's settings: ``params/<study>/study.yaml`` (and the study it inherits from), read
strictly into a :class:`StudyConfig`, and checked against its model family.

A study is named by a folder of parameter files, ``params/<study>/``; ``study.yaml`` there holds
the settings every notebook shares (tasks, splits, training, evaluation), each notebook run has
its own YAML beside it (:func:`params_file`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import paths
from ..config import dataclass_from, read_yaml
from ..errors import TiesnbError

MULTITASK = "multitask"


@dataclass
class StudyConfig:
    """``params/<study>/study.yaml``: the settings shared by every notebook of a study, whatever its
    model family; the family's own settings are the section named after it (``settings``)."""

    name: str
    tasks: list[str]
    inherit: str = ""  # another study whose study.yaml (and notebook parameter files) this one starts from
    model: str = "minilm"  # the model family (tiesnb.families): minilm | vision | seq2seq | clip
    split_seed: int = 0  # the shuffle that draws the splits (seq2seq: the original's 42); fixed across seeds
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds: every model is trained once per seed
    # data: examples per split and task (validation and test class-balanced)
    n_train: int = 2000
    n_val: int = 64
    n_test: int = 400
    # compute
    autocast: str = "auto"  # auto | bf16 | off
    threads: int = 0  # torch CPU threads, 0 = torch's default
    eval_batch_size: int = 32
    # fine-tuning of each task model and of the multitask model
    mode: str = "full"  # full | ia3 (the families that have it)
    steps: int = 250
    multitask_steps: int = 600
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1
    # statistics for the Fisher and RegMean baselines
    fisher_examples: int = 64
    gram_examples: int = 256
    # existing fine-tuned models instead of training them: task → a local folder (Hugging Face
    # layout, safetensors) or a hub id, read by the family (a task not named is trained here); the
    # multitask model likewise ("" with task_models: none, and the notebooks leave it out)
    task_models: dict[str, str] = field(default_factory=dict)
    multitask_model: str = ""
    # where figures and tables go, relative to the repository ("": runs/<study>/figures)
    figures_dir: str = "figures"
    # what each step asks of a machine, per step kind (tiesnb/workflow.py: cpus, gpus, mem_gb,
    # hours), over the family's defaults: a cluster job's request, and locally its share of the cores
    resources: dict[str, dict] = field(default_factory=dict)
    settings: Any = field(default=None, repr=False)  # the family's section (its Settings dataclass); not a YAML key

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str | Path) -> "StudyConfig":
        """Strictly, from study.yaml's mapping: the shared keys, and the family's section."""
        from ..families import FAMILIES, family, settings_fields

        data = dict(data)
        model = data.get("model", "minilm")
        if not isinstance(model, str):
            raise TiesnbError(f"{where}: parameter 'model' must be str, got {model!r}")
        fam = family(model)
        section = data.pop(model, None) or {}
        if not isinstance(section, dict):
            raise TiesnbError(f"{where}: '{model}:' must be a section of settings (a mapping), got {section!r}")
        shared = {f.name for f in dataclasses.fields(cls)} - {"settings"}
        for key in list(data):
            if key in FAMILIES:
                raise TiesnbError(f"{where}: section '{key}:' applies to model: {key} (this study's model is {model})")
            if key not in shared:
                owners = [f for f in FAMILIES if key in settings_fields(f)]
                if owners:
                    raise TiesnbError(f"{where}: '{key}' is a setting of the {' / '.join(owners)} family: put it in the "
                                      f"'{model}:' section" + ("" if model in owners else f" (this study's model is {model})"))
        config = dataclass_from(cls, data, where)
        config.settings = dataclass_from(fam.Settings, section, f"{where} [{model}:]")
        return config


def threads_setting(configured: int) -> int:
    """Torch threads: ``TIESNB_THREADS`` when set (``make study`` sets it to share the cores
    between the runs it starts at once), else the study's ``threads`` (0: torch's default)."""
    import os

    value = os.environ.get("TIESNB_THREADS", "")
    if value.strip():
        try:
            n = int(value)
        except ValueError:
            raise TiesnbError(f"TIESNB_THREADS must be a whole number, got {value!r}") from None
        if n < 0:
            raise TiesnbError(f"TIESNB_THREADS must be 0 (torch's default) or more, got {n}")
        return n
    return configured


def study_settings(name: str) -> dict:
    """``params/<name>/study.yaml``, on top of the study it names in ``inherit`` (one level)."""
    path = paths.PARAMS / name / "study.yaml"
    if not path.exists():
        known = sorted(str(p.parent.relative_to(paths.PARAMS)) for p in paths.PARAMS.rglob("study.yaml"))
        raise TiesnbError(f"no study {name!r}: {path} is missing; studies: {', '.join(known)}")
    own = read_yaml(path)
    parent = own.get("inherit")
    if not parent:
        return own
    parent_path = paths.PARAMS / str(parent) / "study.yaml"
    if not parent_path.exists():
        raise TiesnbError(f"{path}: inherit names study {parent!r}, but {parent_path} is missing")
    base = read_yaml(parent_path)
    if base.get("inherit"):
        raise TiesnbError(f"{path}: inherits {parent!r}, which inherits again; one level only")
    merged = {**base, "figures_dir": "", **own}  # a derived study never writes over its parent's figures
    for key, value in own.items():  # a family's section: the parent's keys, then this study's
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **value}
    return merged


def params_file(study: str, run: str) -> Path:
    """The parameter file of one notebook run: the study's own, or its parent's (``inherit``)."""
    own = paths.PARAMS / study / f"{run}.yaml"
    if own.exists():
        return own
    parent = study_settings(study).get("inherit")
    if parent and (paths.PARAMS / str(parent) / f"{run}.yaml").exists():
        return paths.PARAMS / str(parent) / f"{run}.yaml"
    return own


def check(config: StudyConfig, family) -> None:
    """One-line errors for settings no study can use, then the family's own checks."""
    c = config
    if c.mode not in family.modes:
        raise TiesnbError(f"study {c.name}: mode must be {' or '.join(family.modes)} for the {c.model} family, "
                          f"got {c.mode!r}")
    for key in ("n_train", "n_test"):
        if getattr(c, key) < 0:
            raise TiesnbError(f"study {c.name}: {key} must be >= 0, got {getattr(c, key)}")
    if c.eval_batch_size < 1:
        raise TiesnbError(f"study {c.name}: eval_batch_size must be at least 1, got {c.eval_batch_size}")
    if not c.seeds or len(set(c.seeds)) != len(c.seeds):
        raise TiesnbError(f"study {c.name}: seeds must be a non-empty list of distinct integers, got {c.seeds}")
    unknown = sorted(set(c.task_models) - set(c.tasks))
    if unknown:
        raise TiesnbError(f"study {c.name}: task_models names {', '.join(unknown)}, not among its tasks: {', '.join(c.tasks)}")
    if (c.task_models or c.multitask_model) and len(c.seeds) > 1:
        raise TiesnbError(f"study {c.name}: existing models are one model per task: give one seed, not {c.seeds}")
    from ..workflow import FAMILY_RESOURCES, STEP_KINDS, resources

    for kind in STEP_KINDS:  # a bad resources section stops the study's load, not a cluster job
        resources(c.name, kind, c.resources, FAMILY_RESOURCES.get(c.model))
    if (c.task_models or c.multitask_model) and not getattr(family, "reads_released", False):
        raise TiesnbError(f"study {c.name}: the {c.model} family cannot read existing models (task_models); "
                          f"the families that can: clip, seq2seq")


def figures_dir(config: StudyConfig) -> Path:
    """Where the study's figures and tables go: "" keeps them inside its run folder (a derived or
    smoke study: never over the real ones); "figures" is the repository's figures/ (moved by
    TIESNB_FIGURES); anything else a folder relative to the repository."""
    if not config.figures_dir:
        return paths.RUNS / config.name / "figures"
    if config.figures_dir == "figures":
        return paths.FIGURES
    return (paths.ROOT / config.figures_dir).resolve()
