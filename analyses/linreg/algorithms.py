"""Which learning algorithm is in-context learning? (Akyürek et al. 2022, §4; Garg et al. 2022, Fig. 2).

For each model (e.g. one per depth) and each number of context points k, one batch of tasks
(``sample_regression_tasks(n_tasks, k + 1, d, ..., seed=seed + k, dtype=float64)``) is shared by every
model and reference learner, so all comparisons are paired.  Each task keeps its k context points D and
its query is replaced by ``n_probe`` fresh x'_j (same distribution, seeded; shared by all algorithms):

- SPD(A, B)  = mean_{tasks, j} (A(D)(x'_j) − B(D)(x'_j))² / d     (Akyürek's squared prediction
               difference E_{D,x'}(A(D)(x') − B(D)(x'))², divided by d as in their plots);
- ŵ_A        = the least-squares fit A(D)(x'_j) ≈ ŵ_A·x'_j + b_A per task (with intercept, as their
               sklearn ``LinearRegression(fit_intercept=True)``); for a linear learner (OLS, ridge, one
               GD step, one SGD pass) this is exactly its own w once n_probe ≥ d + 1;
- ILWD(A, B) = mean_tasks ||ŵ_A − ŵ_B||² / d   (= their code's mean over dims of (w_A − w_B)²; the
               intercepts are not compared);
- error      = mean_tasks (ŷ − y_q)² / d on the batch's own query (Garg et al.'s normalised error).

Reference learners (:mod:`interp.linreg.gd`): ``ols`` (min-norm), ``ridge_{λ}`` (Σ-loss + λ||w||²),
``gd_1step`` (one GD step from 0, η line-searched on the batch's queries by ``best_gd_eta`` unless
``gd_eta`` is given), ``sgd_1pass`` (one pass, batch size 1, lr = c / mean ||x_i||² with c on the grid
0.05, 0.10, …, 1.50 picked by the lowest query error on the same batch unless ``sgd_lr`` is given) and
``knn_{knn_k}``.  ``best_match[model][k]`` is the reference learner with the lowest SPD.  The error
curves also include ``averaging`` and ``nadaraya_watson`` (RBF kernel, bandwidth = mean ||x_i||² ×
{0.05, …, 5} chosen on a separate batch, seed ``seed + k + 1_000_003``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch

from interp.linreg.gd import averaging, best_gd_eta, gd_one_step, knn, nadaraya_watson, ols, ridge, sgd_one_pass
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks

LEARNERS = ("ols", "ridge", "gd", "sgd", "knn")
_TUNE_SEED, _PROBE_SEED = 1_000_003, 2_000_003  # offsets so tuning / probe draws never reuse a task seed
_SGD_GRID = [0.05 * i for i in range(1, 31)]
_NW_GRID = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def spd(pred_a: torch.Tensor, pred_b: torch.Tensor, d: int) -> float:
    """Normalised squared prediction difference mean((a − b)²) / d over all entries (tasks, probes)."""
    a, b = torch.as_tensor(pred_a, dtype=torch.float64), torch.as_tensor(pred_b, dtype=torch.float64)
    if a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"pred_a and pred_b must be non-empty and the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).pow(2).mean() / d)


def ilwd(w_a: torch.Tensor, w_b: torch.Tensor) -> float:
    """Normalised implicit linear weight difference mean_tasks ||w_a − w_b||² / d for w [tasks, d]."""
    a, b = torch.as_tensor(w_a, dtype=torch.float64), torch.as_tensor(w_b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"w_a and w_b must both be [tasks, d], got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).pow(2).mean())


def _as_predict_fn(model) -> Callable[[RegressionBatch], torch.Tensor]:
    module = getattr(getattr(model, "engine", None), "module", model)  # a load_model() facade or the module
    if hasattr(module, "predict"):
        return module.predict
    if callable(model):
        return model
    raise ValueError(f"expected a model with .predict(batch) or a function batch -> [tasks] predictions, got {type(model).__name__}")


@torch.no_grad()
def _predict(fn, batch: RegressionBatch, chunk: int = 8192) -> torch.Tensor:
    n = batch.x.shape[0]
    out = torch.cat([fn(RegressionBatch(batch.x[s:s + chunk], batch.y[s:s + chunk], batch.w[s:s + chunk], batch.noise_std))
                     .detach().to("cpu", torch.float64).reshape(-1) for s in range(0, n, chunk)])
    if out.numel() != n or not torch.isfinite(out).all():
        raise ValueError(f"the predictor must return {n} finite predictions (one per task) and must not read the query's y "
                         f"(it is NaN on probe batches); got {out.numel()} values")
    return out


def probe_predictions(predict_fn, batch: RegressionBatch, n_probe: int = 32, seed: int = 0, *, x_dist: str = "normal",
                      x_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(x' [tasks, n_probe, d], A(D)(x') [tasks, n_probe] float64): each task's context with its query replaced by
    ``n_probe`` fresh x' (``sample_regression_tasks(tasks, n_probe, d, x_dist, x_range, seed)``), run as one batch of
    tasks × n_probe rows (query y = NaN, so a predictor that peeks at it fails)."""
    if not isinstance(batch, RegressionBatch) or batch.x.ndim != 3 or batch.x.shape[1] < 2:
        raise ValueError("batch must be a RegressionBatch with x [tasks, n_points >= 2, d] (context + query)")
    t, _, d = batch.x.shape
    if isinstance(n_probe, bool) or not isinstance(n_probe, int) or n_probe < d + 1:
        raise ValueError(f"n_probe must be an int >= d + 1 = {d + 1} (the fit has d weights and an intercept), got {n_probe!r}")
    xp = sample_regression_tasks(t, n_probe, d, x_dist=x_dist, x_range=x_range, seed=seed, dtype=batch.x.dtype).x
    rep = lambda v: v.repeat_interleave(n_probe, 0)  # noqa: E731  row t·n_probe + j = task t, probe j
    x = torch.cat([rep(batch.x[:, :-1]), xp.reshape(t * n_probe, 1, d)], 1)
    y = torch.cat([rep(batch.y[:, :-1]), torch.full((t * n_probe, 1), float("nan"), dtype=batch.y.dtype)], 1)
    preds = _predict(_as_predict_fn(predict_fn), RegressionBatch(x, y, rep(batch.w), batch.noise_std))
    return xp, preds.reshape(t, n_probe)


def fit_linear(x_probe: torch.Tensor, preds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task least squares preds ≈ w·x' + b (float64): (w [tasks, d], b [tasks])."""
    z = torch.cat([x_probe.double(), torch.ones(*x_probe.shape[:-1], 1, dtype=torch.float64)], -1)
    sol = torch.linalg.lstsq(z, preds.double().unsqueeze(-1)).solution.squeeze(-1)
    return sol[..., :-1], sol[..., -1]


def implicit_weights(predict_fn, batch: RegressionBatch, n_probe: int = 32, seed: int = 0, *, x_dist: str = "normal",
                     x_range: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Akyürek's implicit linear weights (w [tasks, d], intercept [tasks]) of a learner or model on each task's context."""
    return fit_linear(*probe_predictions(predict_fn, batch, n_probe, seed, x_dist=x_dist, x_range=x_range))


def _query_mse(pred: torch.Tensor, batch: RegressionBatch) -> float:
    return float((pred.double() - batch.y[:, -1].double()).pow(2).mean())


def _best_sgd_lr(batch: RegressionBatch) -> float:
    scale = float(batch.x[:, :-1].double().pow(2).sum(-1).mean())
    lrs = [c / scale for c in _SGD_GRID]
    return min(lrs, key=lambda lr: _query_mse(sgd_one_pass(batch, lr), batch))


def _best_bandwidth(batch: RegressionBatch) -> float:
    scale = float(batch.x[:, :-1].double().pow(2).sum(-1).mean())
    return min((c * scale for c in _NW_GRID), key=lambda h: _query_mse(nadaraya_watson(batch, h), batch))


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_rate(name: str, value) -> None:
    if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, or None to line-search it on each batch; got {value!r}")


def _reference_learners(learners, ridge_lams, eta: float, lr: float, knn_k: int) -> dict:
    refs = {}
    for name in learners:
        if name == "ols":
            refs["ols"] = ols
        elif name == "ridge":
            refs.update({f"ridge_{lam:g}": partial(ridge, lam=lam) for lam in ridge_lams})
        elif name == "gd":
            refs["gd_1step"] = partial(gd_one_step, eta=eta)
        elif name == "sgd":
            refs["sgd_1pass"] = partial(sgd_one_pass, lr=lr)
        else:
            refs[f"knn_{knn_k}"] = partial(knn, k=knn_k)
    return refs


@dataclass
class WhichAlgorithmResult:
    """SPD / ILWD of every model to every reference learner, per k; error-vs-k of models and learners."""

    d: int
    n_tasks: int
    seed: int
    k: list[int]
    setting: dict  # x_dist, x_range, noise_std, n_probe, ridge_lams, knn_k, gd_eta, sgd_lr (None = line-searched)
    learners: list[str]  # reference learners for SPD / ILWD
    spd: dict  # model -> learner -> [per k]  mean (A − B)² / d
    ilwd: dict  # model -> learner -> [per k]  mean ||ŵ_A − ŵ_B||² / d
    model_error: dict  # model -> {"mean": [per k], "sem": [per k]}  (ŷ − y_q)² / d
    learner_error: dict  # learner (+ averaging, nadaraya_watson) -> {"mean", "sem"}
    best_match: dict  # model -> {k: learner with the lowest SPD}
    tuned: dict  # "gd_eta", "sgd_lr", "nw_bandwidth" -> [per k]
    spd_ci: dict = field(default_factory=dict)  # model -> learner -> [per k] 95% bootstrap interval over tasks of the SPD

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["best_match"] = {m: {str(k): v for k, v in bm.items()} for m, bm in self.best_match.items()}
        return out

    def _where(self) -> str:
        return f"d={self.d}, n_tasks={self.n_tasks}, seed={self.seed}"

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for metric, label in (("spd", "SPD / d (squared prediction difference)"), ("ilwd", "ILWD / d (implicit weight difference)")):
            for model, rows in getattr(self, metric).items():
                fig = go.Figure([go.Scatter(x=self.k, y=v, mode="lines+markers", name=name) for name, v in rows.items()])
                fig.update_layout(title=f"{metric.upper()} of '{model}' to each learner vs k — {self._where()}",
                                  xaxis_title="k (in-context examples)", yaxis_title=label, yaxis_type="log")
                figs.append(fig)
        fig = go.Figure()
        for dash, curves in (("solid", self.model_error), ("dash", self.learner_error)):
            for name, c in curves.items():
                fig.add_trace(go.Scatter(x=self.k, y=c["mean"], error_y=dict(type="data", array=c["sem"]),
                                         mode="lines+markers", name=name, line=dict(dash=dash)))
        fig.update_layout(title=f"Error vs k, models and baselines — {self._where()}, noise_std={self.setting['noise_std']}",
                          xaxis_title="k (in-context examples)", yaxis_title="(ŷ − y_q)² / d (mean ± s.e.)", yaxis_type="log")
        return figs + [fig]


def which_algorithm(models: dict, d: int, k_values: Sequence[int], n_tasks: int = 512, seed: int = 0, *,
                    x_dist: str = "normal", x_range: float = 1.0, noise_std: float = 0.0,
                    ridge_lams: Sequence[float] = (0.1, 1.0), gd_eta: float | None = None, sgd_lr: float | None = None,
                    knn_k: int = 3, n_probe: int | None = None, learners: Sequence[str] = LEARNERS) -> WhichAlgorithmResult:
    """SPD, ILWD and best-matching learner for each model (name -> model with ``.predict`` or a predict function)
    and each k in ``k_values``, plus error-vs-k curves; see the module docstring.  ``n_probe`` defaults to
    max(32, 2(d + 1)) fresh query points per task."""
    if not isinstance(models, dict) or not models or not all(isinstance(n, str) for n in models):
        raise ValueError("models must be a non-empty dict {name: model or predict function}, e.g. {'1 layer': m1, '2 layers': m2}")
    fns = {name: _as_predict_fn(m) for name, m in models.items()}
    _check_int("d", d)
    _check_int("n_tasks", n_tasks, minimum=2)
    _check_int("knn_k", knn_k)
    _check_rate("gd_eta", gd_eta)
    _check_rate("sgd_lr", sgd_lr)
    n_probe = max(32, 2 * (d + 1)) if n_probe is None else n_probe
    _check_int("n_probe (fresh query points per task; the fit has d weights and an intercept)", n_probe, minimum=d + 1)
    ks_ok = all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in k_values or [0])
    if not ks_ok or len(set(k_values)) != len(k_values):
        raise ValueError(f"k_values must be a non-empty list of distinct ints >= 1 (context sizes), e.g. [1, 2, 4, 8]; got {k_values!r}")
    unknown = [name for name in learners if name not in LEARNERS]
    if unknown or not learners:
        raise ValueError(f"unknown learner(s) {unknown}: learners must be a non-empty subset of {LEARNERS}")
    lams_ok = all(isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0 for lam in ridge_lams)
    if not lams_ok or len(set(ridge_lams)) != len(ridge_lams):
        raise ValueError(f"ridge_lams must be distinct finite numbers >= 0 (0 is OLS), got {ridge_lams!r}")
    data = dict(x_dist=x_dist, x_range=x_range, noise_std=noise_std)
    from interp.scoring import bootstrap_mean_interval

    spd_t = {m: {} for m in fns}
    spd_ci_t = {m: {} for m in fns}
    ilwd_t = {m: {} for m in fns}
    err: dict = {}
    best_match = {m: {} for m in fns}
    tuned = {"gd_eta": [], "sgd_lr": [], "nw_bandwidth": []}
    for k in k_values:
        batch = sample_regression_tasks(n_tasks, k + 1, d, seed=seed + k, dtype=torch.float64, **data)
        eta = best_gd_eta(batch)[0] if gd_eta is None else gd_eta
        lr = _best_sgd_lr(batch) if sgd_lr is None else sgd_lr
        tune_batch = sample_regression_tasks(n_tasks, k + 1, d, seed=seed + k + _TUNE_SEED, dtype=torch.float64, **data)
        bw = _best_bandwidth(tune_batch)
        for key, v in (("gd_eta", eta), ("sgd_lr", lr), ("nw_bandwidth", bw)):
            tuned[key].append(v)
        refs = _reference_learners(learners, ridge_lams, eta, lr, knn_k)
        extra = {"averaging": averaging, "nadaraya_watson": partial(nadaraya_watson, bandwidth=bw)}
        for is_model, group in ((True, fns), (False, {**refs, **extra})):
            for name, fn in group.items():
                e = (_predict(fn, batch) - batch.y[:, -1].double()).pow(2) / d
                curve = err.setdefault((is_model, name), {"mean": [], "sem": []})
                curve["mean"].append(float(e.mean()))
                curve["sem"].append(float(e.std() / math.sqrt(n_tasks)))
        probe = dict(n_probe=n_probe, seed=seed + k + _PROBE_SEED, x_dist=x_dist, x_range=x_range)
        ref_out = {name: probe_predictions(fn, batch, **probe) for name, fn in refs.items()}
        ref_w = {name: fit_linear(*xp_p)[0] for name, xp_p in ref_out.items()}
        for m, fn in fns.items():
            xp, pm = probe_predictions(fn, batch, **probe)
            wm = fit_linear(xp, pm)[0]
            for name in refs:
                spd_t[m].setdefault(name, []).append(spd(pm, ref_out[name][1], d))
                per_task = (pm.double() - ref_out[name][1].double()).pow(2).reshape(pm.shape[0], -1).mean(-1) / d
                spd_ci_t[m].setdefault(name, []).append(bootstrap_mean_interval(per_task, seed=seed + k))
                ilwd_t[m].setdefault(name, []).append(ilwd(wm, ref_w[name]))
            best_match[m][k] = min(refs, key=lambda name: spd_t[m][name][-1])
    setting = {**data, "n_probe": n_probe, "ridge_lams": list(ridge_lams), "knn_k": knn_k, "gd_eta": gd_eta, "sgd_lr": sgd_lr}
    return WhichAlgorithmResult(
        d=d, n_tasks=n_tasks, seed=seed, k=list(k_values), setting=setting, learners=list(refs), spd=spd_t, ilwd=ilwd_t,
        model_error={n: c for (is_model, n), c in err.items() if is_model},
        learner_error={n: c for (is_model, n), c in err.items() if not is_model}, best_match=best_match, tuned=tuned,
        spd_ci=spd_ci_t)
