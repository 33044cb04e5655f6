"""The tapped attention function: eager attention with named points for the attention internals.

Every family in :mod:`interp.architectures` calls its attention through transformers'
``AttentionInterface`` with the queries and keys as attention consumes them (after q/k norms and
rotary), the mask, the scaling and, for Gemma, the score softcap.  Registering one function under
:data:`TAPPED` and setting a model's ``config._attn_implementation`` to it gives the same four
points on every family:

- ``rot_q`` / ``rot_k``: query [b, head, q, d] and key [b, kv_head, k, d] received by attention;
- ``scores``: s = softcap(q·kᵀ × scaling) + mask, pre-softmax (softcap(x) = c·tanh(x / c));
- ``pattern``: softmax(s), post-softmax;

and the output softmax(s) · v, the same computation as each family's eager function (scores in
float32, or float64 for a float64 model).  Each point is a module-level identity function (``tap_rot_q`` ...): plain-PyTorch code
routes it through :func:`tapping` (a callback per attention module, removed on exit), and nnsight
reaches it as the ``.source`` operation of the same name.  No user model is switched to it: only
the project's own plain twins are.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable

import torch

TAPPED = "icl_interp_tapped"
POINTS = ("rot_q", "rot_k", "scores", "pattern")

_local = threading.local()


def _taps() -> dict:
    if not hasattr(_local, "taps"):
        _local.taps = {}
    return _local.taps


@contextmanager
def tapping(callbacks: dict[int, Callable[[str, torch.Tensor], torch.Tensor | None]]):
    """Route the tap points of attention modules through callbacks while the block runs:
    ``callbacks[id(attention_module)](point, value)`` returns None (read) or a replacement."""
    taps = _taps()
    added = [k for k in callbacks if k not in taps]
    taps.update(callbacks)
    try:
        yield
    finally:
        for k in added:
            taps.pop(k, None)


def _tap(module, point: str, value: torch.Tensor) -> torch.Tensor:
    fn = _taps().get(id(module))
    if fn is None:
        return value
    out = fn(point, value)
    return value if out is None else out


def tap_rot_q(module, value):
    return _tap(module, "rot_q", value)


def tap_rot_k(module, value):
    return _tap(module, "rot_k", value)


def tap_scores(module, value):
    return _tap(module, "scores", value)


def tap_pattern(module, value):
    return _tap(module, "pattern", value)


def stash_prefix(keys: torch.Tensor, values: torch.Tensor) -> None:
    """Called by a cache layer that holds a fixed prefix (:mod:`interp.patching.runner`) in place
    of concatenating it: the next attention call reads these keys/values [B, kv_head, P, d] before
    the new ones, for every variant stacked along its batch (row v·B + b reads prefix row b)."""
    _local.prefix = (keys, values)


def clear_prefix() -> None:
    """Drop a stashed prefix (the runner calls it around each forward, also when one raises)."""
    _local.prefix = None


def after_prefix(prefix: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """[prefix; new] along positions, the prefix's B rows repeated over the variants stacked along
    the batch of ``new`` (row v·B + b reads prefix row b), written once into one new tensor."""
    (b, heads, p, d), rows = prefix.shape, new.shape[0]
    out = torch.empty(rows, heads, p + new.shape[2], d, dtype=new.dtype, device=new.device)
    out.view(rows // b, b, heads, -1, d)[:, :, :, :p] = prefix.to(new.dtype)
    out[:, :, p:] = new
    return out


def _score_dtype(query: torch.Tensor) -> torch.dtype:
    """Scores in float32 at least (as transformers' eager functions), float64 for a float64 model."""
    return torch.promote_types(query.dtype, torch.float32)


def tapped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """Eager attention with tap points; signature of transformers' attention functions."""
    prefix, _local.prefix = getattr(_local, "prefix", None), None
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if prefix is not None:
        if id(module) not in _taps():  # nothing reads the keys: the prefix is never repeated
            return _attention_after_prefix(module, query, key, value, *prefix, attention_mask, scaling, dropout, softcap)
        key, value = after_prefix(prefix[0], key), after_prefix(prefix[1], value)
    query = tap_rot_q(module, query)
    key = tap_rot_k(module, key)
    # grouped-query attention without repeating keys/values: the g query heads that share a
    # key/value head (head i reads kv head i // g) are stacked along the query axis
    b, n_heads, q_len, d = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    g = n_heads // n_kv
    dt = _score_dtype(query)
    q = query.to(dt).reshape(b, n_kv, g * q_len, d)
    raw = torch.matmul(q, key.to(dt).transpose(2, 3)).reshape(b, n_heads, q_len, k_len) * scaling
    if softcap is not None:
        raw = torch.tanh(raw / softcap) * softcap
    if attention_mask is not None:
        raw = raw + attention_mask[:, :, :, :k_len].to(dt)
    scores = tap_scores(module, raw)
    pattern = tap_pattern(module, torch.nn.functional.softmax(scores, dim=-1).to(value.dtype))
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout, training=True)
    out = torch.matmul(pattern.reshape(b, n_kv, g * q_len, k_len), value).reshape(b, n_heads, q_len, -1)
    return out.transpose(1, 2).contiguous(), pattern


def _attention_after_prefix(module, query, key, value, pk, pv, attention_mask, scaling, dropout, softcap):
    """:func:`tapped_attention` over [prefix; new] keys without materialising the prefix per row:
    the queries of the V variants of each prefix row are stacked along the query axis against that
    row's prefix keys (one matmul per prefix row), and against their own new keys as usual.  Its
    softcap / mask / softmax steps repeat :func:`tapped_attention`'s on purpose: nnsight reaches the
    tap points as operations of that function's own source, so they cannot move into a helper."""
    rows, n_heads, q_len, d = query.shape
    b, n_kv, p_len, _ = pk.shape
    v, g = rows // b, n_heads // n_kv

    def fold(t):  # [V·B, kv, g·q, x] -> [B, kv, V·g·q, x]
        return t.reshape(v, b, n_kv, g * q_len, t.shape[-1]).permute(1, 2, 0, 3, 4).reshape(b, n_kv, v * g * q_len, t.shape[-1])

    def unfold(t):  # [B, kv, V·g·q, x] -> [V·B, head, q, x]
        return t.reshape(b, n_kv, v, g * q_len, t.shape[-1]).permute(2, 0, 1, 3, 4).reshape(rows, n_heads, q_len, t.shape[-1])

    dt = _score_dtype(query)
    q = query.to(dt).reshape(rows, n_kv, g * q_len, d)
    raw = torch.cat([unfold(torch.matmul(fold(q), pk.to(dt).transpose(2, 3))),
                     torch.matmul(q, key.to(dt).transpose(2, 3)).reshape(rows, n_heads, q_len, -1)], -1) * scaling
    if softcap is not None:
        raw = torch.tanh(raw / softcap) * softcap
    if attention_mask is not None:
        raw = raw + attention_mask[:, :, :, :raw.shape[-1]].to(dt)
    pattern = torch.nn.functional.softmax(raw, dim=-1).to(value.dtype)
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout, training=True)
    old, new = pattern[..., :p_len], pattern[..., p_len:]
    out = unfold(torch.matmul(fold(old.reshape(rows, n_kv, g * q_len, p_len)), pv.to(value.dtype)))
    out = out + torch.matmul(new.reshape(rows, n_kv, g * q_len, -1), value).reshape(rows, n_heads, q_len, -1)
    return out.transpose(1, 2).contiguous(), pattern


def register() -> str:
    """Register :data:`TAPPED` with transformers (attention and mask interfaces); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(TAPPED, tapped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TAPPED, eager_mask)
    return TAPPED


def set_implementation(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Set ``config._attn_implementation`` on every config inside ``model`` (sub-configs too)."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = name
    return model


def use_tapped(model: torch.nn.Module) -> torch.nn.Module:
    """Switch one of the project's own models (a plain twin) to the tapped attention."""
    register()
    return set_implementation(model, TAPPED)
