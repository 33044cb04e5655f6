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
from interp.patching.runner import DecoderRunner


@dataclass
class PrefixRun:
    logits: torch.Tensor  # [batch, vocab] at each row's final position
    patterns: torch.Tensor | None  # [layer, batch, head, prefix + suffix_len] final-position attention rows
    final_positions: torch.Tensor  # [batch] in prefix + suffix coordinates
    prefix_len: int


def split_shared_prefix(batch, append: int | None = None) -> tuple[list[int], list[list[int]]] | None:
    """(prefix, suffixes) of an IclBatch whose rows share their demos (``same_demos=True``): the
    prefix is row 0's tokens before the query block, each suffix the rest of its row (plus
    ``append`` when given).  None when some row does not start with that prefix."""
    r0 = batch.rows[0]
    prefix = batch.input_ids[0, r0.start:r0.query_block.start].tolist()
    suffixes = []
    for i, r in enumerate(batch.rows):
        real = batch.input_ids[i, r.start:r.start + r.length].tolist()
        if real[:len(prefix)] != prefix:
            return None
        suffixes.append(real[len(prefix):] + ([append] if append is not None else []))
    return prefix, suffixes


class SharedPrefix:
    """The cached prefix; call :meth:`run` with any number of suffixes."""

    def __init__(self, model, prefix_ids: Sequence[int], runner: DecoderRunner | None = None):
        self.model = model
        self.runner = runner or model.runner
        ids = torch.tensor([list(prefix_ids)], device=model.device)
        state = self.runner.corrupted_state(ids, torch.ones_like(ids))
        self.kv = state.prefix(ids.shape[1])  # keys/values on the fast path, the tokens on the engine path
        self.prefix_len = ids.shape[1]
        self.device = ids.device

    @torch.no_grad()
    def run(self, suffixes: Sequence[Sequence[int]], *, patterns: bool = True, batch_size: int = 16) -> PrefixRun:
        outs = [self._run(list(suffixes[i:i + batch_size]), patterns) for i in range(0, len(suffixes), batch_size)]
        width = max(o.patterns.shape[-1] for o in outs) if patterns else 0
        pats = None
        if patterns:  # right-pad the key axis to the longest chunk
            pats = torch.cat([torch.nn.functional.pad(o.patterns, (0, width - o.patterns.shape[-1])) for o in outs], dim=1)
        return PrefixRun(torch.cat([o.logits for o in outs]), pats, torch.cat([o.final_positions for o in outs]), self.prefix_len)

    def suffix_batch(self, suffixes: list[list[int]]):
        """Right-padded suffixes and what a run of them after the prefix needs: (ids, mask over
        the suffix, the one-row prefix (every row reads it, never copied per row), mask over
        prefix + suffix, absolute positions), on the prefix's device."""
        b, p = len(suffixes), self.prefix_len
        device = self.device
        ids, mask = (t.to(device) for t in pad_ids(suffixes, self.model.pad_token_id, "right"))
        kv = self.kv
        full_mask = torch.cat([torch.ones(b, p, dtype=mask.dtype, device=device), mask], dim=1)
        positions = (p + torch.arange(ids.shape[1], device=device)).expand(b, -1)
        return ids, mask, kv, full_mask, positions

    def _run(self, suffixes: list[list[int]], patterns: bool) -> PrefixRun:
        r = self.runner
        b, p = len(suffixes), self.prefix_len
        ids, mask, kv, full_mask, positions = self.suffix_batch(suffixes)
        final = mask.sum(-1) - 1  # in suffix coordinates
        rows = {}
        edits = []
        if patterns:
            def grab(layer):
                def fn(pattern):  # [b, head, q, k]
                    rows[layer] = pattern[torch.arange(b), :, final]
                return fn
            edits = [(l, "attn.hook_pattern", grab(l)) for l in range(r.n_layers)]
        logits = r.run_tokens(ids, full_mask, positions, prefix=kv, edits=edits, at=final)  # only the final positions unembedded
        return PrefixRun(
            logits=logits[:, 0],
            patterns=torch.stack([rows[l] for l in range(r.n_layers)]) if patterns else None,
            final_positions=p + final,
            prefix_len=p,
        )


@dataclass
class RecordedRun:
    """Per row, at one recorded suffix position r_b (and logits at a predicting one):
    everything :mod:`analyses.gd.icl_vs_gd` reads from the ICL side."""

    logits: torch.Tensor  # [batch, vocab] at the predicting positions
    attn_out: torch.Tensor  # [batch, layer, d_model]  attention-sublayer output (after o_proj)
    z: torch.Tensor  # [batch, layer, head, d_head]  per-head output before o_proj
    q_rot: torch.Tensor  # [batch, layer, head, d_head]  queries as attention receives them (q-norm, RoPE)
    scores: list[torch.Tensor]  # per row [layer, head, prefix + r_b + 1] q·k × scaling (softcapped where the model is), no mask
    prefix_len: int


def _run_recorded(prefix: SharedPrefix, suffixes: list[list[int]], record_at: list[int], predict_at: list[int]) -> RecordedRun:
    """One batch of :func:`run_recorded`: the attention internals come from the tap points of
    :mod:`interp.attention`, the same on every family."""
    r = prefix.runner
    b, p = len(suffixes), prefix.prefix_len
    ids, _, kv, full_mask, positions = prefix.suffix_batch(suffixes)
    rows = torch.arange(b)
    rec = torch.tensor(record_at)
    got = {"attn_out": {}, "z": {}, "q": {}, "scores": {}}

    def keep(kind, layer, pick):
        def fn(t):
            got[kind][layer] = pick(t)
        return fn

    edits = []
    for l in range(r.n_layers):
        edits += [
            (l, "attn.hook_rot_q", keep("q", l, lambda t: t[rows, rec])),  # [b, pos, head, d] -> [b, head, d]
            (l, "attn.hook_attn_scores", keep("scores", l, lambda t: t[rows, :, rec])),  # [b, head, k]
            (l, "attn.hook_z", keep("z", l, lambda t: t[rows, rec])),
            (l, "hook_attn_out", keep("attn_out", l, lambda t: t[rows, rec])),
        ]
    logits = r.run_tokens(ids, full_mask, positions, prefix=kv, edits=edits, at=torch.tensor(predict_at))
    n = r.n_layers
    sc = torch.stack([got["scores"][l] for l in range(n)], 1)  # [b, layer, head, P + s]
    return RecordedRun(
        logits=logits[:, 0], attn_out=torch.stack([got["attn_out"][l] for l in range(n)], 1),
        z=torch.stack([got["z"][l] for l in range(n)], 1), q_rot=torch.stack([got["q"][l] for l in range(n)], 1),
        scores=[sc[j, :, :, : p + record_at[j] + 1] for j in range(b)], prefix_len=p,
    )


def run_recorded(prefix: SharedPrefix, suffixes: Sequence[Sequence[int]], record_at: Sequence[int], predict_at: Sequence[int],
                 batch_size: int = 16) -> RecordedRun:
    """``prefix + suffix_b`` for every b, reusing the prefix's keys/values: logits at suffix
    position ``predict_at[b]`` and the attention internals at ``record_at[b]`` (suffix
    coordinates).  Equals full forwards of the concatenated prompts (a test checks 1e-4)."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(suffixes), batch_size):
            sl = slice(i, i + batch_size)
            outs.append(_run_recorded(prefix, [list(x) for x in suffixes[sl]], list(record_at[sl]), list(predict_at[sl])))
    return RecordedRun(torch.cat([o.logits for o in outs]), torch.cat([o.attn_out for o in outs]), torch.cat([o.z for o in outs]),
                       torch.cat([o.q_rot for o in outs]), [x for o in outs for x in o.scores], prefix.prefix_len)
