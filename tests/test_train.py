"""Trainers, evaluator and statistics on the real MiniLM (from its offline package) with a few
invented examples: determinism, skip-if-identical, atomic checkpoints, (IA)³, and the Fisher and
Gram statistics against independent computations."""

import json

import pytest
import torch
import torch.nn.functional as F

from tiesnb import training
from tiesnb.families import text
from tiesnb.checkpoints import SafetensorsWriter, load_state_dict
from tiesnb.data import Example, TaskData, assets
from tiesnb.errors import TiesnbError
from tiesnb.families.text import Evaluator, fisher_diagonal, gram_matrices
from tiesnb.merge import merge

POS = ["a wonderful film", "truly great acting", "i loved every minute", "a joyful delight", "brilliant and moving",
       "superb from start to end"]
NEG = ["a dull mess", "terrible acting", "i hated every minute", "a boring chore", "awful and lifeless", "bad from start to end"]


@pytest.fixture(scope="module")
def data():
    assets.fetch(["minilm"], quiet=True)
    sentiment = [Example(t, None, 1) for t in POS] + [Example(t, None, 0) for t in NEG]
    pairs = [Example(a, b, int(a == b)) for a in ("red car", "blue sky", "green tree") for b in ("red car", "blue sky", "green tree")]
    return {"sentiment": TaskData("sentiment", ("neg", "pos"), sentiment, sentiment[:4], sentiment[4:]),
            "same": TaskData("same", ("different", "same"), pairs, pairs[:3], pairs[3:], fingerprint="p")}


@pytest.fixture(scope="module")
def heads(data):
    return text.fit_heads(data, n_examples=20, autocast="off", progress=False)


def cfg(**kw):
    base = dict(tasks=["sentiment"], steps=3, batch_size=4, max_len=16, lr=1e-3, autocast="off", seed=0)
    base.update(kw)
    return text.TextTrainConfig(**base)


def test_linear_probe_separates_separable_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    head = training.fit_linear(x, y, 2, l2=1e-4)
    assert (head(x).argmax(-1) == y).float().mean() > 0.97
    again = training.fit_linear(x, y, 2, l2=1e-4)
    assert torch.equal(head.weight, again.weight)  # deterministic


def test_finetune_is_deterministic_and_moves_the_encoder(data, heads):
    a = text.finetune(cfg(), data, heads, progress=False)
    b = text.finetune(cfg(), data, heads, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = text.finetune(cfg(seed=1), data, heads, progress=False)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    pre = text.pretrained_state()
    assert torch.equal(a["embeddings.word_embeddings.weight"], pre["embeddings.word_embeddings.weight"])  # frozen
    assert not torch.equal(a["encoder.layer.5.output.dense.weight"], pre["encoder.layer.5.output.dense.weight"])


def test_trained_embeddings_move_only_the_rows_used_and_are_deterministic(data, heads):
    a = text.finetune(cfg(train_embeddings=True), data, heads, progress=False)
    b = text.finetune(cfg(train_embeddings=True), data, heads, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    pre = text.pretrained_state()
    words = "embeddings.word_embeddings.weight"
    moved = (a[words] != pre[words]).any(1).nonzero().flatten().tolist()
    used = {i for ex in data["sentiment"].train for i in text.tokenizer()(ex.text)["input_ids"]}
    assert moved and set(moved) <= used  # lazy Adam: only rows a batch used, no weight decay elsewhere
    assert not torch.equal(a["embeddings.position_embeddings.weight"], pre["embeddings.position_embeddings.weight"])
    # dense AdamW (sparse_embeddings off) also trains them, and decays every row
    c = text.finetune(cfg(train_embeddings=True, sparse_embeddings=False), data, heads, progress=False)
    assert (c[words] != pre[words]).any(1).sum() > len(used)


def test_multitask_trains_on_both_tasks(data, heads):
    history = []
    state = text.finetune(cfg(tasks=["sentiment", "same"], steps=2), data, heads, progress=False, history=history)
    assert len(history) == 2 and all(h > 0 for h in history)
    assert set(state) == set(text.pretrained_state())


def test_checkpoint_is_reused_when_identical_and_retrained_otherwise(tmp_path, data, heads, monkeypatch):
    calls = []
    trainer = lambda *a, **k: (calls.append(1), text.finetune(*a, **k))[1]  # noqa: E731
    out = training.train_checkpoint(trainer, cfg(), data, heads, tmp_path / "ck", progress=False)
    assert (out / "model.safetensors").exists() and len(calls) == 1
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    training.train_checkpoint(trainer, cfg(), data, heads, tmp_path / "ck", progress=False)
    assert len(calls) == 1 and (out / "model.safetensors").stat().st_mtime_ns == stamp
    record = json.loads((out / "params.json").read_text())
    assert record["resolved"]["train"]["lr"] == 1e-3 and len(record["metrics"]["loss"]) == 3
    training.train_checkpoint(trainer, cfg(lr=2e-3), data, heads, tmp_path / "ck", progress=False)
    assert len(calls) == 2


def test_an_interrupted_save_leaves_no_checkpoint(tmp_path, data, heads, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(SafetensorsWriter, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        training.train_checkpoint(text.finetune, cfg(steps=1), data, heads, tmp_path / "ck", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_ia3_fold_computes_what_peft_computes(data):
    enc = text.load_encoder()
    peft_model = text.ia3_model(text.load_encoder())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "ia3_l" in n:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
    vectors = training.ia3_state(peft_model)
    assert len(vectors) == 6 * 3  # key, value, FFN intermediate per layer
    folded = training.fold_ia3(text.pretrained_state(), vectors)
    text.load_state(enc, folded)
    batch = text.collate(text.encode(data["same"].train, 16))
    peft_model.eval(), enc.eval()
    with torch.no_grad():
        assert torch.allclose(peft_model(**batch).last_hidden_state, enc(**batch).last_hidden_state, atol=1e-4)


def test_ia3_training_gives_vectors_whose_task_vectors_merge(data, heads):
    state = text.finetune(cfg(mode="ia3", lr=1e-2), data, heads, progress=False)
    assert all(k.endswith(".ia3_l") for k in state) and any(not torch.equal(v, torch.ones_like(v)) for v in state.values())
    ones = training.ia3_identity(state)
    merged = merge("ties", ones, [state, state], k=1.0)
    assert all(torch.allclose(merged[k], state[k]) for k in state)  # two equal models merge to themselves


def test_evaluator_matches_a_plain_forward(data, heads):
    ev = Evaluator(data, heads, max_len=16, batch_size=3, autocast="off", progress=False)
    enc = text.load_encoder().eval()
    head = training.heads_module(heads, ["sentiment"])
    batch = text.collate(text.encode(data["sentiment"].test, 16))
    with torch.no_grad():
        expected = head("sentiment", text.pooled(enc, batch)).argmax(-1)
    assert torch.equal(ev.predictions(None, "sentiment", "test"), expected)
    gold = torch.tensor([e.label for e in data["sentiment"].test])
    assert ev.accuracy(None, "sentiment", "test") == pytest.approx(float((expected == gold).float().mean()))
    rows = ev.rows(None, ["sentiment", "same"], "val", "zero-shot", k=0.2)
    assert [set(r) for r in rows] == [{"task", "split", "method", "k", "accuracy"}] * 2


def test_fisher_matches_an_independent_computation(data, heads):
    # the word embeddings' gradient is taken sparse: a repeated token must have its gradient
    # summed before it is squared
    names = ["encoder.layer.5.output.LayerNorm.bias", "encoder.layer.0.attention.self.query.bias",
             "embeddings.word_embeddings.weight"]
    repeated = [Example("good good good film", None, 1), Example("a dull dull film", None, 0)]
    sentiment = TaskData("sentiment", ("neg", "pos"), repeated, repeated, repeated)
    data = {"sentiment": sentiment}
    state = text.pretrained_state()
    fisher = fisher_diagonal(state, "sentiment", data["sentiment"], heads, names, n_examples=2, max_len=16, progress=False)
    # independently: functional per-example Jacobians of log p with torch.func
    from torch.func import functional_call, jacrev

    enc = text.load_encoder().eval()
    head = training.heads_module(heads, ["sentiment"])
    params = {n: p.detach() for n, p in enc.named_parameters() if n in names}
    expected = {n: torch.zeros_like(p) for n, p in params.items()}
    for ex in data["sentiment"].train[:2]:
        batch = text.collate(text.encode([ex], 16))

        def logp(p):
            out = functional_call(enc, p, args=(), kwargs=batch).last_hidden_state
            return F.log_softmax(head("sentiment", text.mean_pool(out, batch["attention_mask"])), -1)[0]

        jac = jacrev(logp)(params)
        probs = logp(params).exp()
        for n in names:
            expected[n] += (probs.reshape(-1, *[1] * params[n].dim()) * jac[n].square()).sum(0) / 2
    for n in names:
        assert torch.equal(fisher[n] != 0, expected[n] != 0), n  # the same entries touched
        assert torch.allclose(fisher[n], expected[n], rtol=1e-3, atol=1e-5 * float(expected[n].abs().max())), n


def test_gram_matrices_match_the_hidden_states(data):
    state = text.pretrained_state()
    grams = gram_matrices(state, data["same"], n_examples=5, max_len=16, batch_size=2, progress=False)
    enc = text.load_encoder().eval()
    batch = text.collate(text.encode(data["same"].train[:5], 16))
    with torch.no_grad():
        x = enc(**batch, output_hidden_states=True).hidden_states[0]  # the input of layer 0's attention
    x = x.reshape(-1, x.shape[-1])[batch["attention_mask"].reshape(-1).bool()]
    assert torch.allclose(grams["encoder.layer.0.attention.self.query.weight"], x.T @ x / x.shape[0], atol=1e-4)
    assert grams["encoder.layer.0.output.dense.weight"].shape == (1536, 1536)


def test_bad_training_settings(data, heads):
    with pytest.raises(TiesnbError, match="mode must be full or ia3"):
        text.finetune(cfg(mode="lora"), data, heads, progress=False)
    with pytest.raises(TiesnbError, match="training max_len must be positive, got 0"):
        text.finetune(cfg(max_len=0), data, heads, progress=False)
    with pytest.raises(TiesnbError, match="no fitted head for task"):
        training.heads_module(heads, ["sentiment", "nope"])
    with pytest.raises(TiesnbError, match="autocast must be auto, bf16 or off"):
        training.resolve_autocast("fp8")


def test_saved_checkpoint_loads(tmp_path, data, heads):
    out = training.train_checkpoint(text.finetune, cfg(steps=1), data, heads, tmp_path / "ck", progress=False)
    state = load_state_dict(out)
    enc = text.load_encoder(state)
    assert torch.equal(dict(enc.named_parameters())["encoder.layer.0.attention.self.query.weight"].detach(),
                       state["encoder.layer.0.attention.self.query.weight"])
