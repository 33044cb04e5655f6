"""Run a decoder from layer L, on all positions or only on the last ones, reusing cached state.

Activation patching changes nothing below the patched layer, and nothing at positions before the
first patched position (attention is causal).  So a patched run can start from the corrupted
run's residual stream at layer L, and when only the final position is patched, it can run that one
position through layers L..N-1, reading every earlier position's keys and values from the
corrupted run's cache.  TransformerLens's ``start_at_layer`` still executes blocks 0..L-1, so this
runner calls the decoder layers of a plain transformers twin (:func:`interp.plain.plain_twin`,
same weight tensors) itself.  Supports Llama-style decoders (``model.layers``, ``model.norm``,
``model.rotary_emb``, ``lm_head``).

Edits inside the run are torch hooks on the twin, removed when the call returns or raises:
``attn.hook_z`` (pre-hook on ``o_proj``), ``hook_attn_out`` and ``hook_mlp_out``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from interp.model import position_ids_from_mask
from interp.plain import plain_twin

EditFn = Callable[[torch.Tensor], torch.Tensor]
RUNNER_SITES = ("attn.hook_z", "hook_attn_out", "hook_mlp_out")


@dataclass
class PrefixKV:
    """Keys/values of the first P positions at every layer, [batch, kv_head, P, d_head] each
    (post-RoPE keys, as attention consumes them).  Acts as the ``past_key_values`` object that
    transformers' attention calls ``update`` on: it prepends the prefix without storing anything,
    so one PrefixKV serves any number of runs."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if k.shape[0] != key_states.shape[0]:  # variants stacked along the batch
            reps = key_states.shape[0] // k.shape[0]
            k, v = k.repeat(reps, 1, 1, 1), v.repeat(reps, 1, 1, 1)
        return torch.cat([k, key_states], 2), torch.cat([v, value_states], 2)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


@dataclass
class CorruptedState:
    """What patched runs reuse from one unpatched run: the residual stream entering every layer
    [layer, batch, pos, d_model], every layer's keys/values, and the logits."""

    resid_pre: torch.Tensor
    resid_final: torch.Tensor  # the residual leaving the last layer (before the final norm)
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def prefix(self, length: int) -> PrefixKV:
        return PrefixKV([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values])


class DecoderRunner:
    def __init__(self, hf_model: torch.nn.Module):
        self.twin = plain_twin(hf_model)
        inner = self.twin.model
        if not all(hasattr(inner, a) for a in ("layers", "norm", "rotary_emb")):
            raise NotImplementedError(
                f"{type(self.twin).__name__} is not a Llama-style decoder: the patching fast path needs "
                "model.layers, model.norm and model.rotary_emb"
            )
        self.layers = inner.layers
        cfg = self.twin.config
        self.n_heads = cfg.num_attention_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads

    @torch.no_grad()
    def corrupted_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> CorruptedState:
        """One full forward that records what patched runs start from."""
        position_ids = position_ids_from_mask(attention_mask)
        seen = {}
        handle = self.twin.model.norm.register_forward_pre_hook(lambda m, args: seen.setdefault("final", args[0]))
        try:
            out = self.twin(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, output_hidden_states=True)
        finally:
            handle.remove()
        cache = out.past_key_values
        keys = [cache.layers[i].keys for i in range(len(self.layers))]
        values = [cache.layers[i].values for i in range(len(self.layers))]
        resid_pre = torch.stack(out.hidden_states[: len(self.layers)])
        return CorruptedState(resid_pre, seen["final"], keys, values, out.logits, attention_mask, position_ids)

    def resid_post(self, state: CorruptedState, layer: int) -> torch.Tensor:
        """The residual leaving ``layer`` in ``state``: [batch, pos, d_model]."""
        return state.resid_pre[layer + 1] if layer + 1 < len(self.layers) else state.resid_final

    @torch.no_grad()
    def run_with_final_resid(self, state: CorruptedState, layer: int, resid: torch.Tensor) -> torch.Tensor:
        """Final-position logits [batch, vocab] when the residual leaving ``layer`` at the last
        position (left padding) is set to ``resid`` [batch, d_model]; only that position is
        recomputed, through layers ``layer + 1``.. (task vectors, function vectors)."""
        t = state.attention_mask.shape[1]
        logits = self.run_from(
            layer + 1, resid[:, None].to(state.resid_pre.dtype), state.attention_mask, state.position_ids[:, -1:],
            prefix=state.prefix(t - 1), last_only=True,
        )
        return logits[:, -1]

    def run_from(
        self,
        layer: int,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        prefix: PrefixKV | None = None,
        edits: Sequence[tuple[int, str, EditFn]] = (),
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits of running ``hidden`` [batch, q, d_model] (the residual entering ``layer``)
        through layers ``layer``.. and the head.

        ``position_ids`` [batch, q] are the absolute positions of the q rows; ``attention_mask``
        [batch, P + q] covers the prefix and the rows; ``prefix`` holds the keys/values of the
        first P positions.  ``edits``: (layer, site, fn) with site in RUNNER_SITES.
        ``last_only``: unembed only the last row (the vocabulary projection is the largest matmul
        of a small model; metrics read the final position) and return [batch, 1, vocab].
        """
        batch, q_len, _ = hidden.shape
        p_len = prefix.length if prefix is not None else 0
        if attention_mask.shape != (batch, p_len + q_len):
            raise ValueError(f"attention_mask must be [batch, prefix + rows] = {(batch, p_len + q_len)}, got {tuple(attention_mask.shape)}")
        mask4d = _additive_mask(attention_mask, q_len, hidden.dtype)
        position_embeddings = self.twin.model.rotary_emb(hidden, position_ids=position_ids)
        with self._edits(edits):
            for decoder_layer in self.layers[layer:]:
                hidden = decoder_layer(
                    hidden, attention_mask=mask4d, position_embeddings=position_embeddings, position_ids=position_ids,
                    past_key_values=prefix, use_cache=False,
                )
            if last_only:
                hidden = hidden[:, -1:]
            return self.twin.lm_head(self.twin.model.norm(hidden))

    @contextmanager
    def _edits(self, edits):
        handles = []
        try:
            for layer, site, fn in edits:
                handles.append(self._register(layer, site, fn))
            yield
        finally:
            for h in handles:
                h.remove()

    def _register(self, layer: int, site: str, fn: EditFn):
        block = self.layers[layer]
        if site == "attn.hook_z":
            def pre_hook(module, args):
                z = args[0]
                new = fn(z.view(*z.shape[:-1], self.n_heads, self.d_head))
                return (new.reshape(z.shape), *args[1:])

            return block.self_attn.o_proj.register_forward_pre_hook(pre_hook)
        if site == "hook_attn_out":
            return block.self_attn.register_forward_hook(lambda m, a, out: (fn(out[0]), *out[1:]))
        if site == "hook_mlp_out":
            return block.mlp.register_forward_hook(lambda m, a, out: fn(out))
        raise ValueError(f"the layer runner edits {RUNNER_SITES}, not {site!r}")


def _additive_mask(attention_mask: torch.Tensor, q_len: int, dtype) -> torch.Tensor:
    """Eager-attention mask [batch, 1, q, k]: 0 where row i (absolute position k_len - q + i) may
    attend to key j (causal and not padding), the dtype's minimum elsewhere."""
    batch, k_len = attention_mask.shape
    rows = torch.arange(k_len - q_len, k_len, device=attention_mask.device)[:, None]
    cols = torch.arange(k_len, device=attention_mask.device)[None, :]
    allowed = (cols <= rows)[None] & attention_mask.bool()[:, None, :]
    mask = torch.zeros(batch, 1, q_len, k_len, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
