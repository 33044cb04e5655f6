"""TransformerLens 4 engine: a ``TransformerBridge`` around the transformers model.

TransformerLens names are the site vocabulary, so sites map onto hook points one to one
(``logits`` is ``unembed.hook_out``).  Hooks are added with ``bridge.hooks(...)``, which removes
exactly the hooks it added when the call returns or raises; hooks a user attached stay.

``boot_transformers`` converts the model it is given in place (eager attention, bridge
submodules) and rewrites the tokenizer's special tokens, so a model the user passed in is
deep-copied first and the bridge always gets a copy of the tokenizer: the user's objects keep
behaving as before.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from interp.engines.base import Engine, HookFn, ModelFacts
from interp.sites import Site

_GLOBAL_HOOK_NAMES = {"logits": "unembed.hook_out", "hook_embed": "hook_embed"}


class TransformerLensEngine(Engine):
    name = "transformer-lens"

    def __init__(self, bridge, tokenizer=None):
        self.bridge = bridge
        cfg = bridge.cfg
        self.tokenizer = tokenizer if tokenizer is not None else bridge.tokenizer
        self.facts = ModelFacts(
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            n_kv_heads=getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
            d_head=cfg.d_head,
            d_model=cfg.d_model,
            n_ctx=cfg.n_ctx,
            d_vocab=cfg.d_vocab,
        )

    @classmethod
    def from_hf(cls, hf_model, tokenizer, *, copy_model: bool = True, name: str = "model") -> "TransformerLensEngine":
        """Boot a bridge around ``hf_model`` (a deep copy unless ``copy_model=False``)."""
        from transformer_lens.model_bridge import TransformerBridge

        model = copy.deepcopy(hf_model) if copy_model else hf_model
        # booting also rewrites the tokenizer (padding side, bos/eos/pad tokens): give it a copy
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=model, tokenizer=copy.deepcopy(tokenizer), dtype=next(model.parameters()).dtype
        )
        bridge.eval()
        return cls(bridge, tokenizer)

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.bridge.original_model

    def hook_name(self, site: Site) -> str:
        return _GLOBAL_HOOK_NAMES[site.hook] if site.layer is None else site.name

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                last_only: bool = False) -> torch.Tensor:
        fwd_hooks = [(self.hook_name(site), _tl_hook(fn)) for site, fn in hooks]
        extra = {"logits_to_keep": 1} if last_only else {}
        with self.bridge.hooks(fwd_hooks=fwd_hooks):
            return self.bridge(input_ids, attention_mask=attention_mask, position_ids=position_ids, **extra)

    def W_O(self, layer: int) -> torch.Tensor:
        return self.bridge.blocks[layer].attn.W_O

    def b_O(self, layer: int) -> torch.Tensor | None:
        b = getattr(self.bridge.blocks[layer].attn, "b_O", None)
        return None if b is None or not bool(b.any()) else b


def _tl_hook(fn: HookFn):
    def hook(tensor, hook):  # TransformerLens calls hook(tensor, hook=HookPoint)
        return fn(tensor)

    return hook
