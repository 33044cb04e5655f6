"""Sampler for in-context linear regression tasks.

Each task draws a weight vector ``w ~ N(0, I_d)`` and ``n_points`` inputs ``x``; the targets are
``y = x . w + noise_std * eps`` with ``eps ~ N(0, 1)``.  A transformer sees
``(x_1, y_1), ..., (x_{n-1}, y_{n-1}), x_n`` and predicts ``y_n`` (Garg et al. 2022, "What can
transformers learn in-context?"; von Oswald et al. 2023, "Transformers learn in-context by
gradient descent").

Inputs are ``x ~ N(0, I_d)`` (Garg et al.) or ``x ~ U(-x_range, x_range)^d``; von Oswald et al.'s
code uses ``U(-0.5, 0.5)``, i.e. ``x_dist="uniform", x_range=0.5``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

_X_DISTS = ("normal", "uniform")


@dataclass
class RegressionBatch:
    """A batch of regression tasks: ``y[t] = x[t] @ w[t] + noise_std * eps``."""

    x: torch.Tensor  # [n_tasks, n_points, d]
    y: torch.Tensor  # [n_tasks, n_points]
    w: torch.Tensor  # [n_tasks, d]
    noise_std: float


def _check_size(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def sample_regression_tasks(
    n_tasks: int,
    n_points: int,
    d: int,
    *,
    x_dist: Literal["normal", "uniform"] = "normal",
    x_range: float = 1.0,
    noise_std: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> RegressionBatch:
    """Sample ``n_tasks`` linear regression tasks of ``n_points`` points in ``d`` dimensions.

    ``x ~ N(0, I_d)`` for ``x_dist="normal"`` (``x_range`` is ignored) or
    ``x ~ U(-x_range, x_range)^d`` for ``x_dist="uniform"`` (von Oswald et al. use 0.5);
    ``w ~ N(0, I_d)``; ``y = x . w + noise_std * eps``.

    Uses a local ``torch.Generator`` seeded with ``seed`` (the global RNG is not touched), on
    the CPU.  Draw order is x, w, then noise, so for a seed ``x`` and ``w`` do not depend on
    ``noise_std``; with ``noise_std=0`` ``y`` is exactly ``(x @ w[..., None])[..., 0]``.
    """
    _check_size("n_tasks", n_tasks)
    _check_size("n_points", n_points)
    _check_size("d", d)
    if x_dist not in _X_DISTS:
        raise ValueError(f"x_dist must be one of {_X_DISTS}, got {x_dist!r}")
    if not (isinstance(x_range, (int, float)) and math.isfinite(x_range) and x_range > 0):
        raise ValueError(f"x_range must be a finite number > 0, got {x_range!r}")
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"dtype must be a floating-point torch dtype (e.g. torch.float32), got {dtype!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")

    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    shape = (n_tasks, n_points, d)
    if x_dist == "normal":
        x = torch.randn(shape, generator=g, dtype=dtype)
    else:
        x = (torch.rand(shape, generator=g, dtype=dtype) * 2 - 1) * x_range
    w = torch.randn((n_tasks, d), generator=g, dtype=dtype)
    y = (x @ w.unsqueeze(-1)).squeeze(-1)
    if noise_std > 0:
        y = y + noise_std * torch.randn((n_tasks, n_points), generator=g, dtype=dtype)
    return RegressionBatch(x=x, y=y, w=w, noise_std=float(noise_std))
