"""Implicit weights in the activations of the in-context linear-regression transformers.

Akyürek et al. 2022 (§5, App. E) probe every layer for the quantities a learning algorithm would
compute; von Oswald et al. 2023 show one linear self-attention (LSA) layer can be one GD step; Ahn
et al. 2023 show an L-layer linear transformer's critical points run L steps of *preconditioned* GD.
With context X [N, d], y [N] (every point but the last) and the query x_q (the last):

    w (the task's true weight),   Xᵀy,   w_OLS = X⁺y,   w_GD = (η/N) Xᵀy,   ŷ_GD = w_GD · x_q,

with η from :func:`~interp.linreg.gd.best_gd_eta` (one GD step from 0 on L(w) = (1/2N) Σ (w·x_i − y_i)²).
Xᵀy and w_GD differ only by the scale η/N, so a probe's R² is the same for both.

:func:`implicit_weight_probes` captures the residual stream through the :mod:`interp` facade
(``blocks.0.hook_resid_pre`` as layer ``"embed"``, then ``hook_resid_post`` of every layer) at two
positions, ``"query"`` (the query token) and ``"last_y"`` (the token carrying y of the last context
point), and fits ridge probes with :func:`probes.probe_sweep`: test R², bootstrap CI, shuffled
targets and a random-init model of the same architecture (another init seed) as controls.

:func:`gd_steps_matched` compares each layer's prediction with t = 1..T steps of plain full-batch GD
from w0 = 0,  w ← w − η (1/N) Xᵀ(Xw − y),  η line-searched per t (or fixed):

    error[l, t] = mean_tasks (ŷ_layer l − ŷ_GD,t)²     (Akyürek's SPD)

The LSA's layer-l prediction is its read-out applied early, −(y-slot of the query after layer l);
the GPT's is a ridge probe from the query residual after layer l to y_q (scored on held-out tasks).
Ahn et al. predict layer l ≈ l+1 steps of *preconditioned* GD; plain GD is a simplification, so the
best-matching t is a coarse depth → steps map, expected to grow with depth, not to equal l+1.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from interp import Capture, load_model
from interp.linreg.gd import best_gd_eta, default_eta_grid, gd_one_step
from interp.linreg.models import build_model, regression_module
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks
from interp.linreg.train import default_distribution, training_distribution
from probes import RidgeProbe, probe_sweep, split
from probes.mlp import MLPProbe

TARGETS = ("w", "Xty", "w_ols", "w_gd", "y_gd")
POSITIONS = ("query", "last_y")


def _module_and_model(model):
    """(the HookedRootModule, the facade Model) from either."""
    module = regression_module(model)
    return module, (model if hasattr(model, "engine") else load_model(module))


def token_positions(module, n_points: int) -> dict[str, int]:
    """Token index of the query and of the last context point's y for ``n_points`` points.

    LSA (one token (x_j, y_j) per point): query n−1, last y n−2.  GPT (x_j at 2j, y_j at 2j+1,
    j = 0..n−1, the query x_{n−1} last): query 2(n−1), last y 2(n−2)+1.
    """
    if module.kind == "lsa":
        return {"query": n_points - 1, "last_y": n_points - 2}
    return {"query": 2 * (n_points - 1), "last_y": 2 * (n_points - 2) + 1}


def _slice(batch: RegressionBatch, i: int, j: int) -> RegressionBatch:
    return RegressionBatch(batch.x[i:j], batch.y[i:j], batch.w[i:j], batch.noise_std)


@torch.no_grad()
def capture_residuals(model, batch: RegressionBatch, positions: Sequence[str] = POSITIONS,
                      chunk: int = 1024) -> dict[str, torch.Tensor]:
    """Residual stream [L+1, n_tasks, d_model] per position name (embed, then after each layer),
    captured through the facade: ``Capture("blocks.0.hook_resid_pre")`` and ``Capture("hook_resid_post")``."""
    module, facade = _module_and_model(model)
    pos = token_positions(module, batch.x.shape[1])
    idx = [pos[p] for p in positions]
    parts = []
    for i in range(0, batch.x.shape[0], chunk):
        out = facade.run(module.tokens(_slice(batch, i, i + chunk)), capture=[
            Capture("blocks.0.hook_resid_pre", positions=idx), Capture("hook_resid_post", positions=idx)])
        parts.append(torch.cat([out.acts["blocks.0.hook_resid_pre"][None], out.acts.stack("hook_resid_post")]).float().cpu())
    acts = torch.cat(parts, dim=1)  # [L+1, n_tasks, n_pos, d_model]
    return {p: acts[:, :, k] for k, p in enumerate(positions)}


def regression_targets(batch: RegressionBatch, eta: float) -> dict[str, torch.Tensor]:
    """The probe targets (module docstring) in float64: [n_tasks, d], or [n_tasks] for y_gd."""
    X, y = batch.x[:, :-1].double(), batch.y[:, :-1].double()
    xty = torch.einsum("bnd,bn->bd", X, y)
    return {"w": batch.w.double(), "Xty": xty, "w_ols": (torch.linalg.pinv(X) @ y[..., None])[..., 0],
            "w_gd": eta / X.shape[1] * xty, "y_gd": gd_one_step(batch, eta).double()}


def _check_choice(name: str, values: Sequence[str], valid: Sequence[str]) -> list[str]:
    values = [values] if isinstance(values, str) else list(values)
    bad = [v for v in values if v not in valid]
    if bad or not values:
        raise ValueError(f"unknown {name} {bad or values!r}; valid {name}: {', '.join(valid)}")
    return values


def _setup(model, d: int, n_tasks: int, seed: int, x_dist, x_range, noise_std):
    module, facade = _module_and_model(model)
    if d != module.d:
        raise ValueError(f"d={d} but the model was built for d={module.d}")
    default_dist, default_range = training_distribution(module) or default_distribution(module.kind)
    x_dist = x_dist or default_dist
    x_range = x_range if x_range is not None else (default_range if x_dist == "uniform" else 1.0)
    batch = sample_regression_tasks(n_tasks, module.cfg.n_points, d, x_dist=x_dist, x_range=x_range,
                                    noise_std=noise_std, seed=seed)
    setting = {"model": module.kind, "d": d, "n_points": module.cfg.n_points, "n_layers": module.n_layers,
               "d_model": module.d_model, "x_dist": x_dist, "x_range": x_range, "noise_std": noise_std}
    return module, facade, batch, setting


def _title(s: dict) -> str:
    return f"{s['model'].upper()} (d={s['d']}, n_points={s['n_points']}, {s['n_layers']} layers, x~{s['x_dist']})"


@dataclass
class ImplicitWeightProbeResult:
    setting: dict
    n_tasks: int
    seed: int
    control_seed: int
    eta_gd: float
    ridge_alpha: float
    positions: dict  # name -> token index
    layer_names: list[str]
    sweeps: dict  # position -> target -> ProbeSweepResult
    probe: str = "ridge"

    def r2(self, target: str, position: str = "query", control: bool = False) -> list[float]:
        """Per-layer test R² (or the random-init control's)."""
        s = self.sweeps[position][target]
        return [float(v) for v in (s.control_random_init if control else s.score)]

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "sweeps"}
        out["sweeps"] = {p: {t: s.to_dict() for t, s in ts.items()} for p, ts in self.sweeps.items()}
        return out

    def figures(self) -> list:
        import plotly.graph_objects as go
        import plotly.colors as pc

        figs = []
        for pos, sweeps in self.sweeps.items():
            fig = go.Figure()
            for i, (t, s) in enumerate(sweeps.items()):
                c = pc.DEFAULT_PLOTLY_COLORS[i % len(pc.DEFAULT_PLOTLY_COLORS)]
                fig.add_trace(go.Scatter(x=self.layer_names, y=self.r2(t, pos), mode="lines+markers", name=t, line=dict(color=c)))
                fig.add_trace(go.Scatter(x=self.layer_names, y=self.r2(t, pos, control=True), mode="lines", name=f"{t} (random init)",
                                         line=dict(color=c, dash="dash")))
            fig.update_layout(title=f"Implicit-weight {self.probe} probes at the {pos} token — {_title(self.setting)}, "
                                    f"n_tasks={self.n_tasks}; dashed: random-init control",
                              xaxis_title="layer (residual stream after)", yaxis_title="test R²")
            figs.append(fig)
        return figs


def implicit_weight_probes(model, d: int, n_tasks: int = 4096, seed: int = 0, targets: Sequence[str] = TARGETS,
                           positions: Sequence[str] = POSITIONS, ridge_alpha: float = 1e-3, x_dist: str | None = None,
                           x_range: float | None = None, noise_std: float = 0.0, control_seed: int | None = None,
                           n_boot: int = 1000, test_size: float = 0.3, probe: str = "ridge",
                           layers: Sequence[str] | None = None) -> ImplicitWeightProbeResult:
    """Probe every layer's residual stream for each target at each position (module docstring).

    ``model``: a LinearSelfAttention / SoftmaxGPT or its facade.  Tasks: ``n_tasks`` fresh ones
    from ``sample_regression_tasks(n_tasks, model n_points, d, seed=seed, ...)``; ``x_dist`` None
    takes the training default (LSA U(−0.5, 0.5), GPT N(0, I)).  The control model is
    ``build_model(cfg with seed=control_seed)`` (default cfg.seed + 1).  ``probe``: ``"ridge"``
    (closed form, α = ``ridge_alpha``) or ``"mlp"`` (:class:`probes.mlp.MLPProbe`, Akyürek et al.'s
    2-layer GELU probe: w is encoded non-linearly; slower, ~1 s per cell and target).
    """
    if probe not in ("ridge", "mlp"):
        raise ValueError(f"probe must be 'ridge' or 'mlp', got {probe!r}")
    targets = _check_choice("targets", targets, TARGETS)
    positions = _check_choice("positions", positions, POSITIONS)
    module, facade, batch, setting = _setup(model, d, n_tasks, seed, x_dist, x_range, noise_std)
    control_seed = module.cfg.seed + 1 if control_seed is None else control_seed
    if control_seed == module.cfg.seed:
        raise ValueError(f"control_seed must differ from the model's init seed ({module.cfg.seed})")
    control = build_model(dataclasses.replace(module.cfg, seed=control_seed)).to(next(module.parameters()).device).eval()
    acts, ctrl = capture_residuals(facade, batch, positions), capture_residuals(control, batch, positions)
    eta = best_gd_eta(batch)[0]
    ys = regression_targets(batch, eta)
    names = ["embed", *map(str, range(module.n_layers))]
    keep = list(range(len(names))) if layers is None else [names.index(_check_choice("layers", [l], names)[0]) for l in layers]
    names = [names[i] for i in keep]
    acts = {p: a[keep] for p, a in acts.items()}
    ctrl = {p: a[keep] for p, a in ctrl.items()}
    make_probe = (lambda: RidgeProbe(alpha=ridge_alpha)) if probe == "ridge" else (lambda: MLPProbe(seed=seed))
    sweeps = {p: {t: probe_sweep(acts[p], ys[t], make_probe=make_probe, control_features=ctrl[p],
                                 layer_names=names, seed=seed, n_boot=n_boot, test_size=test_size) for t in targets}
              for p in positions}
    pos = token_positions(module, module.cfg.n_points)
    return ImplicitWeightProbeResult(setting, n_tasks, seed, control_seed, eta, ridge_alpha, {p: pos[p] for p in positions},
                                     names, sweeps, probe)


# --------------------------------------------------------------------------------------------
# layers against steps of GD


def _gd_trajectory(batch: RegressionBatch, etas: torch.Tensor, max_steps: int) -> torch.Tensor:
    """Query predictions [max_steps, n_eta, n_tasks] (float64) of t = 1..max_steps full-batch GD
    steps w ← w − η (1/N) Xᵀ(Xw − y) from w = 0, for every η at once."""
    X, y, x_q = batch.x[:, :-1].double(), batch.y[:, :-1].double(), batch.x[:, -1].double()
    etas = torch.as_tensor(etas, dtype=torch.float64).reshape(-1, 1, 1)
    w = torch.zeros(etas.shape[0], *x_q.shape, dtype=torch.float64)
    preds = []
    for _ in range(max_steps):
        grad = torch.einsum("bnd,ebn->ebd", X, torch.einsum("bnd,ebd->ebn", X, w) - y) / X.shape[1]
        w = w - etas * grad
        preds.append((w * x_q).sum(-1))
    return torch.stack(preds)


def gd_steps(batch: RegressionBatch, eta: float, t: int) -> torch.Tensor:
    """ŷ_q after ``t`` full-batch GD steps (learning rate ``eta``) from w = 0: [n_tasks] (t = 1 is
    :func:`~interp.linreg.gd.gd_one_step`; t → ∞ with a small enough η is least squares)."""
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be an int >= 1, got {t!r}")
    return _gd_trajectory(batch, torch.tensor([float(eta)]), t)[-1, 0].to(batch.x.dtype)


@dataclass
class GDStepsMatchResult:
    setting: dict
    n_tasks: int
    seed: int
    method: str  # "readout" (the LSA's own read-out) or "probe" (ridge probe to y_q)
    steps: list[int]
    etas: list[float]  # the η used for each t
    layer_names: list[str]
    error: list[list[float]]  # [layer][t]: mean (ŷ_layer − ŷ_GD,t)²
    best_steps: list[int]  # per layer, the t with the smallest error
    layer_loss: list[float]  # per layer, 0.5 · mean (ŷ_layer − y_q)²
    gd_loss: list[float]  # per t, 0.5 · mean (ŷ_GD,t − y_q)²

    def to_dict(self) -> dict:
        from analyses.report.html import json_safe

        return json_safe(dict(self.__dict__))  # a diverged GD run gives inf: None in JSON

    def figures(self) -> list:
        import plotly.graph_objects as go

        title = f"{_title(self.setting)}, {self.method}, n_tasks={self.n_tasks}"
        best = go.Figure([go.Scatter(x=self.layer_names, y=self.best_steps, mode="lines+markers", name="best-matching t"),
                          go.Scatter(x=self.layer_names, y=[i + 1 for i in range(len(self.layer_names))], mode="lines",
                                     name="Ahn et al.: layer l ≈ l+1 steps (preconditioned GD)", line=dict(dash="dash", color="gray"))])
        best.update_layout(title=f"GD steps best matching each layer's prediction — {title}", xaxis_title="layer",
                           yaxis_title="GD steps t (argmin mean squared difference)")
        err = go.Figure(go.Heatmap(z=np.log10(np.clip(np.array(self.error), 1e-30, 1e30)), x=self.steps, y=self.layer_names,
                                   colorbar=dict(title="log10 error")))
        err.update_layout(title=f"log10 mean (ŷ_layer − ŷ_GD,t)² — {title}", xaxis_title="GD steps t", yaxis_title="layer")
        err.update_yaxes(type="category")
        return [best, err]


@torch.no_grad()
def gd_steps_matched(model, d: int, max_steps: int = 8, n_tasks: int = 4096, seed: int = 0, eta: float | None = None,
                     etas: Sequence[float] | None = None, method: str = "auto", ridge_alpha: float = 1e-3,
                     x_dist: str | None = None, x_range: float | None = None, noise_std: float = 0.0) -> GDStepsMatchResult:
    """Match each layer's query prediction to t = 1..``max_steps`` steps of plain GD (module docstring).

    ``eta`` fixes the learning rate for every t; None line-searches it per t over ``etas`` (default
    :func:`~interp.linreg.gd.default_eta_grid`) by 0.5 · mean (ŷ_GD,t − y_q)², so t = 1 gets
    :func:`~interp.linreg.gd.best_gd_eta`'s η.  ``method``: "readout" (LSA only), "probe", or "auto"
    (readout for the LSA, probe for the GPT; the probe is scored on a held-out 30% of the tasks).
    """
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    module, facade, batch, setting = _setup(model, d, n_tasks, seed, x_dist, x_range, noise_std)
    method = _check_choice("method", method, ("auto", "readout", "probe"))[0]
    method = ("readout" if module.kind == "lsa" else "probe") if method == "auto" else method
    if method == "readout" and module.kind != "lsa":
        raise ValueError("method='readout' needs the LSA (its prediction is −y-slot); use 'probe' for the GPT")
    resid = capture_residuals(facade, batch, ["query"])["query"][1:].double()  # [L, n_tasks, d_model]
    y_q = batch.y[:, -1].double()
    rows = torch.arange(n_tasks)
    if method == "readout":
        preds = -resid[..., -1]
    else:
        tr, te = (torch.as_tensor(a) for a in split(n_tasks, None, 0.3, seed))
        preds = torch.stack([RidgeProbe(alpha=ridge_alpha).fit(r[tr], y_q[tr]).predict(r[te]) for r in resid])
        rows = te
    grid = torch.tensor([float(eta)]) if eta is not None else (
        default_eta_grid(batch) if etas is None else torch.as_tensor(etas, dtype=torch.float64).reshape(-1))
    traj = _gd_trajectory(batch, grid, max_steps)  # [T, E, b]
    losses = torch.nan_to_num(0.5 * (traj - y_q).pow(2).mean(-1), nan=math.inf)  # [T, E]
    best_e = losses.argmin(-1)
    gd = traj[torch.arange(max_steps), best_e]  # [T, b]
    error = torch.nan_to_num((preds[:, None] - gd[None, :, rows]).pow(2).mean(-1), nan=math.inf)  # [L, T]
    return GDStepsMatchResult(
        setting, n_tasks, seed, method, list(range(1, max_steps + 1)), [float(grid[e]) for e in best_e],
        [str(l) for l in range(module.n_layers)], error.tolist(), [int(i) + 1 for i in error.argmin(-1)],
        (0.5 * (preds - y_q[rows]).pow(2).mean(-1)).tolist(), losses[torch.arange(max_steps), best_e].tolist())
