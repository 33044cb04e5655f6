"""What every paper module shares: budgets, the datasets a protocol names, our setting's columns,
and intervals for rates the analyses report as plain fractions."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from analyses.reproduce.claims import Estimate

BUDGETS = ("smoke", "small", "paper")


def data_root() -> Path:
    """Where the shared datasets live: ``$ICL_INTERP_DATA`` (default ``../shared/datasets`` of the
    working directory, as the validation tests use)."""
    return Path(os.environ.get("ICL_INTERP_DATA", "../shared/datasets"))


def dataset_task(name: str, fallback: str | None = "sentiment"):
    """``(task, note)``: the folder ``$ICL_INTERP_DATA/classification/<name>`` as a task, or, when it
    is absent, the bundled ``fallback`` with a note saying so (the claim's "differs" column then shows
    the dataset); ``(None, note)`` when there is no fallback."""
    from interp.tasks import resolve_task

    folder = data_root() / "classification" / name
    if (folder / "train.jsonl").exists():
        return resolve_task(str(folder)), None
    note = f"dataset {name} not found under {folder.parent} (set $ICL_INTERP_DATA)"
    if fallback is None:
        return None, note
    return resolve_task(fallback), note + f": the bundled {fallback!r} task ran instead"


def model_size(model) -> str:
    n = sum(p.numel() for p in model.hf_model.parameters()) if hasattr(model, "hf_model") else None
    if not n:
        return "?"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def our_setting(model, dataset: str, k, n, other: str | None = None) -> dict:
    out = {"model": model.name, "size": model_size(model), "dataset": dataset, "k": k, "n": n}
    if other:
        out["other"] = other
    return out


def wilson(p: float, n: int, z: float = 1.96) -> Estimate:
    """A rate ``p`` observed on ``n`` trials with its Wilson 95% interval."""
    if n <= 0 or p is None or not math.isfinite(p):
        return Estimate(float("nan"))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def mean_interval(values, seed: int = 0) -> Estimate:
    """The mean of ``values`` (NaNs left out) with its 95% bootstrap interval."""
    from interp.scoring import bootstrap_mean_interval

    xs = [float(v) for v in values if v is not None and v == v]
    if not xs:
        return Estimate(float("nan"))
    ci = bootstrap_mean_interval(xs, seed=seed)
    if ci is None:
        return Estimate(sum(xs) / len(xs), n=len(xs))
    return Estimate(sum(xs) / len(xs), ci[0], ci[1], len(xs))


def per_query_estimate(r, key: str) -> Estimate:
    """An :class:`~analyses.gd.icl_vs_gd.IclVsGdResult` metric: the mean of its per-query values
    (NaNs left out; NaN when none) with the result's own bootstrap interval."""
    xs = [x for x in r.per_query[key] if x == x]
    return from_interval(sum(xs) / len(xs) if xs else float("nan"), r.intervals.get(key), r.n)


def from_interval(value: float, ci, n: int | None = None) -> Estimate:
    """An estimate from a value and a [low, high] pair (None → no interval)."""
    if ci is None or value is None:
        return Estimate(float("nan") if value is None else float(value), n=n)
    return Estimate(float(value), float(ci[0]), float(ci[1]), n)


@dataclass
class Budget:
    """One budget of one paper: the sizes its protocol runs at (the module's table)."""

    name: str
    sizes: dict = field(default_factory=dict)

    def __getitem__(self, key):
        return self.sizes[key]

    def get(self, key, default=None):
        return self.sizes.get(key, default)


def word_task(name: str):
    """``(task, note)``: the word task ``name`` from ``$ICL_INTERP_DATA/word_tasks/<name>.json``
    (Todd et al.'s files), else the bundled task of that name, else ``(None, note)``."""
    from interp.tasks import BUNDLED_TASKS, resolve_task

    path = data_root() / "word_tasks" / f"{name}.json"
    if path.exists():
        return resolve_task(str(path)), None
    if name in BUNDLED_TASKS:
        return resolve_task(name), None
    return None, f"word task {name} not found under {path.parent} (set $ICL_INTERP_DATA) and not bundled"
