"""The second embedded model, Gemma 3 270M (issue 17): converted offline from its PyPI chunk
packages, faithful hooks on both engines against plain transformers, the runner's fast path equal
to the engine path, the ICL gain of the issue, and sliding-window attention past 512 tokens."""
import pytest
import torch

from interp import load_model
from interp.embedded import EMBEDDED_MODELS, converted_dir, load_embedded
from interp.verify import verify


@pytest.fixture(scope="module")
def hf_gemma3():
    try:
        return load_embedded("gemma3-270m")
    except ModuleNotFoundError as err:
        pytest.skip(str(err))


def test_the_converted_copy_is_gemma3_with_its_architecture_recorded(hf_gemma3):
    model, tok = hf_gemma3
    cfg = model.config
    assert cfg.architectures == ["Gemma3ForCausalLM"] and cfg.model_type == "gemma3_text"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (18, 640, 4, 1, 256)
    assert cfg.sliding_window == 512 and cfg.layer_types.count("sliding_attention") == 15
    assert sum(p.numel() for p in model.parameters()) == 268_098_176 and len(tok) >= 262_144
    assert converted_dir(EMBEDDED_MODELS["gemma3-270m"]).name.startswith("gemma3-270m-fp32-a5fd3b62")


def test_verify_passes_on_both_engines(hf_gemma3):
    result = verify("gemma3-270m")
    by = {(c.name, c.engine): c for c in result.checks}
    for engine in ("transformer-lens", "nnsight"):
        assert by[("sites_vs_reference", engine)].value <= 1e-5
        assert by[("heads_sum_vs_attn_out", engine)].value <= 1e-5
        assert by[("fast_path_vs_engine", engine)].value <= 1e-4
    for site in ("hook_pattern", "hook_z", "hook_k", "hook_resid_post", "hook_mlp_out"):
        assert by[(f"engines_agree_{site}", "both")].value <= 1e-5
    assert result.passed, result.to_dict()


def test_the_icl_gain_on_present_past(hf_gemma3):
    from analyses.icl_accuracy import icl_accuracy_vs_k

    model = load_model(hf_gemma3[0], tokenizer=hf_gemma3[1])
    r = icl_accuracy_vs_k(model, "present-past", ks=(0, 8), n=30, progress=False)
    assert r.accuracy[0]["accuracy"] <= 0.1 and r.accuracy[8]["accuracy"] >= 0.6, r.summary()


def test_sliding_window_layers_past_512_tokens_match_plain_transformers(hf_gemma3):
    """A 700-token prompt: the five local layers of each block see only the last 512 tokens.
    Final logits and a local layer's pattern through the engine equal plain transformers'."""
    model, tok = hf_gemma3
    ids = tok(" ".join(["the cat sat on the mat and looked at the dog"] * 64), return_tensors="pt").input_ids[:, :700]
    assert ids.shape[1] == 700
    m = load_model(model, tokenizer=tok)
    with torch.no_grad():
        out = m.run(ids, capture=["blocks.0.attn.hook_pattern"], logits="final")
        ref = model(input_ids=ids, output_attentions=True)
    assert float((out.logits - ref.logits[:, -1]).abs().max()) <= 1e-3
    pattern = out.acts["blocks.0.attn.hook_pattern"]
    assert float((pattern - ref.attentions[0]).abs().max()) <= 1e-5
    assert float(pattern[0, :, -1, : 700 - 512].abs().max()) == 0.0  # outside the window


def test_exact_head_patching_fast_path_equals_the_engine_path(hf_gemma3):
    """Every head at the final position: the decoder runner (cached keys/values, later layers
    only) against full engine forwards (EngineRunner), on one clean / corrupted ICL pair."""
    from interp.patching import logit_diff, patch_heads
    from interp.patching.engine_runner import EngineRunner

    model, tok = hf_gemma3
    m = load_model(model, tokenizer=tok)
    text = "Review: a delightful evening.\nSentiment: {}\n\nReview: cold food, slow service.\nSentiment: {}\n\nReview: we loved it.\nSentiment:"
    clean = tok(text.format("positive", "negative"), return_tensors="pt").input_ids
    corrupt = tok(text.format("negative", "positive"), return_tensors="pt").input_ids
    assert clean.shape == corrupt.shape
    pos, neg = tok(" positive", add_special_tokens=False).input_ids[0], tok(" negative", add_special_tokens=False).input_ids[0]
    metric = logit_diff([pos], [neg])
    fast = patch_heads(m, clean, corrupt, metric, positions="final")
    engine = patch_heads(m, clean, corrupt, metric, positions="final", runner=EngineRunner(m))
    assert fast.scores.shape == (18, 4)
    assert float((fast.scores - engine.scores).abs().max()) <= 1e-4
    assert float(fast.scores.abs().max()) > 1e-3  # some head moves the metric
