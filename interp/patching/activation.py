"""Exact activation patching (Meng et al. 2022; Wang et al. 2022; Heimersheim & Nanda 2024).

Run the corrupted prompts, replace one component's activation with its value on the clean
prompts, and record ``metric(final-position logits)``.  Components: every attention head
(``attn.hook_z`` of head h, over all positions or chosen ones), the residual stream per layer and
position (``hook_resid_pre``), and per-layer ``hook_attn_out`` / ``hook_mlp_out``.

Work that cannot change is not redone (see :mod:`interp.patching.runner`): a run that patches
layer L starts from the corrupted residual stream entering layer L, and only positions at or after
the first patched position are recomputed, the earlier ones' keys/values coming from the corrupted
run.  The heads of one layer are patched in one batched run (variants stacked along the batch).
Results equal TransformerLens's ``get_act_patch_attn_head_out_all_pos`` (a test checks 1e-4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from interp.grids import top_cells
from interp.model import final_positions
from interp.patching.metrics import Metric, normalised_recovery
from interp.patching.runner import CorruptedState, DecoderRunner
from interp.sites import resolve_positions


@dataclass
class PatchingResult:
    """``scores[i, j]``: the metric after patching component (i, j); rows are layers."""

    scores: torch.Tensor
    kind: str
    positions: str
    clean_metric: float
    corrupted_metric: float
    row_label: str = "layer"
    col_label: str = "head"
    setting: dict = field(default_factory=dict)

    @property
    def recovery(self) -> torch.Tensor:
        """Normalised: 0 = corrupted behaviour, 1 = clean behaviour restored."""
        return normalised_recovery(self.scores, self.clean_metric, self.corrupted_metric)

    def top(self, k: int = 5, by: Literal["effect", "abs"] = "effect") -> list[tuple[int, int, float]]:
        """The k components with the largest effect (score − corrupted), as (row, col, score)."""
        effect = self.scores - self.corrupted_metric
        return top_cells(self.scores, k, key=effect.abs() if by == "abs" else effect)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind, "positions": self.positions, "scores": self.scores.tolist(),
            "clean_metric": self.clean_metric, "corrupted_metric": self.corrupted_metric,
            "rows": self.row_label, "cols": self.col_label, "setting": self.setting,
        }

    def figures(self) -> list:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.recovery.tolist(), colorscale="RdBu", zmid=0, colorbar=dict(title="recovery")))
        fig.update_layout(
            title=f"Activation patching ({self.kind}, {self.positions} positions): normalised recovery "
                  f"(0 corrupted, 1 clean) {self.setting}",
            xaxis_title=self.col_label, yaxis_title=self.row_label,
        )
        return [fig]


def as_ids_mask(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) from an IclBatch, a (ids, mask) pair, token ids or text."""
    if hasattr(inputs, "input_ids") and hasattr(inputs, "attention_mask"):
        return inputs.input_ids, inputs.attention_mask
    if isinstance(inputs, tuple):
        return inputs
    if isinstance(inputs, torch.Tensor):
        ids = inputs if inputs.ndim == 2 else inputs[None]
        return ids, torch.ones_like(ids)
    return model.encode(inputs, padding_side="left")


def to_left_padding(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows, left-padded (every row's final token in the last column)."""
    out_ids, out_mask = torch.full_like(ids, pad_id), torch.zeros_like(mask)
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        out_ids[b, ids.shape[1] - len(real):] = real
        out_mask[b, ids.shape[1] - len(real):] = 1
    return out_ids, out_mask


class _Setup:
    """Shared preparation: clean/corrupted ids, the runner, the corrupted state, base metrics."""

    def __init__(self, model, clean, corrupted, metric, runner):
        ids, mask = as_ids_mask(model, corrupted)
        clean_ids, clean_mask = as_ids_mask(model, clean) if clean is not None else (ids, mask)
        if clean_ids.shape != ids.shape:
            raise ValueError(
                f"clean prompts {tuple(clean_ids.shape)} and corrupted prompts {tuple(ids.shape)} have different shapes: "
                "patching needs token-aligned pairs; build both in one batch (same template, same number of demos) "
                "or pad them to one length"
            )
        self.model, self.metric = model, metric
        self.clean_ids, self.clean_mask = to_left_padding(clean_ids, clean_mask, model.pad_token_id)
        self.ids, self.mask = to_left_padding(ids, mask, model.pad_token_id)
        if not torch.equal(self.clean_mask, self.mask):
            raise ValueError("clean and corrupted prompts differ in length row by row: patching needs token-aligned pairs")
        self.runner = runner or model.runner
        self.state: CorruptedState = self.runner.corrupted_state(self.ids, self.mask)
        self.clean_metric = float("nan")
        if clean is not None:
            with torch.no_grad():
                clean_logits = model.run(self.clean_ids, attention_mask=self.clean_mask, logits="final").logits
            self.clean_metric = float(metric(clean_logits))
        self.corrupted_metric = float(metric(self.state.logits[:, -1]))
        self.batch, self.seq_len = self.ids.shape

    def positions_mask(self, positions) -> torch.Tensor:
        """Bool [batch, seq] of patched positions (None = all) in the left-padded layout."""
        if positions is None or positions == "all":
            return self.mask.bool().clone()
        idx = resolve_positions(positions, self.batch, self.seq_len, final_positions(self.mask))
        m = torch.zeros(self.batch, self.seq_len, dtype=torch.bool)
        m.scatter_(1, idx, True)
        return m

    def metric_per_variant(self, logits: torch.Tensor, n_variants: int) -> list[float]:
        final = logits[:, -1].reshape(n_variants, self.batch, -1)
        return [float(self.metric(final[v])) for v in range(n_variants)]


def _chunks(items: Sequence, size: int | None):
    size = size or len(items)
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def patch_heads(
    model,
    clean,
    corrupted,
    metric: Metric,
    *,
    positions="all",
    layers: Sequence[int] | None = None,
    heads_per_run: int | None = None,
    runner: DecoderRunner | None = None,
    progress: bool = False,
    values: torch.Tensor | None = None,
) -> PatchingResult:
    """Patch each head's output z (clean → corrupted) at ``positions`` ("all", "final", ints or
    per-row tensors, in left-padded coordinates) and record the metric: grid [layer, head].

    ``values`` replaces the clean run: a stored z per layer, [layer, head, d_head] (e.g. the mean
    head outputs of Todd et al. 2023), written at every patched position; ``clean`` may then be
    None."""
    s = _Setup(model, clean, corrupted, metric, runner)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    pmask = s.positions_mask(positions)
    start = int(pmask.any(0).nonzero().min())
    if values is None:
        clean_z = model.run(s.clean_ids, attention_mask=s.clean_mask, capture=[f"blocks.{l}.attn.hook_z" for l in layers], logits="final").acts
    scores = torch.full((model.n_layers, model.n_heads), float("nan"))
    for layer in tqdm(layers, desc="patching heads", disable=not progress):
        if values is None:
            z_clean = clean_z[f"blocks.{layer}.attn.hook_z"][:, start:]
        else:
            z_clean = values[layer][None, None].expand(s.batch, s.seq_len - start, -1, -1)
        rows = pmask[:, start:]
        for chunk in _chunks(list(range(model.n_heads)), heads_per_run):
            scores[layer, chunk] = torch.tensor(_run_head_variants(s, layer, start, chunk, z_clean, rows))
    name = positions if isinstance(positions, str) else "chosen"
    return PatchingResult(scores, "attn_head_z", name, s.clean_metric, s.corrupted_metric)


def _run_head_variants(s: _Setup, layer: int, start: int, heads: Sequence[int], z_clean, rows) -> list[float]:
    v = len(heads)
    hidden = s.state.resid_pre[layer][:, start:].repeat(v, 1, 1)
    head_mask = torch.zeros(v, 1, 1, z_clean.shape[2], 1, dtype=torch.bool)
    for i, h in enumerate(heads):
        head_mask[i, 0, 0, h] = True
    where = head_mask & rows[None, :, :, None, None]  # [v, batch, pos, head, 1]

    def edit(z):
        z = z.view(v, s.batch, *z.shape[1:])
        return torch.where(where, z_clean[None].to(z.dtype), z).reshape(v * s.batch, *z.shape[2:])

    logits = s.runner.run_from(
        layer, hidden, s.mask.repeat(v, 1), s.state.position_ids[:, start:].repeat(v, 1),
        prefix=s.state.prefix(start) if start > 0 else None, edits=[(layer, "attn.hook_z", edit)], last_only=True,
    )
    return s.metric_per_variant(logits, v)


@torch.no_grad()
def patch_residual(
    model, clean, corrupted, metric: Metric, *, layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
    runner: DecoderRunner | None = None, progress: bool = False,
) -> PatchingResult:
    """Patch ``hook_resid_pre`` of one layer at one position (clean → corrupted): grid
    [layer, position] (left-padded positions).  Each run starts at that layer and position."""
    s = _Setup(model, clean, corrupted, metric, runner)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    positions = list(range(s.seq_len)) if positions is None else [p % s.seq_len for p in positions]
    clean_resid = model.run(s.clean_ids, attention_mask=s.clean_mask, capture=[f"blocks.{l}.hook_resid_pre" for l in layers], logits="final").acts
    scores = torch.full((model.n_layers, s.seq_len), float("nan"))
    for layer in tqdm(layers, desc="patching residual", disable=not progress):
        for p in positions:
            hidden = s.state.resid_pre[layer][:, p:].clone()
            hidden[:, 0] = clean_resid[f"blocks.{layer}.hook_resid_pre"][:, p]
            logits = s.runner.run_from(layer, hidden, s.mask, s.state.position_ids[:, p:], prefix=s.state.prefix(p) if p else None,
                                       last_only=True)
            scores[layer, p] = s.metric_per_variant(logits, 1)[0]
    return PatchingResult(scores, "resid_pre", "each", s.clean_metric, s.corrupted_metric, col_label="position")


@torch.no_grad()
def patch_layer_outputs(
    model, clean, corrupted, metric: Metric, *, positions="all", layers: Sequence[int] | None = None,
    runner: DecoderRunner | None = None, progress: bool = False,
) -> PatchingResult:
    """Patch each layer's ``hook_attn_out`` and ``hook_mlp_out`` (clean → corrupted) at
    ``positions``: grid [layer, 2] with columns (attn_out, mlp_out)."""
    s = _Setup(model, clean, corrupted, metric, runner)
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    pmask = s.positions_mask(positions)
    start = int(pmask.any(0).nonzero().min())
    sites = ("hook_attn_out", "hook_mlp_out")
    clean_acts = model.run(s.clean_ids, attention_mask=s.clean_mask, capture=[f"blocks.{l}.{h}" for l in layers for h in sites], logits="final").acts
    scores = torch.full((model.n_layers, 2), float("nan"))
    rows = pmask[:, start:, None]
    for layer in tqdm(layers, desc="patching layer outputs", disable=not progress):
        for j, site in enumerate(sites):
            value = clean_acts[f"blocks.{layer}.{site}"][:, start:]
            logits = s.runner.run_from(
                layer, s.state.resid_pre[layer][:, start:], s.mask, s.state.position_ids[:, start:],
                prefix=s.state.prefix(start) if start else None,
                edits=[(layer, site, lambda t, value=value: torch.where(rows, value.to(t.dtype), t))], last_only=True,
            )
            scores[layer, j] = s.metric_per_variant(logits, 1)[0]
    return PatchingResult(scores, "layer_outputs", positions if isinstance(positions, str) else "chosen", s.clean_metric,
                          s.corrupted_metric, col_label="component (0 attn_out, 1 mlp_out)")
