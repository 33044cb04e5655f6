"""Hand-built gradient-descent attention and classical in-context regression learners.

One GD step as a linear self-attention layer (von Oswald et al. 2023, §2, ``src/data.py::
create_weights``): with tokens e_i = (x_i, y_i), the query token (x_q, −W0 x_q) and

    W_K = W_Q = [[I_d, 0], [0, 0]],   W_V = [[0, 0], [W0, −1]],   P = (η/N) I_{d+1},

the layer adds (0, −ΔW x_j) to every token, ΔW = −η ∇L(W0), L(W) = (1/2N) Σ_i ||W x_i − y_i||²,
so the read-out ŷ = −(query y-slot) = (W0 − η ∇L(W0)) x_q — exactly :func:`gd_one_step`.

Reference learners (Garg et al. 2022; Akyürek et al. 2022), each mapping a
:class:`~interp.linreg.sampler.RegressionBatch` (context = all points but the last, query = the
last) to predictions [b] for the query:

- :func:`gd_one_step`   ŵ = w0 − η (1/N) Σ_i (w0·x_i − y_i) x_i
- :func:`ols`           min-norm least squares ŵ = X⁺ y
- :func:`ridge`         ŵ = argmin Σ_i (w·x_i − y_i)² + λ ||w||²  (sum, not mean: Akyürek's convention)
- :func:`sgd_one_pass`  one pass, batch size 1, in context order: w ← w − lr (w·x_i − y_i) x_i
                         (per-sample loss ½(w·x − y)²; Akyürek's α = lr / 2)
- :func:`knn`           uniform mean of the k nearest context ys (Euclidean)
- :func:`nadaraya_watson`  Σ_i softmax_i(s_i) y_i with s_i = −||x_q − x_i||² / h ("rbf") or x_q·x_i / h ("dot")
- :func:`averaging`     ŵ = (1/N) Σ_i y_i x_i  (= one GD step from 0 with η = 1)

:func:`best_gd_eta` is von Oswald's line search (``train.py::scan_lrs``) for the one-step GD
learning rate; :func:`error_vs_k` is Garg et al.'s normalised squared error (ŷ − y_q)²/d against the
number of in-context examples k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from interp.linreg.models import LinearSelfAttention, LSAConfig
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks


# --------------------------------------------------------------------------------------------
# the hand-built GD layer


def _as_w0(w0, d: int) -> torch.Tensor:
    if w0 is None:
        return torch.zeros(d)
    w0 = torch.as_tensor(w0, dtype=torch.float32).reshape(-1)
    if w0.numel() != d:
        raise ValueError(f"w0 must have d={d} entries (one output: W0 is [1, d]), got shape {tuple(w0.shape)}")
    return w0


def gd_layer_weights(d: int, eta: float, n_points: int, w0=None) -> dict[str, torch.Tensor]:
    """State dict of a 1-layer 1-head :class:`LinearSelfAttention` (d_head = d+1) whose forward is
    one GD step on L(W) = (1/2N) Σ ||W x_i − y_i||² from W0 (``w0`` [d], default 0), N = n_points − 1.

    ``n_points`` counts the context and the query, as in the sampler; P = (η/N) I.
    """
    cfg = LSAConfig(d=d, n_points=n_points)  # validates d, n_points
    if not (isinstance(eta, (int, float)) and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number, got {eta!r}")
    w0 = _as_w0(w0, d)
    n_ctx_points = cfg.n_points - 1
    qk = torch.zeros(d + 1, d + 1)
    qk[:d, :d] = torch.eye(d)
    w_v = torch.zeros(d + 1, d + 1)
    w_v[d, :d] = w0
    w_v[d, d] = -1.0
    p = torch.eye(d + 1) * (eta / n_ctx_points)
    return {
        "query_w0": w0.clone(),
        "blocks.0.attn.W_Q": qk[None].clone(),
        "blocks.0.attn.W_K": qk[None].clone(),
        "blocks.0.attn.W_V": w_v[None],
        "blocks.0.attn.P": p[None],
    }


def hand_built_gd_model(d: int, eta: float, n_points: int, w0=None) -> LinearSelfAttention:
    """The :class:`LinearSelfAttention` with :func:`gd_layer_weights` loaded (eval mode)."""
    model = LinearSelfAttention(LSAConfig(d=d, n_points=n_points))
    model.load_state_dict(gd_layer_weights(d, eta, n_points, w0), strict=True)
    return model.eval()


# --------------------------------------------------------------------------------------------
# reference learners


def _split(batch: RegressionBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(X [b, N, d], y [b, N], x_q [b, d], y_q [b]) from a batch whose last point is the query."""
    if not isinstance(batch, RegressionBatch):
        raise ValueError(f"expected a RegressionBatch (interp.linreg.sample_regression_tasks), got {type(batch).__name__}")
    if batch.x.ndim != 3 or batch.x.shape[1] < 2:
        raise ValueError("the batch needs at least one context point and the query: x [tasks, n_points >= 2, d]")
    return batch.x[:, :-1], batch.y[:, :-1], batch.x[:, -1], batch.y[:, -1]


def _predict_linear(w: torch.Tensor, x_q: torch.Tensor) -> torch.Tensor:
    return (w * x_q).sum(-1)


def gd_one_step(batch: RegressionBatch, eta: float, w0=None) -> torch.Tensor:
    """ŷ = (w0 − η ∇L(w0))·x_q, L(w) = (1/2N) Σ_i (w·x_i − y_i)²: [b]."""
    X, y, x_q, _ = _split(batch)
    w0 = _as_w0(w0, X.shape[-1]).to(X)
    resid = X @ w0 - y  # [b, N]
    grad = (resid.unsqueeze(-1) * X).mean(1)  # [b, d]
    return _predict_linear(w0 - eta * grad, x_q)


def ols(batch: RegressionBatch) -> torch.Tensor:
    """Min-norm least squares ŵ = X⁺ y (computed in float64): [b]."""
    X, y, x_q, _ = _split(batch)
    w = torch.linalg.pinv(X.double()) @ y.double().unsqueeze(-1)
    return _predict_linear(w.squeeze(-1), x_q.double()).to(batch.x.dtype)


def ridge(batch: RegressionBatch, lam: float) -> torch.Tensor:
    """ŵ = argmin Σ_i (w·x_i − y_i)² + λ ||w||² (float64; the dual form when N < d): [b].

    λ = 0 is :func:`ols` (the min-norm solution).
    """
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0 (0 gives OLS), got {lam!r}")
    if lam == 0:
        return ols(batch)
    X, y, x_q, _ = _split(batch)
    X, y = X.double(), y.double().unsqueeze(-1)
    n, d = X.shape[1], X.shape[2]
    if n >= d:
        w = torch.linalg.solve(X.mT @ X + lam * torch.eye(d, dtype=X.dtype), X.mT @ y)
    else:
        w = X.mT @ torch.linalg.solve(X @ X.mT + lam * torch.eye(n, dtype=X.dtype), y)
    return _predict_linear(w.squeeze(-1), x_q.double()).to(batch.x.dtype)


def sgd_one_pass(batch: RegressionBatch, lr: float, w0=None) -> torch.Tensor:
    """One pass of SGD, batch size 1, through the context in order: w ← w − lr (w·x_i − y_i) x_i: [b]."""
    X, y, x_q, _ = _split(batch)
    w = _as_w0(w0, X.shape[-1]).to(X).expand(X.shape[0], -1).clone()
    for i in range(X.shape[1]):
        w = w - lr * ((w * X[:, i]).sum(-1) - y[:, i]).unsqueeze(-1) * X[:, i]
    return _predict_linear(w, x_q)


def knn(batch: RegressionBatch, k: int = 3) -> torch.Tensor:
    """Uniform mean of the ys of the k nearest context points to x_q (Euclidean; k capped at N): [b]."""
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    X, y, x_q, _ = _split(batch)
    dist = (X - x_q.unsqueeze(1)).pow(2).sum(-1)  # [b, N]
    idx = dist.topk(min(k, X.shape[1]), dim=-1, largest=False).indices
    return y.gather(1, idx).mean(-1)


def nadaraya_watson(batch: RegressionBatch, bandwidth: float, kernel: Literal["rbf", "dot"] = "rbf") -> torch.Tensor:
    """Σ_i softmax_i(s_i) y_i with s_i = −||x_q − x_i||² / bandwidth (``"rbf"``, a Gaussian kernel)
    or s_i = x_q·x_i / bandwidth (``"dot"``, softmax attention's kernel): [b]."""
    if not (isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0, got {bandwidth!r}")
    X, y, x_q, _ = _split(batch)
    if kernel == "rbf":
        s = -(X - x_q.unsqueeze(1)).pow(2).sum(-1) / bandwidth
    elif kernel == "dot":
        s = (X * x_q.unsqueeze(1)).sum(-1) / bandwidth
    else:
        raise ValueError(f"kernel must be 'rbf' or 'dot', got {kernel!r}")
    return (s.softmax(-1) * y).sum(-1)


def averaging(batch: RegressionBatch) -> torch.Tensor:
    """ŵ = (1/N) Σ_i y_i x_i (Garg et al.'s averaging baseline): [b]."""
    X, y, x_q, _ = _split(batch)
    return _predict_linear((y.unsqueeze(-1) * X).mean(1), x_q)


def default_eta_grid(batch: RegressionBatch) -> torch.Tensor:
    """von Oswald's grid arange(0.001, 25, 0.1) for x ~ U(−0.5, 0.5) (E x² = 1/12), rescaled by
    (1/12) / mean(x²) so it covers the same range of effective step sizes for any input scale
    (x ~ N(0, I): 0.001 … 2.08 in steps of 0.0083)."""
    scale = (1 / 12) / float(batch.x[:, :-1].double().pow(2).mean())
    return torch.arange(0.001, 25, 0.1, dtype=torch.float64) * scale


def best_gd_eta(batch: RegressionBatch, etas: Sequence[float] | torch.Tensor | None = None, w0=None) -> tuple[float, float]:
    """(η, loss): the grid η with the lowest loss 0.5 · mean_tasks (ŷ_GD(η) − y_q)² (von Oswald's
    outer loss; line search of ``train.py::scan_lrs``).  ``etas`` defaults to
    :func:`default_eta_grid`.  ŷ is affine in η, so the whole grid is scored at once (float64)."""
    X, y, x_q, y_q = _split(batch)
    w0t = _as_w0(w0, X.shape[-1]).double()
    X, y, x_q, y_q = X.double(), y.double(), x_q.double(), y_q.double()
    base = x_q @ w0t  # [b]
    grad = ((X @ w0t - y).unsqueeze(-1) * X).mean(1)
    step = -(grad * x_q).sum(-1)  # ŷ(η) = base + η·step
    etas = default_eta_grid(batch) if etas is None else torch.as_tensor(etas, dtype=torch.float64).reshape(-1)
    if etas.numel() == 0:
        raise ValueError("etas is empty: pass a grid of learning rates, or None for the default grid")
    err = base[None] + etas[:, None] * step[None] - y_q[None]  # [n_eta, b]
    losses = 0.5 * err.pow(2).mean(-1)
    i = int(losses.argmin())
    return float(etas[i]), float(losses[i])


# --------------------------------------------------------------------------------------------
# error against the number of in-context examples (Garg et al. 2022)


@dataclass
class ErrorCurve:
    """Normalised squared error (ŷ − y_q)²/d against the number of in-context examples k."""

    k: list[int]
    mean: list[float]
    ci_low: list[float]
    ci_high: list[float]
    d: int
    n_tasks: int
    seed: int
    setting: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def error_vs_k(predict_fn: Callable[[RegressionBatch], torch.Tensor], d: int, k_values: Sequence[int], n_tasks: int = 1280,
               seed: int = 0, *, x_dist: Literal["normal", "uniform"] = "normal", x_range: float = 1.0,
               noise_std: float = 0.0, n_bootstrap: int = 1000, confidence: float = 0.9) -> ErrorCurve:
    """Garg et al.'s curve: for each k, ``n_tasks`` fresh tasks with k context points and a query
    (seed ``seed + k``), error_t = (predict_fn(batch)_t − y_q,t)² / d; mean and a bootstrap
    ``confidence`` interval over tasks (``n_bootstrap`` resamples, seeded).  ``predict_fn`` maps a
    batch to [n_tasks] query predictions (e.g. ``model.predict``, ``ols``, ``lambda b: knn(b, 3)``)."""
    if not k_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in k_values):
        raise ValueError(f"k_values must be a non-empty list of ints >= 1 (context sizes), got {k_values!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    g = torch.Generator().manual_seed(seed)
    means, lows, highs = [], [], []
    for k in k_values:
        batch = sample_regression_tasks(n_tasks, k + 1, d, x_dist=x_dist, x_range=x_range, noise_std=noise_std, seed=seed + k)
        with torch.no_grad():
            pred = predict_fn(batch)
        pred = pred.detach().to("cpu", torch.float64).reshape(-1)
        if pred.numel() != n_tasks:
            raise ValueError(f"predict_fn must return one prediction per task ([{n_tasks}]), got {pred.numel()} values")
        err = (pred - batch.y[:, -1].double()).pow(2) / d
        boot = err[torch.randint(n_tasks, (n_bootstrap, n_tasks), generator=g)].mean(-1)
        alpha = (1 - confidence) / 2
        means.append(float(err.mean()))
        lows.append(float(boot.quantile(alpha)))
        highs.append(float(boot.quantile(1 - alpha)))
    return ErrorCurve(k=list(k_values), mean=means, ci_low=lows, ci_high=highs, d=d, n_tasks=n_tasks, seed=seed,
                      setting={"x_dist": x_dist, "x_range": x_range, "noise_std": noise_std, "confidence": confidence})
