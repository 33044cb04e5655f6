"""AtP* (Kramár et al. 2024): the QK fix equals exact patching on a hand-built saturated-attention
model where plain attribution patching is wrong; GradDrop equals a plain-PyTorch reference;
screen_then_verify verifies the top of the screen exactly."""
import pytest
import torch

from interp import load_model
from interp.patching import logit_diff, patch_heads
from interp.patching.attribution import attribution_patch_heads
from tests.conftest import make_tiny_llama

CLEAN, CORRUPT = "ab cd ef gh", "xy zw qr st"
METRIC = logit_diff([5], [7])


@pytest.fixture(scope="module")
def saturated(char_tokenizer):
    """One layer whose attention is saturated (queries and keys scaled up) and after whose
    pattern everything is linear: no MLP, and RMSNorms whose epsilon dwarfs the residual
    (x / sqrt(mean x² + eps) ≈ x / sqrt(eps), relative error ~1e-9), their weights scaled back."""
    from transformers import LlamaForCausalLM

    config = make_tiny_llama(n_layers=1).config
    config.rms_norm_eps = 1e8  # every RMSNorm ≈ x · w / 1e4: linear; the norm weights scaled back
    torch.manual_seed(3)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        layer = hf.model.layers[0]
        hf.model.embed_tokens.weight.mul_(50.0)  # residual entries ~1, as after a usual RMSNorm
        layer.input_layernorm.weight.mul_(1e4)
        hf.model.norm.weight.mul_(1e4)
        layer.self_attn.q_proj.weight.mul_(30.0)
        layer.self_attn.k_proj.weight.mul_(30.0)
        layer.self_attn.v_proj.weight.mul_(20.0)  # effects of order 1 on the metric
        layer.self_attn.o_proj.weight.mul_(20.0)
        layer.mlp.down_proj.weight.zero_()
    return load_model(hf, engine="transformer-lens", tokenizer=char_tokenizer)


@pytest.mark.parametrize("site", ["attn.hook_q", "attn.hook_k"])
@pytest.mark.parametrize("positions", ["all", "final"])
def test_the_qk_fix_equals_exact_patching_where_plain_attribution_is_wrong(saturated, site, positions):
    fm = saturated
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    pattern = fm.run(corrupt[0], capture=["blocks.0.attn.hook_pattern"]).acts["blocks.0.attn.hook_pattern"]
    assert int((pattern[0, :, -1].max(-1).values > 0.99).sum()) >= 3  # the final rows of 3 of 4 heads are saturated
    exact = patch_heads(fm, clean, corrupt, METRIC, site=site, positions=positions)
    plain = attribution_patch_heads(fm, clean, corrupt, METRIC, site=site, positions=positions, qk_fix=False)
    star = attribution_patch_heads(fm, clean, corrupt, METRIC, site=site, positions=positions)
    effect = (exact.scores - exact.corrupted_metric)[0]
    assert float(effect.abs().max()) > 0.05  # patching changes the metric far above float noise
    assert float((star.scores - exact.scores).abs().max()) <= 1e-3 * max(1.0, float(effect.abs().max()))
    assert float((plain.scores - exact.scores).abs().max()) > 0.3 * float(effect.abs().max())  # linearised softmax: wrong
    assert star.setting["method"] == "AtP*" and plain.setting["method"] == "AtP"


def test_grad_drop_equals_a_plain_pytorch_reference(char_tokenizer):
    """ĉ_GradDrop(l, h) = Σ_ℓ |Σ Δz · ∂metric/∂z with layer ℓ's contribution detached| / (L − 1),
    the reference computed with hooks on the transformers model itself."""
    hf = make_tiny_llama(n_layers=3, seed=1)
    fm = load_model(hf, engine="nnsight", tokenizer=char_tokenizer)
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    got = attribution_patch_heads(fm, clean, corrupt, METRIC, grad_drop=True)
    layers = hf.model.layers
    n, heads, d = 3, 4, 8

    def z_of(ids, dropped=None, keep_grad=False):
        zs, handles = {}, []
        for l, layer in enumerate(layers):
            def pre(m, args, l=l):
                z = args[0]
                if keep_grad:
                    z = z + torch.zeros_like(z, requires_grad=True)
                    z.retain_grad()
                zs[l] = z
                return (z,)
            handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
        if dropped is not None:
            def drop(m, args, kwargs, out):
                h = args[0] if args else kwargs["hidden_states"]
                o = out[0] if isinstance(out, tuple) else out
                new = o.detach() + (h - h.detach())
                return (new, *out[1:]) if isinstance(out, tuple) else new
            handles.append(layers[dropped].register_forward_hook(drop, with_kwargs=True))
        try:
            logits = hf(input_ids=ids).logits
        finally:
            for h in handles:
                h.remove()
        return zs, logits

    with torch.no_grad():
        clean_z, _ = z_of(clean[0])
    want = torch.zeros(n, heads)
    for dropped in range(n):
        zs, logits = z_of(corrupt[0], dropped, keep_grad=True)
        METRIC(logits[:, -1]).backward()
        for l in range(n):
            delta = (clean_z[l] - zs[l].detach()).reshape(1, -1, heads, d)
            if zs[l].grad is None:  # the dropped layer itself: no path to the metric
                continue
            grad = zs[l].grad.reshape(delta.shape)
            want[l] += (delta * grad).sum((0, 1, 3)).abs()
        hf.zero_grad(set_to_none=True)
    want /= n - 1
    assert float((got.magnitude - want).abs().max()) <= 1e-5
    assert float(want.abs().max()) > 1e-3


def test_screen_then_verify_verifies_the_top_and_bounds_the_rest(char_tokenizer):
    from scipy.stats import beta

    from interp.patching.screen import screen_then_verify

    fm = load_model(make_tiny_llama(n_layers=3, seed=2), engine="transformer-lens", tokenizer=char_tokenizer)
    clean, corrupt = fm.encode(CLEAN), fm.encode(CORRUPT)
    full = patch_heads(fm, clean, corrupt, METRIC)
    res = screen_then_verify(fm, clean, corrupt, METRIC, budget=3, n_check=5, seed=1)
    magnitude = res.screen.magnitude
    top_by_hand = [divmod(int(i), 4) for i in torch.argsort(magnitude.flatten(), descending=True, stable=True)[:3]]
    assert res.top == top_by_hand
    for cell in res.top + res.checked:  # verified = exact patching of every head, at those cells
        assert float(res.exact.scores[cell]) == pytest.approx(float(full.scores[cell]), abs=1e-5)
    assert len(set(res.checked) & set(res.top)) == 0 and len(res.checked) == 5
    effect = (full.scores - full.corrupted_metric).abs()
    threshold = min(float(effect[c]) for c in res.top)
    x = sum(float(effect[c]) > threshold for c in res.checked)
    assert res.threshold == pytest.approx(threshold, abs=1e-5) and res.n_exceeding == x
    assert res.fraction_bound == pytest.approx(1.0 if x == 5 else float(beta.ppf(0.95, x + 1, 5 - x)))
    assert res.missed_bound == pytest.approx(res.fraction_bound * (12 - 3))
    assert "Spearman" in res.summary() and res.to_dict()["top"] == [list(c) for c in res.top]
