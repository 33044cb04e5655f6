"""The plain-PyTorch engine: torch hooks on a plain transformers twin, through the architecture table.

Neither TransformerLens nor nnsight is involved: the twin (:func:`interp.plain.plain_twin`, same
weight tensors as the model it was made from) runs transformers' own forward with the tapped eager
attention of :mod:`interp.attention`, and sites are torch hooks (:mod:`interp.torch_sites`).  It is

- the independent reference ``verify`` and the tests compare both engines against, and
- what the fast paths (:mod:`interp.patching.runner`, :mod:`interp.prefix_cache`) run on.

A capture or edit whose hook did not fire raises, naming the site.
"""
from __future__ import annotations

from typing import Sequence

import torch

from interp.architectures import architecture_of
from interp.attention import use_tapped
from interp.engines.base import Engine, HookFn, facts_from_hf_config
from interp.sites import Site
from interp.torch_sites import check_site_exists, installed


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, hf_model: torch.nn.Module, tokenizer=None):
        from interp.plain import plain_twin

        self.arch = architecture_of(hf_model)
        self.twin = use_tapped(plain_twin(hf_model))
        self.tokenizer = tokenizer
        self.facts = facts_from_hf_config(self.twin.config)
        self.served_by = "torch hooks on a plain eager twin (shared weights, tapped attention)"

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.twin

    def check_sites(self, sites: Sequence[Site]) -> None:
        for s in sites:
            check_site_exists(self.arch, self.twin.config, s)

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                keep: int | torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if keep is None else {"logits_to_keep": keep}
        with installed(self.twin, self.arch, self.facts, hooks) as hs:
            out = self.twin(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra)
        raise_unfired(hooks, hs.fired, self.name)
        return out.logits

    def W_O(self, layer: int) -> torch.Tensor:
        return self.arch.W_O(self.twin, layer, self.facts.n_heads, self.facts.d_head)

    def b_O(self, layer: int) -> torch.Tensor | None:
        b = self.arch.b_O(self.twin, layer)
        return None if b is None or not bool(b.any()) else b


def raise_unfired(hooks, fired: set[str], engine: str) -> None:
    """Raise when a requested site's hook never ran (a site this model never computes)."""
    missing = sorted({site.name for site, _ in hooks} - set(fired))
    if missing:
        raise RuntimeError(
            f"the {engine} engine ran, but the hook(s) for {missing[:4]}{'...' if len(missing) > 4 else ''} never fired: this "
            "model does not compute those sites in that form, so nothing was captured or edited there"
        )
