"""Closed-form linear probes in float64: ridge regression, a ridge classifier, and least squares.

Ridge (:class:`RidgeProbe`).  With ``fit_intercept`` the data are centred first,
``Xc = X - mean(X)``, ``Yc = Y - mean(Y)``, so the intercept is not penalised:

    primal (n >= d):  W = (Xcᵀ Xc + α I_d)⁻¹ Xcᵀ Yc
    dual   (n <  d):  W = Xcᵀ (Xc Xcᵀ + α I_n)⁻¹ Yc          (the same W, by the push-through identity)
    b = mean(Y) - mean(X) W,      prediction  Ŷ = X W + b.

The dual form solves an n × n system instead of a d × d one, which is what one wants for, say,
200 prompts of 4096-dimensional residual-stream vectors.

Ridge classifier (:class:`RidgeClassifierProbe`): targets are one-hot coded in {-1, +1}
(T[i, c] = +1 if y_i is class c, else -1), W and b are fitted by ridge on T, and the prediction is
the class with the largest score, argmax_c (X W + b)[:, c].  Han et al. (2023) probed key and value
vectors this way with λ = 0.01.

Least squares (:class:`LinearProbe`): W = pinv(Xc) Yc, the minimum-norm solution of
min ||Xc W - Yc||², which is the α → 0 limit of ridge.
"""
from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
from jaxtyping import Float

from probes._convert import ArrayLike, as_features, as_float64, as_labels
from probes.metrics import accuracy_score, r2_score

Solver = Literal["auto", "primal", "dual"]


class _LinearRegressor:
    """Shared prediction and scoring for the closed-form regressors (Ŷ = X W + b)."""

    task: ClassVar[str] = "regression"
    coef_: torch.Tensor
    intercept_: torch.Tensor
    fit_intercept: bool

    def _prepare(self, X: ArrayLike, y: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred X [n, d], centred Y [n, k], and their column means (zeros without intercept)."""
        Xt = as_features(X)
        Yt = as_float64(y, Xt.device)
        self._y_1d = Yt.ndim == 1
        if Yt.ndim == 1:
            Yt = Yt[:, None]
        if Yt.ndim != 2 or Yt.shape[0] != Xt.shape[0]:
            raise ValueError(f"X has {Xt.shape[0]} rows but y has shape {tuple(Yt.shape)}")
        if Xt.shape[0] == 0:
            raise ValueError("cannot fit a probe on zero rows")
        if self.fit_intercept:
            x_mean, y_mean = Xt.mean(0), Yt.mean(0)
        else:
            x_mean = torch.zeros(Xt.shape[1], dtype=Xt.dtype, device=Xt.device)
            y_mean = torch.zeros(Yt.shape[1], dtype=Yt.dtype, device=Yt.device)
        return Xt - x_mean, Yt - y_mean, x_mean, y_mean

    def _finish(self, W: torch.Tensor, x_mean: torch.Tensor, y_mean: torch.Tensor) -> None:
        b = y_mean - x_mean @ W
        self.coef_ = W[:, 0] if self._y_1d else W
        self.intercept_ = b[0] if self._y_1d else b
        self.n_features_in_ = W.shape[0]

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    def predict(self, X: ArrayLike) -> Float[torch.Tensor, "n *k"]:
        """Ŷ = X W + b as float64, [n] for a 1-D target, [n, k] otherwise."""
        self._check_fitted()
        Xt = as_features(X, self.coef_.device)
        if Xt.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xt.shape[1]} features, the probe was fitted on {self.n_features_in_}")
        return Xt @ self.coef_ + self.intercept_

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """R² = 1 - SS_res / SS_tot, averaged uniformly over outputs (see :func:`probes.metrics.r2_score`)."""
        return r2_score(y, self.predict(X))


class RidgeProbe(_LinearRegressor):
    """Ridge regression W = (XcᵀXc + αI)⁻¹XcᵀYc on centred data (intercept not penalised).

    ``solver="auto"`` uses the primal d × d system when n >= d and the dual n × n system
    W = Xcᵀ(XcXcᵀ + αI)⁻¹Yc when n < d; ``"primal"``/``"dual"`` force one.  ``alpha=0`` gives the
    minimum-norm least-squares solution (as :class:`LinearProbe`).

    After ``fit``: ``coef_`` is W, [d] for a 1-D target or [d, k]; ``intercept_`` is b ([] or [k]);
    both float64 tensors on the device of X.
    """

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True, solver: Solver = "auto"):
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if solver not in ("auto", "primal", "dual"):
            raise ValueError(f"solver must be 'auto', 'primal' or 'dual', got {solver!r}")
        self.alpha = float(alpha)
        self.fit_intercept = fit_intercept
        self.solver = solver

    def __repr__(self) -> str:
        return f"RidgeProbe(alpha={self.alpha}, fit_intercept={self.fit_intercept}, solver={self.solver!r})"

    def fit(self, X: ArrayLike, y: ArrayLike) -> "RidgeProbe":
        Xc, Yc, x_mean, y_mean = self._prepare(X, y)
        n, d = Xc.shape
        if self.alpha == 0:
            W = torch.linalg.pinv(Xc) @ Yc
        else:
            dual = self.solver == "dual" or (self.solver == "auto" and n < d)
            if dual:
                K = Xc @ Xc.T
                K.diagonal().add_(self.alpha)
                W = Xc.T @ torch.linalg.solve(K, Yc)
            else:
                G = Xc.T @ Xc
                G.diagonal().add_(self.alpha)
                W = torch.linalg.solve(G, Xc.T @ Yc)
            self.solver_used_ = "dual" if dual else "primal"
        self._finish(W, x_mean, y_mean)
        return self


class LinearProbe(_LinearRegressor):
    """Ordinary least squares, W = pinv(Xc) Yc: the minimum-norm minimiser of ||Xc W - Yc||²."""

    def __init__(self, fit_intercept: bool = True):
        self.fit_intercept = fit_intercept

    def __repr__(self) -> str:
        return f"LinearProbe(fit_intercept={self.fit_intercept})"

    def fit(self, X: ArrayLike, y: ArrayLike) -> "LinearProbe":
        Xc, Yc, x_mean, y_mean = self._prepare(X, y)
        self._finish(torch.linalg.pinv(Xc) @ Yc, x_mean, y_mean)
        return self


class RidgeClassifierProbe:
    """Ridge on {-1, +1} one-hot targets; predict = argmax_c (X W + b)[:, c]; score = accuracy.

    ``classes_`` are the sorted unique training labels (numpy array); ``predict`` returns labels
    from ``classes_``.  ``coef_`` [d, K] and ``intercept_`` [K] are the ridge fit on the coded
    targets.  Han et al. (2023) used alpha = 0.01 on key/value vectors.
    """

    task: ClassVar[str] = "classification"

    def __init__(self, alpha: float = 1.0, fit_intercept: bool = True, solver: Solver = "auto"):
        RidgeProbe(alpha, fit_intercept, solver)  # validates the arguments
        self.alpha = float(alpha)
        self.fit_intercept = fit_intercept
        self.solver = solver

    def __repr__(self) -> str:
        return f"RidgeClassifierProbe(alpha={self.alpha}, fit_intercept={self.fit_intercept})"

    def fit(self, X: ArrayLike, y: ArrayLike) -> "RidgeClassifierProbe":
        labels = as_labels(y)
        self.classes_, codes = np.unique(labels, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"need at least 2 classes to fit a classifier, got {len(self.classes_)}")
        Xt = as_features(X)
        T = -torch.ones(len(labels), len(self.classes_), dtype=torch.float64, device=Xt.device)
        T[torch.arange(len(labels), device=Xt.device), torch.as_tensor(codes.ravel(), device=Xt.device)] = 1.0
        self._ridge = RidgeProbe(self.alpha, self.fit_intercept, self.solver).fit(Xt, T)
        self.coef_ = self._ridge.coef_
        self.intercept_ = self._ridge.intercept_
        return self

    def decision_function(self, X: ArrayLike) -> Float[torch.Tensor, "n K"]:
        """Per-class scores X W + b, [n, K] float64."""
        if not hasattr(self, "_ridge"):
            raise RuntimeError("RidgeClassifierProbe is not fitted; call fit(X, y) first")
        return self._ridge.predict(X)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The class with the largest score, as labels from ``classes_`` (numpy array)."""
        return self.classes_[self.decision_function(X).argmax(1).cpu().numpy()]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy: the fraction of rows whose predicted label equals y."""
        return accuracy_score(y, self.predict(X))
