"""Attribution patching and AtP* (Nanda 2023; Syed, Rager & Conmy 2023; Kramár, Lieberum, Shah &
Nanda 2024, "AtP*: An efficient and scalable method for localizing LLM behaviour to components").

AtP, a first-order estimate of every head's patching effect (clean → corrupted) from one clean
forward and one corrupted forward + backward, for a head activation n (``attn.hook_z``, ``hook_q``,
``hook_k`` or ``hook_v``) over the patched positions P:

    ĉ_AtP(n) = Σ_{b, pos ∈ P, d} (n_clean − n_corrupted)[b, pos, h, d] · ∂metric/∂n_corrupted[b, pos, h, d]

AtP* adds two fixes, both options here:

- **QK fix** (``qk_fix``, on by default for queries and keys, as in AtP*): a query or key reaches
  the metric through the attention softmax, which saturates; instead of linearising it, the
  pattern with the clean query (key) of that head is computed exactly, and only what follows the
  pattern is linearised:

      ĉ_AtP*(n) = Σ_{b, h ∈ heads(n), t, s} (A^{n ← clean} − A)[b, h, t, s] · ∂metric/∂A[b, h, t, s]

  (a key of a GQA key/value head changes the patterns of every query head that reads it).
- **GradDrop** (``grad_drop``): effects that cancel between paths make AtP report near zero.  For
  every layer ℓ the backward pass is repeated with the gradient through layer ℓ's residual
  contribution dropped (the skip connection kept), and the magnitude is

      ĉ_GradDrop(n) = 1/(L − 1) Σ_{ℓ=1..L} |ĉ_{AtP + GD_ℓ}(n)|

  (dropping n's own layer cuts its gradient, hence L − 1).  It ranks by magnitude only; the
  signed estimate stays AtP(*)'s.

Scores are reported as the estimated metric after patching, corrupted_metric + ĉ, so they line up
with :func:`interp.patching.activation.patch_heads`; ``magnitude`` (|ĉ|, or ĉ_GradDrop) is what a
screen ranks by (:func:`interp.patching.screen.screen_then_verify`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interp.edits import Edit
from interp.patching.activation import PatchingResult, as_ids_mask, heads_at, to_left_padding
from interp.patching.metrics import Metric
from interp.sites import Site


@dataclass
class AttributionResult(PatchingResult):
    """A :class:`PatchingResult` of estimates, plus ``magnitude`` [layer, head]: what a screen
    ranks by (|estimate − corrupted|, or GradDrop's magnitude)."""

    magnitude: torch.Tensor | None = None

    def to_dict(self) -> dict:
        return {**super().to_dict(), "magnitude": None if self.magnitude is None else self.magnitude.tolist()}


class DropLayerGradient(Edit):
    """GradDrop_ℓ: layer ℓ's output is its input plus its contribution with the contribution's
    gradient dropped; the value is unchanged, the backward pass goes through the skip only."""

    def __init__(self, layer: int):
        self.layer = layer

    def hooks(self, ctx):
        kept = {}

        def keep(t):
            kept["in"] = t
            return t

        def drop(t):
            h = kept["in"]
            return t.detach() + (h - h.detach())

        return [(Site(self.layer, "hook_resid_pre"), keep), (Site(self.layer, "hook_resid_post"), drop)]


class _Stop(Exception):
    pass


def attribution_patch_heads(
    model,
    clean,
    corrupted,
    metric: Metric,
    *,
    positions="all",
    layers: Sequence[int] | None = None,
    site: str = "attn.hook_z",
    qk_fix: bool = True,
    grad_drop: bool = False,
) -> AttributionResult:
    """Estimated metric after patching each head's ``site`` at ``positions`` ("all" or
    "final"): [layer, head] (key/value heads for hook_k / hook_v).  ``qk_fix`` applies to
    hook_q / hook_k (AtP*'s exact softmax); ``grad_drop`` adds AtP*'s GradDrop magnitude."""
    if positions not in ("all", "final"):
        raise ValueError("attribution patching supports positions='all' or 'final'")
    n_heads = heads_at(model, site)
    clean_ids, clean_mask = to_left_padding(*as_ids_mask(model, clean), model.pad_token_id)
    ids, mask = to_left_padding(*as_ids_mask(model, corrupted), model.pad_token_id)
    if clean_ids.shape != ids.shape or not torch.equal(clean_mask, mask):
        raise ValueError("clean and corrupted prompts must be token-aligned (same shape and padding) for attribution patching")
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    exact_softmax = qk_fix and site in ("attn.hook_q", "attn.hook_k")
    sites = [f"blocks.{l}.{site}" for l in layers]
    grad_sites = [f"blocks.{l}.attn.hook_pattern" for l in layers] if exact_softmax else sites
    with torch.no_grad():
        clean_run = model.run(clean_ids, attention_mask=clean_mask, capture=sites, logits="final")
        clean_metric = float(metric(clean_run.logits))
    # the patched positions: every real token, or only the final one (the last column)
    where = mask.bool().clone()
    if positions == "final":
        where[:, :-1] = False
    corrupted_run = model.gradients(ids, sorted(set(sites + grad_sites)), metric, attention_mask=mask)
    if exact_softmax:
        state = model.runner.corrupted_state(ids, mask)
        delta = {l: _pattern_change(model.runner, state, l, site, clean_run.acts[f"blocks.{l}.{site}"], where, n_heads) for l in layers}
    else:
        delta = {l: (clean_run.acts[f"blocks.{l}.{site}"] - corrupted_run.acts[f"blocks.{l}.{site}"]) * where[:, :, None, None] for l in layers}

    def estimate(grads) -> torch.Tensor:
        out = torch.zeros(model.n_layers, n_heads)
        for l in layers:
            if exact_softmax:  # delta[l]: [variant head, batch, head, q, k]
                g = grads[f"blocks.{l}.attn.hook_pattern"]
                out[l] = (delta[l] * g[None]).sum((1, 2, 3, 4)).cpu()
            else:
                out[l] = (delta[l] * grads[f"blocks.{l}.{site}"]).sum((0, 1, 3)).cpu()
        return out

    effect = estimate(corrupted_run.grads)
    scores = torch.full((model.n_layers, n_heads), float("nan"))
    scores[layers] = corrupted_run.value + effect[layers]
    magnitude = torch.full_like(scores, float("nan"))
    magnitude[layers] = effect[layers].abs()
    if grad_drop:
        if model.n_layers < 2:
            raise ValueError("GradDrop needs at least two layers (it averages over the other layers)")
        total = torch.zeros(model.n_layers, n_heads)
        for dropped in range(model.n_layers):
            run = model.gradients(ids, grad_sites, metric, attention_mask=mask, edits=[DropLayerGradient(dropped)])
            total += estimate(run.grads).abs()
        magnitude[layers] = total[layers] / (model.n_layers - 1)
    kind = "attn_head_" + site.rsplit("_", 1)[1] + "_attribution"
    method = ("AtP*" if exact_softmax else "AtP") + (" + GradDrop" if grad_drop else "")
    return AttributionResult(scores, kind, positions, clean_metric, corrupted_run.value,
                             setting={"method": method, "site": site, "qk_fix": exact_softmax, "grad_drop": grad_drop},
                             magnitude=magnitude)


@torch.no_grad()
def _pattern_change(runner, state, layer: int, site: str, clean_act: torch.Tensor, where: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(A^{head h's site ← clean} − A) at ``layer`` for every head h of ``site``, exactly:
    [variant h, batch, query head, q, k].  One runner call per layer: the n_heads patched
    variants and the unpatched run along the batch, stopped once the layer's pattern exists."""
    batch, seq = state.attention_mask.shape
    start = int(where.any(0).nonzero().min())
    v = n_heads + 1  # the last variant is the unpatched run
    rows = where[:, start:, None, None]
    clean_rows = clean_act[:, start:]
    which = torch.zeros(v, 1, 1, n_heads, 1, dtype=torch.bool)
    which[torch.arange(n_heads), 0, 0, torch.arange(n_heads)] = True
    seen = {}

    def patch(t):
        t = t.reshape(v, batch, *t.shape[1:])
        return torch.where(which & rows[None], clean_rows[None].to(t.dtype), t).reshape(v * batch, *t.shape[2:])

    def grab(t):
        seen["pattern"] = t
        raise _Stop

    edits = [(layer, site, patch), (layer, "attn.hook_pattern", grab)]
    try:
        runner.run_from(layer, state.resid_pre[layer][:, start:].repeat(v, 1, 1), state.attention_mask.repeat(v, 1),
                        state.position_ids[:, start:].repeat(v, 1), prefix=state.prefix(start) if start else None,
                        edits=edits, last_only=True)
    except Exception:  # _Stop, or an engine's wrapping of it
        if "pattern" not in seen:
            raise
    pattern = seen["pattern"].reshape(v, batch, *seen["pattern"].shape[1:])  # [v, batch, head, q ≥ start, k]
    out = torch.zeros(n_heads, batch, pattern.shape[2], seq, seq)
    out[:, :, :, start:] = (pattern[:-1] - pattern[-1:]).to(out.dtype)
    return out
