"""Engine for the project's own small models: a ``transformer_lens.HookedRootModule`` whose
hook points carry the site names of :mod:`interp.sites` (``logits`` is ``unembed.hook_out``).

The in-context linear-regression transformers (:mod:`interp.linreg.models`) are built this way,
so capture, edits, patching through edits, gradients and probes reach them through the same
:class:`~interp.model.Model` facade as a pretrained LM.  Their inputs are real vectors
[batch, pos, d_in] instead of token ids; the facade passes them through unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch

from interp.engines.base import Engine, HookFn, ModelFacts
from interp.sites import Site

_GLOBAL_HOOK_NAMES = {"logits": "unembed.hook_out", "hook_embed": "hook_embed"}


class HookedModuleEngine(Engine):
    name = "hooked-module"

    def __init__(self, module: torch.nn.Module):
        if not hasattr(module, "hooks") or not hasattr(module, "hook_dict"):
            raise TypeError(f"{type(module).__name__} is not a HookedRootModule (build it with HookPoints and call setup())")
        self.module = module
        self.tokenizer = None
        self.facts = ModelFacts(n_layers=module.n_layers, n_heads=module.n_heads, n_kv_heads=module.n_heads, d_head=module.d_head,
                                d_model=module.d_model, n_ctx=module.n_ctx, d_vocab=getattr(module, "d_vocab", 1))

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.module

    def hook_name(self, site: Site) -> str:
        return _GLOBAL_HOOK_NAMES[site.hook] if site.layer is None else site.name

    def check_sites(self, sites: Sequence[Site]) -> None:
        missing = sorted({self.hook_name(s) for s in sites} - set(self.module.hook_dict))
        if missing:
            raise ValueError(f"{type(self.module).__name__} has no hook point(s) {missing[:4]}; its sites are "
                             f"{sorted(self.module.hook_dict)[:8]}...")

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                keep: int | torch.Tensor | None = None) -> torch.Tensor:
        fwd_hooks = [(self.hook_name(site), _hook(fn)) for site, fn in hooks]
        with self.module.hooks(fwd_hooks=fwd_hooks):
            out = self.module(input_ids)
        if keep is None:
            return out
        return out[:, -keep:] if isinstance(keep, int) else out[:, keep.to(out.device)]

    def W_O(self, layer: int) -> torch.Tensor:
        return self.module.W_O(layer)


def _hook(fn: HookFn):
    def hook(tensor, hook):
        return fn(tensor)

    return hook
