"""Exact and attribution patching: parity with TransformerLens's own patching module, the fast
paths against the engine's hook path, and metrics with known answers."""
import pytest
import torch
from scipy.stats import spearmanr
from transformer_lens import patching as tl_patching

from interp import Patch, load_model
from interp.patching import (
    kl_to, label_logit_diff, logit_diff, normalised_recovery, patch_heads, patch_layer_outputs, patch_residual, target_prob,
)
from interp.patching.attribution import attribution_patch_heads
from tests.conftest import make_tiny_llama

# unpadded, equal-length rows: TransformerLens's patching runs the corrupted tokens without a mask
CLEAN = ["ab cd ef", "hello th"]
CORRUPT = ["xy zw qr", "jello ta"]
METRIC = logit_diff([5, 7], [9, 11])


@pytest.fixture(scope="module")
def models(char_tokenizer):
    hf = make_tiny_llama(n_layers=3)
    return {e: load_model(hf, engine=e, tokenizer=char_tokenizer) for e in ("transformer-lens", "nnsight")}


def tl_metric(logits):
    return METRIC(logits[:, -1])


@pytest.mark.parametrize("engine", ["transformer-lens", "nnsight"])
def test_head_patching_matches_transformer_lens(models, engine):
    fm, bridge = models[engine], models["transformer-lens"].bridge
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    _, cache = bridge.run_with_cache(clean[0])
    ours = patch_heads(fm, clean, corrupt, METRIC)
    theirs = tl_patching.get_act_patch_attn_head_out_all_pos(bridge, corrupt[0], cache, tl_metric)
    assert (ours.scores - theirs).abs().max() <= 1e-4
    final = patch_heads(fm, clean, corrupt, METRIC, positions="final")
    by_pos = tl_patching.get_act_patch_attn_head_out_by_pos(bridge, corrupt[0], cache, tl_metric)
    assert (final.scores - by_pos[:, -1]).abs().max() <= 1e-4
    assert ours.clean_metric == pytest.approx(float(tl_metric(bridge(clean[0]).detach())), abs=1e-5)


@pytest.mark.parametrize("engine", ["transformer-lens", "nnsight"])
def test_patching_from_a_clean_cache_equals_patching_from_the_clean_prompts(models, engine):
    """TransformerLens's own cache of the clean run, or a RunResult of ours, in place of the clean
    prompts: the same scores, no clean forward; the clean metric from the RunResult's logits."""
    fm, bridge = models[engine], models["transformer-lens"].bridge
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    with torch.no_grad():
        _, tl_cache = bridge.run_with_cache(clean[0])
    sites = [f"blocks.{l}.attn.hook_z" for l in range(fm.n_layers)]
    ours_cache = fm.run(clean[0], capture=sites)
    for positions in ("all", "final"):
        want = patch_heads(fm, clean, corrupt, METRIC, positions=positions)
        for cache in (tl_cache, ours_cache, ours_cache.acts):
            got = patch_heads(fm, None, corrupt, METRIC, positions=positions, clean_cache=cache)
            assert float((got.scores - want.scores).abs().max()) <= 1e-5
            assert got.corrupted_metric == pytest.approx(want.corrupted_metric, abs=1e-6)
        with_tokens = patch_heads(fm, clean, corrupt, METRIC, positions=positions, clean_cache=ours_cache)
        assert float((with_tokens.scores - want.scores).abs().max()) <= 1e-5
        assert with_tokens.clean_metric == pytest.approx(want.clean_metric, abs=1e-5)
    resid = [f"blocks.{l}.hook_resid_pre" for l in range(fm.n_layers)]
    want = patch_residual(fm, clean, corrupt, METRIC)
    got = patch_residual(fm, None, corrupt, METRIC, clean_cache=fm.run(clean[0], capture=resid))
    assert float((got.scores - want.scores).abs().max()) <= 1e-5
    with pytest.raises(ValueError, match="capture it in the clean run"):
        patch_heads(fm, None, corrupt, METRIC, clean_cache=fm.run(clean[0], capture=sites[:1]))
    with pytest.raises(ValueError, match="not both"):
        patch_heads(fm, None, corrupt, METRIC, clean_cache=ours_cache, values=torch.zeros(fm.n_layers, fm.n_heads, fm.d_head))


def test_residual_patching_matches_transformer_lens(models):
    fm = models["transformer-lens"]
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    _, cache = fm.bridge.run_with_cache(clean[0])
    ours = patch_residual(fm, clean, corrupt, METRIC)
    theirs = tl_patching.get_act_patch_resid_pre(fm.bridge, corrupt[0], cache, tl_metric)
    assert (ours.scores - theirs).abs().max() <= 1e-4
    # patching layer 0 at every position would restore the clean run; position 0 alone changes the metric
    assert ours.scores[0, -1] != pytest.approx(ours.corrupted_metric)


def _engine_path_metric(fm, clean, corrupt, site, layer, heads=None, positions=None):
    """The same patch through the engine's own hooks (no fast path)."""
    with torch.no_grad():
        value = fm.run(clean[0], attention_mask=clean[1], capture=[f"blocks.{layer}.{site}"]).acts[f"blocks.{layer}.{site}"]
        logits = fm.run(corrupt[0], attention_mask=corrupt[1], logits="final",
                        edits=[Patch(f"blocks.{layer}.{site}", value, heads=heads, positions=positions)]).logits
    return float(METRIC(logits))


@pytest.mark.parametrize("engine", ["transformer-lens", "nnsight"])
def test_fast_paths_equal_engine_hooks_with_left_padding(models, engine):
    fm = models[engine]
    clean = fm.encode(["ab cd ef gh", "hi th"], padding_side="left")
    corrupt = fm.encode(["xy zw qr st", "ja ta"], padding_side="left")
    heads = patch_heads(fm, clean, corrupt, METRIC)
    final = patch_heads(fm, clean, corrupt, METRIC, positions="final")
    outs = patch_layer_outputs(fm, clean, corrupt, METRIC)
    for layer in (0, 2):
        for head in (1, 3):
            assert heads.scores[layer, head] == pytest.approx(_engine_path_metric(fm, clean, corrupt, "attn.hook_z", layer, head), abs=1e-5)
            assert final.scores[layer, head] == pytest.approx(
                _engine_path_metric(fm, clean, corrupt, "attn.hook_z", layer, head, positions="final"), abs=1e-5)
        assert outs.scores[layer, 0] == pytest.approx(_engine_path_metric(fm, clean, corrupt, "hook_attn_out", layer), abs=1e-5)
        assert outs.scores[layer, 1] == pytest.approx(_engine_path_metric(fm, clean, corrupt, "hook_mlp_out", layer), abs=1e-5)


def test_right_padded_inputs_are_handled(models):
    fm = models["transformer-lens"]
    left = patch_heads(fm, fm.encode(["ab cd ef gh", "hi th"], "left"), fm.encode(["xy zw qr st", "ja ta"], "left"), METRIC)
    right = patch_heads(fm, fm.encode(["ab cd ef gh", "hi th"], "right"), fm.encode(["xy zw qr st", "ja ta"], "right"), METRIC)
    assert torch.allclose(left.scores, right.scores, atol=1e-6)


def test_identical_prompts_give_no_effect(models):
    fm = models["transformer-lens"]
    same = fm.encode(CLEAN)
    result = patch_heads(fm, same, same, METRIC)
    assert torch.allclose(result.scores, torch.full_like(result.scores, result.clean_metric), atol=1e-6)
    attr = attribution_patch_heads(fm, same, same, METRIC)
    assert torch.allclose(attr.scores, torch.full_like(attr.scores, attr.clean_metric), atol=1e-6)


@pytest.mark.parametrize("engine", ["transformer-lens", "nnsight"])
def test_attribution_tracks_exact_patching(models, engine):
    fm = models[engine]
    clean, corrupt = fm.encode(["ab cd ef", "hello t"]), fm.encode(["ab cd eg", "hellp t"])
    exact = patch_heads(fm, clean, corrupt, METRIC)
    approx = attribution_patch_heads(fm, clean, corrupt, METRIC)
    assert spearmanr(exact.scores.flatten(), approx.scores.flatten()).statistic >= 0.9
    assert approx.corrupted_metric == pytest.approx(exact.corrupted_metric, abs=1e-6)


def test_misaligned_prompts_are_explained(models):
    fm = models["transformer-lens"]
    with pytest.raises(ValueError, match="token-aligned"):
        patch_heads(fm, fm.encode(["ab cd"]), fm.encode(["ab cd ef"]), METRIC)


def test_metrics_known_answers():
    logits = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 5.0]])
    assert float(logit_diff([1, 2], [0, 0])(logits)) == pytest.approx(((3 - 1) + (5 - 2)) / 2)
    p = torch.softmax(logits, -1)
    assert float(target_prob([1, 2])(logits)) == pytest.approx(float((p[0, 1] + p[1, 2]) / 2))
    assert float(kl_to(logits)(logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_to(logits)(torch.zeros_like(logits))) > 0
    assert normalised_recovery(0.5, clean=1.0, corrupted=0.0) == 0.5
    with pytest.raises(ValueError):
        normalised_recovery(0.5, clean=1.0, corrupted=1.0)


def test_label_logit_diff_known_answer():
    class Words:
        first_token_ids = torch.tensor([0, 1, 2])

    class Batch:
        label_words = Words()
        gold = torch.tensor([1, 0])

    logits = torch.tensor([[1.0, 4.0, 2.0], [3.0, 1.0, 1.0]])
    # row 0: 4 - (1+2)/2 = 2.5; row 1: 3 - 1 = 2
    assert float(label_logit_diff(Batch())(logits)) == pytest.approx(2.25)


def test_plan_chunks_known_answers():
    """SmolLM2's shape (30 layers x 9 heads): a growing batch takes one call per row budget; a
    runner that runs every row through every layer takes one call per layer when each variant has
    many rows (merging two layers wastes 9 x 78 rows, more than a call and its layers cost)."""
    from interp.patching.variants import plan_chunks

    layers = [l for l in range(30) for _ in range(9)]
    assert plan_chunks(layers, 1, 30, grows=True) == [range(0, 270)]
    grown = plan_chunks(layers, 78, 30, max_rows=4096, grows=True)
    assert len(grown) == 6 and all(len(c) <= 4096 // 78 for c in grown)
    assert [i for c in grown for i in c] == list(range(270))
    assert plan_chunks(layers, 78, 30, max_rows=4096) == [range(9 * l, 9 * l + 9) for l in range(30)]
    with pytest.raises(ValueError, match="sorted"):
        plan_chunks([1, 0], 1, 30)
