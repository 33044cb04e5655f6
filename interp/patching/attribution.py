"""Attribution patching (Nanda 2023; Syed, Rager & Conmy 2023): a first-order estimate of every
head's patching effect from one clean forward and one corrupted forward + backward:

    effect(l, h) ≈ Σ_{batch, pos ∈ P, d} (z_clean − z_corrupted)[b, pos, h, d] · ∂metric/∂z_corrupted[b, pos, h, d]

where z is the head output before W_O (``attn.hook_z``) and P the patched positions.  Reported as
the estimated metric after patching, corrupted_metric + effect, so it lines up with
:func:`interp.patching.activation.patch_heads`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from interp.patching.activation import PatchingResult, as_ids_mask, to_left_padding
from interp.patching.metrics import Metric


def attribution_patch_heads(model, clean, corrupted, metric: Metric, *, positions="all", layers: Sequence[int] | None = None) -> PatchingResult:
    """Estimated metric after patching each head's z at ``positions`` ("all" or "final"): [layer, head]."""
    if positions not in ("all", "final"):
        raise ValueError("attribution patching supports positions='all' or 'final'")
    clean_ids, clean_mask = to_left_padding(*as_ids_mask(model, clean), model.pad_token_id)
    ids, mask = to_left_padding(*as_ids_mask(model, corrupted), model.pad_token_id)
    if clean_ids.shape != ids.shape or not torch.equal(clean_mask, mask):
        raise ValueError("clean and corrupted prompts must be token-aligned (same shape and padding) for attribution patching")
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    sites = [f"blocks.{l}.attn.hook_z" for l in layers]
    with torch.no_grad():
        clean_run = model.run(clean_ids, attention_mask=clean_mask, capture=sites, logits="final")
    corrupted = model.gradients(ids, sites, metric, attention_mask=mask)
    # positions that count: every real token, or only the final one (the last column)
    where = mask.bool().clone()
    if positions == "final":
        where[:, :-1] = False
    where = where[:, :, None, None]
    scores = torch.full((model.n_layers, model.n_heads), float("nan"))
    for l, site in zip(layers, sites):
        delta = clean_run.acts[site] - corrupted.acts[site]
        scores[l] = corrupted.value + (delta * corrupted.grads[site] * where).sum((0, 1, 3)).cpu()
    with torch.no_grad():
        clean_metric = float(metric(clean_run.logits))
    return PatchingResult(scores, "attn_head_z_attribution", positions, clean_metric, corrupted.value)
