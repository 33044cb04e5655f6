"""The GD counterpart (interp.finetune) and the ICL-vs-GD analysis on the tiny GQA Llama, with
known answers: the user's model is bit-identical afterwards, full-batch GD is order-invariant
while batch-1 SGD is not, the losses and the layer-causal gradient equal hand-computed ones."""
import copy

import pytest
import torch

from interp.finetune import GDConfig, GDCounterpart, demo_sequences, parameter_hash, select_parameters
from interp.prompts import Template
from interp.tasks import Example, Task

WORDS = ["x", "y"]
INPUTS = ["ab cd", "ab ce", "ef gh", "ij kl", "ab cf", "mn op", "qr st", "uv wx", "ab cg", "yz ab", "ef gi", "ij km"]


@pytest.fixture()
def toy_task():
    return Task("toy", [Example(t, WORDS[i % 2], i % 2) for i, t in enumerate(INPUTS)], kind="classification",
                label_words=WORDS, template=Template(space_before_text=False))


@pytest.fixture()
def facade(char_tokenizer):
    from interp import load_model
    from tests.conftest import make_tiny_llama

    return load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))


def test_select_parameters_presets():
    names = [f"model.layers.{l}.self_attn.{p}_proj.weight" for l in range(3) for p in "qkvo"] + ["model.embed_tokens.weight"]
    assert select_parameters(names, "kv") == [n for n in names if ".k_proj." in n or ".v_proj." in n]
    assert select_parameters(names, "wv:1") == ["model.layers.1.self_attn.v_proj.weight"]
    assert select_parameters(names, "all") == names
    assert select_parameters(names, r"layers\.2\..*q_proj") == ["model.layers.2.self_attn.q_proj.weight"]
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(names, "wv:7")
    with pytest.raises(ValueError, match="wv:LAYER"):
        select_parameters(names, "wv:x")


def test_fit_leaves_the_user_model_bit_identical_and_reset_restores_the_copy(facade, toy_task):
    before = parameter_hash(facade)
    gd = GDCounterpart(facade)
    assert parameter_hash(gd.model) == before
    seqs, at = demo_sequences(facade.tokenizer, toy_task, toy_task.examples[:4])
    gd.fit(seqs, at, GDConfig(params="all", lr=0.5, epochs=2))
    assert parameter_hash(gd.model) != before  # the copy moved ...
    assert parameter_hash(facade) == before  # ... the user's model did not
    gd.reset()
    assert parameter_hash(gd.model) == before


def _trained(gd, names):
    params = dict(gd.twin.named_parameters())
    return torch.cat([params[n].detach().flatten().clone() for n in names])


def test_full_batch_gd_is_order_invariant_and_batch_one_sgd_is_not(facade, toy_task):
    gd = GDCounterpart(facade)
    seqs, at = demo_sequences(facade.tokenizer, toy_task, toy_task.examples[:4])
    full = GDConfig(lr=0.5, batch_size=4, epochs=3)
    r = gd.fit(seqs, at, full, order=[0, 1, 2, 3])
    a = _trained(gd, r.trained)
    gd.fit(seqs, at, full, order=[3, 1, 0, 2])
    assert torch.allclose(a, _trained(gd, r.trained), atol=1e-6, rtol=0)
    sgd = GDConfig(lr=0.5, batch_size=1, epochs=3)
    gd.fit(seqs, at, sgd, order=[0, 1, 2, 3])
    b = _trained(gd, r.trained)
    gd.fit(seqs, at, sgd, order=[3, 1, 0, 2])
    assert (b - _trained(gd, r.trained)).abs().max() > 1e-3


def test_order_sensitivity_zero_for_full_batch_positive_for_batch_one(facade, toy_task):
    from analyses.gd.order_sensitivity import order_sensitivity

    r = order_sensitivity(facade, toy_task, k=4, n=4, n_orders=3, batch_sizes=(1, "full"), config=GDConfig(lr=0.5, epochs=3))
    assert r.gd["full"] < 1e-5
    assert r.gd["1"] > 100 * max(r.gd["full"], 1e-9)
    assert r.icl > 0
    # full batch: the ratio is undefined by construction, never a ratio of noise
    assert r.ratio["full"] is None and "order-invariant by construction" in r.undefined["full"]
    lo, hi = r.ratio_ci["1"]
    assert lo <= r.ratio["1"] <= hi and r.icl_ci[0] <= r.icl <= r.icl_ci[1]
    text = r.summary()
    assert "undefined" in text and "nan" not in text.lower() and ("more order-sensitive" in text or "no clear difference" in text)


def test_label_loss_is_the_cross_entropy_of_the_answer_token(facade, toy_task):
    gd = GDCounterpart(facade)
    seqs, at = demo_sequences(facade.tokenizer, toy_task, toy_task.examples[:2])
    rec = gd.fit(seqs, at, GDConfig(lr=1e-9, batch_size=2))
    with torch.no_grad():
        expected = []
        for s, p in zip(seqs, at):
            logits = gd.twin(input_ids=torch.tensor([s])).logits[0, p]
            expected.append(float(torch.nn.functional.cross_entropy(logits[None], torch.tensor([s[p + 1]]))))
    assert rec.losses[0] == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_layer_causal_step_follows_each_layers_own_loss(facade, toy_task):
    """One SGD step with lr 1 on layer 0's parameters: Δθ = −∇ CE(unembed(norm(h_0))) only."""
    gd = GDCounterpart(facade)
    seqs, at = demo_sequences(facade.tokenizer, toy_task, toy_task.examples[:1])
    names = select_parameters(gd.names, r"layers\.0\.self_attn\.v_proj")
    params = dict(gd.twin.named_parameters())
    w0 = params[names[0]].detach().clone()
    w = params[names[0]]
    w.requires_grad_(True)
    ids = torch.tensor([seqs[0]])
    out = gd.twin(input_ids=ids, output_hidden_states=True)
    h0 = out.hidden_states[1]  # output of layer 0
    logits0 = gd.twin.lm_head(gd.twin.model.norm(h0))[0, at[0]]
    loss0 = torch.nn.functional.cross_entropy(logits0[None], torch.tensor([seqs[0][at[0] + 1]]))
    (grad,) = torch.autograd.grad(loss0, w)
    w.requires_grad_(False)
    gd.fit(seqs, at, GDConfig(params=r"layers\.0\.self_attn\.v_proj", lr=1.0, layer_causal=True))
    assert torch.allclose(params[names[0]].detach(), w0 - grad, atol=1e-6)
    # the ordinary loss gives another step (the last layer's loss reaches layer 0 too)
    gd.fit(seqs, at, GDConfig(params=r"layers\.0\.self_attn\.v_proj", lr=1.0))
    assert not torch.allclose(params[names[0]].detach(), w0 - grad, atol=1e-6)


def test_icl_vs_gd_runs_the_three_sides_and_keeps_the_model(facade, toy_task):
    from analyses.gd.icl_vs_gd import icl_vs_gd
    from interp.prompts import build_icl_batch
    from interp.scoring import score_batch

    before = parameter_hash(facade)
    r = icl_vs_gd(facade, toy_task, k=3, n=6, seed=0, config=GDConfig(lr=0.1, loss="all"))
    assert r.model_hash_unchanged and parameter_hash(facade) == before
    # ICL accuracy equals the plain scoring of the same prompts (the appended token does not
    # change the prediction position's logits: causal attention)
    icl_b = build_icl_batch(facade.tokenizer, toy_task, k=3, n=6, seed=0, same_demos=True, padding_side="left")
    assert r.accuracy["icl"]["accuracy"] == pytest.approx(float(score_batch(facade, icl_b)["correct"].float().mean()))
    # layer 0's query-part scores do not see the context: ICL and ZS agree exactly there
    assert r.per_layer["simam_zs"][0] == pytest.approx(1.0, abs=1e-5)
    assert len(r.per_layer["simaou"]) == facade.n_layers
    assert len(r.dual_form["cosine_gd"]) == facade.n_layers and len(r.dual_form["cosine_gd"][0]) == facade.n_heads
    assert r.distributions["kl_reordered"] >= 0 and r.distributions["kl_gd"] >= 0


def test_a_shared_reference_gives_the_same_result_as_a_fresh_one(facade, toy_task):
    from analyses.gd.icl_vs_gd import icl_vs_gd, reference_runs

    cfg = GDConfig(lr=0.1, loss="all")
    fresh = icl_vs_gd(facade, toy_task, k=3, n=5, seed=2, config=cfg)
    ref = reference_runs(facade, toy_task, k=3, n=5, seed=2)
    from analyses.report.html import json_safe

    assert json_safe(icl_vs_gd(facade, toy_task, k=3, n=5, seed=2, config=cfg, reference=ref).to_dict()) == json_safe(fresh.to_dict())
    with pytest.raises(ValueError, match="another k, n or seed"):
        icl_vs_gd(facade, toy_task, k=3, n=5, seed=1, config=cfg, reference=ref)


def test_prefix_cached_icl_side_equals_full_forwards(facade, toy_task):
    from analyses.gd.icl_vs_gd import run_side, run_side_cached
    from interp.prompts import build_icl_batch

    b = build_icl_batch(facade.tokenizer, toy_task, k=3, n=5, seed=0, same_demos=True, padding_side="left")
    r0 = b.rows[0]
    cols = [p - r0.start for s in r0.demo_blocks for p in range(s.start, s.end)]
    token = int(b.label_words.first_token_ids[0])
    full = run_side(facade, b, append=token, demo_columns=cols, rotary_q=True)
    fast = run_side_cached(facade, b, append=token, demo_columns=cols, batch_size=2)
    for name in ("logprobs", "attn_out", "z", "q_rot", "demo_scores"):
        assert torch.allclose(getattr(full, name), getattr(fast, name), atol=1e-4), name
    assert all(torch.allclose(a, c, atol=1e-4) for a, c in zip(full.query_scores, fast.query_scores))
    assert [a.shape for a in full.query_scores] == [c.shape for c in fast.query_scores]
