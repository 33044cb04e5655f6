"""Probe metrics and a (cluster) bootstrap confidence interval.

- :func:`r2_score`: R² = 1 - SS_res / SS_tot per output, SS_res = Σᵢ (yᵢ - ŷᵢ)², SS_tot = Σᵢ (yᵢ - ȳ)²,
  averaged uniformly over outputs.  An output with SS_tot = 0 scores 1 if SS_res = 0, else 0
  (scikit-learn's ``force_finite`` convention).
- :func:`accuracy_score`: (1/n) Σᵢ [yᵢ = ŷᵢ].
- :func:`bootstrap_ci`: percentile bootstrap.  Each replicate draws the resampling units with
  replacement (rows, or whole groups when ``groups`` is given: the cluster bootstrap, which keeps
  rows of one prompt together so correlated rows are not counted as independent evidence),
  recomputes the metric on the rows drawn, and the interval is the [(1-c)/2, (1+c)/2] quantiles of
  the replicates.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from probes._convert import ArrayLike, as_labels, as_numpy

_CHUNK = 128  # bootstrap replicates computed at once on the vectorised paths


def _as_2d_float(y: ArrayLike) -> np.ndarray:
    a = np.asarray(as_numpy(y), dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"regression targets must be [n] or [n, k], got shape {a.shape}")
    return a


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """R² = 1 - SS_res/SS_tot, uniform average over outputs (SS_tot = 0: 1 if SS_res = 0 else 0)."""
    yt, yp = _as_2d_float(y_true), _as_2d_float(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} differ in shape")
    if yt.shape[0] == 0:
        raise ValueError("r2_score of zero rows")
    ss_res = ((yt - yp) ** 2).sum(0)
    ss_tot = ((yt - yt.mean(0)) ** 2).sum(0)
    return float(_r2_from_sums(ss_res, ss_tot).mean())


def _r2_from_sums(ss_res: np.ndarray, ss_tot: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    return np.where(ss_tot > 0, r2, np.where(ss_res > 0, 0.0, 1.0))


def accuracy_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Accuracy = (1/n) Σᵢ [yᵢ = ŷᵢ]."""
    yt, yp = as_labels(y_true), as_labels(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true {yt.shape} and y_pred {yp.shape} differ in shape")
    if yt.shape[0] == 0:
        raise ValueError("accuracy_score of zero rows")
    return float(np.mean(yt == yp))


class ConfidenceInterval(NamedTuple):
    """A percentile bootstrap interval ``(low, high)``."""

    low: float
    high: float


def _unit_codes(n: int, groups: ArrayLike | None) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = as_numpy(groups)
    if g.ndim != 1 or len(g) != n:
        raise ValueError(f"groups must be 1-D with one entry per row ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel()


def bootstrap_ci(
    metric_fn: Callable[[Any, Any], float],
    y_true: ArrayLike,
    y_pred: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric_fn(y_true, y_pred)``.

    Resampling units are rows, or the distinct values of ``groups`` (cluster bootstrap): a group
    drawn k times contributes all its rows k times.  Replicate counts are multinomial(G, 1/G) over
    the G units, drawn from ``numpy.random.Generator(PCG64(seed))``.  For :func:`r2_score` and
    :func:`accuracy_score` the replicates are computed in closed form from weighted sums (the same
    draws, the same values up to rounding); any other ``metric_fn`` is called on each replicate.
    Replicates where the metric is NaN are ignored.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    yt, yp = as_numpy(y_true), as_numpy(y_pred)
    n = len(yt)
    if len(yp) != n:
        raise ValueError(f"y_true has {n} rows, y_pred {len(yp)}")
    if n == 0:
        raise ValueError("bootstrap_ci of zero rows")
    codes = _unit_codes(n, groups)
    n_units = int(codes.max()) + 1
    rng = np.random.Generator(np.random.PCG64(seed))

    # per-unit sufficient statistics for the closed-form paths
    if metric_fn is accuracy_score:
        row_stats = np.stack([(as_labels(yt) == as_labels(yp)).astype(np.float64), np.ones(n)], 1)
    elif metric_fn is r2_score:
        t, p = _as_2d_float(yt), _as_2d_float(yp)
        if t.shape != p.shape:
            raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
        resid2 = (t - p) ** 2
        t = t - t.mean(0)  # shift for numerical stability of Σy² - (Σy)²/n
        row_stats = np.concatenate([np.ones((n, 1)), t, t**2, resid2], 1)
    else:
        row_stats = None
    if row_stats is not None:
        unit_stats = np.zeros((n_units, row_stats.shape[1]))
        np.add.at(unit_stats, codes, row_stats)

    reps = np.empty(n_boot)
    pvals = np.full(n_units, 1.0 / n_units)
    for start in range(0, n_boot, _CHUNK):
        m = min(_CHUNK, n_boot - start)
        counts = rng.multinomial(n_units, pvals, size=m).astype(np.float64)  # [m, G]
        if metric_fn is accuracy_score:
            s = counts @ unit_stats
            reps[start:start + m] = s[:, 0] / s[:, 1]
        elif metric_fn is r2_score:
            s = counts @ unit_stats
            k = (unit_stats.shape[1] - 1) // 3
            w, sy, syy, sres = s[:, :1], s[:, 1:1 + k], s[:, 1 + k:1 + 2 * k], s[:, 1 + 2 * k:]
            ss_tot = syy - sy**2 / w
            # Σy² - (Σy)²/n cancels to rounding noise (not exactly 0) when y is constant
            ss_tot = np.where(ss_tot <= 1e-12 * np.maximum(syy, 1e-300), 0.0, ss_tot)
            reps[start:start + m] = _r2_from_sums(sres, ss_tot).mean(1)
        else:
            for j in range(m):
                idx = np.repeat(np.arange(n), counts[j, codes].astype(np.int64))
                reps[start + j] = metric_fn(yt[idx], yp[idx])
    alpha = (1.0 - confidence) / 2
    if np.all(np.isnan(reps)):
        return ConfidenceInterval(float("nan"), float("nan"))
    lo, hi = np.nanquantile(reps, [alpha, 1.0 - alpha])
    return ConfidenceInterval(float(lo), float(hi))
