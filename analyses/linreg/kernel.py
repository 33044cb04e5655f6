"""Attention as a kernel in the in-context regression GPT (Han et al. 2023's question, asked where
the answer is known: Garg et al.'s setting, interleaved x / y tokens).

For each layer l and head h, the query token x_q's attention over the N context x-tokens
(positions 0, 2, …, 2N−2) is compared with two kernels of the inputs:

    dot  k(x_q, x_i) = x_q·x_i          rbf  k(x_q, x_i) = −||x_q − x_i||²

``r_dot[l, h]`` / ``r_rbf[l, h]`` are Pearson correlations between the pre-softmax scores s_i
(``attn.hook_attn_scores``) and the kernel, both centred within each task (softmax is invariant to
a per-query shift), pooled over tasks.  ``beta[l, h]`` is the least-squares slope s ≈ β·k + c_t,
so that head's attention over the x-tokens is ≈ softmax_i(β k(x_q, x_i)).  ``x_mass[l, h]`` is
the attention mass on x-tokens (the rest goes to y-tokens and the query itself).

Two predictions are then scored against the model's own ŷ and against y_q (normalised squared
error (ŷ − y_q)²/d, Garg et al.):

- Nadaraya–Watson with the best head's kernel:  ŷ_NW = Σ_i softmax_i(β k(x_q, x_i)) y_i;
- the head's own attention as the kernel (Han et al.'s reconstruction):
  ŷ_attn = Σ_i a_i y_i / Σ_i a_i over the context x-tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from interp.linreg.models import regression_module
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks
from interp.linreg.train import training_distribution


def _centred_corr_and_slope(s: torch.Tensor, k: torch.Tensor) -> tuple[float, float]:
    """Pearson r and slope of s on k after removing each row's mean: s, k [tasks, N]."""
    s = s - s.mean(-1, keepdim=True)
    k = k - k.mean(-1, keepdim=True)
    cov = (s * k).sum()
    r = cov / (s.pow(2).sum().sqrt() * k.pow(2).sum().sqrt()).clamp_min(1e-30)
    return float(r), float(cov / k.pow(2).sum().clamp_min(1e-30))


def kernels(batch: RegressionBatch) -> dict[str, torch.Tensor]:
    """{"dot": x_q·x_i, "rbf": −||x_q − x_i||²}: [tasks, N] over the context points."""
    x, x_q = batch.x[:, :-1].double(), batch.x[:, -1:].double()
    return {"dot": (x * x_q).sum(-1), "rbf": -(x - x_q).pow(2).sum(-1)}


@dataclass
class LinregKernelResult:
    """Per-head kernel fit of the query's attention; see the module docstring."""

    model: dict
    d: int
    n_points: int
    n_tasks: int
    seed: int
    r_dot: list  # [layer][head]
    r_rbf: list
    beta: list  # slope of scores on x_q·x_i
    x_mass: list
    best_head: tuple[int, int]
    error: dict  # normalised squared error against y_q: model, nadaraya_watson, attention_vote
    agreement: dict  # Pearson r with the model's prediction: nadaraya_watson, attention_vote

    def to_dict(self) -> dict:
        out = dict(self.__dict__)
        out["best_head"] = list(self.best_head)
        return out

    def figures(self) -> list:
        import plotly.graph_objects as go

        setting = f"softmax GPT d={self.d}, N={self.n_points - 1}, {self.n_tasks} tasks, seed {self.seed}"
        n_layers, n_heads = np.shape(self.r_dot)
        figs = []
        for grid, what in ((self.r_dot, "r(scores, x_q·x_i)"), (self.x_mass, "attention mass on x-tokens")):
            fig = go.Figure(go.Heatmap(z=grid, x=[f"H{h}" for h in range(n_heads)], y=[f"L{l}" for l in range(n_layers)],
                                       colorbar={"title": what}))
            fig.update_layout(title=f"Query → context x-tokens: {what} — {setting}", xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        bars = go.Figure(go.Bar(x=list(self.error), y=list(self.error.values())))
        l, h = self.best_head
        bars.update_layout(title=f"Error of the model vs kernel predictors (kernel of L{l}H{h}) — {setting}",
                           xaxis_title="predictor", yaxis_title="normalised squared error (ŷ − y)²/d")
        figs.append(bars)
        return figs


def attention_kernel(model, *, n_tasks: int = 2048, seed: int = 0, n_points: int | None = None,
                     x_dist: str | None = None) -> LinregKernelResult:
    """Fit dot / rbf kernels to the query's attention over context x-tokens, head by head, in a
    :class:`~interp.linreg.models.SoftmaxGPT` (or ``load_model`` of one)."""
    from interp import Capture, load_model

    module = regression_module(model)
    if module.cfg.kind != "gpt":
        raise ValueError("attention_kernel needs the softmax GPT (interleaved x / y tokens); the linear-attention model "
                         "has no softmax kernel — see analyses.linreg.gd_check for it")
    trained_on = training_distribution(module)
    x_dist = x_dist or (trained_on[0] if trained_on else "normal")
    n_points = n_points or module.cfg.n_points
    batch = sample_regression_tasks(n_tasks, n_points, module.cfg.d, x_dist=x_dist, seed=seed)
    facade = load_model(module)
    with torch.no_grad():
        out = facade.run(module.tokens(batch), capture=[Capture("attn.hook_attn_scores", positions="final"),
                                                         Capture("attn.hook_pattern", positions="final")], logits="final")
    y_model = out.logits[:, 0].double()
    x_pos = torch.arange(0, 2 * (n_points - 1), 2)
    ks = kernels(batch)
    y_ctx, y_q = batch.y[:, :-1].double(), batch.y[:, -1].double()
    L, H = module.cfg.n_layers, module.cfg.n_heads
    r_dot, r_rbf, beta, x_mass = (np.zeros((L, H)) for _ in range(4))
    for l in range(L):
        scores = out.acts[f"blocks.{l}.attn.hook_attn_scores"][:, :, 0, x_pos].double()  # [tasks, head, N]
        pattern = out.acts[f"blocks.{l}.attn.hook_pattern"][:, :, 0].double()  # [tasks, head, pos]
        for h in range(H):
            r_dot[l, h], beta[l, h] = _centred_corr_and_slope(scores[:, h], ks["dot"])
            r_rbf[l, h] = _centred_corr_and_slope(scores[:, h], ks["rbf"])[0]
            x_mass[l, h] = float(pattern[:, h, x_pos].sum(-1).mean())
    l, h = np.unravel_index(int(np.argmax(r_dot)), r_dot.shape)
    nw = ((beta[l, h] * ks["dot"]).softmax(-1) * y_ctx).sum(-1)
    a = out.acts[f"blocks.{l}.attn.hook_pattern"][:, h, 0, x_pos].double()
    vote = (a * y_ctx).sum(-1) / a.sum(-1).clamp_min(1e-30)
    err = lambda p: float((p - y_q).pow(2).mean() / module.cfg.d)  # noqa: E731
    corr = lambda p: float(np.corrcoef(p.numpy(), y_model.numpy())[0, 1])  # noqa: E731
    return LinregKernelResult(
        model=module.cfg.to_dict(), d=module.cfg.d, n_points=n_points, n_tasks=n_tasks, seed=seed,
        r_dot=r_dot.tolist(), r_rbf=r_rbf.tolist(), beta=beta.tolist(), x_mass=x_mass.tolist(), best_head=(int(l), int(h)),
        error={"model": err(y_model), "nadaraya_watson": err(nw), "attention_vote": err(vote), "zero": err(torch.zeros_like(y_q))},
        agreement={"nadaraya_watson": corr(nw), "attention_vote": corr(vote)})
