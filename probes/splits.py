"""Train/test splits that never leak.

Rows that share a group id (the same prompt, the same task instance, the same word type) are
never split: a probe tested on rows whose prompt it was trained on measures memorisation, not
decodability.  :func:`group_train_test_split` and :func:`group_kfold` assign whole groups to one
side; :func:`train_test_split` and :func:`kfold` are the row-level versions for data without
groups.  Every split is drawn from its own ``numpy.random.Generator(PCG64(seed))``, never from a
global RNG, so the same seed gives the same split.

Test sizes: a float in (0, 1) is a fraction of the units (groups or rows), rounded to the nearest
integer and clamped to [1, units - 1]; an int is a number of units.  Returned indices are sorted
int64 numpy arrays of row positions.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from probes._convert import ArrayLike, as_numpy

Split = tuple[np.ndarray, np.ndarray]


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _n_test(test_size: float | int, n_units: int, what: str) -> int:
    if n_units < 2:
        raise ValueError(f"cannot split {n_units} {what} into a train and a test side: need at least 2")
    if isinstance(test_size, (int, np.integer)) and not isinstance(test_size, bool):
        k = int(test_size)
        if not 1 <= k <= n_units - 1:
            raise ValueError(f"test_size={k} {what} leaves no train or no test {what} (there are {n_units})")
        return k
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be a fraction in (0, 1) or an int, got {test_size}")
    return int(min(max(round(float(test_size) * n_units), 1), n_units - 1))


def group_codes(groups: ArrayLike | Sequence[Hashable]) -> np.ndarray:
    """Dense integer codes 0..G-1 for the group ids (in sorted order of the ids)."""
    g = as_numpy(groups) if not isinstance(groups, (list, tuple)) else np.asarray(groups)
    if g.ndim != 1:
        raise ValueError(f"groups must be 1-D (one id per row), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel().astype(np.int64)


def train_test_split(n: int, test_size: float | int = 0.3, seed: int = 0) -> Split:
    """Random row split of ``range(n)``: ``(train_idx, test_idx)``; use only for independent rows."""
    k = _n_test(test_size, n, "rows")
    perm = _rng(seed).permutation(n)
    return np.sort(perm[k:]).astype(np.int64), np.sort(perm[:k]).astype(np.int64)


def group_train_test_split(groups: ArrayLike, test_size: float | int = 0.3, seed: int = 0) -> Split:
    """Split rows so that every group lies wholly in train or wholly in test.

    ``test_size`` counts groups, not rows.  Raises ``ValueError`` when there are fewer than two
    groups.
    """
    codes = group_codes(groups)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    k = _n_test(test_size, n_groups, "groups")
    test_groups = _rng(seed).permutation(n_groups)[:k]
    in_test = np.isin(codes, test_groups)
    return np.flatnonzero(~in_test).astype(np.int64), np.flatnonzero(in_test).astype(np.int64)


def split(n: int, groups: ArrayLike | None = None, test_size: float | int = 0.3, seed: int = 0) -> Split:
    """:func:`group_train_test_split` when ``groups`` is given, else :func:`train_test_split`."""
    if groups is None:
        return train_test_split(n, test_size, seed)
    if len(as_numpy(groups)) != n:
        raise ValueError(f"groups has {len(as_numpy(groups))} entries for {n} rows")
    return group_train_test_split(groups, test_size, seed)


def _folds(n: int, codes: np.ndarray, n_units: int, n_splits: int, seed: int, what: str) -> list[Split]:
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    if n_units < n_splits:
        raise ValueError(f"cannot make {n_splits} folds from {n_units} {what}")
    order = _rng(seed).permutation(n_units)
    sizes = np.bincount(codes, minlength=n_units)
    # largest units first (stable on the shuffled order), each to the currently smallest fold
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of = np.empty(n_units, dtype=np.int64)
    fold_rows = np.zeros(n_splits, dtype=np.int64)
    for u in order:
        f = int(np.argmin(fold_rows))
        fold_of[u] = f
        fold_rows[f] += sizes[u]
    row_fold = fold_of[codes]
    return [(np.flatnonzero(row_fold != f), np.flatnonzero(row_fold == f)) for f in range(n_splits)]


def kfold(n: int, n_splits: int = 5, seed: int = 0) -> list[Split]:
    """Shuffled row-level K-fold: ``n_splits`` pairs ``(train_idx, test_idx)``, test sets partition rows."""
    return _folds(n, np.arange(n), n, n_splits, seed, "rows")


def group_kfold(groups: ArrayLike, n_splits: int = 5, seed: int = 0) -> list[Split]:
    """K-fold over groups: each group is in exactly one test fold and never on both sides.

    Groups are shuffled with ``seed`` and then assigned, largest first, to the fold with the
    fewest rows so far (balanced fold sizes).  Raises ``ValueError`` with fewer groups than folds.
    """
    codes = group_codes(groups)
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    return _folds(len(codes), codes, n_groups, n_splits, seed, "groups")
