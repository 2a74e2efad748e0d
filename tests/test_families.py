"""The model families behind one Study: the registry, and the paper-scale CLIP family end to end on
a tiny random CLIP (the stand-in for ViT-B/32, which needs a hub)."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from tiesnb import paths
from tiesnb.errors import TiesnbError
from tiesnb.families import FAMILIES, family
from tiesnb.families.base import Family


def test_every_registered_family_loads_with_its_settings():
    for name in FAMILIES:
        fam = family(name)
        assert isinstance(fam, Family) and fam.name == name
        assert dataclasses.is_dataclass(fam.Settings)
        fam.Settings()  # every setting has a default
    with pytest.raises(TiesnbError, match="unknown model family 'vit'; valid: minilm, vision, seq2seq, clip"):
        family("vit")
    from tiesnb.study import Study, StudyConfig

    with pytest.raises(TiesnbError, match="eval_batch_size must be at least 1, got 0"):
        Study(StudyConfig.parse({"name": "x", "tasks": ["digits"], "model": "vision", "eval_batch_size": 0}, "s"))


def test_every_committed_study_loads():
    from tiesnb.study import Study

    for path in sorted(paths.PARAMS.rglob("study.yaml")):
        name = str(path.parent.relative_to(paths.PARAMS))
        s = Study.load(name)
        assert s.family.name == s.config.model and isinstance(s.settings, s.family.Settings)
    assert Study.load("paper/clip-vit-b32").tasks == ["sun397", "stanford_cars", "resisc45", "eurosat", "svhn", "gtsrb",
                                                       "mnist", "dtd"]


# ---------------------------------------------------------------------------------------------
# CLIP on a tiny random config


@pytest.fixture(scope="module")
def tiny_clip_study(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiesnb.families import clip

    root = tmp_path_factory.mktemp("clip")
    model = clip.make_tiny_clip(root / "tiny-clip")
    folder = root / "params" / "tiny-clip"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({
        "name": "tiny-clip", "model": "clip", "tasks": ["digits", "fashion_gear"], "seeds": [0], "n_train": 24,
        "n_val": 8, "n_test": 12, "autocast": "off", "eval_batch_size": 8, "steps": 3, "multitask_steps": 3,
        "batch_size": 4, "lr": 1e-3, "weight_decay": 0.1, "fisher_examples": 2, "gram_examples": 4, "figures_dir": "",
        "clip": {"model_path": model, "template": "a photo of a {} ."}}))
    return root, model


def test_the_heads_are_fitted_again_when_the_thread_count_changes(tiny_clip_study, monkeypatch):
    """Features computed with another thread count differ in their last bits: the heads' key holds
    the count (the same count reuses the fitted file)."""
    import json

    from tiesnb.study import Study

    root, _ = tiny_clip_study
    monkeypatch.setattr(paths, "PARAMS", root / "params")
    monkeypatch.setattr(paths, "RUNS", root / "runs")
    S = Study.load("tiny-clip")
    S.fit_heads(progress=False)
    weights = S.heads_dir / "model.safetensors"
    written = weights.stat().st_mtime_ns
    assert json.loads((S.heads_dir / "params.json").read_text())["resolved"]["threads"] == torch.get_num_threads()
    S.fit_heads(progress=False)
    assert weights.stat().st_mtime_ns == written  # reused
    n = torch.get_num_threads() + 1
    monkeypatch.setattr(torch, "get_num_threads", lambda: n)
    S.fit_heads(progress=False)
    assert weights.stat().st_mtime_ns != written
    assert json.loads((S.heads_dir / "params.json").read_text())["resolved"]["threads"] == n


def test_tiny_clip_family_end_to_end(tiny_clip_study, monkeypatch):
    from transformers import AutoProcessor, CLIPModel

    from tiesnb.families import clip
    from tiesnb.merge import merge
    from tiesnb.study import MULTITASK, Study

    root, model_path = tiny_clip_study
    monkeypatch.setattr(paths, "PARAMS", root / "params")
    monkeypatch.setattr(paths, "RUNS", root / "runs")
    S = Study.load("tiny-clip")
    heads = S.fit_heads(progress=False)
    # the zero-shot head, computed independently: normalised text features of the filled template × logit scale
    ref, proc = CLIPModel.from_pretrained(model_path).eval(), AutoProcessor.from_pretrained(model_path)
    labels = S.data()["fashion_gear"].labels
    with torch.no_grad():
        tokens = proc.tokenizer([f"a photo of a {c} ." for c in labels], padding=True, return_tensors="pt")
        text = ref.get_text_features(**tokens)
        text = getattr(text, "pooler_output", text)  # transformers 5: an output object, the projection in pooler_output
        want = F.normalize(text, dim=-1) * ref.logit_scale.exp()
    assert torch.allclose(heads["fashion_gear.weight"], want, atol=1e-5) and not heads["fashion_gear.bias"].any()
    # zero-shot predictions, computed independently from CLIPModel's own image features
    rows = S.evaluate_checkpoint(None, ["fashion_gear"], "test", "zero-shot")
    x, y = S.data()["fashion_gear"].test
    with torch.no_grad():
        img = ref.get_image_features(pixel_values=proc(images=list(x), return_tensors="pt")["pixel_values"])
        img = F.normalize(getattr(img, "pooler_output", img), dim=-1)
    assert np.array_equal(rows[0]["pred"], (img @ want.T).argmax(1).numpy())
    # training: every task model and the multitask model, deterministic, the encoder moved
    for t in S.tasks + [MULTITASK]:
        S.train(t, progress=False)
    pre = S.base()
    assert set(S.state("digits")) == set(pre) and any("vision_model" in k for k in pre)
    assert not torch.equal(S.state("digits")["visual_projection.weight"], pre["visual_projection.weight"])
    cfg = S.train_config("digits")
    again = clip.finetune(cfg, S.data(), S.heads(), progress=False)
    assert all(torch.equal(again[k], S.state("digits")[k]) for k in again)
    # merging through the study: the same as the engine on the states; RegMean and Fisher statistics
    got = S.merge("ties", k=0.2, lam=1.0)
    expected = merge("ties", pre, [S.state(t) for t in S.tasks], k=0.2, lam=1.0)
    assert all(torch.allclose(got[n], expected[n]) for n in expected)
    for method, hp in [("ties", {"k": 0.2, "lam": 1.0}), ("regmean", {"grams": "auto"}), ("fisher", {"fishers": "auto"})]:
        rows = S.evaluate_merge(method, "val", **hp)
        assert len(rows) == 2 and all(0 <= r["accuracy"] <= 1 and r["n"] == 8 for r in rows)
    grams = S.statistic("grams", "digits", progress=False)
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in grams


def test_clip_tasks_fail_in_one_line_without_a_hub(tmp_path, monkeypatch):
    from tiesnb.families import clip
    from tiesnb.study import Study, StudyConfig

    with pytest.raises(TiesnbError, match=r"clip.template must hold \{\} for the class name, got 'a photo'"):
        Study(StudyConfig.parse({"name": "x", "tasks": ["digits"], "model": "clip", "clip": {"template": "a photo"}}, "s"))

    with pytest.raises(TiesnbError, match=r"missing .*eurosat/train.parquet: data_dir must hold"):
        clip.load_clip_task("eurosat", 10, 4, 4, 0, str(tmp_path))
    with pytest.raises(TiesnbError, match="unknown clip task 'imagenet'"):
        clip.load_clip_task("imagenet", 10, 4, 4, 0, None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(TiesnbError, match=r"cannot load eurosat \(tanganke/eurosat, split train\).*set clip.data_dir"):
        clip.load_clip_task("eurosat", 10, 4, 4, 0, None)
    with pytest.raises(TiesnbError, match="cannot load the CLIP model"):
        clip.load_encoder(str(tmp_path / "nowhere"))


def _released_clip_models(root, model_path):
    """Each task's image tower moved a little, saved as a CLIPVisionModel folder: digits as
    FusionBench's models were saved (transformers 4: ``vision_model.*`` names), fashion_gear as
    transformers 5 saves one (the same names without the prefix)."""
    import json

    from safetensors.torch import save_file
    from transformers import CLIPModel, CLIPVisionModel

    clip_model = CLIPModel.from_pretrained(model_path)
    out = {}
    for i, task in enumerate(["digits", "fashion_gear"]):
        torch.manual_seed(i)
        tower = {k: (v + 0.003 * torch.randn_like(v)) if v.is_floating_point() else v
                 for k, v in clip_model.vision_model.state_dict().items()}
        folder = root / f"released-{task}"
        if task == "digits":
            folder.mkdir()
            save_file({f"vision_model.{k}": v.contiguous() for k, v in tower.items()}, folder / "model.safetensors")
            (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPVisionModel"], "model_type": "clip_vision_model"}))
        else:
            vision = CLIPVisionModel(clip_model.config.vision_config)
            vision.load_state_dict(tower, strict=False)
            vision.save_pretrained(folder)
        out[task] = str(folder)
    return out


def test_a_study_of_existing_clip_models_runs_every_notebook(tiny_clip_study, tmp_path):
    """task_models names FusionBench-format folders: nothing is trained, every notebook runs on those
    models (no multitask model: its rows and the oracle are left out), and a wrong shape is one line
    naming the file and the key."""
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file
    from tiesnb.study import Study

    root, model_path = tiny_clip_study
    released = _released_clip_models(tmp_path, model_path)
    params = tmp_path / "params"
    src = yaml.safe_load((root / "params" / "tiny-clip" / "study.yaml").read_text())
    (params / "released").mkdir(parents=True)
    # 60 test images: the tiny models score above 0 on each task (num_tasks divides by it)
    (params / "released" / "study.yaml").write_text(yaml.safe_dump({**src, "name": "released", "task_models": released,
                                                                    "n_test": 60}))
    for nb in ("merge_sweep", "ablations", "num_tasks", "interference", "evaluate"):
        small = yaml.safe_load((paths.PARAMS / "smoke" / f"{nb}.yaml").read_text()) if (paths.PARAMS / "smoke" / f"{nb}.yaml").exists() else {}
        small = {**(small or {}), **({"split": "test"} if nb == "num_tasks" else {})}
        (params / "released" / f"{nb}.yaml").write_text(yaml.safe_dump(small))
    env = {**os.environ, "TIESNB_RUNS": str(tmp_path / "runs"), "TIESNB_PARAMS": str(params), "PYTHONWARNINGS": "ignore"}
    for run, nb, extra in [("probe", "probe", {}), ("train-digits", "train", {"task": "digits"}),
                           ("train-multitask", "train", {"task": "multitask"}), ("evaluate", "evaluate", None),
                           ("merge_sweep", "merge_sweep", None),
                           ("interference", "interference", None), ("ablations", "ablations", None),
                           ("num_tasks", "num_tasks", None)]:
        pfile = params / "released" / f"{run}.yaml"
        if extra is not None:
            pfile.write_text(yaml.safe_dump(extra))
        r = subprocess.run([sys.executable, "-m", "tiesnb.cli", "run", nb, "--study", "released", "--quiet", "--params",
                            str(pfile)], env=env, capture_output=True, text=True, cwd=paths.ROOT)
        assert r.returncode == 0, f"{run} failed:\n{r.stderr[-3000:]}"
    figures = tmp_path / "runs" / "released" / "figures"
    table1 = (figures / "table1.csv").read_text()
    assert "fine-tuned" in table1 and "multitask" not in table1 and not (tmp_path / "runs" / "released" / "seed-0" / "checkpoints").exists()
    import pandas as pd

    assert not any("oracle" in m for m in pd.read_csv(figures / "ablations.csv").method)
    # the fine-tuned row is the released models' accuracy, computed independently of the study

    individual = pd.read_csv(figures / "individual.csv")
    want = individual.loc[individual.method == "fine-tuned", "digits"].item()
    from safetensors.torch import load_file as read

    tower = {k.removeprefix("vision_model."): v for k, v in read(Path(released["digits"]) / "model.safetensors").items()}
    from tiesnb.families import clip
    from tiesnb import paths as P

    old = (P.PARAMS, P.RUNS)
    P.PARAMS, P.RUNS = params, tmp_path / "runs"
    try:
        S = Study.load("released")
        enc = clip.load_encoder(model_path)
        enc.vision_model.load_state_dict(tower)
        x, y = S.data()["digits"].test
        pred = clip.heads_module(S.heads(), ["digits"])("digits", clip.features(enc, x, 8)).argmax(1).numpy()
        assert want == pytest.approx(100 * (pred == y).mean(), abs=1e-4)  # (the CSV keeps 6 digits)
        # a released file with a wrong shape: one line, the file and the key
        weights = Path(released["digits"]) / "model.safetensors"
        state = load_file(weights)
        key = "vision_model.post_layernorm.weight"
        state[key] = torch.zeros(7)
        save_file(state, weights)
        with pytest.raises(TiesnbError, match=rf"released-digits: '{key}' has shape \(7,\), the model's is \(32,\)"):
            Study.load("released").state("digits")
        del state[key]
        save_file(state, weights)
        with pytest.raises(TiesnbError, match=rf"released-digits: no tensor '{key}'"):
            Study.load("released").state("digits")
    finally:
        P.PARAMS, P.RUNS = old


def test_existing_models_are_checked_against_the_study():
    from tiesnb.study import Study, StudyConfig

    parse = lambda **d: StudyConfig.parse({"name": "x", "tasks": ["digits"], **d}, "s")  # noqa: E731
    with pytest.raises(TiesnbError, match="task_models names mnist, not among its tasks: digits"):
        Study(parse(model="clip", task_models={"mnist": "/m"}))
    with pytest.raises(TiesnbError, match="the vision family cannot read existing models"):
        Study(parse(model="vision", task_models={"digits": "/m"}))
    with pytest.raises(TiesnbError, match="one model per task: give one seed"):
        Study(parse(model="clip", task_models={"digits": "/m"}, seeds=[0, 1]))


def test_clip_heads_ensemble_each_datasets_templates(tiny_clip_study):
    """Per class: every template's text embedding normalised, averaged, normalised again, times the
    logit scale (computed here from CLIPModel's own text features); templates and class names from
    clip_benchmark's pinned files, one template where it has none or when asked."""
    from transformers import AutoProcessor, CLIPModel

    from tiesnb.data import assets
    from tiesnb.families import clip

    assets.fetch(["clip_benchmark"], quiet=True)
    templates, names = clip.head_prompts("sun397", ["a"] * 397, "ensemble", "x {}")
    assert templates == ["a photo of a {}.", "a photo of the {}."] and names == ["a"] * 397  # label names kept
    templates, names = clip.head_prompts("stanford_cars", ["c"] * 196, "ensemble", "x {}")
    assert len(templates) == 8 and all("{}" in t for t in templates)
    templates, names = clip.head_prompts("gtsrb", list(range(43)), "ensemble", "x {}")
    assert names[0] == "red and white circle 20 kph speed limit" and len(names) == 43
    assert clip.head_prompts("gtsrb", list(range(43)), "single", "x {}") == (["x {}"], list(range(43)))
    assert clip.head_prompts("digits", ["0", "1"], "ensemble", "x {}") == (["x {}"], ["0", "1"])  # not in clip_benchmark
    with pytest.raises(TiesnbError, match="clip_benchmark names 10 classes for mnist, the data has 3"):
        clip.head_prompts("mnist", ["0", "1", "2"], "ensemble", "x {}")

    _, model_path = tiny_clip_study
    prompts = {"digits": (["a photo of a {} .", "the {} ."], [str(d) for d in range(10)])}
    heads = clip.zero_shot_heads(model_path, prompts)
    ref, proc = CLIPModel.from_pretrained(model_path).eval(), AutoProcessor.from_pretrained(model_path)
    rows = []
    with torch.no_grad():
        for c in prompts["digits"][1]:
            each = []
            for t in prompts["digits"][0]:
                text = ref.get_text_features(**proc.tokenizer([t.format(c)], return_tensors="pt"))
                each.append(F.normalize(getattr(text, "pooler_output", text)[0], dim=-1))
            rows.append(F.normalize(sum(each) / len(each), dim=-1))
        want = torch.stack(rows) * ref.logit_scale.exp()
    assert torch.allclose(heads["digits.weight"], want, atol=1e-5)
    single = clip.zero_shot_heads(model_path, {"digits": (["the {} ."], prompts["digits"][1])})
    assert not torch.allclose(single["digits.weight"], want, atol=1e-3)  # the ensemble differs from one template
