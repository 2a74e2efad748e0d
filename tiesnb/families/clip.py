"""The paper's vision setting at paper scale: CLIP's image tower (ViT-B/32 by default) fine-tuned
per task, each task read through a fixed zero-shot head built from CLIP's text tower — the protocol
of task arithmetic (Ilharco et al. 2023) that TIES's ViT columns follow. Needs a model hub (or a
local copy of the model and of the datasets); nothing here runs in the embedded studies, and the
tests run it on a tiny random CLIP config.

* Encoder: ``vision_model`` + ``visual_projection`` of a ``transformers`` ``CLIPModel``; its
  output is the L2-normalised image embedding. Only the encoder is fine-tuned and merged.
* Heads: per task and class, CLIP's zero-shot classifier: the text embeddings of the dataset's
  prompt templates filled with the class name, each normalised, averaged and normalised again
  (``templates: ensemble``, the protocol of CLIP and task arithmetic), times CLIP's logit scale,
  no bias; fixed. Templates and class names are clip_benchmark's per-dataset files (a pinned asset);
  a task they lack, or ``templates: single``, uses ``template`` and the dataset's label names.
* Tasks: the paper's eight (SUN397, Cars, RESISC45, EuroSAT, SVHN, GTSRB, MNIST, DTD) from the hub
  ids below, class names from each dataset's label feature; validation drawn class-balanced from
  the training split, test = the dataset's test split (``n_test: 0``: all of it). Any of the
  embedded image tasks (``tiesnb.data.images``) works too — what the tests use.

Why one module (~360 lines): a family is one unit (data, model, heads, training, evaluation,
statistics, released models) that a newcomer reads with its interface, ``families/base.py``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import IMAGE_TASKS, ImageTaskData, load_image_task
from ..errors import TiesnbError
from ..training import ScheduledTrainConfig, check_schedule, device, fine_tune_loop, heads_module, set_threads
from .base import Family
from .common import LinearGrams, expected_fisher, quiet_transformers

# the paper's eight tasks: hub dataset, config, training split, test split, image and label columns
HUB_TASKS = {
    "sun397": ("tanganke/sun397", None, "train", "test", "image", "label"),
    "stanford_cars": ("tanganke/stanford_cars", None, "train", "test", "image", "label"),
    "resisc45": ("tanganke/resisc45", None, "train", "test", "image", "label"),
    "eurosat": ("tanganke/eurosat", None, "train", "test", "image", "label"),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits", "train", "test", "image", "label"),
    "gtsrb": ("tanganke/gtsrb", None, "train", "test", "image", "label"),
    "mnist": ("ylecun/mnist", None, "train", "test", "image", "label"),
    "dtd": ("tanganke/dtd", None, "train", "test", "image", "label"),
}


# ----------------------------------------------------------------------------------------------
# data


def _hub_split(task: str, split: str, data_dir: str | None):
    repo, config, *_ = HUB_TASKS[task]
    if data_dir:
        path = os.path.join(data_dir, task, f"{split}.parquet")
        if not os.path.exists(path):
            raise TiesnbError(f"missing {path}: data_dir must hold <task>/<split>.parquet (columns image, label)")
        from datasets import load_dataset

        return load_dataset("parquet", data_files=path, split="train")
    try:
        from datasets import load_dataset

        return load_dataset(repo, config, split=split)
    except Exception as e:  # no hub, no cache: one line naming the id
        raise TiesnbError(f"cannot load {task} ({repo}{'/' + config if config else ''}, split {split}): "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:160]}; offline, set clip.data_dir") from None


def load_clip_task(task: str, n_train: int, n_val: int, n_test: int, seed: int, data_dir: str | None) -> ImageTaskData:
    from ..data.tasks import balanced_splits

    if task in IMAGE_TASKS:  # an embedded task (32 × 32 uint8 arrays)
        return load_image_task(task, n_train, n_val, n_test, seed)
    if task not in HUB_TASKS:
        raise TiesnbError(f"unknown clip task {task!r}; the paper's: {', '.join(HUB_TASKS)}; embedded: {', '.join(IMAGE_TASKS)}")
    _, _, train_split, test_split, image_col, label_col = HUB_TASKS[task]
    train, test = _hub_split(task, train_split, data_dir), _hub_split(task, test_split, data_dir)
    names = tuple(str(n).replace("_", " ") for n in train.features[label_col].names)
    y_train, y_test = np.asarray(train[label_col], dtype=np.int64), np.asarray(test[label_col], dtype=np.int64)
    tr, va, _ = balanced_splits(y_train.tolist(), len(names), n_train or len(y_train), n_val, 0, f"tiesnb:{task}:{seed}")
    te = balanced_splits(y_test.tolist(), len(names), 0, 0, n_test or len(y_test), f"tiesnb:{task}:{seed}:test")[2]
    pick = lambda ds, y, idx: ([ds[int(i)][image_col] for i in idx], y[idx])  # noqa: E731
    data = ImageTaskData(task, names, pick(train, y_train, tr), pick(train, y_train, va), pick(test, y_test, te))
    h = hashlib.sha256(repr((HUB_TASKS[task], train._fingerprint, test._fingerprint, tr, va, te)).encode())
    data.fingerprint = h.hexdigest()[:16]
    return data


# ----------------------------------------------------------------------------------------------
# the model


@functools.lru_cache(maxsize=2)
def _load(model_path: str):
    from transformers import AutoProcessor, CLIPModel

    quiet_transformers()
    try:
        model = CLIPModel.from_pretrained(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
    except (OSError, ValueError) as e:
        raise TiesnbError(f"cannot load the CLIP model {model_path!r} (no hub here, or not in its cache): "
                          f"{str(e).splitlines()[0][:160]}") from None
    return model.eval(), processor


class ImageEncoder(torch.nn.Module):
    """CLIP's image tower and projection: pixel values → L2-normalised image embeddings."""

    def __init__(self, model_path: str):
        super().__init__()
        import copy

        clip, self.processor = _load(model_path)
        self.vision_model = copy.deepcopy(clip.vision_model)
        self.visual_projection = copy.deepcopy(clip.visual_projection)

    def pixels(self, images) -> torch.Tensor:
        return self.processor(images=list(images), return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output), dim=-1)


def load_encoder(model_path: str, state: Mapping[str, torch.Tensor] | None = None) -> ImageEncoder:
    enc = ImageEncoder(model_path)
    if state is not None:
        missing, unexpected = enc.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise TiesnbError(f"not a state of {model_path}'s image encoder: missing {missing[:3]}, unknown {unexpected[:3]}")
    return enc.eval()


def encoder_state(enc: ImageEncoder) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in enc.state_dict().items()}


# our task names → clip_benchmark's dataset names, where they differ
PROMPT_NAMES = {"stanford_cars": "cars"}


def head_prompts(task: str, labels, templates: str, template: str) -> tuple[list[str], list[str]]:
    """``(templates, class names)`` of a task's head: clip_benchmark's for the dataset (``{c}`` as
    ``{}``), or ``template`` and the dataset's label names (``templates: single``, or a task it lacks)."""
    if templates == "ensemble":
        from ..data.sources import clip_prompts

        all_templates, all_names = clip_prompts()
        key = PROMPT_NAMES.get(task, task)
        if key in all_templates:
            names = all_names.get(key) or list(labels)
            if len(names) != len(labels):
                raise TiesnbError(f"clip_benchmark names {len(names)} classes for {key}, the data has {len(labels)}")
            return [t.replace("{c}", "{}") for t in all_templates[key]], list(names)
    return [template], list(labels)


@torch.inference_mode()
def zero_shot_heads(model_path: str, prompts: Mapping[str, tuple[list[str], list[str]]]) -> dict[str, torch.Tensor]:
    """Per task (``prompts``: its templates and class names): for each class the text embeddings of
    every template filled with its name, each normalised, averaged and normalised again, times
    CLIP's logit scale: a linear head without bias."""
    clip, processor = _load(model_path)
    out = {}
    for task, (templates, names) in prompts.items():
        rows = []
        for name in names:
            tokens = processor.tokenizer([t.format(name) for t in templates], padding=True, return_tensors="pt")
            each = F.normalize(clip.text_projection(clip.text_model(**tokens).pooler_output), dim=-1)
            rows.append(F.normalize(each.mean(0), dim=-1))
        out[f"{task}.weight"] = (clip.logit_scale.exp() * torch.stack(rows)).float().clone()
        out[f"{task}.bias"] = torch.zeros(len(names))
    return out


def features(enc: ImageEncoder, images, batch_size: int) -> torch.Tensor:
    dev = next(enc.parameters()).device
    with torch.inference_mode():
        return torch.cat([enc(enc.pixels(images[s:s + batch_size]).to(dev)).float().cpu()
                          for s in range(0, len(images), batch_size)])


# ----------------------------------------------------------------------------------------------
# training, evaluation, statistics


@dataclass
class CLIPTrainConfig(ScheduledTrainConfig):
    model_path: str = ""


def finetune(cfg: CLIPTrainConfig, data: Mapping[str, ImageTaskData], heads_state: Mapping[str, torch.Tensor],
             progress: bool = True, history: list | None = None) -> dict[str, torch.Tensor]:
    """The image encoder fine-tuned on ``cfg.tasks`` through the fixed zero-shot heads: AdamW, the
    shared schedule and sampler (task arithmetic's recipe: AdamW, cosine schedule, lr 1e-5, batch
    128 — set in the study's parameters)."""
    cfg.check()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    dev = device()
    heads = heads_module(heads_state, cfg.tasks).to(dev)
    enc = load_encoder(cfg.model_path).to(dev)
    enc.train()
    fine_tune_loop(enc, heads, cfg, {t: len(data[t].train[1]) for t in cfg.tasks},
                   lambda picks: (enc.pixels([data[t].train[0][i] for t, i in picks]).to(dev),
                                  torch.tensor([int(data[t].train[1][i]) for t, i in picks], device=dev)),
                   progress, history)
    enc.eval()
    return encoder_state(enc)


class CLIPEvaluator:
    def __init__(self, model_path: str, data: Mapping[str, ImageTaskData], heads_state, batch_size: int):
        self.model_path, self.data, self.batch_size = model_path, dict(data), batch_size
        self.heads = heads_module(heads_state, list(self.data))
        self._state, self.enc = object(), None

    def scores(self, state, task: str, split: str):
        if self.enc is None or self._state is not state:
            self.enc, self._state = load_encoder(self.model_path, state).to(device()), state
        x, y = self.data[task].split(split)
        with torch.inference_mode():
            pred = self.heads(task, features(self.enc, x, self.batch_size)).argmax(1).numpy()
        return pred, (pred == y).astype(np.float64), None


# ----------------------------------------------------------------------------------------------
# the family


@dataclass
class CLIPSettings:
    """The ``clip:`` section of study.yaml."""

    model_path: str = "openai/clip-vit-base-patch32"  # a hub id or a local folder of a CLIPModel
    data_dir: str = ""  # local copies <task>/<split>.parquet (default: the hub or its cache)
    templates: str = "ensemble"  # ensemble: clip_benchmark's prompts and class names per dataset | single: template
    template: str = "a photo of a {}."  # the one prompt (templates: single, or a task clip_benchmark lacks)
    schedule: str = "cosine"  # after the warm-up: cosine (task arithmetic's recipe) | linear


class CLIPVision(Family):
    name = "clip"
    code = ("data/images.py", "data/tasks.py", "data/paper.py")
    Settings = CLIPSettings
    cache_data = False

    def task_asset(self, task: str) -> str | None:  # the embedded image tasks (the paper's come from the hub)
        return IMAGE_TASKS[task].asset if task in IMAGE_TASKS else None

    assets = ("clip_benchmark",)

    def check(self, study) -> None:
        if study.settings.templates not in ("ensemble", "single"):
            raise TiesnbError(f"study {study.config.name}: clip.templates must be ensemble or single, "
                              f"got {study.settings.templates!r}")
        if "{}" not in study.settings.template:
            raise TiesnbError(f"study {study.config.name}: clip.template must hold {{}} for the class name, "
                              f"got {study.settings.template!r}")
        check_schedule(study.settings.schedule, f"study {study.config.name}: clip.")

    def load_task(self, study, task: str):
        c = study.config
        return load_clip_task(task, c.n_train, c.n_val, c.n_test, c.split_seed, study.settings.data_dir or None)

    reads_released = True

    def released_state(self, study, source: str) -> dict[str, torch.Tensor]:
        """An existing fine-tuned model as an encoder state: a ``CLIPVisionModel`` folder (as
        FusionBench's ``tanganke/clip-vit-base-patch32_<task>``, saved by transformers 4:
        ``vision_model.*``; saved by transformers 5: the same names without the prefix; the
        projection, not fine-tuned there, is the pretrained one) or a whole ``CLIPModel`` (its image
        tower and projection)."""
        from .common import check_like, released_tensors

        tensors, folder = released_tensors(source)
        pretrained = self.pretrained(study)
        tower = ("embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm.")
        state = {("vision_model." + k if k.startswith(tower) else k): v for k, v in tensors.items()}
        state = {k: v for k, v in state.items() if k.startswith("vision_model.") or k == "visual_projection.weight"}
        state.setdefault("visual_projection.weight", pretrained["visual_projection.weight"])
        state = {k: v for k, v in state.items() if k in pretrained or not k.endswith("position_ids")}
        check_like(state, pretrained, folder)
        extra = sorted(set(state) - set(pretrained))
        if extra:
            raise TiesnbError(f"{folder}: {extra[0]!r} is not a tensor of {study.settings.model_path}'s image encoder")
        return {k: state[k].to(pretrained[k].dtype) for k in pretrained}

    def prompts(self, study) -> dict[str, tuple[list[str], list[str]]]:
        s = study.settings
        return {t: head_prompts(t, d.labels, s.templates, s.template) for t, d in study.data().items()}

    def heads_settings(self, study) -> dict:
        return {"model_path": study.settings.model_path, "prompts": self.prompts(study)}

    def fit_heads(self, study, progress: bool) -> dict[str, torch.Tensor]:
        return zero_shot_heads(study.settings.model_path, self.prompts(study))

    def train_config(self, study, tasks: list[str]):
        c = study.config
        return CLIPTrainConfig(tasks=tasks, mode=c.mode, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                               warmup=c.warmup, seed=study.seed, autocast=c.autocast, threads=study.threads,
                               model_path=study.settings.model_path, schedule=study.settings.schedule)

    def trainer(self):
        return finetune

    def pretrained(self, study) -> dict[str, torch.Tensor]:
        return encoder_state(load_encoder(study.settings.model_path))

    def evaluator(self, study):
        return CLIPEvaluator(study.settings.model_path, study.data(), study.heads(), study.config.eval_batch_size)

    def statistic(self, study, kind: str, task: str, progress: bool) -> dict[str, torch.Tensor]:
        c, s = study.config, study.settings
        enc = load_encoder(s.model_path, study.state(task))
        images = study.data()[task].train[0]
        n = c.fisher_examples if kind == "fisher" else c.gram_examples
        if kind == "fisher":
            head = heads_module(study.heads(), [task])
            pix = enc.pixels(images[:n])
            return expected_fisher(dict(enc.named_parameters()),
                                   lambda i: F.log_softmax(head(task, enc(pix[i:i + 1])), -1)[0], len(pix),
                                   f"Fisher {task}", progress)
        with LinearGrams(enc, mask_of=lambda name: None) as grams, torch.inference_mode():
            for s0 in range(0, min(n, len(images)), c.eval_batch_size):
                enc(enc.pixels(images[s0:min(n, s0 + c.eval_batch_size)]))
        return grams.mean()


def make_tiny_clip(folder, seed: int = 0, image_size: int = 32) -> str:
    """A tiny random CLIP (2 layers per tower, width 32) with a word-level tokenizer and an image
    processor for ``image_size`` pixels, saved to ``folder``: the tests' stand-in for ViT-B/32."""
    from pathlib import Path

    from tokenizers import Tokenizer, models as tmodels, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

    folder = Path(folder)
    words = ["<pad>", "<unk>", "<s>", "</s>", "a", "photo", "of", "the", "."] + [str(d) for d in range(10)] + \
        "t-shirt/top trouser pullover dress coat sandal shirt sneaker bag ankle boot airplane automobile bird cat deer dog frog horse ship truck".split()
    tk = Tokenizer(tmodels.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    cfg = CLIPConfig(text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "max_position_embeddings": 32, "pad_token_id": 0,
                                  "bos_token_id": 2, "eos_token_id": 3},
                     vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                    "num_attention_heads": 2, "image_size": image_size, "patch_size": 8},
                     projection_dim=16)
    CLIPModel(cfg).save_pretrained(folder)
    image_proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(folder)
    return str(folder)
