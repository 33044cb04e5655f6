"""Probe every layer (or every layer × head) with :func:`probes.evaluate.evaluate_probe`.

All cells share one train/test split (drawn once with ``seed``, by group when ``groups`` is
given) and one shuffled-target control, so their scores are comparable: a difference between
layers is a difference between features, not between splits.  Each cell is a
:class:`~probes.evaluate.ProbeScore`; the result holds grids ([L] or [L, H] numpy arrays) of score,
CI bounds, both controls (NaN where not measured) and selectivity = score - max(controls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from probes._convert import ArrayLike, n_rows
from probes.evaluate import ProbeScore, Task, evaluate_probe
from probes.splits import split

GRIDS = ("score", "ci_low", "ci_high", "control_shuffled", "control_random_init", "selectivity")
_METRIC_LABEL = {"r2": "R²", "accuracy": "accuracy"}


def _json_grid(a: np.ndarray) -> list:
    return [_json_grid(x) for x in a] if a.ndim > 1 else [float(v) if math.isfinite(v) else None for v in a]


@dataclass
class ProbeSweepResult:
    """Grids of probe scores over layers ([L]) or layers × heads ([L, H])."""

    metric: str
    layer_names: list[str]
    head_names: list[str] | None
    score: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    control_shuffled: np.ndarray
    control_random_init: np.ndarray
    selectivity: np.ndarray
    n_train: int
    n_test: int
    confidence: float = 0.95
    cells: list[ProbeScore] = field(default_factory=list, repr=False)

    @property
    def head_axis(self) -> bool:
        return self.head_names is not None

    @property
    def has_random_init(self) -> bool:
        return bool(np.isfinite(self.control_random_init).any())

    def argmax(self, by: str = "score") -> tuple[int, ...]:
        """Grid index of the best cell by ``by`` (one of the grid names): ``(layer,)`` or ``(layer, head)``."""
        if by not in GRIDS:
            raise ValueError(f"by must be one of {GRIDS}, got {by!r}")
        grid = getattr(self, by)
        if not np.isfinite(grid).any():
            raise ValueError(f"no finite values in {by}")
        return tuple(int(i) for i in np.unravel_index(np.nanargmax(grid), grid.shape))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: names, sizes and every grid as nested lists (NaN → None)."""
        return {
            "metric": self.metric,
            "layer_names": list(self.layer_names),
            "head_names": None if self.head_names is None else list(self.head_names),
            "n_train": int(self.n_train),
            "n_test": int(self.n_test),
            "confidence": float(self.confidence),
            **{g: _json_grid(getattr(self, g)) for g in GRIDS},
        }

    def figures(self) -> list:
        """Plotly figures (as every result in the toolkit returns them); see :meth:`figures_by_name`."""
        return list(self.figures_by_name().values())

    def figures_by_name(self) -> dict[str, Any]:
        """Plotly figures keyed by name.

        Per layer: ``"score"`` (test score with its CI band and the controls) and
        ``"selectivity"``.  Per layer × head: heatmaps ``"score"``, ``"selectivity"``,
        ``"control_shuffled"`` and, when measured, ``"control_random_init"``.
        """
        import plotly.graph_objects as go

        label = _METRIC_LABEL.get(self.metric, self.metric)
        pct = f"{round(self.confidence * 100)}%"
        figs: dict[str, Any] = {}
        if not self.head_axis:
            x = list(self.layer_names)
            fig = go.Figure()
            fig.add_trace(go.Scatter(x=x, y=self.ci_high, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"))
            fig.add_trace(go.Scatter(x=x, y=self.ci_low, mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor="rgba(31,119,180,0.2)", name=f"{pct} CI (bootstrap)"))
            fig.add_trace(go.Scatter(x=x, y=self.score, mode="lines+markers", name="probe", line=dict(color="rgb(31,119,180)")))
            fig.add_trace(go.Scatter(x=x, y=self.control_shuffled, mode="lines+markers", name="control: shuffled targets",
                                     line=dict(dash="dash", color="gray")))
            if self.has_random_init:
                fig.add_trace(go.Scatter(x=x, y=self.control_random_init, mode="lines+markers",
                                         name="control: random-init model", line=dict(dash="dot", color="firebrick")))
            fig.update_layout(title=f"Probe test {label} by layer (n_test={self.n_test}, {pct} CI)",
                              xaxis_title="layer", yaxis_title=f"test {label}")
            figs["score"] = fig
            sel = go.Figure(go.Scatter(x=x, y=self.selectivity, mode="lines+markers", name="selectivity"))
            sel.update_layout(title=f"Probe selectivity by layer: test {label} − max(controls)",
                              xaxis_title="layer", yaxis_title=f"selectivity (Δ {label})")
            figs["selectivity"] = sel
            return figs
        grids = {
            "score": (self.score, f"Probe test {label} by layer × head (n_test={self.n_test})"),
            "selectivity": (self.selectivity, f"Probe selectivity by layer × head: test {label} − max(controls)"),
            "control_shuffled": (self.control_shuffled, f"Shuffled-target control: test {label} by layer × head"),
        }
        if self.has_random_init:
            grids["control_random_init"] = (self.control_random_init, f"Random-init control: test {label} by layer × head")
        for name, (grid, title) in grids.items():
            fig = go.Figure(go.Heatmap(z=grid, x=list(self.head_names), y=list(self.layer_names),
                                       colorscale="Viridis", colorbar=dict(title=label if name != "selectivity" else f"Δ {label}")))
            fig.update_layout(title=title, xaxis_title="head", yaxis_title="layer")
            fig.update_xaxes(type="category")
            fig.update_yaxes(type="category")
            figs[name] = fig
        return figs


def _cells(features: Any, head_axis: bool, what: str) -> tuple[list[str] | None, int | None, Callable[[int, int | None], Any], int]:
    """(names from a dict or None, number of heads, getter (layer, head) -> [N, d], number of layers)."""
    if isinstance(features, Mapping):
        names = [str(k) for k in features]
        values = list(features.values())
        need = 3 if head_axis else 2
        for k, v in zip(names, values):
            if len(v.shape) != need:
                raise ValueError(f"{what}[{k!r}] must be {'[H, N, d]' if head_axis else '[N, d]'}, got {tuple(v.shape)}")
        n_heads = int(values[0].shape[0]) if head_axis and values else None
        if head_axis and any(int(v.shape[0]) != n_heads for v in values):
            raise ValueError(f"all {what} entries must have the same number of heads")
        return names, n_heads, (lambda l, h: values[l] if h is None else values[l][h]), len(values)
    if not isinstance(features, torch.Tensor):
        features = np.asarray(features)
    need = 4 if head_axis else 3
    if features.ndim != need:
        raise ValueError(f"{what} must be {'[L, H, N, d]' if head_axis else '[L, N, d]'} "
                         f"(or a dict), got shape {tuple(features.shape)}")
    n_heads = int(features.shape[1]) if head_axis else None
    return None, n_heads, (lambda l, h: features[l] if h is None else features[l, h]), int(features.shape[0])


def probe_sweep(
    features: Any,
    y: ArrayLike,
    *,
    make_probe: Callable[[], Any],
    groups: ArrayLike | None = None,
    control_features: Any | None = None,
    layer_names: Sequence[str] | None = None,
    head_names: Sequence[str] | None = None,
    head_axis: bool = False,
    test_size: float | int = 0.3,
    seed: int = 0,
    n_boot: int = 1000,
    confidence: float = 0.95,
    task: Task | None = None,
    progress: bool = False,
) -> ProbeSweepResult:
    """Evaluate ``make_probe`` on every layer (or layer × head) of ``features``.

    features: [L, N, d] (per layer), [L, H, N, d] with ``head_axis=True``, or a dict
        name → [N, d] (name → [H, N, d] with ``head_axis``); tensors or arrays.
    control_features: the same layout from a random-init model of the same architecture (same
        rows); gives the ``control_random_init`` grid.
    layer_names / head_names: labels for the grid axes (default: dict keys or "0", "1", ...).
    Other arguments as :func:`probes.evaluate.evaluate_probe`; one split serves every cell.
    """
    names, n_heads, get, n_layers = _cells(features, head_axis, "features")
    if n_layers == 0:
        raise ValueError("features has no layers")
    if control_features is not None:
        _, c_heads, c_get, c_layers = _cells(control_features, head_axis, "control_features")
        if (c_layers, c_heads) != (n_layers, n_heads):
            raise ValueError(f"control_features has {c_layers} layers / {c_heads} heads, features {n_layers} / {n_heads}")
    layer_names = [str(n) for n in (layer_names if layer_names is not None else names if names is not None else range(n_layers))]
    if len(layer_names) != n_layers:
        raise ValueError(f"{len(layer_names)} layer_names for {n_layers} layers")
    if head_axis:
        head_names = [str(h) for h in (head_names if head_names is not None else range(n_heads))]
        if len(head_names) != n_heads:
            raise ValueError(f"{len(head_names)} head_names for {n_heads} heads")
    else:
        head_names = None

    n = n_rows(get(0, 0 if head_axis else None))
    split_idx = split(n, groups, test_size, seed)
    shape = (n_layers, n_heads) if head_axis else (n_layers,)
    grids = {g: np.full(shape, np.nan) for g in GRIDS}
    cells: list[ProbeScore] = []
    keys = [(l, h) for l in range(n_layers) for h in (range(n_heads) if head_axis else [None])]

    from tqdm.auto import tqdm

    metric = None
    for l, h in tqdm(keys, desc="probe sweep", disable=not progress):
        res = evaluate_probe(
            make_probe, get(l, h), y, groups=groups, seed=seed, n_boot=n_boot, confidence=confidence, task=task,
            control_X=None if control_features is None else c_get(l, h), split_idx=split_idx,
        )
        metric = res.metric
        at = (l, h) if head_axis else (l,)
        for g in GRIDS:
            v = getattr(res, g)
            grids[g][at] = np.nan if v is None else v
        cells.append(res)
    return ProbeSweepResult(
        metric=metric, layer_names=layer_names, head_names=head_names, n_train=len(split_idx[0]),
        n_test=len(split_idx[1]), confidence=confidence, cells=cells, **grids,
    )
