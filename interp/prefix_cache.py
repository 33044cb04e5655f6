"""Reuse the key/value cache of a demonstration prefix shared by many queries.

With one fixed demo set and many queries, every prompt is ``prefix + suffix_b``.  The prefix's
keys and values at every layer are computed once; each batch of suffixes then runs only its own
tokens through the decoder, attending to the cached prefix (:class:`interp.patching.runner.PrefixKV`).
Returns each row's final-position logits and, if asked, every head's attention row from the final
position over prefix + suffix — what the kernel-regression analysis needs.  Numbers equal a full
forward of the concatenated prompt (a test checks 1e-5).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from interp.model import pad_ids
from interp.patching.runner import DecoderRunner, PrefixKV


@dataclass
class PrefixRun:
    logits: torch.Tensor  # [batch, vocab] at each row's final position
    patterns: torch.Tensor | None  # [layer, batch, head, prefix + suffix_len] final-position attention rows
    final_positions: torch.Tensor  # [batch] in prefix + suffix coordinates
    prefix_len: int


class SharedPrefix:
    """The cached prefix; call :meth:`run` with any number of suffixes."""

    def __init__(self, model, prefix_ids: Sequence[int], runner: DecoderRunner | None = None):
        self.model = model
        self.runner = runner or DecoderRunner(model.hf_model)
        ids = torch.tensor([list(prefix_ids)])
        state = self.runner.corrupted_state(ids, torch.ones_like(ids))
        self.kv = PrefixKV(state.keys, state.values)
        self.prefix_len = ids.shape[1]

    @torch.no_grad()
    def run(self, suffixes: Sequence[Sequence[int]], *, patterns: bool = True, batch_size: int = 16) -> PrefixRun:
        outs = [self._run(list(suffixes[i:i + batch_size]), patterns) for i in range(0, len(suffixes), batch_size)]
        width = max(o.patterns.shape[-1] for o in outs) if patterns else 0
        pats = None
        if patterns:  # right-pad the key axis to the longest chunk
            pats = torch.cat([torch.nn.functional.pad(o.patterns, (0, width - o.patterns.shape[-1])) for o in outs], dim=1)
        return PrefixRun(torch.cat([o.logits for o in outs]), pats, torch.cat([o.final_positions for o in outs]), self.prefix_len)

    def _run(self, suffixes: list[list[int]], patterns: bool) -> PrefixRun:
        r = self.runner
        b, p = len(suffixes), self.prefix_len
        ids, mask = pad_ids(suffixes, self.model.pad_token_id, "right")
        s = ids.shape[1]
        kv = PrefixKV([k.expand(b, -1, -1, -1) for k in self.kv.keys], [v.expand(b, -1, -1, -1) for v in self.kv.values])
        full_mask = torch.cat([torch.ones(b, p, dtype=mask.dtype), mask], dim=1)
        positions = (p + torch.arange(s)).expand(b, -1)
        final = mask.sum(-1) - 1  # in suffix coordinates
        hidden = r.twin.model.embed_tokens(ids)
        rows = []
        handles = []
        if patterns:
            def grab(module, args, out):  # eager attention returns (output, weights [b, head, q, k])
                rows.append(out[1][torch.arange(b), :, final])
            handles = [layer.self_attn.register_forward_hook(grab) for layer in r.layers]
        try:
            logits = r.run_from(0, hidden, full_mask, positions, prefix=kv)
        finally:
            for h in handles:
                h.remove()
        return PrefixRun(
            logits=logits[torch.arange(b), final],
            patterns=torch.stack(rows) if patterns else None,
            final_positions=p + final,
            prefix_len=p,
        )
