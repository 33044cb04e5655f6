"""``verify``: are the hooks faithful on this model?  Checks any model a user brings.

Each check is a max-abs difference against a threshold:

- ``hooked_vs_plain_logits``: logits with read hooks on every site vs the plain transformers
  forward of the same weights (eager attention), no hooks: ≤ 1e-4.
- ``resid_post_vs_hidden_states``: ``blocks.{l}.hook_resid_post`` vs the model's own
  ``hidden_states[l + 1]`` (the last one through the final norm, as transformers returns it): ≤ 1e-5.
- ``heads_sum_vs_attn_out``: Σ_h ``attn.hook_result`` (+ b_O, through the post-attention norm on
  families that have one) vs ``hook_attn_out``, divided by
  max(1, max|attn_out|): ≤ 1e-5.  Relative because attn_out itself is a float32 matmul whose
  rounding grows with its size (SmolLM2's layer 24 reaches |attn_out| = 184, where one float32 ulp
  is 1.5e-5); with ``dtype=torch.float64`` the absolute difference is ~1e-15 (measured 2.3e-15).
- ``sites_vs_reference``: every site of the README table through the engine vs the plain-PyTorch
  reference (:class:`interp.engines.torch_engine.TorchEngine`: torch hooks on a plain eager twin,
  neither engine): ≤ 1e-5 (logits 1e-4).
- ``engines_agree_<site>``: the same captures through TransformerLens and nnsight: ≤ 1e-5.
- ``no_hooks_left``: hook count on the model after the calls, also after a call that raised: 0.
- ``edit_<kind>``: each edit kind (knockout, scale, ablate, patch, add) through the engine vs the
  same edit on the plain-PyTorch reference: ≤ 1e-4 on the logits; inf when the reference edit
  does not move the logits (an edit with no effect proves nothing).
- ``fast_path_vs_engine``: the runner (start at a middle layer at the final position with the
  earlier positions' keys/values cached; run the last tokens after a cached prefix) vs the
  engine's full forward: ≤ 1e-4.
- ``user_model_unchanged``: a model passed in (not a name): weights, ``requires_grad``, hooks,
  instance attributes, training flags and attention implementation after all the checks, 0 when
  all are as before.

The prompts are a left-padded batch of two rows, so masks and position ids are exercised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from interp.architectures import architecture_of
from interp.capture import Capture
from interp.engines.torch_engine import TorchEngine
from interp.loading import load_model
from interp.model import Model, position_ids_from_mask
from interp.plain import plain_twin

VERIFY_TEXTS = [
    "Q: cat\nA: cats\n\nQ: house\nA: houses\n\nQ: mouse\nA:",
    "Review: the food was cold and the service slow.\nSentiment: negative\n\nReview: a delightful evening, we loved it.\nSentiment:",
]
THRESHOLDS = {"logits": 1e-4, "resid": 1e-5, "heads_sum": 1e-5, "engines": 1e-5, "edits": 1e-4, "fast_path": 1e-4}


@dataclass
class Check:
    name: str
    engine: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.threshold)


@dataclass
class VerifyResult:
    model: str
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "passed": self.passed,
            "checks": [{**asdict(c), "passed": c.passed} for c in self.checks],
        }


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference; NaN anywhere gives inf, so a NaN can never pass a check."""
    d = (a.detach().double() - b.detach().double()).abs()
    return float("inf") if bool(d.isnan().any()) else float(d.max())


def count_hooks(module: torch.nn.Module) -> int:
    """PyTorch hooks registered anywhere in ``module`` (forward, pre-forward, backward)."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(getattr(m, "_backward_pre_hooks", {}))
        for m in module.modules()
    )


def count_bridge_hooks(bridge) -> int:
    """TransformerLens hook functions attached to a bridge's hook points."""
    unique = {id(hp): hp for hp in bridge.hook_dict.values()}  # aliases share one HookPoint
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in unique.values())


def verify(
    model="smollm2-135m", *, tokenizer=None, engines=("transformer-lens", "nnsight"), texts=VERIFY_TEXTS, dtype=None
) -> VerifyResult:
    """Run every check on ``model`` (anything :func:`load_model` accepts) with each engine.

    ``dtype`` (models loaded by name only) loads the weights in that dtype, e.g. float64.  The
    batch is left-padded, except in float64, where plain transformers itself turns left-padded
    rows into NaN (masked pad rows), so right padding is used there."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    user_object = model if isinstance(model, torch.nn.Module) else None
    before = object_fingerprint(user_object) if user_object is not None else None
    facades = {e: load_model(model, engine=e, tokenizer=tokenizer, **kwargs) for e in engines}
    first = next(iter(facades.values()))
    result = VerifyResult(model=first.name)
    reference = plain_twin(first.hf_model)
    padding = "right" if dtype == torch.float64 else "left"
    input_ids, mask = first.encode(texts, padding_side=padding)
    position_ids = position_ids_from_mask(mask)
    with torch.no_grad():
        plain = reference(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, output_hidden_states=True)

    n = first.n_layers
    arch = architecture_of(reference)
    final_norm = arch.top(reference, "final_norm")
    site_names = ["hook_embed", "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_rot_q",
                  "attn.hook_rot_k", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
                  "hook_resid_mid", "hook_mlp_out", "hook_resid_post", "logits"]
    if arch.is_parallel(reference.config):
        site_names.remove("hook_resid_mid")
    torch_ref = Model(TorchEngine(first.hf_model, first.tokenizer), tokenizer=first.tokenizer)
    with torch.no_grad():
        ref_sites = torch_ref.run(input_ids, attention_mask=mask, capture=site_names).acts
    captures = [
        Capture("attn.hook_pattern"),
        Capture("attn.hook_z"),
        Capture("attn.hook_result"),
        Capture("hook_attn_out"),
        Capture("hook_resid_post"),
        Capture("hook_mlp_out"),
        Capture("attn.hook_k"),
    ]
    runs = {}
    for engine, fm in facades.items():
        with torch.no_grad():
            run = fm.run(input_ids, attention_mask=mask, capture=captures)
        runs[engine] = run
        real = mask.bool()
        result.checks.append(Check("hooked_vs_plain_logits", engine, _maxdiff(run.logits[real], plain.logits[real]), THRESHOLDS["logits"]))
        worst = 0.0
        for l in range(n):
            ours = run.acts[f"blocks.{l}.hook_resid_post"]
            if l == n - 1:
                ours = final_norm(ours)
            worst = max(worst, _maxdiff(ours[real], plain.hidden_states[l + 1][real]))
        result.checks.append(Check("resid_post_vs_hidden_states", engine, worst, THRESHOLDS["resid"]))
        worst = 0.0
        for l in range(n):
            total = run.acts[f"blocks.{l}.attn.hook_result"].sum(2)
            b_o = fm.engine.b_O(l)
            if b_o is not None:
                total = total + b_o
            post = arch.sub(reference, l, "post_attn_norm")  # what the sublayer adds is after the post-norm
            if post is not None:
                with torch.no_grad():
                    total = post(total)
            attn_out = run.acts[f"blocks.{l}.hook_attn_out"]
            worst = max(worst, _maxdiff(total, attn_out) / max(1.0, float(attn_out.abs().max())))
        result.checks.append(Check("heads_sum_vs_attn_out", engine, worst, THRESHOLDS["heads_sum"]))
        result.checks.append(Check("no_hooks_left", engine, float(_hooks_after_raise(fm, input_ids, mask)), 0.0))
        try:
            with torch.no_grad():
                got = fm.run(input_ids, attention_mask=mask, capture=site_names).acts
            worst = 0.0
            for k, v in ref_sites.items():
                d = got[k].double() - v.double()
                if "scores" in k:
                    d = d.masked_fill(v.double() < -1e30, 0)
                scale = 10.0 if k == "logits" else 1.0  # logits: 1e-4 as above
                worst = max(worst, float(d.abs().max()) / scale)
        except (RuntimeError, ValueError):  # a site this engine cannot serve on this model
            worst = float("inf")
        result.checks.append(Check("sites_vs_reference", engine, worst, THRESHOLDS["resid"]))
        for kind, edit in _edit_kinds(first, input_ids, mask):
            with torch.no_grad():
                want = torch_ref.run(input_ids, attention_mask=mask, edits=[edit]).logits
                got = fm.run(input_ids, attention_mask=mask, edits=[edit]).logits
            effect = _maxdiff(want[real], ref_sites["logits"][real])
            value = _maxdiff(got[real], want[real]) if effect > 1e-6 else float("inf")
            result.checks.append(Check(f"edit_{kind}", engine, value, THRESHOLDS["edits"]))
        result.checks.append(Check("fast_path_vs_engine", engine, _fast_path_diff(fm, input_ids, mask), THRESHOLDS["fast_path"]))

    if user_object is not None:
        changed = [k for k, v in object_fingerprint(user_object).items() if v != before[k]]
        result.checks.append(Check("user_model_unchanged", "both", float(len(changed)), 0.0))

    if len(runs) == 2:
        a, b = runs.values()
        real = mask.bool()
        result.checks.append(Check("engines_agree_logits", "both", _maxdiff(a.logits[real], b.logits[real]), THRESHOLDS["engines"]))
        for hook in ("attn.hook_pattern", "attn.hook_z", "attn.hook_k", "hook_resid_post", "hook_mlp_out"):
            worst = max(_maxdiff(a.acts[f"blocks.{l}.{hook}"], b.acts[f"blocks.{l}.{hook}"]) for l in range(n))
            result.checks.append(Check(f"engines_agree_{hook.split('.')[-1]}", "both", worst, THRESHOLDS["engines"]))
    return result


def _edit_kinds(model, input_ids, mask) -> list:
    """One edit of each kind, on the middle layer, from the final position (left padding: the
    last column) to the first real positions of every row."""
    from interp.edits import Ablate, AddVector, AttentionKnockout, Patch, ScaleAttention

    layer, t = model.n_layers // 2, input_ids.shape[1]
    early = list(range(t - int(mask.sum(1).min()), t - 2))  # real in every row, before the final two
    g = torch.Generator().manual_seed(0)
    vector = torch.randn(model.d_model, generator=g)
    patch = torch.randn(*input_ids.shape, model.d_model, generator=g)
    return [
        ("knockout", AttentionKnockout("final", early, layers=layer)),
        ("scale", ScaleAttention("final", early, 3.0, layers=layer)),
        ("ablate", Ablate("attn.hook_z", layers=layer, heads=[0])),
        ("patch", Patch("hook_resid_pre", patch, layers=layer, positions=[t - 2])),
        ("add", AddVector("hook_resid_post", vector, layers=layer, positions="final")),
    ]


def _fast_path_diff(fm, input_ids, mask) -> float:
    """The runner against the engine's full forward (final-position logits)."""
    runner = fm.runner
    t, mid = input_ids.shape[1], fm.n_layers // 2
    with torch.no_grad():
        full = fm.run(input_ids, attention_mask=mask).logits
        state = runner.corrupted_state(input_ids, mask)
        last = runner.run_from(mid, state.resid_pre[mid][:, -1:], mask, state.position_ids[:, -1:], prefix=state.prefix(t - 1),
                               last_only=True)[:, -1]
        tail = runner.run_tokens(input_ids[:, -3:], mask, state.position_ids[:, -3:], prefix=state.prefix(t - 3))
    return max(_maxdiff(last, full[:, -1]), _maxdiff(tail, full[:, -3:]))


def object_fingerprint(model: torch.nn.Module) -> dict:
    """What must not change on a user's model: a digest of the weights, ``requires_grad`` per
    parameter, hook count, instance attributes, training flags, attention implementation."""
    from interp.finetune import parameter_hash

    config = getattr(model, "config", None)
    return {
        "weights": parameter_hash(model),
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "hooks": count_hooks(model),
        "attributes": {n: sorted(vars(m)) for n, m in model.named_modules()},
        "training": {n: m.training for n, m in model.named_modules()},
        "attn_implementation": getattr(config, "_attn_implementation", None),
    }


class _Boom(RuntimeError):
    pass


def _hooks_after_raise(fm, input_ids, mask) -> int:
    """Hooks left on the model (and bridge) by a call whose hook raised, beyond those present
    after a plain call."""

    def explode(_):
        raise _Boom("deliberate failure inside a hook")

    from interp.edits import Edit

    class Explode(Edit):
        def hooks(self, ctx):
            from interp.sites import Site

            return [(Site(ctx.facts.n_layers // 2, "hook_resid_post"), explode)]

    def hooks_now() -> int:
        return count_hooks(fm.hf_model) + (count_bridge_hooks(fm.bridge) if fm.bridge is not None else 0)

    with torch.no_grad():
        fm.run(input_ids, attention_mask=mask)  # a bridge wires its own permanent hooks on first use
    baseline = hooks_now()
    try:
        with torch.no_grad():
            fm.run(input_ids, attention_mask=mask, edits=[Explode()], capture=["attn.hook_pattern"])
    except _Boom:
        pass
    else:  # pragma: no cover
        raise AssertionError("the exploding hook did not fire")
    return hooks_now() - baseline
