"""A two-layer MLP regression probe (Akyürek et al. 2022, §5 and App. E: "FF = linear or 2-layer
MLP (512, GeLU)"; their MLP probes read w from the residual stream where linear ones could not,
the encoding being non-linear).

    Ŷ = GELU(X̃ W1 + b1) W2 + b2,     X̃ = (X − mean_train X) / std_train X

fitted by full-batch Adam on the mean squared error (``epochs`` steps, ``lr``, L2 ``weight_decay``)
from an initialisation seeded by ``seed``: the same data and seed give the same probe.  Always
read its score beside a random-init control (:func:`probes.evaluate.evaluate_probe` with
``control_X``): an MLP can decode more than a linear map, including from an untrained network.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from jaxtyping import Float

from probes._convert import ArrayLike, as_features, as_float64
from probes.metrics import r2_score


class MLPProbe:
    """Regression probe: one hidden GELU layer of ``hidden`` units (float32 training)."""

    task: ClassVar[str] = "regression"

    def __init__(self, hidden: int = 256, epochs: int = 1500, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0):
        for name, value in (("hidden", hidden), ("epochs", epochs)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={lr!r}, weight_decay={weight_decay!r}")
        self.hidden, self.epochs, self.lr, self.weight_decay, self.seed = hidden, epochs, lr, weight_decay, seed
        self.net: torch.nn.Sequential | None = None

    def __repr__(self) -> str:
        return f"MLPProbe(hidden={self.hidden}, epochs={self.epochs}, lr={self.lr}, weight_decay={self.weight_decay}, seed={self.seed})"

    def fit(self, X: ArrayLike, y: ArrayLike) -> "MLPProbe":
        X = as_features(X).float()
        Y = as_float64(y).float()
        self._vector = Y.ndim == 2
        Y = Y if self._vector else Y.reshape(-1, 1)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but y has {Y.shape[0]}")
        self.x_mean_, self.x_std_ = X.mean(0), X.std(0) + 1e-6
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], self.hidden), torch.nn.GELU(), torch.nn.Linear(self.hidden, Y.shape[1]))
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        Xn = (X - self.x_mean_) / self.x_std_
        with torch.enable_grad():
            for _ in range(self.epochs):
                opt.zero_grad(set_to_none=True)
                loss = (self.net(Xn) - Y).pow(2).mean()
                loss.backward()
                opt.step()
        return self

    def predict(self, X: ArrayLike) -> Float[torch.Tensor, "n *k"]:
        if self.net is None:
            raise ValueError("this MLPProbe is not fitted yet: call fit(X, y) first")
        with torch.no_grad():
            out = self.net((as_features(X).float() - self.x_mean_) / self.x_std_).double()
        return out if self._vector else out[:, 0]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """R² of the predictions (uniform average over output columns)."""
        return r2_score(y, self.predict(X))
