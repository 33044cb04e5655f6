"""Small transformers for in-context linear regression, with TransformerLens hook points.

Two models, both ``transformer_lens.HookedRootModule`` subclasses whose HookPoints carry the
project's site names (:mod:`interp.sites`), so ``run_with_hooks`` / ``hooks`` and the
hooked-module engine reach them like a pretrained LM.  Hooks may replace values: every forward
step consumes the hooked tensor.

1. :class:`LinearSelfAttention` (von Oswald et al. 2023, "Transformers learn in-context by
   gradient descent", §2 and code ``src/transformer.py``).  Token e_j = (x_j, y_j) ∈ R^{d+1}, the
   query token (x_q, −w0·x_q) with w0 = ``query_w0`` (a buffer, zero unless a hand-built GD layer
   starts from W0 ≠ 0; the paper's query init, von Oswald's code uses (x_q, 0)).  d_model = d+1, no
   read-in, no LayerNorm, no MLP, no softmax, no scaling.  Per layer, every token j is a query and
   only the N context tokens are keys/values (``include_query=False``):

       e_j ← e_j + Σ_h P_h Σ_{i ≤ N} (W_V,h e_i)(W_K,h e_i)ᵀ(W_Q,h e_j)

   The prediction is ŷ = −(y-slot of the query token after the last layer) (the code's
   ``preds[:, -1, -1] * (-1)``); ``unembed.hook_out`` = −resid[..., -1:] at every position.

2. :class:`SoftmaxGPT` (Garg et al. 2022, "What can transformers learn in-context?", code
   ``dtsip/in-context-learning``): interleaved tokens x_1, y_1, …, x_{n-1}, y_{n-1}, x_q with the
   y-token (y, 0, …, 0) ∈ R^d; read-in Linear(d → d_model), learned absolute positions
   (n_ctx = 2·n_points), pre-LN blocks (LN → causal softmax attention → residual; LN → MLP
   4·d_model GELU → residual), final LN, read-out Linear(d_model → 1) at every position.  The
   prediction for y_i is read at x_i's position.  The attention output projection has no bias, so
   Σ_h z_h W_O[h] = ``hook_attn_out`` exactly.

Hook points (layouts as in :mod:`interp.sites`): ``hook_embed`` [b, pos, d_model];
``blocks.{l}.hook_resid_pre``; ``blocks.{l}.attn.hook_q/k/v`` [b, pos, head, d_head];
``attn.hook_attn_scores`` [b, head, q, k] (pre-softmax, mask included: −inf for softmax, 0 for
linear); ``attn.hook_pattern`` (post-softmax; linear: the masked scores times the scale, 1 here);
``attn.hook_z``; ``hook_attn_out``; ``hook_resid_mid`` / ``hook_mlp_out`` (GPT only);
``hook_resid_post``; ``unembed.hook_out`` [b, pos, 1].  The GPT also has ``hook_pos_embed``.

``n_points`` is always the sampler's count (:func:`~interp.linreg.sampler.sample_regression_tasks`):
N context points plus the query.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.linreg.sampler import RegressionBatch


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


# --------------------------------------------------------------------------------------------
# configs


@dataclass(frozen=True)
class LSAConfig:
    """Linear self-attention: ``d`` input dims, ``n_points`` per task (context + query).

    ``d_head`` is the key size (default d+1, as in von Oswald et al.); parameters are drawn from
    N(0, init_scale / d_model) with a generator seeded by ``seed`` (≈ haiku
    VarianceScaling(0.002 / n_layers), the reference's init, when ``init_scale`` is None).
    """

    d: int
    n_points: int
    n_layers: int = 1
    n_heads: int = 1
    d_head: int | None = None
    init_scale: float | None = None
    seed: int = 0
    kind: ClassVar[str] = "lsa"

    def __post_init__(self):
        for name in ("d", "n_points", "n_layers", "n_heads"):
            _check_positive(name, getattr(self, name))
        if self.n_points < 2:
            raise ValueError(f"n_points counts the context points plus the query, so it must be >= 2, got {self.n_points}")
        if self.d_head is None:
            object.__setattr__(self, "d_head", self.d + 1)
        _check_positive("d_head", self.d_head)
        if self.init_scale is None:
            object.__setattr__(self, "init_scale", 0.002 / self.n_layers)
        if not (isinstance(self.init_scale, (int, float)) and math.isfinite(self.init_scale) and self.init_scale >= 0):
            raise ValueError(f"init_scale must be a finite number >= 0, got {self.init_scale!r}")

    @property
    def d_model(self) -> int:
        return self.d + 1

    @property
    def n_ctx(self) -> int:
        return self.n_points

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class GPTConfig:
    """Pre-LN softmax GPT on interleaved (x, y) tokens; n_ctx = 2·n_points positions.

    Weights N(0, 0.02²) (GPT-2's init), biases 0, LayerNorm gains 1, from a generator seeded by
    ``seed``; ``d_mlp`` defaults to 4·d_model.
    """

    d: int
    n_points: int
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int | None = None
    init_std: float = 0.02
    seed: int = 0
    kind: ClassVar[str] = "gpt"

    def __post_init__(self):
        for name in ("d", "n_points", "d_model", "n_layers", "n_heads"):
            _check_positive(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}); "
                             f"pick e.g. d_model={self.n_heads * max(1, round(self.d_model / self.n_heads))}")
        if self.d_mlp is None:
            object.__setattr__(self, "d_mlp", 4 * self.d_model)
        _check_positive("d_mlp", self.d_mlp)

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_ctx(self) -> int:
        return 2 * self.n_points

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}


# --------------------------------------------------------------------------------------------
# shared pieces


class _Unembed(nn.Module):
    """Holds ``unembed.hook_out``: the prediction at every position, [b, pos, 1]."""

    def __init__(self, readout: nn.Module | None = None):
        super().__init__()
        self.readout = readout
        self.hook_out = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        out = -resid[..., -1:] if self.readout is None else self.readout(resid)
        return self.hook_out(out)


class _RegressionModel(HookedRootModule):
    """Attributes and batch helpers shared by both models."""

    d_vocab = 1

    def _set_dims(self, cfg) -> None:
        self.cfg = cfg
        self.n_layers, self.n_heads, self.d_head = cfg.n_layers, cfg.n_heads, cfg.d_head
        self.d_model, self.n_ctx, self.d = cfg.d_model, cfg.n_ctx, cfg.d

    @property
    def kind(self) -> str:
        return self.cfg.kind

    def _check_batch(self, batch: RegressionBatch) -> None:
        if not isinstance(batch, RegressionBatch):
            raise ValueError(f"expected a RegressionBatch (interp.linreg.sample_regression_tasks), got {type(batch).__name__}")
        if batch.x.shape[-1] != self.d:
            raise ValueError(f"batch has d={batch.x.shape[-1]} but the model was built for d={self.d}; "
                             f"sample tasks with d={self.d} or build the model with d={batch.x.shape[-1]}")
        if batch.x.shape[1] < 2:
            raise ValueError("the batch needs at least one context point and the query (n_points >= 2)")

    def _params_dtype_device(self, batch: RegressionBatch) -> tuple[torch.Tensor, torch.Tensor]:
        p = next(self.parameters())
        return batch.x.to(device=p.device, dtype=p.dtype), batch.y.to(device=p.device, dtype=p.dtype)

    def predict(self, batch: RegressionBatch) -> torch.Tensor:
        """ŷ for the query (the batch's last point): [b]."""
        return self(self.tokens(batch))[:, -1, 0]

    def query_loss(self, batch: RegressionBatch) -> torch.Tensor:
        """0.5 · mean_tasks (ŷ_q − y_q)² (von Oswald et al.'s outer loss)."""
        y_q = self._params_dtype_device(batch)[1][:, -1]
        return 0.5 * (self.predict(batch) - y_q).pow(2).mean()

    def b_O(self, layer: int) -> None:
        """The attention output projections have no bias."""
        return None


# --------------------------------------------------------------------------------------------
# linear self-attention (von Oswald et al. 2023)


class LinearAttention(nn.Module):
    """One linear self-attention layer: keys/values from all tokens but the last (the query).

    Parameters (left-multiplying, per head): W_Q, W_K, W_V [head, d_head, d_model], P [head,
    d_model, d_head] (the output projection).  out_j = Σ_h P_h Σ_i v_i (k_i · q_j).
    """

    scale = 1.0

    def __init__(self, n_heads: int, d_head: int, d_model: int):
        super().__init__()
        self.W_Q = nn.Parameter(torch.zeros(n_heads, d_head, d_model))
        self.W_K = nn.Parameter(torch.zeros(n_heads, d_head, d_model))
        self.W_V = nn.Parameter(torch.zeros(n_heads, d_head, d_model))
        self.P = nn.Parameter(torch.zeros(n_heads, d_model, d_head))
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        q = self.hook_q(torch.einsum("bpm,hdm->bphd", resid, self.W_Q))
        k = self.hook_k(torch.einsum("bpm,hdm->bphd", resid, self.W_K))
        v = self.hook_v(torch.einsum("bpm,hdm->bphd", resid, self.W_V))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
        n_pos = resid.shape[1]
        is_key = torch.arange(n_pos, device=resid.device) < n_pos - 1  # the query token is not a key
        scores = self.hook_attn_scores(torch.where(is_key, scores, torch.zeros_like(scores)))
        pattern = self.hook_pattern(scores * self.scale)
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return torch.einsum("bqhd,hmd->bqm", z, self.P)


class LSABlock(nn.Module):
    def __init__(self, cfg: LSAConfig):
        super().__init__()
        self.attn = LinearAttention(cfg.n_heads, cfg.d_head, cfg.d_model)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(resid))
        return self.hook_resid_post(resid + attn_out)


class LinearSelfAttention(_RegressionModel):
    """von Oswald et al.'s linear self-attention transformer (module docstring).

    ``LinearSelfAttention(LSAConfig(d=10, n_points=11))`` or ``LinearSelfAttention(d=10,
    n_points=11)``.  Input: tokens [b, pos, d+1] (see :meth:`tokens`); output [b, pos, 1] =
    −(y-slot of each token after the last layer).
    """

    def __init__(self, cfg: LSAConfig | None = None, **kwargs):
        super().__init__()
        if cfg is None:
            cfg = LSAConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either an LSAConfig or keyword arguments, not both")
        self._set_dims(cfg)
        self.hook_embed = HookPoint()
        self.blocks = nn.ModuleList([LSABlock(cfg) for _ in range(cfg.n_layers)])
        self.unembed = _Unembed()
        self.register_buffer("query_w0", torch.zeros(cfg.d))
        self._init_weights()
        self.setup()

    def _init_weights(self) -> None:
        g = torch.Generator().manual_seed(self.cfg.seed)
        std = math.sqrt(self.cfg.init_scale / self.cfg.d_model)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def tokens(self, batch: RegressionBatch) -> torch.Tensor:
        """[b, n_points, d+1]: (x_i, y_i) for the context, (x_q, −query_w0·x_q) for the query."""
        self._check_batch(batch)
        x, y = self._params_dtype_device(batch)
        y = y.clone()
        y[:, -1] = -(x[:, -1] @ self.query_w0)
        return torch.cat([x, y.unsqueeze(-1)], dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.d_model:
            raise ValueError(f"expected tokens [batch, pos, {self.d_model}] (use model.tokens(batch)), got {tuple(tokens.shape)}")
        resid = self.hook_embed(tokens)
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(resid)

    def loss(self, batch: RegressionBatch) -> torch.Tensor:
        """0.5 · mean_tasks (ŷ_q − y_q)² (von Oswald et al., train.py::compute_loss)."""
        return self.query_loss(batch)

    def W_O(self, layer: int) -> torch.Tensor:
        """The output projection P of ``layer`` per head as [head, d_head, d_model]."""
        return self.blocks[layer].attn.P.transpose(-1, -2)


# --------------------------------------------------------------------------------------------
# softmax GPT (Garg et al. 2022)


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention, TransformerLens parameter layout:
    W_Q/W_K/W_V [head, d_model, d_head], b_Q/b_K/b_V [head, d_head], W_O [head, d_head, d_model]."""

    def __init__(self, n_heads: int, d_head: int, d_model: int):
        super().__init__()
        for name in ("W_Q", "W_K", "W_V"):
            setattr(self, name, nn.Parameter(torch.zeros(n_heads, d_model, d_head)))
        for name in ("b_Q", "b_K", "b_V"):
            setattr(self, name, nn.Parameter(torch.zeros(n_heads, d_head)))
        self.W_O = nn.Parameter(torch.zeros(n_heads, d_head, d_model))
        self.scale = 1.0 / math.sqrt(d_head)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            setattr(self, name, HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.hook_q(torch.einsum("bpm,hmd->bphd", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpm,hmd->bphd", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpm,hmd->bphd", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.scale
        n_pos = x.shape[1]
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=x.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))
        return torch.einsum("bqhd,hdm->bqm", z, self.W_O)


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SoftmaxAttention(cfg.n_heads, cfg.d_head, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), nn.GELU(), nn.Linear(cfg.d_mlp, cfg.d_model))
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            setattr(self, name, HookPoint())

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid))))
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid))))


class SoftmaxGPT(_RegressionModel):
    """Garg et al.'s GPT for in-context regression (module docstring).

    ``SoftmaxGPT(GPTConfig(d=8, n_points=41))`` or ``SoftmaxGPT(d=8, n_points=41, d_model=64)``.
    Input: tokens [b, pos ≤ n_ctx, d] (see :meth:`tokens`); output [b, pos, 1] = the read-out at
    every position (meaningful at x positions 0, 2, 4, …).
    """

    def __init__(self, cfg: GPTConfig | None = None, **kwargs):
        super().__init__()
        if cfg is None:
            cfg = GPTConfig(**kwargs)
        elif kwargs:
            raise ValueError("pass either a GPTConfig or keyword arguments, not both")
        self._set_dims(cfg)
        self.read_in = nn.Linear(cfg.d, cfg.d_model)
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList([GPTBlock(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = nn.LayerNorm(cfg.d_model)
        self.unembed = _Unembed(nn.Linear(cfg.d_model, 1))
        self._init_weights()
        self.setup()

    def _init_weights(self) -> None:
        g = torch.Generator().manual_seed(self.cfg.seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if isinstance(self.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self, nn.LayerNorm):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias") or name.rsplit(".", 1)[-1].startswith("b_"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * self.cfg.init_std)

    def tokens(self, batch: RegressionBatch) -> torch.Tensor:
        """[b, 2·n_points − 1, d]: x_1, (y_1, 0…), …, x_{n-1}, (y_{n-1}, 0…), x_q."""
        self._check_batch(batch)
        x, y = self._params_dtype_device(batch)
        b, n, d = x.shape
        if 2 * n - 1 > self.n_ctx:
            raise ValueError(f"batch has {n} points ({2 * n - 1} tokens) but the model has {self.n_ctx} positions "
                             f"(n_points={self.cfg.n_points}); sample at most {self.cfg.n_points} points or build a longer model")
        y_tok = torch.zeros_like(x)
        y_tok[..., 0] = y
        return torch.stack([x, y_tok], dim=2).reshape(b, 2 * n, d)[:, :-1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3 or tokens.shape[-1] != self.d:
            raise ValueError(f"expected tokens [batch, pos, {self.d}] (use model.tokens(batch)), got {tuple(tokens.shape)}")
        n_pos = tokens.shape[1]
        if n_pos > self.n_ctx:
            raise ValueError(f"{n_pos} tokens exceed the model's {self.n_ctx} positions")
        resid = self.hook_embed(self.read_in(tokens)) + self.hook_pos_embed(self.W_pos[:n_pos].expand(tokens.shape[0], -1, -1))
        for block in self.blocks:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    def predict_all(self, batch: RegressionBatch) -> torch.Tensor:
        """ŷ_i for every point i (read at x_i's position, seeing the i−1 points before it): [b, n_points]."""
        return self(self.tokens(batch))[:, 0::2, 0]

    def loss(self, batch: RegressionBatch) -> torch.Tensor:
        """mean over tasks and points of (ŷ_i − y_i)² — every prefix (Garg et al.)."""
        y = self._params_dtype_device(batch)[1]
        return (self.predict_all(batch) - y).pow(2).mean()

    def W_O(self, layer: int) -> torch.Tensor:
        """[head, d_head, d_model]."""
        return self.blocks[layer].attn.W_O


def regression_module(model) -> _RegressionModel:
    """The regression module behind a facade model (``load_model(module)``) or the module itself;
    ValueError for anything that is not one (e.g. a pretrained LM)."""
    module = getattr(getattr(model, "engine", None), "module", model)
    if not (hasattr(module, "predict") and hasattr(module, "cfg") and hasattr(module.cfg, "d")):
        raise ValueError(f"expected an interp.linreg model (LinearSelfAttention / SoftmaxGPT) or load_model() of one, "
                         f"got {type(model).__name__}")
    return module


MODEL_CLASSES: dict[str, type[_RegressionModel]] = {"lsa": LinearSelfAttention, "gpt": SoftmaxGPT}
CONFIG_CLASSES = {"lsa": LSAConfig, "gpt": GPTConfig}


def build_model(cfg: LSAConfig | GPTConfig | dict) -> LinearSelfAttention | SoftmaxGPT:
    """A model from its config (or the config's ``to_dict()``, which carries ``kind``)."""
    if isinstance(cfg, dict):
        cfg = dict(cfg)
        kind = cfg.pop("kind", None)
        if kind not in CONFIG_CLASSES:
            raise ValueError(f"model config needs kind in {sorted(CONFIG_CLASSES)}, got {kind!r}")
        cfg = CONFIG_CLASSES[kind](**cfg)
    if not isinstance(cfg, (LSAConfig, GPTConfig)):
        raise ValueError(f"expected an LSAConfig, a GPTConfig or a dict, got {type(cfg).__name__}")
    return MODEL_CLASSES[cfg.kind](cfg)
