"""The model families behind one Study: the registry, and the paper-scale CLIP family end to end on
a tiny random CLIP (the stand-in for ViT-B/32, which needs a hub)."""

import dataclasses

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
