"""The dual form of relaxed linear attention (Dai et al. 2023, "Why Can GPT Learn In-Context?", §3).

Drop the softmax and the 1/√d scaling from attention ("relaxed linear attention").  For a query
vector q = W_Q x_query attending over the demonstration tokens X' = (x'_1, …) and the query-input
tokens X = (x_1, …):

    F_ICL(q) ≈ W_V [X'; X] (W_K [X'; X])ᵀ q
             = W_V X (W_K X)ᵀ q + W_V X' (W_K X')ᵀ q
             = (W_ZSL + ΔW_ICL) q,

    W_ZSL  = Σ_j (W_V x_j)(W_K x_j)ᵀ     over the query-input tokens (the zero-shot part),
    ΔW_ICL = Σ_i (W_V x'_i)(W_K x'_i)ᵀ   over the demonstration tokens.

ΔW_ICL is a sum of outer products — the same form as the update ΔW = Σ_i e_i x'_iᵀ of a linear
layer trained by gradient descent — which is Dai et al.'s "ICL performs implicit fine-tuning"
reading.  The identity is exact only without the softmax: softmax normalises over [X'; X] jointly,
so the demo and query terms do not separate (see ``tests/unit/analyses/gd/test_dual_form.py``).

With keys k_t = W_K x_t and values v_t = W_V x_t:  ΔW q = Σ_t v_t (k_t · q) = linear attention.
"""
from __future__ import annotations

import torch


def _check_kv(keys: torch.Tensor, values: torch.Tensor) -> None:
    if keys.dim() < 2 or values.dim() < 2:
        raise ValueError(f"keys {tuple(keys.shape)} / values {tuple(values.shape)} must be [..., T, d]")
    if keys.shape[:-1] != values.shape[:-1]:
        raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} disagree before the last dim: "
                         "pass one key and one value per token, [..., T, d_k] and [..., T, d_v]")


def _check_query(keys: torch.Tensor, query: torch.Tensor) -> None:
    if query.shape[-1] != keys.shape[-1] or query.shape[:-1] != keys.shape[:-2]:
        raise ValueError(f"query {tuple(query.shape)} must be [..., d_k] matching keys {tuple(keys.shape)} "
                         "= [..., T, d_k] (same leading dims, same d_k)")


def delta_w_icl(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """ΔW = Σ_t v_t k_tᵀ [..., d_v, d_k] from the demo tokens' keys [..., T, d_k] and values [..., T, d_v]."""
    _check_kv(keys, values)
    return torch.einsum("...tv,...tk->...vk", values, keys)


def dual_form_output(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """ΔW q = Σ_t v_t (k_t · q) [..., d_v], without materialising ΔW.

    ``keys`` [..., T, d_k], ``values`` [..., T, d_v], ``query`` [..., d_k]."""
    _check_kv(keys, values)
    _check_query(keys, query)
    coeff = torch.einsum("...tk,...k->...t", keys, query)  # k_t · q
    return torch.einsum("...t,...tv->...v", coeff, values)


def linear_attention(keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Relaxed attention output [..., d_v]: weights a = K q (no softmax, no scaling), output aᵀ V.

    Same mathematics as :func:`dual_form_output`, written as an attention row times the values."""
    _check_kv(keys, values)
    _check_query(keys, query)
    weights = (keys @ query.unsqueeze(-1)).transpose(-1, -2)  # [..., 1, T]
    return (weights @ values).squeeze(-2)


def compare_updates(pred: torch.Tensor, actual: torch.Tensor, eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Per leading index of [..., d]: {"cosine": cos(pred, actual), "norm_ratio": ‖pred‖ / ‖actual‖}.

    The cosine is 0 where either vector is zero; the ratio is inf / nan where ``actual`` is zero."""
    if pred.shape != actual.shape:
        raise ValueError(f"shape mismatch pred {tuple(pred.shape)} vs actual {tuple(actual.shape)}: "
                         "pass vectors of the same shape [..., d]")
    pn, an = pred.norm(dim=-1), actual.norm(dim=-1)
    cosine = (pred * actual).sum(-1) / (pn.clamp_min(eps) * an.clamp_min(eps))
    return {"cosine": cosine, "norm_ratio": pn / an}


class OneLayerLinearAttention(torch.nn.Module):
    """One head of relaxed causal linear attention; returns the output at the last position.

    forward(x [..., T, d_model]) = Σ_{t ≤ T−1} (W_V x_t)(W_K x_t)ᵀ (W_Q x_{T−1})  [..., d_head]."""

    def __init__(self, d_model: int, d_head: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.W_Q = torch.nn.Linear(d_model, d_head, bias=False, dtype=dtype)
        self.W_K = torch.nn.Linear(d_model, d_head, bias=False, dtype=dtype)
        self.W_V = torch.nn.Linear(d_model, d_head, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.W_Q.in_features:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected [..., T, d_model={self.W_Q.in_features}]")
        # the last position attends to every position t ≤ T−1, so the causal mask is a no-op here
        return linear_attention(self.W_K(x), self.W_V(x), self.W_Q(x[..., -1, :]))
