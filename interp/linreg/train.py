"""Deterministic training of the in-context regression transformers, and checkpoints.

Settings follow the references (``/shared/references/icl_as_gradient_descent.md`` §4.2, §6):

- ``model="lsa"`` (von Oswald et al. 2023, ``train.py``): x ~ U(−0.5, 0.5)^d, w ~ N(0, I), N = 10
  context points, AdamW(lr 1e-3, betas (0.9, 0.98), weight decay 0), global-norm gradient clip
  1e-3, batch 2048, loss 0.5 · mean_tasks (ŷ_q − y_q)² on the query; evaluation on 10,000 fixed
  tasks (seed 5).
- ``model="gpt"`` (Garg et al. 2022): x ~ N(0, I), Adam(lr 1e-4, betas (0.9, 0.999)), batch 64,
  loss mean (ŷ_i − y_i)² over every x position (every prefix); no curriculum.

Every step draws a fresh batch with :func:`~interp.linreg.sampler.sample_regression_tasks`, its seed
taken from a ``torch.Generator`` seeded from ``seed``; the model's weights are initialised from
their own generator (``seed``) and ``torch.manual_seed(seed)`` is set, so two runs with the same
config and thread count give bit-identical weights.

Checkpoints are a folder with ``model.safetensors``, ``config.json`` (``{"model": model config,
"train": TrainConfig or null}``) and ``metrics.json``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import torch

from interp.linreg.gd import best_gd_eta, ols
from interp.linreg.models import GPTConfig, LinearSelfAttention, LSAConfig, SoftmaxGPT, build_model
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks

# per-model defaults for the fields left None
_DEFAULTS = {
    "lsa": dict(n_layers=1, n_heads=1, steps=5000, batch_size=2048, lr=1e-3, betas=(0.9, 0.98), optimizer="adamw",
                grad_clip=1e-3, x_dist="uniform", x_range=0.5, eval_tasks=10_000),
    "gpt": dict(n_layers=4, n_heads=4, d_model=128, steps=5000, batch_size=64, lr=1e-4, betas=(0.9, 0.999),
                optimizer="adam", grad_clip=1.0, x_dist="normal", x_range=1.0, eval_tasks=1024),
}
_DATA_SEED_MIX = 0x9E3779B97F4A7C15  # the data stream's seed differs from the init seed


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how.  Fields left None take the per-model defaults above (resolved at
    construction, so ``to_dict()`` shows the values used).  ``n_points`` counts the N context
    points plus the query (the sampler's convention: von Oswald's N = 10 is ``n_points=11``).
    ``d_model`` must be None (= d+1) for the LSA; ``d_head`` is the LSA key size (default d+1) and
    must be None for the GPT (d_model / n_heads)."""

    model: Literal["lsa", "gpt"] = "lsa"
    d: int = 10
    n_points: int = 11
    n_layers: int | None = None
    n_heads: int | None = None
    d_model: int | None = None
    d_head: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    betas: tuple[float, float] | None = None
    optimizer: Literal["adam", "adamw"] | None = None
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 0 after a linear warmup
    warmup_steps: int = 0
    grad_clip: float | None = None  # None: the default; 0: no clipping
    x_dist: Literal["normal", "uniform"] | None = None
    x_range: float | None = None
    noise_std: float = 0.0
    seed: int = 0
    eval_tasks: int | None = None
    eval_seed: int = 5
    eval_every: int = 100
    # Garg et al.'s curriculum: train on the first `curriculum_dims` input dims (the rest zeroed)
    # and `curriculum_points` points, +1 dim and +2 points every `curriculum_every` steps up to
    # d / n_points.  None: no curriculum.
    curriculum_dims: int | None = None
    curriculum_points: int | None = None
    curriculum_every: int = 2000

    def __post_init__(self):
        if self.model not in _DEFAULTS:
            raise ValueError(f"model must be 'lsa' or 'gpt', got {self.model!r}")
        for name, value in _DEFAULTS[self.model].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.model == "lsa" and self.d_model not in (None, self.d + 1):
            raise ValueError(f"the LSA's d_model is d+1 = {self.d + 1} (tokens (x, y)); leave d_model=None")
        if self.model == "gpt" and self.d_head is not None:
            raise ValueError("the GPT's d_head is d_model // n_heads; leave d_head=None and set d_model / n_heads")
        for name in ("steps", "batch_size", "eval_tasks", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be an int in [0, steps={self.steps}), got {self.warmup_steps!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        for name in ("lr", "weight_decay", "grad_clip", "noise_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, top in (("curriculum_dims", self.d), ("curriculum_points", self.n_points)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
                raise ValueError(f"{name} must be None or an int in [1, {top}], got {value!r}")
        if self.curriculum_points is not None and self.curriculum_points < 2:
            raise ValueError("curriculum_points counts context points plus the query: it must be >= 2")
        if isinstance(self.curriculum_every, bool) or not isinstance(self.curriculum_every, int) or self.curriculum_every <= 0:
            raise ValueError(f"curriculum_every must be a positive int, got {self.curriculum_every!r}")
        self.model_config()  # validates the architecture fields

    def model_config(self) -> LSAConfig | GPTConfig:
        if self.model == "lsa":
            return LSAConfig(d=self.d, n_points=self.n_points, n_layers=self.n_layers, n_heads=self.n_heads,
                             d_head=self.d_head, seed=self.seed)
        return GPTConfig(d=self.d, n_points=self.n_points, d_model=self.d_model, n_layers=self.n_layers,
                         n_heads=self.n_heads, seed=self.seed)

    def sample(self, n_tasks: int, seed: int) -> RegressionBatch:
        return sample_regression_tasks(n_tasks, self.n_points, self.d, x_dist=self.x_dist, x_range=self.x_range,
                                       noise_std=self.noise_std, seed=seed)

    def curriculum(self, step: int) -> tuple[int, int]:
        """(input dims, points) trained on at ``step``: the full (d, n_points) without a curriculum."""
        stage = step // self.curriculum_every
        dims = self.d if self.curriculum_dims is None else min(self.d, self.curriculum_dims + stage)
        points = self.n_points if self.curriculum_points is None else min(self.n_points, self.curriculum_points + 2 * stage)
        return dims, points

    def train_batch(self, step: int, seed: int) -> RegressionBatch:
        """The training batch at ``step``: fresh tasks, restricted by :meth:`curriculum` (unused
        input dims zeroed and y recomputed from the zeroed x, as Garg et al.'s code does)."""
        dims, points = self.curriculum(step)
        batch = sample_regression_tasks(self.batch_size, points, self.d, x_dist=self.x_dist, x_range=self.x_range,
                                        noise_std=self.noise_std, seed=seed)
        if dims < self.d:
            noise = batch.y - (batch.x @ batch.w.unsqueeze(-1)).squeeze(-1)
            x = batch.x.clone()
            x[..., dims:] = 0
            batch = RegressionBatch(x=x, y=(x @ batch.w.unsqueeze(-1)).squeeze(-1) + noise, w=batch.w, noise_std=batch.noise_std)
        return batch

    def to_dict(self) -> dict:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**data)


def default_distribution(kind: str) -> tuple[str, float]:
    """(x_dist, x_range) that :class:`TrainConfig` uses by default for ``kind`` ("lsa" / "gpt")."""
    return _DEFAULTS[kind]["x_dist"], _DEFAULTS[kind]["x_range"]


def training_distribution(module) -> tuple[str, float] | None:
    """(x_dist, x_range) ``module`` was trained on, from the TrainConfig that :func:`train` and
    :func:`load_checkpoint` attach as ``module.train_config``; None for a module built by hand."""
    config = getattr(module, "train_config", None)
    return None if config is None else (config.x_dist, config.x_range)


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def lr_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of ``config.lr`` at ``step`` (0-based): linear warmup over ``warmup_steps``, then
    1 (``"constant"``) or a cosine decay to 0 at ``steps`` (``"cosine"``, Akyürek et al.)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def baselines(batch: RegressionBatch) -> dict:
    """Reference losses on ``batch`` in the LSA's units, 0.5 · mean (ŷ_q − y_q)²: zero predictor,
    best-η one-step GD (grid of :func:`~interp.linreg.gd.best_gd_eta`), and OLS."""
    y_q = batch.y[:, -1].double()
    eta, gd_loss = best_gd_eta(batch)
    return {"zero_query_loss": float(0.5 * y_q.pow(2).mean()), "gd_eta": eta, "gd_query_loss": gd_loss,
            "ols_query_loss": float(0.5 * (ols(batch).double() - y_q).pow(2).mean())}


@torch.no_grad()
def evaluate(model, batch: RegressionBatch) -> dict:
    """The training loss and the query loss 0.5 · mean (ŷ_q − y_q)² on ``batch``."""
    was_training = model.training
    model.eval()
    out = {"loss": float(model.loss(batch)), "query_loss": float(model.query_loss(batch))}
    model.train(was_training)
    return out


def train(config: TrainConfig, progress: bool = False) -> tuple[LinearSelfAttention | SoftmaxGPT, dict]:
    """Train a fresh model per ``config``; returns (model in eval mode, metrics).

    Metrics: ``final`` (eval loss / query loss), ``curve`` (step, train loss, eval loss, eval
    query loss every ``eval_every`` steps and at the end), ``baselines`` on the eval tasks
    (:func:`baselines`), ``train_seconds``, ``threads``, ``n_params``.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"expected a TrainConfig, got {type(config).__name__}")
    torch.manual_seed(config.seed)
    data_gen = torch.Generator().manual_seed((config.seed ^ _DATA_SEED_MIX) % 2**63)
    model = build_model(config.model_config()).train()
    opt = _optimizer(model, config)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(config, step))
    eval_batch = config.sample(config.eval_tasks, config.eval_seed)
    curve = []
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc=f"train {config.model}")
    start = time.perf_counter()
    for step in steps:
        batch = config.train_batch(step, int(torch.randint(0, 2**62, (1,), generator=data_gen)))
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            curve.append({"step": step + 1, "train_loss": float(loss.detach()), **{f"eval_{k}": v for k, v in evaluate(model, eval_batch).items()}})
            if progress:
                steps.set_postfix(loss=f"{curve[-1]['eval_loss']:.4f}")
    seconds = time.perf_counter() - start
    model.eval()
    model.train_config = config
    metrics = {
        "final": evaluate(model, eval_batch),
        "curve": curve,
        "baselines": baselines(eval_batch),
        "train_seconds": seconds,
        "threads": torch.get_num_threads(),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    return model, metrics


def save_checkpoint(model, config: TrainConfig | None, metrics: dict | None, directory) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``metrics.json`` into ``directory``."""
    from safetensors.torch import save_file

    if not hasattr(model, "cfg") or not hasattr(model.cfg, "to_dict"):
        raise ValueError(f"{type(model).__name__} is not an interp.linreg model (no cfg.to_dict())")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"kind": model.cfg.kind})
    (path / "config.json").write_text(json.dumps({"model": model.cfg.to_dict(), "train": None if config is None else config.to_dict()},
                                                 indent=2))
    (path / "metrics.json").write_text(json.dumps(metrics or {}, indent=2))
    return path


def load_checkpoint(directory) -> tuple[LinearSelfAttention | SoftmaxGPT, TrainConfig | None, dict]:
    """(model in eval mode, TrainConfig or None, metrics) from a :func:`save_checkpoint` folder."""
    from safetensors.torch import load_file

    path = Path(directory)
    missing = [f for f in ("model.safetensors", "config.json") if not (path / f).exists()]
    if missing:
        raise ValueError(f"{path} is not a checkpoint folder: missing {missing} (write one with save_checkpoint)")
    cfg = json.loads((path / "config.json").read_text())
    model = build_model(cfg["model"])
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    config = None if cfg.get("train") is None else TrainConfig.from_dict(cfg["train"])
    model.train_config = config  # the training distribution, read by the analyses' defaults
    metrics_path = path / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return model.eval(), config, metrics
