"""Fit one probe and report its test score with a confidence interval and controls beside it.

:func:`evaluate_probe` splits the rows (by group when ``groups`` is given, see
:mod:`probes.splits`), fits ``make_probe()`` on the train rows and scores it on the test rows
(R² for regression, accuracy for classification), with a percentile (cluster) bootstrap interval
over the test rows (:func:`probes.metrics.bootstrap_ci`).  Beside it, on the same split:

- ``control_shuffled``: the same probe on the same features with the targets permuted
  (Hewitt & Liang 2019's point that a probe's score means little without a control task).  The
  permutation is done separately within the train rows and within the test rows.  When
  ``groups`` is given and the target is constant within every group, it permutes the
  group → target mapping instead, so the control keeps the group structure (all rows of a prompt
  still share one, now random, target).
- ``control_random_init`` (when ``control_X`` is given): the same probe on features of the same
  rows taken from a randomly initialised model of the same architecture, with the true targets:
  what the architecture and the input alone make decodable.

    selectivity = score - max(available controls)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal

import numpy as np

from probes._convert import ArrayLike, as_numpy, index, n_rows
from probes.metrics import accuracy_score, bootstrap_ci, r2_score
from probes.splits import Split, group_codes, split

Task = Literal["regression", "classification"]
METRICS: dict[str, tuple[str, Callable[[Any, Any], float]]] = {
    "regression": ("r2", r2_score),
    "classification": ("accuracy", accuracy_score),
}


def _json_float(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class ProbeScore:
    """A probe's test score, its bootstrap interval, and the controls beside it.

    ``selectivity = score - max(control_shuffled, control_random_init if measured)``.
    """

    metric: str
    score: float
    ci_low: float
    ci_high: float
    control_shuffled: float
    control_random_init: float | None
    selectivity: float
    n_train: int
    n_test: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (non-finite floats become None)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = _json_float(v)
        return d


def shuffled_targets(
    y: ArrayLike, train_idx: np.ndarray, test_idx: np.ndarray, groups: ArrayLike | None, seed: int
) -> np.ndarray:
    """Targets permuted within the train rows and within the test rows (see the module docstring).

    With ``groups`` and a target constant within every group, whole groups swap targets;
    otherwise rows are permuted.  Rows in neither index keep their target.
    """
    y_np = as_numpy(y)
    out = y_np.copy()
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED])))
    codes = group_codes(groups) if groups is not None else None
    group_level = codes is not None and _constant_within_groups(y_np, codes)
    for side in (np.asarray(train_idx), np.asarray(test_idx)):
        if len(side) == 0:
            continue
        if group_level:
            side_groups, first = np.unique(codes[side], return_index=True)
            target_of = y_np[side[first]]                       # one target per group on this side
            permuted = target_of[rng.permutation(len(side_groups))]
            pos = np.searchsorted(side_groups, codes[side])
            out[side] = permuted[pos]
        else:
            out[side] = y_np[side][rng.permutation(len(side))]
    return out


def _constant_within_groups(y: np.ndarray, codes: np.ndarray) -> bool:
    flat = y.reshape(len(y), -1)
    order = np.argsort(codes, kind="stable")
    c, v = codes[order], flat[order]
    same_group = c[1:] == c[:-1]
    same_value = np.all(v[1:] == v[:-1], axis=1)
    return bool(np.all(same_value[same_group]))


def _fit_score(make_probe: Callable[[], Any], X: Any, y: Any, tr: np.ndarray, te: np.ndarray, metric_fn) -> tuple[float, Any]:
    probe = make_probe()
    probe.fit(index(X, tr), index(y, tr))
    pred = probe.predict(index(X, te))
    return metric_fn(index(y, te), pred), pred


def _infer_task(probe: Any, task: str | None) -> str:
    if task is None:
        task = getattr(probe, "task", "regression")
    if task not in METRICS:
        raise ValueError(f"task must be 'regression' or 'classification', got {task!r}")
    return task


def evaluate_probe(
    make_probe: Callable[[], Any],
    X: ArrayLike,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    test_size: float | int = 0.3,
    seed: int = 0,
    control_X: ArrayLike | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    task: Task | None = None,
    split_idx: Split | None = None,
) -> ProbeScore:
    """Fit ``make_probe()`` on a leak-free train split of (X, y); score it on the test split.

    make_probe: a zero-argument factory returning an unfitted probe with ``fit(X, y)`` and
        ``predict(X)`` (e.g. ``lambda: RidgeProbe(alpha=0.01)`` or the class itself).
    X: [N, d] features (tensor or array); y: [N] or [N, k] targets, or [N] class labels.
    groups: [N] group ids; rows of a group never straddle the split and the bootstrap resamples
        groups.
    control_X: [N, d'] features of the same rows from a random-init model (optional).
    task: "regression" (R²) or "classification" (accuracy); None reads the probe's ``task``
        attribute (regression when it has none).
    split_idx: a precomputed ``(train_idx, test_idx)``; by default one is drawn with ``seed``.
    """
    n = n_rows(X)
    if n_rows(y) != n:
        raise ValueError(f"X has {n} rows, y has {n_rows(y)}")
    if control_X is not None and n_rows(control_X) != n:
        raise ValueError(f"control_X has {n_rows(control_X)} rows, X has {n}")
    if groups is not None and len(as_numpy(groups)) != n:
        raise ValueError(f"groups has {len(as_numpy(groups))} entries for {n} rows")
    tr, te = split_idx if split_idx is not None else split(n, groups, test_size, seed)
    tr, te = np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)
    if groups is not None:
        codes = group_codes(groups)
        if np.intersect1d(codes[tr], codes[te]).size:
            raise ValueError("split_idx puts rows of one group on both sides")

    task = _infer_task(make_probe(), task)
    metric_name, metric_fn = METRICS[task]
    y_np = as_numpy(y)

    score, pred = _fit_score(make_probe, X, y_np, tr, te, metric_fn)
    ci = bootstrap_ci(
        metric_fn, y_np[te], as_numpy(pred), groups=None if groups is None else as_numpy(groups)[te],
        n_boot=n_boot, confidence=confidence, seed=seed,
    )
    y_shuf = shuffled_targets(y_np, tr, te, groups, seed)
    ctrl_shuf, _ = _fit_score(make_probe, X, y_shuf, tr, te, metric_fn)
    ctrl_rand = None
    if control_X is not None:
        ctrl_rand, _ = _fit_score(make_probe, control_X, y_np, tr, te, metric_fn)
    controls = [c for c in (ctrl_shuf, ctrl_rand) if c is not None and math.isfinite(c)]
    selectivity = score - max(controls) if controls else float("nan")
    return ProbeScore(
        metric=metric_name, score=float(score), ci_low=ci.low, ci_high=ci.high,
        control_shuffled=float(ctrl_shuf), control_random_init=None if ctrl_rand is None else float(ctrl_rand),
        selectivity=float(selectivity), n_train=len(tr), n_test=len(te), confidence=confidence,
    )
