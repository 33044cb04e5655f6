"""Multinomial logistic-regression probe with an L2 penalty, fitted by L-BFGS in float64.

Features are standardised internally, zᵢ = (xᵢ - μ) / σ (σ from the training rows; constant
features keep σ = 1).  With classes c = 1..K, weights W [d, K] and intercepts b [K] the probe
minimises

    L(W, b) = Σᵢ -log softmax(zᵢ W + b)[yᵢ]  +  1/(2C) · ||W||²_F

(the intercept is not penalised; scikit-learn's ``LogisticRegression(C=C)`` objective on
standardised features), divided by n for conditioning, which leaves the minimiser unchanged.
The optimiser is ``torch.optim.LBFGS`` with a strong-Wolfe line search from W = 0, b = 0, so a fit
is deterministic.  ``coef_`` and ``intercept_`` are mapped back to the raw features:
coef_ = W / σ, intercept_ = b - μ · coef_, so logits = X coef_ + intercept_.
"""
from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float

from probes._convert import ArrayLike, as_features, as_labels
from probes.metrics import accuracy_score


class LogisticProbe:
    """Multinomial logistic regression, penalty 1/(2C)·||W||² on standardised features, L-BFGS.

    ``classes_`` are the sorted unique training labels; ``predict`` maps back to them.
    ``C=math.inf`` fits without a penalty (diverges on separable data: use a finite C there).
    """

    task: ClassVar[str] = "classification"

    def __init__(self, C: float = 1.0, max_iter: int = 200, tol: float = 1e-9, history_size: int = 20):
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C}")
        self.C = float(C)
        self.max_iter = int(max_iter)
        self.tol = float(tol)
        self.history_size = int(history_size)

    def __repr__(self) -> str:
        return f"LogisticProbe(C={self.C}, max_iter={self.max_iter})"

    def fit(self, X: ArrayLike, y: ArrayLike) -> "LogisticProbe":
        labels = as_labels(y)
        Xt = as_features(X)
        if len(labels) != Xt.shape[0]:
            raise ValueError(f"X has {Xt.shape[0]} rows but y has {len(labels)}")
        self.classes_, codes = np.unique(labels, return_inverse=True)
        K = len(self.classes_)
        if K < 2:
            raise ValueError(f"need at least 2 classes to fit a classifier, got {K}")
        n, d = Xt.shape
        target = torch.as_tensor(codes.ravel(), dtype=torch.long, device=Xt.device)
        mu = Xt.mean(0)
        sigma = Xt.std(0, unbiased=False)
        sigma = torch.where(sigma > 1e-12 * (1 + mu.abs()), sigma, torch.ones_like(sigma))
        Z = (Xt - mu) / sigma

        W = torch.zeros(d, K, dtype=torch.float64, device=Xt.device, requires_grad=True)
        b = torch.zeros(K, dtype=torch.float64, device=Xt.device, requires_grad=True)
        lam = 0.0 if math.isinf(self.C) else 1.0 / (2.0 * self.C * n)
        opt = torch.optim.LBFGS(
            [W, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol, tolerance_change=self.tol * 1e-3,
            history_size=self.history_size, line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(Z @ W + b, target, reduction="mean") + lam * (W * W).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.n_iter_ = int(opt.state[opt.param_groups[0]["params"][0]].get("n_iter", 0))
        with torch.no_grad():
            self.loss_ = float(F.cross_entropy(Z @ W + b, target) + lam * (W * W).sum())
            coef = W.detach() / sigma[:, None]
            self.coef_ = coef
            self.intercept_ = b.detach() - mu @ coef
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("LogisticProbe is not fitted; call fit(X, y) first")

    def decision_function(self, X: ArrayLike) -> Float[torch.Tensor, "n K"]:
        """Logits X coef_ + intercept_, [n, K] float64."""
        self._check_fitted()
        Xt = as_features(X, self.coef_.device)
        if Xt.shape[1] != self.coef_.shape[0]:
            raise ValueError(f"X has {Xt.shape[1]} features, the probe was fitted on {self.coef_.shape[0]}")
        return Xt @ self.coef_ + self.intercept_

    def predict_proba(self, X: ArrayLike) -> Float[torch.Tensor, "n K"]:
        """softmax of the logits; column c is P(y = classes_[c] | x)."""
        return torch.softmax(self.decision_function(X), dim=1)

    def predict(self, X: ArrayLike) -> np.ndarray:
        """The most probable class, as labels from ``classes_`` (numpy array)."""
        return self.classes_[self.decision_function(X).argmax(1).cpu().numpy()]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Accuracy: the fraction of rows whose predicted label equals y."""
        return accuracy_score(y, self.predict(X))
