"""Trained in-context regressor against one step of gradient descent (von Oswald et al. 2023, §3
and ``train.py::analyse``).

On fresh tasks (the model's training distribution unless told otherwise), with one-step GD from
W0 = 0 at the line-searched η (:func:`~interp.linreg.gd.best_gd_eta`), ŷ_GD(η) = η·s with
s = (1/N) Σ_i y_i x_iᵀ x_q:

- losses           0.5 · mean (ŷ − y_q)² for the trained model, GD, OLS and the zero predictor;
- preds diff       mean_t |ŷ_TF − ŷ_GD|                        (not squared, as the paper's code)
- sensitivities    g = ∂ŷ/∂x_q per task (autograd through the model; for GD g = η (1/N) Σ y_i x_i):
                   "model cos" mean_t cos(g_TF, g_GD) and "model diff" mean_t ||g_TF − g_GD||₂;
- effective η      the least-squares fit ŷ_TF ≈ η_eff · s (η_eff = Σ ŷ_TF s / Σ s²), i.e. the step
                   size of the GD update the model's predictions are closest to;
- out of distribution  x scaled by α (y = wᵀx scales with it): losses of the model and of GD at
                   the in-distribution η, and of GD re-line-searched at α.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from interp.linreg.gd import best_gd_eta, gd_one_step, ols
from interp.linreg.models import regression_module
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks
from interp.linreg.train import training_distribution


def _scaled(batch: RegressionBatch, alpha: float) -> RegressionBatch:
    return RegressionBatch(x=batch.x * alpha, y=batch.y * alpha, w=batch.w, noise_std=batch.noise_std * alpha)


def sensitivities(predict_fn, batch: RegressionBatch) -> torch.Tensor:
    """g_t = ∂ŷ_t/∂x_q,t for every task t: [tasks, d] (autograd; tasks do not interact)."""
    x = batch.x.detach().clone().requires_grad_(True)
    pred = predict_fn(RegressionBatch(x=x, y=batch.y, w=batch.w, noise_std=batch.noise_std))
    (grad,) = torch.autograd.grad(pred.sum(), x)
    return grad[:, -1].detach()


def _half_mse(pred: torch.Tensor, batch: RegressionBatch) -> float:
    return float(0.5 * (pred.double() - batch.y[:, -1].double()).pow(2).mean())


@dataclass
class TrainedVsGDResult:
    """Trained model vs line-searched one-step GD on the same tasks; see the module docstring."""

    model: dict
    d: int
    n_points: int
    n_tasks: int
    seed: int
    x_dist: str
    x_range: float
    loss: dict  # trained / gd / ols / zero: 0.5 · mean (ŷ − y_q)²
    gd_eta: float
    eta_effective: float
    preds_diff: float
    sensitivity_cos: float
    sensitivity_l2: float
    ood: dict = field(default_factory=dict)  # scales, trained, gd_same_eta, gd_best_eta
    intervals: dict = field(default_factory=dict)  # loss_trained, loss_gd, sensitivity_cos, preds_diff: 95% bootstrap over tasks

    @property
    def loss_ratio(self) -> float:
        """trained loss / best-η GD loss (1.01 = within 1%)."""
        return self.loss["trained"] / self.loss["gd"]

    @property
    def eta_relative_error(self) -> float:
        return abs(self.eta_effective - self.gd_eta) / self.gd_eta

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out.update(loss_ratio=self.loss_ratio, eta_relative_error=self.eta_relative_error)
        return out

    def figures(self) -> list:
        import plotly.graph_objects as go

        setting = f"{self.model.get('kind', '?')} d={self.d}, N={self.n_points - 1}, {self.n_tasks} tasks, seed {self.seed}"
        bars = go.Figure(go.Bar(x=list(self.loss), y=list(self.loss.values())))
        bars.update_layout(title=f"Query loss: trained model vs one-step GD (η={self.gd_eta:.3g}) — {setting}",
                           xaxis_title="predictor", yaxis_title="0.5 · mean (ŷ − y)²")
        figs = [bars]
        if self.ood:
            ood = go.Figure()
            for key, name in (("trained", "trained model"), ("gd_same_eta", "GD, in-distribution η"), ("gd_best_eta", "GD, η re-searched")):
                ood.add_trace(go.Scatter(x=self.ood["scales"], y=self.ood[key], mode="lines+markers", name=name))
            ood.update_layout(title=f"Out of distribution: x scaled by α — {setting}", xaxis_title="input scale α",
                              yaxis_title="0.5 · mean (ŷ − y)²", yaxis_type="log")
            figs.append(ood)
        return figs


@torch.no_grad()
def _predict(module, batch: RegressionBatch) -> torch.Tensor:
    return module.predict(batch).detach().double()


def trained_vs_gd(model, *, n_tasks: int = 10_000, seed: int = 5, x_dist: Literal["normal", "uniform"] | None = None,
                  x_range: float | None = None, n_points: int | None = None,
                  ood_scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0), etas=None) -> TrainedVsGDResult:
    """Compare ``model`` (a linreg module or ``load_model`` of one) with one GD step from W0 = 0.

    Tasks: ``n_tasks`` fresh ones (``seed``; von Oswald's eval seed is 5) with the model's
    ``n_points`` and d; ``x_dist`` / ``x_range`` default to the checkpoint's training distribution
    when the module carries one (``module.train_config``), else x ~ N(0, I).
    """
    module = regression_module(model)
    trained_on = training_distribution(module)
    if trained_on is None and x_dist is None:
        warnings.warn("the model carries no training config (not a checkpoint or train() output): tasks use x ~ N(0, I); "
                      "pass x_dist= / x_range= for the distribution its weights were made for (von Oswald's: 'uniform', 0.5)",
                      stacklevel=2)
    x_dist = x_dist or (trained_on[0] if trained_on else "normal")
    x_range = x_range if x_range is not None else (trained_on[1] if trained_on else 1.0)
    n_points = n_points or module.cfg.n_points
    d = module.cfg.d
    batch = sample_regression_tasks(n_tasks, n_points, d, x_dist=x_dist, x_range=x_range, seed=seed)
    eta, gd_loss = best_gd_eta(batch, etas)
    y_tf = _predict(module, batch)
    y_gd = gd_one_step(batch, eta).double()
    s = y_gd / eta  # ŷ_GD(η) = η · s from W0 = 0
    eta_eff = float((y_tf * s).sum() / s.pow(2).sum())

    was_training = module.training
    module.eval()
    try:
        g_tf = sensitivities(module.predict, batch).double()
    finally:
        module.train(was_training)
    g_gd = sensitivities(lambda b: gd_one_step(b, eta), batch).double()
    cos = torch.nn.functional.cosine_similarity(g_tf, g_gd, dim=-1, eps=1e-8)

    ood = {}
    if ood_scales:
        ood = {"scales": [float(a) for a in ood_scales], "trained": [], "gd_same_eta": [], "gd_best_eta": []}
        for a in ood_scales:
            b = _scaled(batch, float(a))
            ood["trained"].append(_half_mse(_predict(module, b), b))
            ood["gd_same_eta"].append(_half_mse(gd_one_step(b, eta), b))
            ood["gd_best_eta"].append(best_gd_eta(b, etas)[1])
    from interp.scoring import bootstrap_mean_interval

    y_q = batch.y[:, -1].double()
    per_task = {"loss_trained": 0.5 * (y_tf - y_q).pow(2), "loss_gd": 0.5 * (y_gd - y_q).pow(2), "sensitivity_cos": cos,
                "preds_diff": (y_tf - y_gd).abs()}
    intervals = {name: bootstrap_mean_interval(v.reshape(-1), seed=seed) for name, v in per_task.items()}
    return TrainedVsGDResult(
        intervals=intervals,
        model=module.cfg.to_dict(), d=d, n_points=n_points, n_tasks=n_tasks, seed=seed, x_dist=x_dist, x_range=float(x_range),
        loss={"trained": _half_mse(y_tf, batch), "gd": gd_loss, "ols": _half_mse(ols(batch), batch),
              "zero": float(0.5 * batch.y[:, -1].double().pow(2).mean())},
        gd_eta=eta, eta_effective=eta_eff, preds_diff=float((y_tf - y_gd).abs().mean()),
        sensitivity_cos=float(cos.mean()), sensitivity_l2=float((g_tf - g_gd).norm(dim=-1).mean()), ood=ood)
