"""Every family of the architecture table, against independent references.

- the plain-PyTorch engine against transformers' own outputs (hidden_states, attentions, logits)
  and the residual decomposition resid_post = resid_pre + attn_out (+ mlp_out);
- every README site through ``engine="nnsight"`` and ``engine="transformer-lens"`` against the
  plain-PyTorch reference (≤ 1e-5);
- the fast paths (start at layer L, reuse cached keys/values, prefix cache) against full forwards;
- the user's model untouched by both engines;
- the clear errors: unsupported family, resid_mid on a parallel block.
"""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from architecture_fixtures import ENGINES, FAMILIES, SEQ, assert_same_fingerprint, facade, family_batch, make_family_model, model_fingerprint  # noqa: E402

from interp.architectures import UnsupportedArchitecture, architecture_of  # noqa: E402
from interp.engines.torch_engine import TorchEngine  # noqa: E402
from interp.loading import load_model  # noqa: E402
from interp.model import Model, position_ids_from_mask  # noqa: E402

SITES = ["hook_embed", "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q", "attn.hook_rot_k",
         "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid", "hook_mlp_out",
         "hook_resid_post", "logits"]
# TransformerLens 4.3 computes GPT-NeoX's and Phi-3's attention itself without firing its rotary
# hook points: there the engine derives rot_q/rot_k from hook_q/hook_k and hook_cos/hook_sin
# (capture only; an edit raises).
TL_NO_ROTARY_HOOKS = {"gpt_neox", "phi3"}


def _sites(model):
    parallel = architecture_of(model).is_parallel(model.config)
    return [s for s in SITES if not (s == "hook_resid_mid" and parallel)]


def _reference(model, tokenizer) -> Model:
    """The plain-PyTorch reference over ``model``."""
    return Model(TorchEngine(model, tokenizer), tokenizer=tokenizer)


def _diff(a, b, site):
    d = (a.double() - b.double())
    if "scores" in site:  # masked entries hold the dtype's minimum on both sides
        d = d.masked_fill(b.double() < -1e30, 0)
    return float(d.abs().max())


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_char_tokenizer

    return make_char_tokenizer()


@pytest.mark.parametrize("family", FAMILIES)
def test_reference_engine_matches_transformers_outputs(family, tokenizer):
    model = make_family_model(family)
    ids, mask = family_batch()
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        hf = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, output_attentions=True)
        ref = _reference(model, tokenizer)
        out = ref.run(ids, attention_mask=mask, capture=_sites(model))
    real = mask.bool()
    assert float((out.logits - hf.logits)[real].abs().max()) <= 1e-5
    a = out.acts
    for l in range(2):
        assert float((a[f"blocks.{l}.attn.hook_pattern"] - hf.attentions[l]).abs().max()) <= 1e-6
        if l == 0:
            assert float((a["blocks.0.hook_resid_post"] - hf.hidden_states[1])[real].abs().max()) <= 1e-6
        total = a[f"blocks.{l}.hook_resid_pre"] + a[f"blocks.{l}.hook_attn_out"] + a[f"blocks.{l}.hook_mlp_out"]
        assert float((total - a[f"blocks.{l}.hook_resid_post"]).abs().max()) <= 1e-5
        if f"blocks.{l}.hook_resid_mid" in a:
            mid = a[f"blocks.{l}.hook_resid_pre"] + a[f"blocks.{l}.hook_attn_out"]
            assert float((mid - a[f"blocks.{l}.hook_resid_mid"]).abs().max()) <= 1e-6
        # heads through W_O add up to attn_out before any post-norm
        if architecture_of(model).post_attn_norm is None:
            z = a[f"blocks.{l}.attn.hook_z"]
            with torch.no_grad():
                total = torch.einsum("bphd,hdm->bpm", z, ref.W_O(l)) + (ref.engine.b_O(l) if ref.engine.b_O(l) is not None else 0)
            assert float((total - a[f"blocks.{l}.hook_attn_out"]).abs().max()) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_site_equals_the_plain_pytorch_reference(family, engine, tokenizer):
    model = make_family_model(family)
    before = model_fingerprint(model)
    ids, mask = family_batch()
    sites = _sites(model)
    fm = facade(model, engine, tokenizer)
    if engine in ("transformer-lens", "user-bridge") and family in TL_NO_ROTARY_HOOKS:
        from interp.edits import AddVector

        with pytest.raises(ValueError, match="captured but not edited"):
            fm.run(ids, attention_mask=mask, edits=[AddVector("attn.hook_rot_q", torch.ones(8), layers=0)])
    with torch.no_grad():
        ref = _reference(model, tokenizer).run(ids, attention_mask=mask, capture=sites)
        out = fm.run(ids, attention_mask=mask, capture=sites)
    worst = {k: _diff(out.acts[k], v, k) for k, v in ref.acts.items()}
    bad = {k: v for k, v in worst.items() if not v <= (1e-4 if k == "logits" else 1e-5)}
    assert not bad, bad
    assert_same_fingerprint(before, model_fingerprint(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_paths_equal_full_forwards(family, tokenizer):
    from interp.patching.runner import DecoderRunner

    model = make_family_model(family)
    ids, mask = family_batch()
    pos = position_ids_from_mask(mask)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        runner = DecoderRunner(model)
        state = runner.corrupted_state(ids, mask)
        assert state.logits.shape[1] == 1 and float((state.logits[:, -1] - full[:, -1]).abs().max()) <= 1e-5
        for layer in (0, 1):
            last = runner.run_from(layer, state.resid_pre[layer][:, -1:], mask, pos[:, -1:], prefix=state.prefix(SEQ - 1), last_only=True)
            assert float((last[:, -1] - full[:, -1]).abs().max()) <= 1e-5
            tail = runner.run_from(layer, state.resid_pre[layer][:, 10:], mask, pos[:, 10:], prefix=state.prefix(10))
            assert float((tail - full[:, 10:]).abs().max()) <= 1e-5
        tokens = runner.run_tokens(ids[:, 20:], mask, pos[:, 20:], prefix=state.prefix(20))
        assert float((tokens - full[:, 20:]).abs().max()) <= 1e-5


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cache_equals_full_forwards(family, tokenizer):
    from interp.prefix_cache import SharedPrefix

    model = make_family_model(family)
    fm = _reference(model, tokenizer)
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(2, 70, (25,), generator=g).tolist()
    suffixes = [torch.randint(2, 70, (n,), generator=g).tolist() for n in (15, 9)]
    run = SharedPrefix(fm, prefix).run(suffixes)
    for b, suf in enumerate(suffixes):
        ids = torch.tensor([prefix + suf])
        with torch.no_grad():
            out = fm.run(ids, capture=[f"blocks.{l}.attn.hook_pattern" for l in range(2)])
        assert float((run.logits[b] - out.logits[0, -1]).abs().max()) <= 1e-5
        for l in range(2):
            row = out.acts[f"blocks.{l}.attn.hook_pattern"][0, :, -1]
            assert float((run.patterns[l, b, :, : ids.shape[1]] - row).abs().max()) <= 1e-6


def test_sdpa_model_gets_attention_patterns_on_both_engines(tokenizer):
    model = make_family_model("llama", attn_implementation="sdpa")
    ids, mask = family_batch()
    eager = make_family_model("llama")
    with torch.no_grad():
        ref = _reference(eager, tokenizer).run(ids, attention_mask=mask, capture=["attn.hook_pattern"])
        for engine in ("nnsight", "transformer-lens"):
            out = load_model(model, engine=engine, tokenizer=tokenizer).run(ids, attention_mask=mask, capture=["attn.hook_pattern"])
            for k, v in ref.acts.items():
                assert float((out.acts[k] - v).abs().max()) <= 1e-6
    assert model.config._attn_implementation == "sdpa"


def test_unsupported_family_is_one_clear_error(tokenizer):
    import transformers as T

    config = T.BloomConfig(vocab_size=80, hidden_size=32, n_layer=2, n_head=4)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(UnsupportedArchitecture, match="bloom.*Supported model types: .*gpt2.*llama"):
        architecture_of(model)
    with pytest.raises(UnsupportedArchitecture, match="transformer-lens"):
        load_model(model, engine="nnsight", tokenizer=tokenizer)


@pytest.mark.parametrize("engine", ["torch", "nnsight", "transformer-lens"])
def test_resid_mid_on_a_parallel_block_raises(engine, tokenizer):
    model = make_family_model("gptj")
    fm = _reference(model, tokenizer) if engine == "torch" else load_model(model, engine=engine, tokenizer=tokenizer)
    ids, mask = family_batch()
    with pytest.raises(ValueError, match="in parallel"):
        fm.run(ids, attention_mask=mask, capture=["blocks.0.hook_resid_mid"])


@pytest.mark.parametrize("family", FAMILIES)
def test_verify_is_the_parity_certificate(family, tokenizer):
    from interp.verify import verify

    model = make_family_model(family)
    before = model_fingerprint(model)
    result = verify(model, tokenizer=tokenizer, texts=["Q: cat\nA: cats\n\nQ: dog\nA:", "Review: good.\nSentiment:"])
    failed = {(c.name, c.engine) for c in result.checks if not c.passed}
    assert result.passed, failed
    names = {c.name for c in result.checks}
    assert {"sites_vs_reference", "heads_sum_vs_attn_out", "engines_agree_logits", "no_hooks_left", "edit_knockout", "edit_scale",
            "edit_ablate", "edit_patch", "edit_add", "fast_path_vs_engine", "user_model_unchanged"} <= names
    assert_same_fingerprint(before, model_fingerprint(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_path_of_the_table_resolves(family):
    from interp.architectures import ATTN_ROLES

    model = make_family_model(family)
    arch = architecture_of(model)
    for role in ("embed", "pos_embed", "final_norm", "unembed", "rotary"):
        path = getattr(arch, role)
        assert path is None or isinstance(model.get_submodule(path), torch.nn.Module), role
    for role in ("attn", "mlp", "mlp_in", "ln_attn", "ln_mlp", "post_attn_norm", "post_mlp_norm", *sorted(ATTN_ROLES)):
        if arch.path(0, role) is not None:
            assert arch.sub(model, 1, role) is model.get_submodule(arch.path(1, role)), role
    params = {n for n, _ in model.named_parameters()}
    for group in ("embed", "unembed", "norms", "attn", "mlp"):
        for prefix in arch.role_prefixes(model, group):
            assert any(n.startswith(prefix) for n in params) or group == "unembed", (group, prefix)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_init_keeps_the_named_module_groups_on_every_family(family, tokenizer):
    from interp.plain import plain_twin
    from interp.random_init import DEUTCH_KEEP, random_init_like

    model = make_family_model(family)
    control = random_init_like(load_model(model, engine="nnsight", tokenizer=tokenizer), seed=1, keep=DEUTCH_KEEP)
    trained, fresh = dict(model.named_parameters()), dict(plain_twin(control.hf_model).named_parameters())
    assert trained.keys() == fresh.keys()
    kept = {n for n in trained if torch.equal(trained[n], fresh[n])}
    norms = {n for n, m in model.named_modules() if "norm" in type(m).__name__.lower()}
    expected = {n for n in trained if n.rsplit(".", 1)[0] in norms or "embed" in n or "wte" in n or "wpe" in n
                or n.startswith(("lm_head", "embed_out"))}
    assert kept == expected, (kept ^ expected)
    with pytest.raises(ValueError, match="unknown module group"):
        random_init_like(load_model(model, engine="nnsight", tokenizer=tokenizer), keep=("embed_tokens",))
