"""The tapped attention function: eager attention with named points for the attention internals.

Every family in :mod:`interp.architectures` calls its attention through transformers'
``AttentionInterface`` with the queries and keys as attention consumes them (after q/k norms and
rotary), the mask, the scaling and, for Gemma, the score softcap.  Registering one function under
:data:`TAPPED` and setting a model's ``config._attn_implementation`` to it gives the same four
points on every family:

- ``rot_q`` / ``rot_k``: query [b, head, q, d] and key [b, kv_head, k, d] received by attention;
- ``scores``: s = softcap(q·kᵀ × scaling) + mask, pre-softmax (softcap(x) = c·tanh(x / c));
- ``pattern``: softmax(s), post-softmax;

and the output softmax(s) · v, the same computation as each family's eager function (float32
scores).  Each point is a module-level identity function (``tap_rot_q`` ...): plain-PyTorch code
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


def tapped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    """Eager attention with tap points; signature of transformers' attention functions."""
    query = tap_rot_q(module, query)
    key = tap_rot_k(module, key)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    # grouped-query attention without repeating keys/values: the g query heads that share a
    # key/value head (head i reads kv head i // g) are stacked along the query axis
    b, n_heads, q_len, d = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    g = n_heads // n_kv
    q = query.float().reshape(b, n_kv, g * q_len, d)
    raw = torch.matmul(q, key.float().transpose(2, 3)).reshape(b, n_heads, q_len, k_len) * scaling
    if softcap is not None:
        raw = torch.tanh(raw / softcap) * softcap
    if attention_mask is not None:
        raw = raw + attention_mask[:, :, :, :k_len].float()
    scores = tap_scores(module, raw)
    pattern = tap_pattern(module, torch.nn.functional.softmax(scores, dim=-1).to(value.dtype))
    if dropout and module.training:
        pattern = torch.nn.functional.dropout(pattern, p=dropout, training=True)
    out = torch.matmul(pattern.reshape(b, n_kv, g * q_len, k_len), value).reshape(b, n_heads, q_len, -1)
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
