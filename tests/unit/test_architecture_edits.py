"""Edits, exact patching and attribution on every family of the architecture table, against
references written here in plain PyTorch on the transformers model itself (eager attention):

- a forward pre-hook on the attention output projection (its input is the heads' z),
- forward (pre-)hooks on the decoder layers (the residual stream),
- ``torch.nn.functional.softmax`` wrapped while one layer's attention runs (pre-softmax scores
  in, pattern out), which is how every eager attention of transformers computes its pattern.

Module names come from the small table below, written from the transformers source, not from
``interp.architectures``.  Each edit must change the logits exactly as the reference edit does
(≤ 1e-5) through ``engine="nnsight"``, ``engine="transformer-lens"``, a user-built
``TransformerBridge`` and a user-built nnsight model; exact head patching must equal patching one
head at a time with the reference hooks, and attribution patching an autograd reference.
"""
import contextlib
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from architecture_fixtures import ENGINES, FAMILIES, SEQ, assert_same_fingerprint, facade, family_batch, make_family_model, model_fingerprint  # noqa: E402

from interp.edits import Ablate, AddVector, AttentionKnockout, Patch, ReweightAttention, ScaleAttention  # noqa: E402
from interp.loading import load_model  # noqa: E402
from interp.model import position_ids_from_mask  # noqa: E402

# (decoder layers, attention module in a layer, its output projection) per family
_NAMES = {"gpt2": ("transformer.h", "attn", "c_proj"), "gptj": ("transformer.h", "attn", "out_proj"),
          "gpt_neox": ("gpt_neox.layers", "attention", "dense"), "opt": ("model.decoder.layers", "self_attn", "out_proj")}
_DEFAULT = ("model.layers", "self_attn", "o_proj")
N_HEADS, D_HEAD = 4, 8
LAYER = 1
KNOCK_FROM, KNOCK_TO = [SEQ - 1, SEQ - 3], list(range(5, 30))


def _model(family):
    """The family's tiny model with its matrices scaled up, so that attention is far from
    uniform and every edit moves the logits well above float noise."""
    model = make_family_model(family)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(3.0)
    return model


def _layers(model, family):
    return model.get_submodule(_NAMES.get(family, _DEFAULT)[0])


def _attn(model, family, l):
    return _layers(model, family)[l].get_submodule(_NAMES.get(family, _DEFAULT)[1])


def _out_proj(model, family, l):
    return _attn(model, family, l).get_submodule(_NAMES.get(family, _DEFAULT)[2])


@contextlib.contextmanager
def _hooks(*handles_fns):
    handles = []
    try:
        for register, fn in handles_fns:
            handles.append(register(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _z_hook(edit_z):
    """Pre-hook on the output projection: edit z [batch, pos, head, d_head]."""
    def pre(module, args, kwargs):
        x = args[0]
        z = edit_z(x.reshape(*x.shape[:-1], N_HEADS, D_HEAD).clone())
        return (z.reshape(x.shape), *args[1:]), kwargs
    return pre


@contextlib.contextmanager
def _softmax_edit(model, family, layer, edit_scores=None, edit_pattern=None):
    """While layer ``layer``'s attention runs, edit the scores entering softmax and/or the
    pattern it returns."""
    state = {"on": False}
    attn = _attn(model, family, layer)
    original = torch.nn.functional.softmax

    def softmax(x, *args, **kwargs):
        if state["on"] and x.ndim == 4 and edit_scores is not None:
            x = edit_scores(x)
        out = original(x, *args, **kwargs)
        if state["on"] and x.ndim == 4 and edit_pattern is not None:
            out = edit_pattern(out)
        return out

    h1 = attn.register_forward_pre_hook(lambda m, a: state.update(on=True))
    h2 = attn.register_forward_hook(lambda m, a, o: state.update(on=False))
    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = original
        h1.remove()
        h2.remove()


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_char_tokenizer

    return make_char_tokenizer()


def _edits_and_references(family, model, ids, mask):
    """(name, toolkit edit, reference context) for each edit kind, on layer LAYER."""
    g = torch.Generator().manual_seed(3)
    vector = torch.randn(model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd, generator=g)
    mean_z = torch.randn(N_HEADS, D_HEAD, generator=g)
    clean_ids = torch.where(mask.bool(), torch.randint(2, 70, ids.shape, generator=g), ids)
    layer_mod = _layers(model, family)[LAYER]
    # the clean run's residual stream entering LAYER, captured with a plain pre-hook
    seen = {}
    with _hooks((lambda f: layer_mod.register_forward_pre_hook(f, with_kwargs=True),
                 lambda m, a, k: seen.update(x=(a[0] if a else k["hidden_states"]).clone()))):
        _logits(model, clean_ids, mask)
    clean_resid = seen["x"]
    patch_pos = [10, 25]

    def knock(s):
        s = s.clone()
        for q in KNOCK_FROM:
            s[:, :2, q, KNOCK_TO] = torch.finfo(s.dtype).min
        return s

    def scale(p):
        p = p.clone()
        for q in KNOCK_FROM:
            p[:, 1:3, q, KNOCK_TO] *= 2.5
        return p

    # a learned-β style factor on every edge (Wang et al.'s anchor re-weighting), positive, seeded
    factor = torch.rand(ids.shape[0], N_HEADS, ids.shape[1], ids.shape[1], generator=g) + 0.5

    def reweight(p):
        return p * factor

    def ablate(z):
        z[:, :, [0, 3]] = 0
        return z

    def mean(z):
        z[:, -1, 2] = mean_z[2]
        return z

    def patch_resid(m, a, k):
        x = (a[0] if a else k["hidden_states"]).clone()
        x[:, patch_pos] = clean_resid[:, patch_pos]
        return ((x, *a[1:]), k) if a else (a, {**k, "hidden_states": x})

    def add_vector(m, a, out):
        h = out[0] if isinstance(out, tuple) else out
        h = h + 0.7 * vector
        return (h, *out[1:]) if isinstance(out, tuple) else h

    proj = _out_proj(model, family, LAYER)
    z_pre = lambda f: proj.register_forward_pre_hook(f, with_kwargs=True)  # noqa: E731
    return clean_resid, [
        ("knockout", AttentionKnockout(KNOCK_FROM, KNOCK_TO, layers=LAYER, heads=[0, 1]),
         lambda: _softmax_edit(model, family, LAYER, edit_scores=knock)),
        ("scale", ScaleAttention(KNOCK_FROM, KNOCK_TO, 2.5, layers=LAYER, heads=[1, 2]),
         lambda: _softmax_edit(model, family, LAYER, edit_pattern=scale)),
        ("reweight", ReweightAttention({LAYER: factor}), lambda: _softmax_edit(model, family, LAYER, edit_pattern=reweight)),
        ("ablate-zero", Ablate("attn.hook_z", layers=LAYER, heads=[0, 3]), lambda: _hooks((z_pre, _z_hook(ablate)))),
        ("ablate-mean", Ablate("attn.hook_z", "mean", layers=LAYER, heads=2, positions="final", mean=mean_z),
         lambda: _hooks((z_pre, _z_hook(mean)))),
        ("patch", None, lambda: _hooks((lambda f: layer_mod.register_forward_pre_hook(f, with_kwargs=True), patch_resid))),
        ("add", AddVector("hook_resid_post", vector, layers=LAYER, scale=0.7),
         lambda: _hooks((lambda f: layer_mod.register_forward_hook(f), add_vector))),
    ], patch_pos


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("engine", ENGINES)
def test_every_edit_changes_the_logits_as_the_reference_edit(family, engine, tokenizer):
    model = _model(family)
    before = model_fingerprint(model)
    ids, mask = family_batch()
    real = mask.bool()
    clean_resid, cases, patch_pos = _edits_and_references(family, model, ids, mask)
    fm = facade(model, engine, tokenizer)
    plain = _logits(model, ids, mask)
    for name, edit, reference in cases:
        if name == "patch":
            value = torch.zeros(*ids.shape, clean_resid.shape[-1])
            value[:, patch_pos] = clean_resid[:, patch_pos]
            edit = Patch("hook_resid_pre", value, layers=LAYER, positions=patch_pos)
        with reference():
            want = _logits(model, ids, mask)
        with torch.no_grad():
            got = fm.run(ids, attention_mask=mask, edits=[edit]).logits
        assert float((want - plain)[real].abs().max()) > 1e-3, f"{name}: the reference edit changes nothing"
        assert float((got - want)[real].abs().max()) <= 1e-5, name
    assert_same_fingerprint(before, model_fingerprint(model))


def _metric(logits):
    return (logits[:, 5] - logits[:, 7]).mean()


def _naive_head_patching(family, model, clean_ids, ids, mask, final_only):
    """Patch one head at a time with a pre-hook on the output projection (clean z → corrupted)."""
    proj = [_out_proj(model, family, l) for l in range(2)]
    clean_z = {}
    with contextlib.ExitStack() as stack:
        for l, p in enumerate(proj):
            stack.enter_context(_hooks((p.register_forward_pre_hook, lambda m, a, l=l: clean_z.update({l: a[0].clone()}))))
        _logits(model, clean_ids, mask)
    out = torch.zeros(2, N_HEADS)
    for l in range(2):
        for h in range(N_HEADS):
            def edit(z, l=l, h=h):
                c = clean_z[l].reshape(z.shape)
                rows = slice(-1, None) if final_only else slice(None)
                z[:, rows, h] = c[:, rows, h]
                return z
            with _hooks((lambda f, l=l: proj[l].register_forward_pre_hook(f, with_kwargs=True), _z_hook(edit))):
                out[l, h] = _metric(_logits(model, ids, mask)[:, -1])
    return out


def _autograd_attribution(family, model, clean_ids, ids, mask):
    """Σ (z_clean − z_corrupted) · ∂metric/∂z over real positions, per head, by autograd."""
    proj = [_out_proj(model, family, l) for l in range(2)]
    zs = {}

    def keep(l, grad):
        def pre(m, a):
            z = a[0]
            if grad:  # a zero leaf added to z: d metric / d leaf = d metric / d z
                leaf = torch.zeros_like(z, requires_grad=True)
                zs[(l, "leaf")] = leaf
                z = z + leaf
            zs[(l, grad)] = z
            return (z,)
        return pre

    with contextlib.ExitStack() as stack:
        for l, p in enumerate(proj):
            stack.enter_context(_hooks((p.register_forward_pre_hook, keep(l, False))))
        _logits(model, clean_ids, mask)
    with contextlib.ExitStack() as stack:
        for l, p in enumerate(proj):
            stack.enter_context(_hooks((p.register_forward_pre_hook, keep(l, True))))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask)).logits
        value = _metric(logits[:, -1])
        value.backward()
    out = torch.zeros(2, N_HEADS)
    real = mask.bool()[:, :, None, None]
    for l in range(2):
        z = zs[(l, True)]
        delta = (zs[(l, False)] - z.detach()).reshape(*z.shape[:-1], N_HEADS, D_HEAD)
        g = zs[(l, "leaf")].grad.reshape(delta.shape)
        out[l] = float(value.detach()) + (delta * g * real).sum((0, 1, 3))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_head_patching_and_attribution_equal_the_naive_references(family, tokenizer):
    from interp.patching.activation import patch_heads
    from interp.patching.attribution import attribution_patch_heads

    model = _model(family)
    before = model_fingerprint(model)
    ids, mask = family_batch()
    g = torch.Generator().manual_seed(5)
    clean_ids = torch.where(mask.bool(), torch.randint(2, 70, ids.shape, generator=g), ids)
    for engine in ENGINES:
        fm = facade(model, engine, tokenizer)
        for positions in ("all", "final"):
            want = _naive_head_patching(family, model, clean_ids, ids, mask, positions == "final")
            got = patch_heads(fm, (clean_ids, mask), (ids, mask), _metric, positions=positions).scores
            assert float((got - want).abs().max()) <= 1e-5, (engine, positions)
            assert float((want - want.mean()).abs().max()) > 1e-4  # the heads differ
        model.zero_grad(set_to_none=True)
        want = _autograd_attribution(family, model, clean_ids, ids, mask)
        model.zero_grad(set_to_none=True)
        got = attribution_patch_heads(fm, (clean_ids, mask), (ids, mask), _metric).scores
        assert float((got - want).abs().max()) <= 1e-5, engine
    assert_same_fingerprint(before, model_fingerprint(model))


# families TransformerLens runs that the architecture table does not describe: the runner is the
# engine path (full forwards), and its numbers equal the naive references all the same
OUTSIDE = {"bloom": ("transformer.h", "self_attention", "dense"), "falcon": ("transformer.h", "self_attention", "dense"),
           "stablelm": ("model.layers", "self_attn", "o_proj")}


def _outside_model(family):
    import transformers as T

    config = {"bloom": T.BloomConfig(vocab_size=80, hidden_size=32, n_layer=2, n_head=4),
              "falcon": T.FalconConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       new_decoder_architecture=False, multi_query=False),
              "stablelm": T.StableLmConfig(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2)}[family]
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.config.architectures = [type(model).__name__]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.ndim == 2 else p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("family", sorted(OUTSIDE))
def test_families_outside_the_table_run_on_the_engine_path(family, tokenizer, monkeypatch):
    from interp.architectures import UnsupportedArchitecture
    from interp.patching.activation import patch_heads
    from interp.prefix_cache import SharedPrefix

    monkeypatch.setitem(_NAMES, family, OUTSIDE[family])
    model = _outside_model(family)
    before = model_fingerprint(model)
    fm = load_model(model, tokenizer=tokenizer)
    assert fm.runner.path == "engine" and "outside the architecture table" in fm.provenance()["runner"]
    ids, mask = family_batch()
    g = torch.Generator().manual_seed(5)
    clean_ids = torch.where(mask.bool(), torch.randint(2, 70, ids.shape, generator=g), ids)
    for positions in ("all", "final"):
        want = _naive_head_patching(family, model, clean_ids, ids, mask, positions == "final")
        got = patch_heads(fm, (clean_ids, mask), (ids, mask), _metric, positions=positions).scores
        assert float((got - want).abs().max()) <= 1e-5, positions
    prefix = ids[1, :25].tolist()
    suffixes = [ids[1, 25:].tolist(), ids[1, 25:33].tolist()]
    run = SharedPrefix(fm, prefix).run(suffixes)
    for b, suf in enumerate(suffixes):
        full = _logits(model, torch.tensor([prefix + suf]), torch.ones(1, len(prefix) + len(suf), dtype=torch.long))
        assert float((run.logits[b] - full[0, -1]).abs().max()) <= 1e-5
    with pytest.raises(UnsupportedArchitecture, match=family):
        load_model(model, engine="nnsight", tokenizer=tokenizer)
    assert_same_fingerprint(before, model_fingerprint(model))


def _naive_residual_patching(family, model, clean_ids, ids, mask, layer, pos):
    """Write the clean residual entering ``layer`` at ``pos`` into the corrupted run (a forward
    pre-hook on the decoder layer)."""
    block, kept = _layers(model, family)[layer], {}

    def hidden_of(args, kwargs):
        return args[0] if args else kwargs["hidden_states"]

    def grab(m, args, kwargs):
        kept["h"] = hidden_of(args, kwargs).clone()

    def put(m, args, kwargs):
        h = hidden_of(args, kwargs).clone()
        h[:, pos] = kept["h"][:, pos]
        return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

    with _hooks((lambda f: block.register_forward_pre_hook(f, with_kwargs=True), grab)):
        _logits(model, clean_ids, mask)
    with _hooks((lambda f: block.register_forward_pre_hook(f, with_kwargs=True), put)):
        return float(_metric(_logits(model, ids, mask)[:, -1]))


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_patched_variants_equal_one_at_a_time_and_the_naive_references(family, tokenizer, monkeypatch):
    """Variants stacked along the batch across layers (one call for all), one variant per call,
    and the plain-PyTorch references agree (≤ 1e-5), with a metric over the whole vocabulary and
    one that unembeds only its two columns; the prompts differ from position 20 on, so patching
    earlier positions is skipped as a no-op (and scores the corrupted metric)."""
    import interp.patching.variants as variants
    from interp.patching import logit_diff, patch_heads, patch_layer_outputs, patch_residual

    model = _model(family)
    ids, mask = family_batch()
    g = torch.Generator().manual_seed(6)
    clean_ids = ids.clone()
    clean_ids[:, 20:] = torch.randint(2, 70, (2, SEQ - 20), generator=g)
    fm = facade(model, "nnsight", tokenizer)
    clean, corrupted = (clean_ids, mask), (ids, mask)
    columns_metric = logit_diff([5], [7])  # = _metric, reading two columns
    for positions in ("all", "final"):
        want = _naive_head_patching(family, model, clean_ids, ids, mask, positions == "final")
        for metric in (_metric, columns_metric):
            monkeypatch.setattr(variants, "CALL_OVERHEAD", 1e9)  # every variant in one call
            together = patch_heads(fm, clean, corrupted, metric, positions=positions).scores
            monkeypatch.setattr(variants, "CALL_OVERHEAD", 0.0)
            alone = patch_heads(fm, clean, corrupted, metric, positions=positions, max_rows=1).scores
            for got in (together, alone):
                assert float((got - want).abs().max()) <= 1e-5, (positions, metric)
    monkeypatch.setattr(variants, "CALL_OVERHEAD", 1e9)
    resid = patch_residual(fm, clean, corrupted, columns_metric, positions=[3, 19, 20, 31, SEQ - 1])
    corrupted_metric = float(_metric(_logits(model, ids, mask)[:, -1]))
    for layer in range(2):
        assert resid.scores[layer, 3] == resid.scores[layer, 19] == resid.corrupted_metric  # before the first difference
        assert resid.corrupted_metric == pytest.approx(corrupted_metric, abs=1e-5)
        for pos in (20, 31, SEQ - 1):
            assert float(resid.scores[layer, pos]) == pytest.approx(_naive_residual_patching(family, model, clean_ids, ids, mask, layer, pos), abs=1e-5)
    together = patch_layer_outputs(fm, clean, corrupted, columns_metric).scores
    alone = patch_layer_outputs(fm, clean, corrupted, _metric, max_rows=1).scores
    assert float((together - alone).abs().max()) <= 1e-5
    assert float((together - together.mean()).abs().max()) > 1e-4  # the components differ
