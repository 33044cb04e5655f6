"""Capture: read only the activations that were asked for.

A :class:`Capture` names a site (full name, or a block hook suffix taken at ``layers``) and a
selection of heads and positions.  The hook slices the activation as soon as it is produced, so
memory holds only the selection: the last position's attention row of every head is
[batch, head, 1, pos], not the full pattern.

``attn.hook_result`` (per-head output projected through W_O) is computed from ``attn.hook_z`` of
the selected heads: result[b, p, h] = z[b, p, h] @ W_O[h]; Σ_h result + b_O = attn_out.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interp.sites import Positions, Site, expand_sites, head_index, select


@dataclass(frozen=True)
class Capture:
    """What to read: ``site`` at ``layers``, restricted to ``heads`` and ``positions``.

    positions: None (all), int, list of ints, ``"final"`` (each row's last real token) or a
    LongTensor [n] / [batch, n]; for scores and patterns they select query rows.
    heads: query heads, or key/value heads for ``hook_k``/``hook_v``/``hook_rot_k``.
    """

    site: str
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None
    positions: Positions = None


class Activations(dict):
    """Captured tensors keyed by full site name, with helpers to stack layers."""

    def stack(self, hook: str, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Stack ``blocks.{l}.{hook}`` over layers (all captured ones, in order) on a new dim 0."""
        if layers is None:
            layers = sorted(int(k.split(".")[1]) for k in self if k.startswith("blocks.") and k.split(".", 2)[2] == hook)
            if not layers:
                raise KeyError(f"no captured site ends with {hook!r}; captured: {sorted(self)}")
        return torch.stack([self[f"blocks.{l}.{hook}"] for l in layers])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values())


def as_capture(spec: "Capture | str") -> Capture:
    return spec if isinstance(spec, Capture) else Capture(spec)


def capture_hooks(spec: Capture, *, engine, store: Activations, pos_index, n_layers: int, keep_graph: bool):
    """Hooks (site, fn) that write the selected slices of ``spec`` into ``store``."""
    facts = engine.facts
    hooks = []
    for site in expand_sites(spec.site, spec.layers, n_layers):
        if spec.heads is not None and site.layout == "bpd" and site.hook != "attn.hook_result":
            raise ValueError(f"Capture({site.hook!r}, heads=...): {site.hook} has no head axis (it is [batch, pos, d_model]); "
                             "drop heads=, or capture a per-head site (attn.hook_z, attn.hook_result, attn.hook_pattern, ...)")
        n = facts.n_kv_heads if site.is_kv else facts.n_heads
        heads = head_index(spec.heads, n)
        if site.hook == "attn.hook_result":
            hooks.append((Site(site.layer, "attn.hook_z"), _result_hook(site, engine, heads, pos_index, store, keep_graph)))
        else:
            hooks.append((site, _store_hook(site, heads, pos_index, store, keep_graph)))
    return hooks


def _store_hook(site: Site, heads, pos, store: Activations, keep_graph: bool):
    layout = site.layout

    def fn(t: torch.Tensor):
        out = select(t, layout, heads, pos)
        store[site.name] = out if keep_graph else out.detach().clone()

    return fn


def _result_hook(site: Site, engine, heads, pos, store: Activations, keep_graph: bool):
    def fn(z: torch.Tensor):
        zs = select(z, "bphd", heads, pos)
        w_o = engine.W_O(site.layer)
        if heads is not None:
            w_o = w_o[heads.to(w_o.device)]
        out = torch.einsum("bphd,hdm->bphm", zs, w_o.to(zs.dtype))
        store[site.name] = out if keep_graph else out.detach()

    return fn
