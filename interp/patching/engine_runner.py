"""The runner's interface over full forwards of the engine: the path for a family the
architecture table does not describe (so :class:`~interp.patching.runner.DecoderRunner` cannot
serve it) but the engine does (TransformerLens runs Bloom, Falcon, StableLM, ...).

Every call is one full forward of the engine on whole prompts, which gives the same numbers as the
fast path's shortcuts, because attention is causal:

- "start at layer L with residual h at positions ≥ P" = the prompt's tokens with
  ``blocks.L.hook_resid_pre`` set to h at positions ≥ P (positions < P are the prefix's own);
- "run tokens after a cached prefix" = the prefix's tokens followed by the new ones;
- an edit (layer, hook, fn) sees the rows the fast path would give it: positions ≥ P (queries
  ≥ P for attention patterns and scores), and what it returns replaces those rows.

Slower than the fast path (the whole prompt runs every time), never a different number.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interp.edits import Edit
from interp.model import position_ids_from_mask
from interp.patching.runner import EditFn, RunnerBase, check_columns
from interp.sites import Site


@dataclass
class PromptPrefix:
    """The first ``length`` tokens of the prompts (what the fast path keeps as keys/values)."""

    input_ids: torch.Tensor  # [batch, P]
    attention_mask: torch.Tensor  # [batch, P]

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]

    def expand(self, batch: int) -> "PromptPrefix":
        reps = batch // self.input_ids.shape[0]
        return PromptPrefix(self.input_ids.repeat(reps, 1), self.attention_mask.repeat(reps, 1))


@dataclass
class EngineState:
    """What runs reuse from one unpatched run (as :class:`~interp.patching.runner.CorruptedState`)."""

    input_ids: torch.Tensor
    resid_pre: torch.Tensor
    resid_final: torch.Tensor
    logits: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def prefix(self, length: int) -> PromptPrefix:
        return PromptPrefix(self.input_ids[:, :length], self.attention_mask[:, :length])


class _RowsEdit(Edit):
    """(site, fn) applied to the rows at positions ≥ ``start`` only."""

    def __init__(self, site: Site, fn: EditFn, start: int):
        self.site, self.fn, self.start = site, fn, start

    def hooks(self, ctx):
        axis = 2 if self.site.layout == "bhqk" else 1
        start, fn = self.start, self.fn

        def apply(t):
            rows = t.narrow(axis, start, t.shape[axis] - start)
            out = fn(rows)
            if out is None or out is rows:
                return t
            return torch.cat([t.narrow(axis, 0, start), out.to(t.dtype)], dim=axis)

        return [(self.site, apply)]


def _columns(logits: torch.Tensor, columns) -> torch.Tensor:
    return logits if columns is None else logits[..., torch.as_tensor(columns, dtype=torch.long, device=logits.device)]


class EngineRunner(RunnerBase):
    """The runner interface (``corrupted_state``, ``run_from``, ``run_tokens``; ``resid_post`` and
    ``run_with_final_resid`` from :class:`RunnerBase`) over full forwards of a
    :class:`~interp.model.Model`."""

    path = "engine"
    description = "engine path: full forwards through the engine (the family is outside the architecture table)"

    def __init__(self, model):
        self.model = model
        self.n_layers = model.n_layers

    @torch.no_grad()
    def corrupted_state(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, columns=None) -> EngineState:
        n = self.n_layers
        sites = [f"blocks.{l}.hook_resid_pre" for l in range(n)] + [f"blocks.{n - 1}.hook_resid_post"]
        out = self.model.run(input_ids, attention_mask=attention_mask, capture=sites)
        resid_pre = torch.stack([out.acts[f"blocks.{l}.hook_resid_pre"] for l in range(n)])
        logits = _columns(out.logits[:, -1:], columns)
        return EngineState(input_ids, resid_pre, out.acts[sites[-1]], logits, attention_mask, position_ids_from_mask(attention_mask))

    @torch.no_grad()
    def states(self, clean_ids: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, capture=(), columns=None):
        """As :meth:`DecoderRunner.states`, from two forwards of the engine."""
        out = self.model.run(clean_ids, attention_mask=attention_mask, capture=list(capture), logits="final")
        return self.corrupted_state(input_ids, attention_mask, columns), _columns(out.logits, columns), {k: out.acts[k] for k in capture}

    def run_from(self, layer: int, hidden: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
                 prefix: PromptPrefix | None = None, edits: Sequence[tuple[int, str, EditFn]] = (), last_only: bool = False,
                 columns: torch.Tensor | None = None, active=None) -> torch.Tensor:
        """As :meth:`DecoderRunner.run_from`: ``hidden`` enters ``layer`` at the rows after
        ``prefix``; returns the rows' logits (``columns``: those vocabulary ids of the last row).
        ``active`` is not used: every row runs every layer (the same logits)."""
        self._check_edit_layers(edits, layer)
        check_columns(columns, last_only)
        batch, q = hidden.shape[:2]
        start = prefix.length if prefix is not None else 0
        filler = torch.full((batch, q), self.model.pad_token_id, dtype=torch.long, device=hidden.device)
        ids = filler if prefix is None else torch.cat([prefix.expand(batch).input_ids.to(hidden.device), filler], dim=1)
        site = Site(layer, "hook_resid_pre") if layer < self.n_layers else Site(self.n_layers - 1, "hook_resid_post")
        write = _RowsEdit(site, lambda rows: hidden, start)
        logits = self._run(ids, attention_mask, [write], edits, start, last_only)
        return _columns(logits, columns)

    def run_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, *,
                   prefix: PromptPrefix | None = None, edits: Sequence[tuple[int, str, EditFn]] = (), last_only: bool = False,
                   at: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`DecoderRunner.run_tokens`: the rows' tokens after ``prefix``."""
        if at is not None and last_only:
            raise ValueError("run_tokens takes last_only or at, not both")
        start = prefix.length if prefix is not None else 0
        ids = input_ids if prefix is None else torch.cat([prefix.expand(input_ids.shape[0]).input_ids.to(input_ids.device), input_ids], 1)
        logits = self._run(ids, attention_mask, [], edits, start, last_only)
        if at is None:
            return logits
        at = torch.as_tensor(at, dtype=torch.long, device=logits.device)
        return logits[torch.arange(logits.shape[0], device=logits.device), at][:, None]

    def _run(self, ids, attention_mask, first: list, edits, start: int, last_only: bool) -> torch.Tensor:
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask must be [batch, prefix + rows] = {tuple(ids.shape)}, got {tuple(attention_mask.shape)}")
        all_edits = first + [_RowsEdit(Site(l, hook), fn, start) for l, hook, fn in edits]
        logits = self.model.run(ids, attention_mask=attention_mask, edits=all_edits).logits
        return logits[:, -1:] if last_only else logits[:, start:]
