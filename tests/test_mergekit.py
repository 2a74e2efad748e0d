"""tiesnb against the real mergekit (0.1.5, a test dependency) on tiny Llama-layout checkpoints:
the `mergekit` preset and mergekit configs run by `tiesnb merge` give mergekit's output — bit for
bit where both compute in float32 — except where a documented rule differs (ties at a trim
threshold: equal once mergekit's sort is made stable)."""

import contextlib
import io

import pytest
import torch
import yaml

from tiesnb.checkpoints import load_state_dict
from tiesnb.cli import main
from tiesnb.merge import merge

mergekit = pytest.importorskip("mergekit", reason="mergekit is a test dependency: pip install -e '.[dev]'")
from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import MergeOptions, run_merge  # noqa: E402

WEIGHTS = [1.0, 0.5, 2.0]


def tiny_tokenizer(folder, extra: str | None = None):
    """A 64-token word-level tokenizer (tokenizer.json + tokenizer_config.json); ``extra`` renames
    one token: another vocabulary of the same size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(62)} | {"<unk>": 62, "</s>": 63}
    if extra:
        del vocab["t61"]
        vocab[extra] = 61
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>").save_pretrained(folder)


def tiny_llama(folder, seed: int, base_state=None, scale: float = 0.02, quantum: float | None = None):
    """A Llama-layout checkpoint (config.json + model.safetensors + a tokenizer); fine-tuned ones
    are the base plus random deltas (rounded to multiples of ``quantum``: exact ties in magnitude)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                      num_key_value_heads=2, vocab_size=64, max_position_embeddings=32, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        state = {}
        for k, v in base_state.items():
            d = scale * torch.randn(v.shape, generator=g)
            if quantum:
                d = torch.round(d / quantum) * quantum
            state[k] = v + d
        model.load_state_dict(state)
    model.save_pretrained(folder)
    tiny_tokenizer(folder)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base = tiny_llama(root / "base", 0)
    for i in range(3):
        tiny_llama(root / f"ft{i}", i + 1, base)
    for i in range(3):  # deltas on a grid of 0.01: many exactly equal magnitudes
        tiny_llama(root / f"q{i}", i + 11, base, quantum=0.01)
    tiny_llama(root / "odd", 21, base)
    tiny_tokenizer(root / "odd", extra="<pad>")  # one token renamed: another vocabulary
    return root


def mergekit_config(root, method, density=None, models=("ft0", "ft1", "ft2"), base="base", **top):
    entries = []
    for name, w in zip(models, WEIGHTS):
        params = {"weight": w}
        if density is not None:
            params["density"] = density
        entries.append({"model": str(root / name), "parameters": params})
    cfg = {"merge_method": method, "models": entries, "dtype": "float32"}
    if base is not None:
        cfg["base_model"] = str(root / base)
    if top:
        cfg["parameters"] = top
    return cfg


def run_mergekit(cfg, out):
    run_merge(MergeConfiguration.model_validate(cfg), str(out),
              MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True, random_seed=0))
    return load_state_dict(out)


def merge_both(cfg, tmp_path):
    """The same config through mergekit and tiesnb: (tiesnb's tensors, mergekit's)."""
    return run_tiesnb(cfg, tmp_path, "tn"), run_mergekit(cfg, tmp_path / "mk")


def run_tiesnb(cfg, tmp, out):
    path = tmp / f"{out}.yml"
    path.write_text(yaml.safe_dump(cfg))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["merge", str(path), "--out", str(tmp / out), "--quiet", "--no-checksums"])
    assert rc == 0, err.getvalue()
    return load_state_dict(tmp / out)


def assert_equal(a, b, rounding: bool = False):
    """Bit for bit; or, with ``rounding``, to float32 rounding (a few units in the last place)."""
    assert set(a) == set(b)
    if rounding:
        for n in a:
            assert torch.allclose(a[n], b[n], rtol=1e-6, atol=1e-7), n
        return
    diff = {n: float((a[n].float() - b[n].float()).abs().max()) for n in a if not torch.equal(a[n], b[n])}
    assert not diff, diff


@pytest.mark.parametrize("method, density, top, rounding", [
    ("ties", 0.3, {"normalize": True}, False),
    ("ties", 0.05, {"normalize": True, "int8_mask": True}, False),  # 16-entry norms: int(0.8) = 0, mergekit keeps 1
    ("ties", 0.3, {"normalize": False, "lambda": 0.7}, False),
    ("dare_ties", 1.0, {}, False),  # k = 1: no random drop, so the two must agree
    ("breadcrumbs", 0.8, {"gamma": 0.05}, False),
    ("task_arithmetic", None, {"lambda": 0.7}, False),
    ("task_arithmetic", None, {"normalize": True}, True),  # mergekit divides after summing
])
def test_mergekit_configs_give_mergekits_output(llamas, tmp_path, method, density, top, rounding):
    cfg = mergekit_config(llamas, method, density, **top)
    expected = run_mergekit(cfg, tmp_path / "mk")
    got = run_tiesnb(cfg, tmp_path, "tn")
    assert_equal(got, expected, rounding)
    resolved = __import__("json").loads((tmp_path / "tn" / "merge_config.json").read_text())
    assert resolved["mergekit_config"]["merge_method"] == method  # the config as given is recorded
    assert (tmp_path / "tn" / "config.json").exists() and (tmp_path / "tn" / "mergekit_config.yml").exists()


def test_the_preset_keeps_at_least_one_entry_as_mergekit(llamas, tmp_path):
    cfg = mergekit_config(llamas, "ties", 0.05, normalize=True)
    expected = run_mergekit(cfg, tmp_path / "mk")
    base = load_state_dict(llamas / "base")
    models = [load_state_dict(llamas / f"ft{i}") for i in range(3)]
    preset = merge("ties", base, models, preset="mergekit", k=0.05, weights=WEIGHTS)
    assert_equal(preset, expected)
    floor = merge("ties", base, models, preset="mergekit", k=0.05, weights=WEIGHTS, count="floor")
    norm = "model.norm.weight"  # 16 entries: int(0.05·16) = 0 keeps nothing, mergekit keeps one
    assert not torch.equal(floor[norm], expected[norm]) and torch.equal(floor[norm], base[norm])


def test_linear_example_config(llamas, tmp_path):
    # the form of mergekit's examples/linear.yml: three weighted models, no base model
    cfg = {"models": [{"model": str(llamas / f"ft{i}"), "parameters": {"weight": w}} for i, w in enumerate([1.0, 0.3, 0.5])],
           "merge_method": "linear", "dtype": "float32"}
    assert_equal(run_tiesnb(cfg, tmp_path, "tn"), run_mergekit(cfg, tmp_path / "mk"), rounding=True)  # mergekit: fused multiply-adds
    # as published, with dtype: float16 — mergekit computes in float16, tiesnb in float32 and writes
    # float16: the two differ by float16 rounding only
    cfg["dtype"] = "float16"
    got, expected = run_tiesnb(cfg, tmp_path, "tn16"), run_mergekit(cfg, tmp_path / "mk16")
    for n in expected:
        assert got[n].dtype == expected[n].dtype == torch.float16
        assert torch.allclose(got[n].float(), expected[n].float(), rtol=2e-3, atol=2e-3), n


def test_exact_ties_at_the_threshold_differ_only_by_mergekits_unstable_sort(llamas, tmp_path, monkeypatch):
    cfg = mergekit_config(llamas, "ties", 0.3, models=("q0", "q1", "q2"), normalize=True)
    got = run_tiesnb(cfg, tmp_path, "tn")
    real_argsort = torch.argsort

    def stable_argsort(x, *args, **kw):  # equal magnitudes: earlier positions first, as tiesnb's index rule
        kw["stable"] = True
        return real_argsort(x, *args, **kw)

    monkeypatch.setattr(torch, "argsort", stable_argsort)
    expected = run_mergekit(cfg, tmp_path / "mk_stable")
    assert_equal(got, expected)


def test_what_tiesnb_cannot_do_is_named(llamas, tmp_path):
    def fails(cfg, *words):
        path = tmp_path / "bad.yml"
        path.write_text(yaml.safe_dump(cfg))
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["merge", str(path), "--out", str(tmp_path / "o"), "--quiet"])
        text = err.getvalue()
        assert rc == 2 and text.count("\n") == 1 and "Traceback" not in text, text
        for w in words:
            assert w in text, (w, text)
        assert not (tmp_path / "o").exists()

    fails({**mergekit_config(llamas, "ties", 0.3), "slices": []}, "both 'models' and 'slices'")
    fails(mergekit_config(llamas, "slerp", 0.3), "merge_method 'slerp'")
    fails({**mergekit_config(llamas, "ties", 0.3), "base_model": "someone/not-a-local-model"},
          "base_model", "'someone/not-a-local-model'", "Hugging Face hub")
    bad = mergekit_config(llamas, "ties", 0.3)
    bad["models"][0]["parameters"]["density"] = [{"filter": "mlp", "value": [0.5, [0.1]]}]
    fails(bad, "models[0].parameters.density[0].value")
    bad["models"][0]["parameters"]["density"] = [{"filter": "mlp", "valu": 0.5}]
    fails(bad, "models[0].parameters.density[0] must be {filter: ..., value: ...}")
    bad["models"][0]["parameters"]["density"] = [1.5, 0.2]
    fails(bad, "density of models[0]", "[0, 1]")
    # layer stacking (a "frankenmerge"), shifted sources, gaps, a vocabulary that differs
    full = [{"model": str(llamas / m), "layer_range": [0, 4]} for m in ("base", "ft0", "ft1")]
    stack = {"merge_method": "ties", "base_model": str(llamas / "base"), "dtype": "float32",
             "slices": [{"sources": [{**s, "layer_range": [0, 2]} for s in full]},
                        {"sources": [{**s, "layer_range": [0, 2]} for s in full]}]}
    fails(stack, "slices[1]", "starts at layer 0, not 2")
    shifted = {**stack, "slices": [{"sources": [full[0], {**full[1], "layer_range": [1, 5]}, full[2]]}]}
    fails(shifted, "slices[0]", "different layer ranges")
    short = {**stack, "slices": [{"sources": [{**s, "layer_range": [0, 3]} for s in full]}]}
    fails(short, "end at layer 3", "4 layers")
    fails({**mergekit_config(llamas, "ties", 0.3, models=("ft0", "odd")), "tokenizer_source": "union"},
          "models[1]", "odd", "tokenizer.json", "another vocabulary")
    fails({**mergekit_config(llamas, "ties", 0.3), "tokenizer": {"source": "union", "pad_to_multiple_of": 64}},
          "tokenizer.pad_to_multiple_of")


# ---------------------------------------------------------------------------------------------
# mergekit's parameter language: gradients, filters, defaults, slices, tokenizer recipes


def test_gradients_as_in_mergekits_examples(llamas, tmp_path):
    # examples/ties.yml: a density gradient on one model, a weight gradient on another
    cfg = mergekit_config(llamas, "ties", 0.5, normalize=True)
    cfg["models"][0]["parameters"]["density"] = [1, 0.7, 0.1]
    cfg["models"][1]["parameters"]["weight"] = [0, 0.3, 0.7, 1]
    got, expected = merge_both(cfg, tmp_path)
    assert_equal(got, expected)
    # the gradient did something: layer 0 and layer 3 of the merge differ from a flat config's
    flat = run_tiesnb(mergekit_config(llamas, "ties", 0.5, normalize=True), tmp_path, "flat")
    for layer in (0, 3):
        name = f"model.layers.{layer}.mlp.down_proj.weight"
        assert not torch.equal(got[name], flat[name]), name


def test_filtered_values_and_top_level_defaults(llamas, tmp_path):
    # the shape of widely copied configs: filters per module, a fallback, defaults at the top level
    cfg = {"merge_method": "ties", "base_model": str(llamas / "base"), "dtype": "float32",
           "models": [{"model": str(llamas / "ft0"),
                       "parameters": {"weight": [{"filter": "mlp", "value": 0.5}, {"value": 1.0}],
                                      "density": [{"filter": "self_attn", "value": [0.2, 0.8]}]}},
                      {"model": str(llamas / "ft1")},
                      {"model": str(llamas / "ft2"), "parameters": {"weight": [{"filter": "mlp", "value": 0}, {"value": 0.7}]}}],
           "parameters": {"density": 0.4, "weight": 0.8, "normalize": True, "int8_mask": True}}
    got, expected = merge_both(cfg, tmp_path)
    assert_equal(got, expected)
    resolved = __import__("json").loads((tmp_path / "tn" / "merge_config.json").read_text())["params"]
    assert resolved["k"] == 0.4  # model 0's self_attn density is the exception, per tensor
    over = resolved["tensor_params"]["model.layers.3.self_attn.q_proj.weight"]
    assert over["k"] == [0.8, 0.4, 0.4] and "model.layers.0.self_attn.q_proj.weight" in resolved["tensor_params"]


@pytest.mark.parametrize("method, top, rounding", [
    ("task_arithmetic", {"lambda": [0.5, 1.0]}, False),
    ("task_arithmetic", {"normalize": True}, True),
    ("breadcrumbs", {"gamma": [{"filter": "mlp", "value": 0.1}, {"value": 0.02}]}, False),
    ("dare_ties", {}, False),
    ("linear", {}, True),
])
def test_gradients_in_the_other_methods(llamas, tmp_path, method, top, rounding):
    cfg = mergekit_config(llamas, method, 1.0 if method.startswith("dare") else None, **top)
    if method == "breadcrumbs":
        cfg["models"][1]["parameters"]["density"] = [0.9, 0.5]
    cfg["models"][0]["parameters"]["weight"] = [1.0, 0.2, 0.6]
    if method == "linear":
        del cfg["base_model"]
    got, expected = merge_both(cfg, tmp_path)
    assert_equal(got, expected, rounding)


def test_slices_covering_every_layer(llamas, tmp_path):
    # one slice over every layer, the base among the sources: the same merge as with `models`
    def src(m, r, **params):
        return {"model": str(llamas / m), "layer_range": r, **({"parameters": params} if params else {})}

    one = {"merge_method": "ties", "base_model": str(llamas / "base"), "dtype": "float32",
           "parameters": {"normalize": True, "density": 0.5},
           "slices": [{"sources": [src("base", [0, 4]), src("ft0", [0, 4], weight=[1, 0.2]), src("ft1", [0, 4], weight=0.5)]}]}
    got, expected = merge_both(one, tmp_path)
    assert_equal(got, expected)
    # two slices with their own parameters: the gradient runs within each slice
    two = {**one, "slices": [
        {"sources": [src("base", [0, 2]), src("ft0", [0, 2], weight=[1, 0.2]), src("ft1", [0, 2], weight=1.5)],
         "parameters": {"density": 0.3}},
        {"sources": [src("base", [2, 4]), src("ft0", [2, 4], density=[0.9, 0.1], weight=0.7), src("ft1", [2, 4], weight=0.5)]}]}
    got2, expected2 = run_tiesnb(two, tmp_path, "tn2"), run_mergekit(two, tmp_path / "mk2")
    assert_equal(got2, expected2)
    assert not torch.equal(got2["model.layers.3.mlp.up_proj.weight"], got["model.layers.3.mlp.up_proj.weight"])


@pytest.mark.parametrize("recipe", [{"tokenizer_source": "union"}, {"tokenizer_source": "base"},
                                    {"tokenizer": {"source": "union"}}])
def test_tokenizer_recipes_when_every_vocabulary_is_the_base_s(llamas, tmp_path, recipe):
    cfg = {**mergekit_config(llamas, "ties", 0.3, normalize=True), **recipe}
    got, expected = merge_both(cfg, tmp_path)
    assert_equal(got, expected)
    assert (tmp_path / "tn" / "tokenizer.json").read_bytes() == (llamas / "base" / "tokenizer.json").read_bytes()


def test_one_config_with_every_feature(llamas, tmp_path):
    # what the users share: full-range slices, a density gradient, filtered weights with a
    # fallback, top-level defaults and `tokenizer_source: union`, in one config
    def src(m, **params):
        return {"model": str(llamas / m), "layer_range": [0, 4], **({"parameters": params} if params else {})}

    cfg = {"merge_method": "ties", "base_model": str(llamas / "base"), "dtype": "float32", "tokenizer_source": "union",
           "parameters": {"normalize": True, "int8_mask": True, "weight": 0.6},
           "slices": [{"sources": [src("base"),
                                   src("ft0", density=[1, 0.7, 0.1], weight=[{"filter": "mlp", "value": 0.5}, {"value": 1}]),
                                   src("ft1", density=0.4),
                                   src("ft2", density=[0.2, 0.6], weight=[0, 0.3, 0.7, 1])]}]}
    got, expected = merge_both(cfg, tmp_path)
    assert_equal(got, expected)
    resolved = __import__("json").loads((tmp_path / "tn" / "merge_config.json").read_text())["params"]
    assert len(resolved["tensor_params"]) > 10  # the values did vary by tensor
