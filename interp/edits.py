"""Edits: interventions applied for one call and removed afterwards, also when the call raises.

Each edit turns into site hooks (see :mod:`interp.engines.base`), so every engine applies them the
same way.  Edits compose: they run in the order given, and a capture at the same site sees the
edited value.

- :class:`Patch`: replace a site's selected entries with values from another run or a stored tensor.
- :class:`Ablate`: zero, mean (a stored mean) or resample (rows of another run) ablation.
- :class:`AttentionKnockout`: pre-softmax mask between two position sets (Wang et al. 2023's
  isolation): scores[q in from, k in to] = -inf before the softmax, so q gives k no attention and
  the rest of the row renormalises.
- :class:`BlockAttentionPairs`: the same with an explicit [batch, q, k] mask of blocked pairs.
- :class:`ScaleAttention`: multiply post-softmax attention edges by a factor, no renormalisation
  (Wang et al.'s anchor re-weighting A'(q, p) = exp(beta) * A(q, p)).
- :class:`ReweightAttention`: multiply each layer's post-softmax attention by a factor tensor
  [batch, head, q, k] that may require grad (Wang et al.'s learned β: exp(β) on the query → label
  word edges, trained by backpropagating through the edit).
- :class:`AddVector`: add a vector at a site and positions (function vectors, Todd et al. 2023).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from interp.sites import Positions, Site, expand_sites, head_index, resolve_positions, selection_mask


@dataclass
class EditContext:
    """What an edit needs to know about the call it is applied to."""

    facts: object
    batch: int
    seq_len: int
    final: torch.Tensor | None

    def positions(self, positions: Positions) -> torch.Tensor | None:
        return resolve_positions(positions, self.batch, self.seq_len, self.final)

    def heads(self, site: Site, heads) -> torch.Tensor | None:
        return head_index(heads, self.facts.n_kv_heads if site.is_kv else self.facts.n_heads)


class Edit:
    """Base class: ``hooks(ctx)`` returns the (site, fn) pairs that apply the edit."""

    def hooks(self, ctx: EditContext) -> list:
        raise NotImplementedError


def _check_writable(site: Site) -> None:
    if site.hook == "attn.hook_result":
        raise ValueError("attn.hook_result is derived from hook_z and read-only: edit 'attn.hook_z' of the same heads instead")


@dataclass
class Patch(Edit):
    """Set ``site`` (at ``layers``) on the selected heads/positions to ``value``.

    ``value``: a tensor of the site's full shape (e.g. captured from another run of the same
    shape), or a dict/Activations mapping full site names to such tensors.
    """

    site: str
    value: "torch.Tensor | dict"
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None
    positions: Positions = None

    def hooks(self, ctx):
        out = []
        for site in expand_sites(self.site, self.layers, ctx.facts.n_layers):
            _check_writable(site)
            if isinstance(self.value, dict) and site.name not in self.value:
                raise ValueError(f"Patch({self.site!r}): the values hold no {site.name!r} (they have {sorted(self.value)[:4]}...); "
                                 "capture that site in the source run, or restrict layers= to the captured ones")
            value = self.value[site.name] if isinstance(self.value, dict) else self.value
            out.append((site, _patch_fn(site, value, ctx.heads(site, self.heads), ctx.positions(self.positions))))
        return out


def _patch_fn(site, value, heads, pos):
    def fn(t):
        if value.shape != t.shape:
            raise ValueError(
                f"Patch {site.name}: value has shape {tuple(value.shape)} but the activation is {tuple(t.shape)}; "
                "clean and corrupted prompts must have the same length (pad them to one length)"
            )
        mask = selection_mask(t.shape, site.layout, heads, pos, device=t.device)
        return torch.where(mask, value.to(device=t.device, dtype=t.dtype), t)

    return fn


@dataclass
class Ablate(Edit):
    """Ablate ``site`` on the selected heads/positions.

    method ``"zero"``; ``"mean"``: replace by ``mean`` (a tensor broadcastable to the activation,
    e.g. [head, d_head] for hook_z or [d_model] for the residual stream); ``"resample"``: replace
    row b by row r(b) of ``source`` (an activation of the same site from other inputs, same
    sequence length), r drawn with ``seed``.
    """

    site: str
    method: Literal["zero", "mean", "resample"] = "zero"
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None
    positions: Positions = None
    mean: "torch.Tensor | dict | None" = None
    source: "torch.Tensor | dict | None" = None
    seed: int = 0

    def hooks(self, ctx):
        if self.method not in ("zero", "mean", "resample"):
            raise ValueError(f"unknown ablation {self.method!r}: use 'zero', 'mean' or 'resample'")
        if self.method == "mean" and self.mean is None:
            raise ValueError("mean ablation needs mean=: a stored mean activation (e.g. captured over a reference set)")
        if self.method == "resample" and self.source is None:
            raise ValueError("resample ablation needs source=: activations of the same site from other inputs")
        out = []
        gen = torch.Generator().manual_seed(self.seed)
        for site in expand_sites(self.site, self.layers, ctx.facts.n_layers):
            _check_writable(site)
            heads, pos = ctx.heads(site, self.heads), ctx.positions(self.positions)
            pick = lambda d: d[site.name] if isinstance(d, dict) else d  # noqa: E731
            if self.method == "zero":
                value = None
            elif self.method == "mean":
                value = pick(self.mean)
            else:
                src = pick(self.source)
                value = src[torch.randint(src.shape[0], (ctx.batch,), generator=gen)]
            out.append((site, _ablate_fn(site, self.method, value, heads, pos)))
        return out


def _ablate_fn(site, method, value, heads, pos):
    def fn(t):
        mask = selection_mask(t.shape, site.layout, heads, pos, device=t.device)
        if method == "zero":
            return t.masked_fill(mask, 0.0)
        v = value.to(device=t.device, dtype=t.dtype)
        if method == "resample" and v.shape != t.shape:
            raise ValueError(f"resample source for {site.name} has shape {tuple(v.shape)[1:]} per row, activation has {tuple(t.shape)[1:]}")
        return torch.where(mask, v.expand_as(t), t)

    return fn


@dataclass
class AttentionKnockout(Edit):
    """Block attention from ``from_positions`` to ``to_positions`` (pre-softmax -inf).

    Positions as in captures (per-row tensors allowed); ``layers`` default all, ``heads`` default all.
    A query row whose every key is blocked keeps its original row (softmax of all -inf is undefined).
    """

    from_positions: Positions
    to_positions: Positions
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None

    def hooks(self, ctx):
        pair = _pair_mask(ctx, self.from_positions, self.to_positions)
        out = []
        for site in expand_sites("attn.hook_attn_scores", self.layers, ctx.facts.n_layers):
            out.append((site, _knockout_fn(pair, ctx.heads(site, self.heads))))
        return out


def _pair_mask(ctx: EditContext, from_positions, to_positions) -> torch.Tensor:
    """Bool [batch, q, k]: True where q is in from_positions and k in to_positions."""
    rows = torch.zeros(ctx.batch, ctx.seq_len, dtype=torch.bool)
    cols = torch.zeros(ctx.batch, ctx.seq_len, dtype=torch.bool)
    q = ctx.positions(from_positions)
    k = ctx.positions(to_positions)
    rows[:] = q is None
    cols[:] = k is None
    if q is not None:
        rows.scatter_(1, q, True)
    if k is not None:
        cols.scatter_(1, k, True)
    return rows[:, :, None] & cols[:, None, :]


def _head_mask(n_heads: int, heads: torch.Tensor | None, device) -> torch.Tensor:
    m = torch.zeros(n_heads, dtype=torch.bool, device=device)
    m[heads.to(device) if heads is not None else slice(None)] = True
    return m[None, :, None, None]


def _knockout_fn(pair, heads):
    def fn(scores):
        mask = pair.to(scores.device)[:, None] & _head_mask(scores.shape[1], heads, scores.device)
        blocked = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
        full = mask.all(-1, keepdim=True)  # rows with nothing left to attend to
        return torch.where(full, scores, blocked)

    return fn


@dataclass
class BlockAttentionPairs(Edit):
    """Block attention on explicit (query, key) pairs: ``pairs`` bool [batch, q_pos, k_pos],
    True = scores[q, k] set to -inf before the softmax.  Wang et al. 2023's isolation of label
    words is pairs[b, p, :p] = True for every label position p (the label attends only to
    itself).  Rows left with nothing to attend to keep their original scores."""

    pairs: torch.Tensor
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None

    def hooks(self, ctx):
        if self.pairs.shape != (ctx.batch, ctx.seq_len, ctx.seq_len):
            raise ValueError(f"pairs must be [batch, pos, pos] = {(ctx.batch, ctx.seq_len, ctx.seq_len)}, got {tuple(self.pairs.shape)}")
        pairs = self.pairs.bool()
        return [(site, _knockout_fn(pairs, ctx.heads(site, self.heads)))
                for site in expand_sites("attn.hook_attn_scores", self.layers, ctx.facts.n_layers)]


@dataclass
class ScaleAttention(Edit):
    """Multiply attention probabilities from ``from_positions`` to ``to_positions`` by ``factor``
    after the softmax, without renormalising."""

    from_positions: Positions
    to_positions: Positions
    factor: float | torch.Tensor
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None

    def hooks(self, ctx):
        pair = _pair_mask(ctx, self.from_positions, self.to_positions)
        out = []
        for site in expand_sites("attn.hook_pattern", self.layers, ctx.facts.n_layers):
            out.append((site, _scale_fn(pair, ctx.heads(site, self.heads), self.factor)))
        return out


def _scale_fn(pair, heads, factor):
    def fn(pattern):
        mask = pair.to(pattern.device)[:, None] & _head_mask(pattern.shape[1], heads, pattern.device)
        f = factor.to(pattern.device, pattern.dtype) if isinstance(factor, torch.Tensor) else factor
        return torch.where(mask, pattern * f, pattern)

    return fn


@dataclass
class ReweightAttention(Edit):
    """``factors[layer]`` [batch, head, q_pos, k_pos] multiplies that layer's attention
    probabilities elementwise after the softmax, no renormalisation; gradients flow into the
    factors (``Model.run(..., grad=True)``)."""

    factors: dict

    def hooks(self, ctx):
        out = []
        for layer, f in self.factors.items():
            want = (ctx.batch, ctx.facts.n_heads, ctx.seq_len, ctx.seq_len)
            if tuple(f.shape) != want:
                raise ValueError(f"factors[{layer}] must be [batch, head, pos, pos] = {want}, got {tuple(f.shape)}")
            site = expand_sites("attn.hook_pattern", [layer], ctx.facts.n_layers)[0]
            out.append((site, lambda pattern, f=f: pattern * f.to(pattern.device, pattern.dtype)))
        return out


@dataclass
class AddVector(Edit):
    """Add ``scale * vector`` to ``site`` at ``positions`` (all positions when None).

    ``vector`` broadcasts against one position of the site: [d_model] for residual sites,
    [head, d_head] (or [d_head] with ``heads``) for per-head sites.
    """

    site: str
    vector: torch.Tensor
    positions: Positions = None
    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None
    scale: float = 1.0

    def hooks(self, ctx):
        out = []
        for site in expand_sites(self.site, self.layers, ctx.facts.n_layers):
            _check_writable(site)
            if site.layout == "bhqk":
                raise ValueError("AddVector is for residual and per-head sites; use ScaleAttention/AttentionKnockout for patterns")
            out.append((site, _add_fn(site, self.vector, self.scale, ctx.heads(site, self.heads), ctx.positions(self.positions))))
        return out


def _add_fn(site, vector, scale, heads, pos):
    def fn(t):
        if vector.shape[-1] != t.shape[-1]:
            raise ValueError(f"AddVector {site.name}: the vector has width {vector.shape[-1]} but the site is {t.shape[-1]} wide "
                             f"(activation {tuple(t.shape)}); pass a vector of the site's last dimension")
        mask = selection_mask(t.shape, site.layout, heads, pos, device=t.device)
        v = vector.to(device=t.device, dtype=t.dtype)
        return t + mask * (scale * v)

    return fn
