"""Function vectors, task vectors and label flipping: the fast final-position paths against the
engine's own hook path, and the FV formula against a hand computation."""
import copy
import random

import pytest
import torch

from analyses.heads.function_vectors import function_vector, function_vector_analysis, mean_head_outputs
from analyses.heads.attribution import flip_demo_labels
from analyses.heads.task_vectors import task_vector_accuracy_by_layer
from interp import AddVector, Capture, Patch, load_model
from interp.patching import patch_heads, target_prob
from interp.patching.activation import to_left_padding
from interp.patching.runner import DecoderRunner
from interp.prompts import Template, build_icl_batch
from interp.tasks import Example, Task
from tests.conftest import make_tiny_llama


def toy_task(n=40, seed=0):
    rng = random.Random(seed)
    words = {"".join(rng.choice("abcdefgh") for _ in range(3)) for _ in range(200)}
    return Task("reverse", [Example(w, w[::-1]) for w in sorted(words)[:n]], template=Template(input_prefix="q:", output_prefix="a:"))


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    return load_model(make_tiny_llama(n_layers=3), tokenizer=copy.deepcopy(char_tokenizer))


@pytest.fixture(scope="module")
def batch(tiny):
    return build_icl_batch(tiny.tokenizer, toy_task(), k=3, n=6, seed=0, padding_side="left")


def test_mean_head_outputs_and_fv_formula(tiny, batch):
    mean_z = mean_head_outputs(tiny, batch, batch_size=4)
    with torch.no_grad():
        z = tiny.run(batch, capture=[Capture("attn.hook_z", positions="final")]).acts
    assert torch.allclose(mean_z[1], z["blocks.1.attn.hook_z"][:, 0].mean(0), atol=1e-6)
    heads = [(0, 1), (2, 3)]
    fv = function_vector(tiny, mean_z, heads)
    manual = sum(mean_z[l, h] @ tiny.W_O(l)[h].detach() for l, h in heads)
    assert torch.allclose(fv, manual, atol=1e-6)


@pytest.mark.parametrize("layer", [0, 2])
def test_final_residual_fast_path_equals_engine_edits(tiny, batch, layer):
    runner = DecoderRunner(tiny.hf_model)
    ids, mask = to_left_padding(batch.input_ids, batch.attention_mask, tiny.pad_token_id)
    state = runner.corrupted_state(ids, mask)
    v = torch.randn(tiny.d_model)
    fast = runner.run_with_final_resid(state, layer, runner.resid_post(state, layer)[:, -1] + v)
    with torch.no_grad():
        slow = tiny.run((ids), attention_mask=mask, logits="final",
                        edits=[AddVector(f"blocks.{layer}.hook_resid_post", v, positions="final")]).logits
    assert (fast - slow).abs().max() <= 1e-5
    theta = torch.randn(len(batch), tiny.d_model)
    fast = runner.run_with_final_resid(state, layer, theta)
    full = torch.zeros(len(batch), ids.shape[1], tiny.d_model)
    full[:, -1] = theta
    with torch.no_grad():
        slow = tiny.run(ids, attention_mask=mask, logits="final",
                        edits=[Patch(f"blocks.{layer}.hook_resid_post", full, positions="final")]).logits
    assert (fast - slow).abs().max() <= 1e-5


def test_indirect_effect_with_stored_means_equals_engine_patch(tiny, batch):
    mean_z = torch.randn(tiny.n_layers, tiny.n_heads, tiny.d_head)
    metric = target_prob(batch.target_ids)
    result = patch_heads(tiny, None, batch, metric, positions="final", values=mean_z)
    ids, mask = to_left_padding(batch.input_ids, batch.attention_mask, tiny.pad_token_id)
    value = torch.zeros(len(batch), ids.shape[1], tiny.n_heads, tiny.d_head)
    value[:, -1] = mean_z[1]
    with torch.no_grad():
        logits = tiny.run(ids, attention_mask=mask, logits="final",
                          edits=[Patch("blocks.1.attn.hook_z", value, heads=2, positions="final")]).logits
    assert result.scores[1, 2] == pytest.approx(float(metric(logits)), abs=1e-6)


def test_function_vector_analysis_reports_consistent_numbers(tiny):
    r = function_vector_analysis(tiny, toy_task(), k=3, n_clean=6, n_corrupted=4, n_eval=10, n_top_heads=3, edit_layer=1,
                                 mean_over="all")
    assert r.n_mean == 6 and r.mean_over == "all"
    assert r.aie.shape == (3, 4)
    assert [h[2] for h in r.top_heads] == sorted([h[2] for h in r.top_heads], reverse=True)
    assert r.top_heads[0][2] == pytest.approx(float(r.aie.max()))
    assert r.zero_shot["n"] == r.zero_shot_with_fv["n"] == 10


def test_todd_filter_averages_only_the_prompts_answered_correctly(tiny):
    """Targets planted so that the model answers rows 0-2 correctly and row 3 not: the mean
    head outputs are the mean over rows 0-2 alone; with none correct the mean is undefined."""
    import dataclasses

    from analyses.heads.function_vectors import clean_mean_head_outputs, mean_head_outputs
    from interp.prompts import build_icl_batch

    clean = build_icl_batch(tiny.tokenizer, toy_task(), k=2, n=4, seed=0, padding_side="left")
    with torch.no_grad():
        pred = tiny.run(clean, logits="final").logits.argmax(-1).cpu()
    planted = pred.clone()
    planted[3] = (pred[3] + 1) % tiny.d_vocab  # the planted wrong prompt
    batch = dataclasses.replace(clean, target_ids=planted)
    mean_z, kept, right = clean_mean_head_outputs(tiny, batch, "correct")
    assert kept == [0, 1, 2] and right.tolist() == [True, True, True, False]
    assert torch.allclose(mean_z, mean_head_outputs(tiny, clean.select([0, 1, 2])), atol=1e-6)
    assert not torch.allclose(mean_z, mean_head_outputs(tiny, clean), atol=1e-4)
    all_z, all_kept, _ = clean_mean_head_outputs(tiny, batch, "all")
    assert all_kept == [0, 1, 2, 3] and torch.allclose(all_z, mean_head_outputs(tiny, clean), atol=1e-6)
    with pytest.raises(ValueError, match="answers none"):
        clean_mean_head_outputs(tiny, dataclasses.replace(clean, target_ids=(pred + 1) % tiny.d_vocab), "correct")


def test_replacing_the_last_layer_output_gives_unembedding_of_theta(tiny, batch):
    runner = DecoderRunner(tiny.hf_model)
    state = runner.corrupted_state(*to_left_padding(batch.input_ids, batch.attention_mask, tiny.pad_token_id))
    theta = torch.randn(len(batch), tiny.d_model)
    logits = runner.run_with_final_resid(state, tiny.n_layers - 1, theta)
    twin = runner.twin
    with torch.no_grad():
        assert torch.allclose(logits, twin.lm_head(twin.model.norm(theta)), atol=1e-6)


def test_task_vector_accuracy_is_deterministic_and_layered(tiny):
    a = task_vector_accuracy_by_layer(tiny, toy_task(), k=2, n=8, layers=[0, 2], seed=3)
    b = task_vector_accuracy_by_layer(tiny, toy_task(), k=2, n=8, layers=[0, 2], seed=3)
    assert a.to_dict() == b.to_dict() and set(a.by_layer) == {0, 2} and a.by_layer[2]["n"] == 8


def test_flip_demo_labels_swaps_only_label_tokens(smollm2_tokenizer):
    task = Task("s", [Example(f"text {i}", ["bad", "good"][i % 2], i % 2) for i in range(20)], kind="classification",
                label_words=["bad", "good"])
    b = build_icl_batch(smollm2_tokenizer, task, k=3, n=4, seed=0, padding_side="left")
    flipped = flip_demo_labels(b)
    changed = (flipped != b.input_ids).nonzero().tolist()
    expected = sorted([bi, s.start] for bi, row in enumerate(b.rows) for s in row.demo_labels)
    assert sorted(changed) == expected
    ids = b.label_words.first_token_ids
    for bi, pos in changed:
        assert {int(flipped[bi, pos]), int(b.input_ids[bi, pos])} == set(ids.tolist())
