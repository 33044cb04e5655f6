"""What every engine provides to the model facade.

An engine runs one forward pass of a causal LM with *site hooks*: functions that receive a site's
activation in the TransformerLens layout of :mod:`interp.sites` and return either None (read only)
or a replacement tensor (an edit).  That one verb is enough for capture, every edit, patching and
gradients, so the facade and the analyses never see which library ran.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from interp.sites import Site

HookFn = Callable[[torch.Tensor], "torch.Tensor | None"]
ATTENTION_WEIGHT_HOOKS = frozenset({"attn.hook_attn_scores", "attn.hook_pattern"})


@dataclass(frozen=True)
class ModelFacts:
    """Shape facts analyses need, read from the engine's config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    n_ctx: int
    d_vocab: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (GQA); 1 for ordinary multi-head attention."""
        return self.n_heads // self.n_kv_heads


class Engine(ABC):
    """One forward pass with site hooks; see the module docstring."""

    name: str
    facts: ModelFacts
    tokenizer: object

    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        hooks: Sequence[tuple[Site, HookFn]],
        store: dict | None = None,
        keep: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model and return logits [batch, pos, vocab]; hooks fire in the order given
        for the same site and are removed when the call returns or raises.  ``store`` is the dict
        the capture hooks write into; an engine that runs remotely must bring it back filled.
        ``keep``: unembed only these positions, as transformers' ``logits_to_keep`` (an int k: the
        last k positions; a 1-D LongTensor: those positions), returning [batch, kept, vocab]; the
        caller never sets it with a hook on ``logits``."""

    @abstractmethod
    def W_O(self, layer: int) -> torch.Tensor:
        """Output projection of ``layer`` split per head: [head, d_head, d_model]."""

    def b_O(self, layer: int) -> torch.Tensor | None:
        """Output-projection bias of ``layer`` (added once, not per head), or None."""
        return None

    @property
    @abstractmethod
    def hf_model(self) -> torch.nn.Module:
        """The underlying transformers model (for parameters, fine-tuning and hashing)."""

    def check_sites(self, sites: Sequence[Site]) -> None:
        """Raise if this engine cannot reach one of ``sites``."""


def facts_from_hf_config(config, n_ctx: int | None = None) -> ModelFacts:
    """ModelFacts from a transformers config (Llama-style field names)."""
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    return ModelFacts(
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_head=getattr(config, "head_dim", None) or d_model // n_heads,
        d_model=d_model,
        n_ctx=n_ctx or getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048),
        d_vocab=config.vocab_size,
    )


def apply_hooks(value: torch.Tensor, fns: Sequence[HookFn]) -> torch.Tensor | None:
    """Run ``fns`` in order on ``value``; return the final tensor if any fn replaced it."""
    changed = False
    for fn in fns:
        out = fn(value)
        if out is not None:
            value, changed = out, True
    return value if changed else None
