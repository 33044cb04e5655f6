"""Exact activation patching (Meng et al. 2022; Wang et al. 2022; Heimersheim & Nanda 2024).

Run the corrupted prompts, replace one component's activation with its value on the clean
prompts, and record ``metric(final-position logits)``.  Components: every attention head
(``attn.hook_z`` of head h, over all positions or chosen ones), the residual stream per layer and
position (``hook_resid_pre``), and per-layer ``hook_attn_out`` / ``hook_mlp_out``.

Work that cannot change is not redone (see :mod:`interp.patching.runner`): a run that patches
layer L starts from the corrupted residual stream entering layer L, and only positions at or after
the first patched position are recomputed, the earlier ones' keys/values coming from the corrupted
run, and positions before the first token where the clean and corrupted prompts differ are not
patched at all (every activation there is the same in both runs).  Many patched variants run in
one call, stacked along the batch, across layers (:mod:`interp.patching.variants`); a metric that
reads a few logits (:class:`~interp.patching.metrics.ColumnMetric`) gets only those unembedded.
Results equal TransformerLens's ``get_act_patch_attn_head_out_all_pos`` (a test checks 1e-4).
As there, the clean run may be given as a cache (``clean_cache=``) instead of recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from interp.grids import top_cells
from interp.model import final_positions
from interp.patching.metrics import Metric, evaluate, normalised_recovery
from interp.patching.runner import CorruptedState, DecoderRunner
from interp.patching.variants import MAX_ROWS, Variant, run_variants
from interp.sites import KV_HOOKS, resolve_positions


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


def _from_cache(cache, names: Sequence[str], shape: tuple[int, int], mask: torch.Tensor, metric):
    """The clean activations at ``names`` (and the clean metric, NaN without logits) from a clean
    run's cache: a :class:`~interp.model.RunResult`, its ``.acts``, a TransformerLens
    ``ActivationCache`` or any mapping of site name → [batch, pos, ...]."""
    acts = getattr(cache, "acts", cache)
    out = {}
    for name in names:
        try:
            value = acts[name]
        except KeyError:
            raise ValueError(f"clean_cache has no {name!r}: capture it in the clean run "
                             f"(model.run(clean, capture={list(names)!r}) or bridge.run_with_cache(clean))") from None
        if tuple(value.shape[:2]) != shape:
            raise ValueError(f"clean_cache[{name!r}] is {tuple(value.shape)}, the corrupted prompts are {shape} (batch, pos): "
                             "cache the clean prompts of the same batch, at every position")
        out[name] = value.detach()
    left = mask.shape[1] == 0 or bool(mask[:, -1].all())
    if not left:
        raise ValueError("clean_cache with right-padded prompts: patching works in left-padded coordinates; "
                         "build the prompts with padding_side='left' and cache those")
    logits = getattr(cache, "logits", None)  # full-vocabulary logits, at every position or the final ones
    clean_metric = float("nan") if logits is None else float(metric(logits if logits.ndim == 2 else logits[:, -1]))
    return out, clean_metric


class _Setup:
    """Shared preparation: clean/corrupted ids, the runner, the corrupted state, base metrics,
    and ``capture`` (site names) from the clean run, in the same forward as its metric, or from
    ``clean_cache``."""

    def __init__(self, model, clean, corrupted, metric, runner, capture: Sequence[str] = (), clean_cache=None):
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
        self.clean_metric, self.clean_acts = float("nan"), None
        self.columns = columns = getattr(metric, "columns", None)  # a metric that reads a few logits gets only those
        if clean_cache is not None:  # the clean run is given: only the corrupted one runs
            self.clean_acts, self.clean_metric = _from_cache(clean_cache, capture, tuple(ids.shape), mask, metric)
            self.state: CorruptedState = self.runner.corrupted_state(self.ids, self.mask, columns)
        elif clean is None:
            self.state = self.runner.corrupted_state(self.ids, self.mask, columns)
        else:  # the corrupted state, the clean metric and the patched values (runner.states)
            self.state, clean_logits, self.clean_acts = self.runner.states(self.clean_ids, self.ids, self.mask, capture, columns)
            self.clean_metric = float(evaluate(metric, clean_logits, columns))
        self.corrupted_metric = float(evaluate(metric, self.state.logits[:, -1], columns))
        self.batch, self.seq_len = self.ids.shape
        # the first position where the clean and corrupted tokens differ: before it every
        # activation of the two runs is the same (attention is causal), so patching it is a no-op
        differ = (self.clean_ids != self.ids).any(0).nonzero()
        self.first_diff = int(differ.min()) if len(differ) else self.seq_len
        if clean is None:  # no clean tokens to compare (a cache or stored values): every position counts
            self.first_diff = 0

    def positions_mask(self, positions, trim: bool = False) -> torch.Tensor:
        """Bool [batch, seq] of patched positions (None = all) in the left-padded layout;
        ``trim``: without those before :attr:`first_diff` (patching them changes nothing)."""
        if positions is None or positions == "all":
            m = self.mask.bool().clone()
        else:
            idx = resolve_positions(positions, self.batch, self.seq_len, final_positions(self.mask))
            m = torch.zeros(self.batch, self.seq_len, dtype=torch.bool)
            m.scatter_(1, idx, True)
        if trim:
            m[:, :self.first_diff] = False
        return m

    def run(self, variants, start: int, max_rows: int, progress: bool = False, desc: str = "") -> list[float]:
        """The metric of each variant (:func:`interp.patching.variants.run_variants`)."""
        logits = run_variants(self.runner, self.state, variants, start, columns=self.columns, max_rows=max_rows,
                              progress=progress, desc=desc)
        return [float(evaluate(self.metric, row, self.columns)) for row in logits]


CLEAN_CACHE_DOC = """``clean_cache``: the clean run's activations at the patched sites, computed once for several
sweeps: a :class:`~interp.model.RunResult` of ``model.run(clean, capture=[...])`` (its logits give
the clean metric), its ``.acts``, a TransformerLens ``ActivationCache`` from
``bridge.run_with_cache(clean)`` (as ``transformer_lens.patching`` takes it) or any mapping of
site name → [batch, pos, ...].  Only the corrupted run is computed.  ``clean`` (the tokens) may
then be None: positions before the first differing token are then patched too (a no-op), and
without logits in the cache the clean metric is NaN."""

HEAD_SITES = ("attn.hook_z", "attn.hook_q", "attn.hook_k", "attn.hook_v")


def heads_at(model, site: str) -> int:
    """How many heads ``site`` has: query heads, or key/value heads for hook_k / hook_v (GQA)."""
    if site not in HEAD_SITES:
        raise ValueError(f"head patching takes site in {HEAD_SITES}, got {site!r}")
    return model.n_kv_heads if site in KV_HOOKS else model.n_heads


@torch.no_grad()
def patch_heads(
    model,
    clean,
    corrupted,
    metric: Metric,
    *,
    positions="all",
    layers: Sequence[int] | None = None,
    site: str = "attn.hook_z",
    cells: Sequence[tuple[int, int]] | None = None,
    max_rows: int = MAX_ROWS,
    runner: DecoderRunner | None = None,
    progress: bool = False,
    values: torch.Tensor | None = None,
    clean_cache=None,
) -> PatchingResult:
    """Patch each head's activation at ``site`` (the output z by default; its query, key or
    value with ``attn.hook_q`` / ``hook_k`` / ``hook_v``, key/value heads for GQA) clean →
    corrupted at ``positions`` ("all", "final", ints or per-row tensors, in left-padded
    coordinates) and record the metric: grid [layer, head] (NaN where not patched).

    ``cells``: only these (layer, head) pairs (e.g. the top of an attribution screen).
    ``values`` replaces the clean run: a stored activation per layer, [layer, head, d_head] (e.g.
    the mean head outputs of Todd et al. 2023), written at every patched position; ``clean`` may
    then be None.  ``clean_cache``: the clean run's activations, already computed, as
    TransformerLens's patching functions take them (see :data:`CLEAN_CACHE_DOC`).  ``max_rows``:
    the memory budget of one batched call (variants × prompts × positions)."""
    n_heads = heads_at(model, site)
    if cells is None:
        layers = list(range(model.n_layers)) if layers is None else list(layers)
        cells = [(l, h) for l in layers for h in range(n_heads)]
    cells = [(int(l), int(h)) for l, h in cells]
    for l, h in cells:
        if not (0 <= l < model.n_layers and 0 <= h < n_heads):
            raise ValueError(f"cell ({l}, {h}) is outside the {model.n_layers} layers x {n_heads} heads of {site}")
    used = sorted({l for l, _ in cells})
    if values is not None and clean_cache is not None:
        raise ValueError("patch_heads takes values= (stored activations) or clean_cache= (a clean run), not both")
    s = _Setup(model, clean, corrupted, metric, runner, capture=[f"blocks.{l}.{site}" for l in used] if values is None else (),
               clean_cache=clean_cache)
    pmask = s.positions_mask(positions, trim=values is None)
    scores = torch.full((model.n_layers, n_heads), float("nan"))
    name = positions if isinstance(positions, str) else "chosen"
    kind = "attn_head_" + site.rsplit("_", 1)[1]
    if not cells:
        return PatchingResult(scores, kind, name, s.clean_metric, s.corrupted_metric)
    if not pmask.any():  # every patched position precedes the first token where the prompts differ
        for l, h in cells:
            scores[l, h] = s.corrupted_metric
        return PatchingResult(scores, kind, name, s.clean_metric, s.corrupted_metric)
    start = int(pmask.any(0).nonzero().min())
    rows = pmask[:, start:, None, None]
    variants = []
    for l, h in cells:
        if values is None:
            act = s.clean_acts[f"blocks.{l}.{site}"][:, start:]
        else:
            act = values[l][None, None].expand(s.batch, s.seq_len - start, -1, -1)
        where = rows & (torch.arange(n_heads) == h)[None, None, :, None]
        variants.append(Variant(((l, site, lambda t, w=where, c=act: torch.where(w, c.to(t.dtype), t)),)))
    for (l, h), value in zip(cells, s.run(variants, start, max_rows, progress, "patching heads")):
        scores[l, h] = value
    return PatchingResult(scores, kind, name, s.clean_metric, s.corrupted_metric)


@torch.no_grad()
def patch_residual(
    model, clean, corrupted, metric: Metric, *, layers: Sequence[int] | None = None, positions: Sequence[int] | None = None,
    max_rows: int = MAX_ROWS, runner: DecoderRunner | None = None, progress: bool = False, clean_cache=None,
) -> PatchingResult:
    """Patch ``hook_resid_pre`` of one layer at one position (clean → corrupted): grid
    [layer, position] (left-padded positions).  The variants of one position run together, from
    that position on; a position before the first token where the prompts differ changes nothing
    (its score is the corrupted metric, not recomputed).  ``clean_cache`` as in :func:`patch_heads`."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    s = _Setup(model, clean, corrupted, metric, runner, capture=[f"blocks.{l}.hook_resid_pre" for l in layers], clean_cache=clean_cache)
    positions = list(range(s.seq_len)) if positions is None else [p % s.seq_len for p in positions]
    clean_resid = s.clean_acts
    scores = torch.full((model.n_layers, s.seq_len), float("nan"))
    for p in tqdm(positions, desc="patching residual", disable=not progress):
        if p < s.first_diff:
            scores[layers, p] = s.corrupted_metric
            continue
        variants = []
        for layer in layers:
            value = clean_resid[f"blocks.{layer}.hook_resid_pre"][:, p]

            def write(t, value=value):
                t = t.clone()
                t[:, 0] = value.to(t.dtype)
                return t

            variants.append(Variant(((layer, "hook_resid_pre", write),)))
        scores[layers, p] = torch.tensor(s.run(variants, p, max_rows))
    return PatchingResult(scores, "resid_pre", "each", s.clean_metric, s.corrupted_metric, col_label="position")


@torch.no_grad()
def patch_layer_outputs(
    model, clean, corrupted, metric: Metric, *, positions="all", layers: Sequence[int] | None = None,
    max_rows: int = MAX_ROWS, runner: DecoderRunner | None = None, progress: bool = False, clean_cache=None,
) -> PatchingResult:
    """Patch each layer's ``hook_attn_out`` and ``hook_mlp_out`` (clean → corrupted) at
    ``positions``: grid [layer, 2] with columns (attn_out, mlp_out).  ``clean_cache`` as in
    :func:`patch_heads`."""
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    sites = ("hook_attn_out", "hook_mlp_out")
    s = _Setup(model, clean, corrupted, metric, runner, capture=[f"blocks.{l}.{h}" for l in layers for h in sites],
               clean_cache=clean_cache)
    pmask = s.positions_mask(positions, trim=True)
    scores = torch.full((model.n_layers, 2), float("nan"))
    name = positions if isinstance(positions, str) else "chosen"
    label = "component (0 attn_out, 1 mlp_out)"
    if not pmask.any():
        scores[layers] = s.corrupted_metric
        return PatchingResult(scores, "layer_outputs", name, s.clean_metric, s.corrupted_metric, col_label=label)
    start = int(pmask.any(0).nonzero().min())
    clean_acts = s.clean_acts
    rows = pmask[:, start:, None]
    variants = [Variant(((layer, site, lambda t, c=clean_acts[f"blocks.{layer}.{site}"][:, start:]: torch.where(rows, c.to(t.dtype), t)),))
                for layer in layers for site in sites]
    values = s.run(variants, start, max_rows, progress, "patching layer outputs")
    for i, layer in enumerate(layers):
        scores[layer] = torch.tensor(values[2 * i:2 * i + 2])
    return PatchingResult(scores, "layer_outputs", name, s.clean_metric, s.corrupted_metric, col_label=label)
