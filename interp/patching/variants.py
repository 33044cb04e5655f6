"""Many patched runs in one runner call: variants stacked along the batch, a staircase over layers.

A *variant* is one patched run: edits at one or more layers, the lowest being the layer it starts
at.  Below that layer, and at positions before the recomputed window, its activations are the
corrupted run's (attention is causal), so variants that start at different layers can share one
call that starts at the lowest of them: each variant's rows are reset to the corrupted residual
stream entering its own start layer (so it equals its own separate run), and its edits apply to
its rows only.  On the fast path (:class:`~interp.patching.runner.DecoderRunner`) the batch
grows up the staircase: the variants are ordered by start layer and layer l runs only the rows
of those that have started (``run_from``'s ``active``), so sharing a call costs no compute.  A
runner that runs every row through every layer (the engine path) pays for the layers a variant
runs below its own start.  Against either stands what every call and every layer a call runs
costs whatever its rows (reading the layer's weights, per-call work).  :func:`plan_chunks` picks
consecutive groups of the variants (sorted by start layer) that minimise, in units of one row
through one layer,

    cost = Σ_chunks [ CALL_OVERHEAD + (n_layers − layer_chunk) · LAYER_OVERHEAD + waste_chunk ]

with waste = rows_chunk · (n_layers − layer_chunk) − Σ_variants rows · (n_layers − layer_variant)
when every row runs every layer and 0 when the batch grows, under a memory budget of
``max_rows`` rows per call: the growing batch takes one call per budget, the engine path a few
large calls for few rows per variant (final-position patching) and one call per layer for many
(all positions).
One call per chunk; the numbers equal one call per variant to float rounding (a test checks
≤ 1e-5 on every family).

Works over either runner (:class:`~interp.patching.runner.DecoderRunner`, the engine path), on
CPU or GPU: everything is in ``run_from``'s batch dimension.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

VariantFn = Callable[[torch.Tensor], torch.Tensor]
# Fixed costs in rows × layers of compute, measured on SmolLM2 on CPU (one thread): a layer costs
# about as much whatever its rows as 16 final-position rows through it (its weights are read once
# per call), a call about two layers.  Only the chunking depends on them.
LAYER_OVERHEAD = 16
CALL_OVERHEAD = 32
MAX_ROWS = 4096  # rows (variants × prompts × recomputed positions) per call


@dataclass(frozen=True)
class Variant:
    """One patched run: ``edits`` = ((layer, hook, fn), ...); ``fn`` gets this variant's rows of
    the site ([batch, positions ≥ start, ...]; attention patterns [batch, head, q ≥ start, k]) and
    returns their replacement.  The run starts at the lowest edited layer."""

    edits: tuple[tuple[int, str, VariantFn], ...]

    @property
    def layer(self) -> int:
        return min(l for l, _, _ in self.edits)


def plan_chunks(layers: Sequence[int], rows: int, n_layers: int, *, max_rows: int = MAX_ROWS, grows: bool = False) -> list[range]:
    """Split variants sorted by start layer (``layers``, non-decreasing) into consecutive chunks
    minimising the cost in the module docstring with at most ``max_rows`` rows per chunk (each
    variant has ``rows`` rows); ``grows``: the runner runs a variant's rows only from its own
    start layer.  Returns index ranges."""
    n = len(layers)
    if any(b < a for a, b in zip(layers, layers[1:])):
        raise ValueError("plan_chunks needs the variants sorted by start layer")
    per_chunk = max(1, max_rows // max(rows, 1))
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):  # best[j]: the cheapest plan for the first j variants
        for i in range(max(0, j - per_chunk), j):
            # the waste plus Σ rows · (n_layers − layer_variant), the same for any chunking
            waste = 0 if grows else rows * (j - i) * (n_layers - layers[i])
            cost = best[i] + CALL_OVERHEAD + (n_layers - layers[i]) * LAYER_OVERHEAD + waste
            if cost < best[j]:
                best[j], cut[j] = cost, i
    chunks, j = [], n
    while j > 0:
        chunks.append(range(cut[j], j))
        j = cut[j]
    return chunks[::-1]


def run_variants(
    runner,
    state,
    variants: Sequence[Variant],
    start_pos: int,
    *,
    columns: torch.Tensor | None = None,
    max_rows: int = MAX_ROWS,
    progress: bool = False,
    desc: str = "patched runs",
) -> torch.Tensor:
    """Final-position logits of every variant, [variant, batch, vocab] (or [variant, batch,
    len(columns)] with ``columns``: only those vocabulary columns are unembedded).

    ``state``: the corrupted run (``runner.corrupted_state``); ``start_pos``: the first position
    any variant changes (earlier positions' keys/values come from ``state``)."""
    if not variants:
        raise ValueError("run_variants needs at least one variant")
    batch, seq = state.attention_mask.shape
    q = seq - start_pos
    order = sorted(range(len(variants)), key=lambda i: variants[i].layer)
    layers = [variants[i].layer for i in order]
    out = [None] * len(variants)
    grows = getattr(runner, "runs_active_rows", False)
    chunks = plan_chunks(layers, batch * q, runner.n_layers, max_rows=max_rows, grows=grows)
    for chunk in tqdm(chunks, desc=desc, disable=not progress):
        idx = [order[i] for i in chunk]
        logits = _run_chunk(runner, state, [variants[i] for i in idx], start_pos, columns, grows)
        for i, row in zip(idx, logits):
            out[i] = row
    return torch.stack(out)


def _run_chunk(runner, state, chunk: Sequence[Variant], start_pos: int, columns, grows: bool) -> torch.Tensor:
    """One call for ``chunk`` (sorted by start layer): rows variant-major (variant i, prompt b
    at row i·batch + b), so the variants running layer l are the first ones."""
    v, batch = len(chunk), state.attention_mask.shape[0]
    base = chunk[0].layer
    by_site: dict[tuple[int, str], list[tuple[int, VariantFn]]] = defaultdict(list)
    for i, var in enumerate(chunk):
        if var.layer > base:  # below its own start the variant's rows are the corrupted run's
            corrupted = state.resid_pre[var.layer][:, start_pos:]
            by_site[(var.layer, "hook_resid_pre")].append((i, lambda t, c=corrupted: c.to(t.dtype)))
        for layer, hook, fn in var.edits:
            by_site[(layer, hook)].append((i, fn))
    edits = [(layer, hook, _per_variant(batch, fns)) for (layer, hook), fns in by_site.items()]
    extra = {"columns": columns} if columns is not None else {}
    if grows:  # layer l runs the rows of the variants started at or below it
        starts = torch.tensor([var.layer for var in chunk])
        extra["active"] = [int((starts <= l).sum()) * batch for l in range(runner.n_layers)]
    logits = runner.run_from(
        base, state.resid_pre[base][:, start_pos:].repeat(v, 1, 1), state.attention_mask.repeat(v, 1),
        state.position_ids[:, start_pos:].repeat(v, 1), prefix=state.prefix(start_pos) if start_pos else None,
        edits=edits, last_only=True, **extra,
    )
    return logits[:, -1].reshape(v, batch, -1)


def _per_variant(batch: int, fns: list[tuple[int, VariantFn]]) -> VariantFn:
    """One site's edit over the stacked batch: each listed variant's rows through its fns, in
    order.  Inside a layer that runs only the first variants' rows the site has only those (every
    variant edited there has started)."""

    def edit(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, batch, *t.shape[1:]).clone()
        for i, fn in fns:
            t[i] = fn(t[i]).to(t.dtype)
        return t.reshape(-1, *t.shape[2:])

    return edit
