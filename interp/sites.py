"""Sites: one vocabulary for where to read or write, following TransformerLens hook names.

A site is ``blocks.{layer}.{hook}`` for per-layer hooks or a global hook name.  Every engine
delivers a site's activation in the TransformerLens layout below, whatever module produced it:

=========================  ==========================  =======================================
hook                       layout                      notes
=========================  ==========================  =======================================
hook_resid_pre/mid/post    [batch, pos, d_model]       block input / after attn / block output
hook_attn_out, mlp_out     [batch, pos, d_model]
attn.hook_q, hook_rot_q    [batch, pos, head, d_head]  query heads; ``rot`` = after RoPE
attn.hook_k/v, hook_rot_k  [batch, pos, kv_head, d_head]  GQA key/value heads as they are
attn.hook_z                [batch, pos, head, d_head]  per-head output before W_O
attn.hook_result           [batch, pos, head, d_model] z projected through W_O (derived, read-only)
attn.hook_attn_scores      [batch, head, q_pos, k_pos] pre-softmax, mask included
attn.hook_pattern          [batch, head, q_pos, k_pos] post-softmax
hook_embed                 [batch, pos, d_model]
logits                     [batch, pos, vocab]
=========================  ==========================  =======================================

Selections: ``heads`` index the head axis (key/value heads for k/v); ``positions`` index the
position axis (the query axis for scores/patterns) and may differ per row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

# hook suffix -> layout.  "bpd": [b, pos, d]; "bphd": [b, pos, head, d]; "bhqk": [b, head, q, k]
BLOCK_HOOKS: dict[str, str] = {
    "hook_resid_pre": "bpd",
    "attn.hook_q": "bphd",
    "attn.hook_k": "bphd",
    "attn.hook_v": "bphd",
    "attn.hook_rot_q": "bphd",
    "attn.hook_rot_k": "bphd",
    "attn.hook_attn_scores": "bhqk",
    "attn.hook_pattern": "bhqk",
    "attn.hook_z": "bphd",
    "attn.hook_result": "bphd",
    "hook_attn_out": "bpd",
    "hook_resid_mid": "bpd",
    "hook_mlp_out": "bpd",
    "hook_resid_post": "bpd",
}
GLOBAL_HOOKS: dict[str, str] = {"hook_embed": "bpd", "logits": "bpd"}
KV_HOOKS = frozenset({"attn.hook_k", "attn.hook_v", "attn.hook_rot_k"})
DERIVED_HOOKS = frozenset({"attn.hook_result"})  # computed from hook_z; capture only
# Order in which the hooks fire inside one block: engines that must touch modules in execution
# order (nnsight) sort by it.
EXECUTION_ORDER = {name: i for i, name in enumerate(BLOCK_HOOKS)}

Positions = Union[None, int, Sequence[int], str, torch.Tensor]


@dataclass(frozen=True, order=True)
class Site:
    """A resolved site: ``layer`` is None for global hooks."""

    layer: int | None
    hook: str

    @property
    def name(self) -> str:
        return self.hook if self.layer is None else f"blocks.{self.layer}.{self.hook}"

    @property
    def layout(self) -> str:
        return GLOBAL_HOOKS[self.hook] if self.layer is None else BLOCK_HOOKS[self.hook]

    @property
    def is_kv(self) -> bool:
        return self.hook in KV_HOOKS

    def sort_key(self) -> tuple:
        """Execution order: embed, blocks in order (hooks in firing order), logits."""
        if self.layer is None:
            return (-1, 0) if self.hook == "hook_embed" else (10**9, 0)
        return (self.layer, EXECUTION_ORDER[self.hook])


def valid_site_names(n_layers: int | None = None) -> list[str]:
    layer = "{l}" if n_layers is None else f"{{0..{n_layers - 1}}}"
    return [*GLOBAL_HOOKS, *(f"blocks.{layer}.{h}" for h in BLOCK_HOOKS)]


def parse_site(name: str, n_layers: int) -> Site:
    """Parse ``blocks.3.attn.hook_pattern`` (or ``hook_embed``/``logits``) into a :class:`Site`.

    Raises ``ValueError`` listing the valid names when ``name`` is not one of them.
    """
    if name in GLOBAL_HOOKS:
        return Site(None, name)
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in BLOCK_HOOKS:
        layer = int(parts[1])
        if not 0 <= layer < n_layers:
            raise ValueError(f"site {name!r}: layer {layer} does not exist; the model has layers 0..{n_layers - 1}")
        return Site(layer, parts[2])
    raise ValueError(f"unknown site {name!r}; valid sites: {', '.join(valid_site_names(n_layers))}")


def expand_sites(spec: str, layers: int | Sequence[int] | None, n_layers: int) -> list[Site]:
    """Sites named by ``spec``: a full name, or a block hook suffix (``attn.hook_pattern``) taken at
    ``layers`` (all layers when None)."""
    if spec in BLOCK_HOOKS:
        if layers is None:
            layer_list = list(range(n_layers))
        elif isinstance(layers, int):
            layer_list = [layers]
        else:
            layer_list = list(layers)
        return [parse_site(f"blocks.{l}.{spec}", n_layers) for l in layer_list]
    if layers is not None:
        site = parse_site(spec, n_layers)
        raise ValueError(f"site {spec!r} already names its layer; drop layers= or pass the suffix {site.hook!r}")
    return [parse_site(spec, n_layers)]


def resolve_positions(
    positions: Positions, batch: int, seq_len: int, final: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Turn a position selection into a LongTensor [batch, n] of indices (None = all positions).

    Accepts an int (negative counts from the end of the padded row), a list of ints, ``"final"``
    (each row's last real token, needs ``final``), a LongTensor [n] or [batch, n], or a bool mask
    [batch, seq] with the same number of True entries in every row.
    """
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions != "final":
            raise ValueError(f"unknown positions {positions!r}: use 'final', an int, a list of ints or a tensor")
        if final is None:
            raise ValueError("positions='final' needs the batch's final positions: pass an IclBatch, or attention_mask")
        idx = final.reshape(batch, 1)
    elif isinstance(positions, int):
        idx = _in_range(torch.full((batch, 1), positions, dtype=torch.long), seq_len)
    elif isinstance(positions, torch.Tensor):
        if positions.dtype == torch.bool:
            if positions.shape != (batch, seq_len):
                raise ValueError(f"bool position mask must be [batch, seq] = {(batch, seq_len)}, got {tuple(positions.shape)}")
            counts = positions.sum(-1)
            if not bool((counts == counts[0]).all()):
                raise ValueError("bool position mask must select the same number of positions in every row")
            idx = positions.nonzero()[:, 1].reshape(batch, -1)
        else:
            idx = positions.long()
            if idx.ndim == 1:
                idx = idx.unsqueeze(0).expand(batch, -1)
            if idx.ndim != 2 or idx.shape[0] != batch:
                raise ValueError(f"position tensor must be [n] or [batch={batch}, n], got {tuple(positions.shape)}")
            idx = _in_range(idx, seq_len)
    else:
        idx = _in_range(torch.tensor([int(p) for p in positions], dtype=torch.long), seq_len).unsqueeze(0).expand(batch, -1)
    return idx


def _in_range(idx: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Positions in -seq_len..seq_len-1 (negative count from the end), as 0..seq_len-1; anything
    else is an error naming the offending positions (never wrapped around)."""
    bad = (idx < -seq_len) | (idx >= seq_len)
    if bool(bad.any()):
        raise ValueError(f"positions {sorted(set(idx[bad].tolist()))} are out of range for a sequence of {seq_len} tokens: "
                         f"use 0..{seq_len - 1}, or -{seq_len}..-1 to count from the end")
    return idx % seq_len


def head_index(heads: int | Sequence[int] | None, n: int) -> torch.Tensor | None:
    if heads is None:
        return None
    idx = torch.tensor([heads] if isinstance(heads, int) else list(heads), dtype=torch.long)
    if bool((idx < 0).any()) or bool((idx >= n).any()):
        raise ValueError(f"head index out of range: the site has {n} heads, got {idx.tolist()}")
    return idx


def select(t: torch.Tensor, layout: str, heads: torch.Tensor | None, pos: torch.Tensor | None) -> torch.Tensor:
    """Slice ``t`` (in ``layout``) to the chosen heads and positions; positions gathered per row."""
    if layout == "bhqk":
        if heads is not None:
            t = t[:, heads.to(t.device)]
        if pos is not None:
            idx = pos.to(t.device)[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
            t = t.gather(2, idx)
        return t
    if pos is not None:
        idx = pos.to(t.device).reshape(*pos.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:])
        t = t.gather(1, idx)
    if heads is not None and layout == "bphd":
        t = t[:, :, heads.to(t.device)]
    return t


def selection_mask(shape: Sequence[int], layout: str, heads: torch.Tensor | None, pos: torch.Tensor | None, device=None) -> torch.Tensor:
    """Bool mask of ``shape`` that is True on the selected heads and positions."""
    b = shape[0]
    if layout == "bhqk":
        head_ax, pos_ax = 1, 2
    else:
        head_ax, pos_ax = (2 if layout == "bphd" else None), 1
    mask = torch.ones(shape, dtype=torch.bool, device=device)
    if pos is not None:
        pm = torch.zeros(b, shape[pos_ax], dtype=torch.bool, device=device)
        pm.scatter_(1, pos.to(device), True)
        view = [b] + [1] * (len(shape) - 1)
        view[pos_ax] = shape[pos_ax]
        mask &= pm.reshape(view)
    if heads is not None and head_ax is not None:
        hm = torch.zeros(shape[head_ax], dtype=torch.bool, device=device)
        hm[heads.to(device)] = True
        view = [1] * len(shape)
        view[head_ax] = shape[head_ax]
        mask &= hm.reshape(view)
    return mask
