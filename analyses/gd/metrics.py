"""Is in-context learning gradient descent?  The comparison metrics of Dai et al., Deutch et al. and Shen et al.

Pure tensor functions; the model runs that produce their inputs live elsewhere.  Definitions follow
the authors' code where there is code (see ``shared/references/icl_as_gradient_descent.md`` §1–3).

Dai et al. 2023, "Why Can GPT Learn In-Context?" (code: microsoft/LMOps ``understand_icl``,
``icl_ft/compute_sim.py`` and ``compute_training_example_attn.py``); ZS = zero-shot prompt on the
original model, FT = zero-shot prompt on the model fine-tuned on the demos, ICL = demos in context:

- Rec2FTP (%) = 100 · |{ZS wrong ∧ FT right ∧ ICL right}| / |{ZS wrong ∧ FT right}|.
- SimAOU_l = mean_examples cos(ĥ_ICL − ĥ_ZS, ĥ_FT − ĥ_ZS), with h the attention-sublayer output of
  layer l at the recorded position and ĥ = h / max(‖h‖, ε), ε = 1e-20.  Random baseline:
  cos(ĥ_ICL − ĥ_ZS, u), u ~ U[0, 1)^d.
- SimAM_l = mean_examples mean_heads cos(A_ICL, A_other), A = raw attention logits q·k (pre-softmax)
  of the recorded position over the query-part tokens; A_other = A_FT ("SimAM") or A_ZS ("before
  fine-tuning" / ZSL SimAM).
- Kendall τ_b between ICL's attention to the demo tokens, softmax_t(Σ_heads A_t), and FT's
  "attention" to the training tokens, softmax_t(q_trainᵗ · q_test).

Deutch et al. 2024, "In-context Learning and Gradient Descent Revisited" (code: GiilDe/ft-vs-icl):

- update-based SimAM_l = mean_examples mean_heads cos(A_ICL − A_ZS, A_FT − A_ZS).

Shen, Mishra & Khashabi 2023, "Do pretrained Transformers learn in-context by gradient descent?"
(no public code; definitions from secondary sources), on next-token distributions p over the vocab:

- Token Overlap@K = |TopK(p1) ∩ TopK(p2)| / K  (K = 10);
- Overlap Cosine Similarity = cos(p1|_O, p2|_O), O = TopK(p1) ∩ TopK(p2)  (0 when O is empty);
- order sensitivity = Σ_vocab std_orders p(v)  (population std, see :func:`order_sensitivity`).

Also KL(p‖q) = Σ_v p(v) (log p(v) − log q(v)).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

AttentionScores = torch.Tensor | Sequence[torch.Tensor]


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch {shapes}: pass tensors of the same shape (align them first)")


def _check_ndim(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {ndim} dims {layout}")


NOISE_FLOOR = 1e-4  # relative size under which an attention-score update is float noise


def _cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-20) -> torch.Tensor:
    """cos(a, b) over the last axis; 0 where either vector is (numerically) zero."""
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def _unit(h: torch.Tensor, eps: float) -> torch.Tensor:
    """ĥ = h / max(‖h‖, eps) over the last axis (Dai's ``normalize=True``)."""
    return h / h.norm(dim=-1, keepdim=True).clamp_min(eps)


# --------------------------------------------------------------------------------------------
# Dai et al.: Rec2FTP and SimAOU


def rec2ftp(zs_correct: torch.Tensor, ft_correct: torch.Tensor, icl_correct: torch.Tensor) -> float:
    """Rec2FTP (%): of the examples FT fixes (ZS wrong, FT right), the share ICL also gets right.

    Inputs bool [n] (right = prediction equals gold).  NaN when FT fixes no example."""
    for name, t in (("zs_correct", zs_correct), ("ft_correct", ft_correct), ("icl_correct", icl_correct)):
        _check_ndim(name, t, 1, "[n] (one flag per eval example)")
    _check_same_shape(zs_correct=zs_correct, ft_correct=ft_correct, icl_correct=icl_correct)
    fixed_by_ft = ~zs_correct.bool() & ft_correct.bool()
    denom = int(fixed_by_ft.sum())
    if denom == 0:
        return float("nan")
    return 100.0 * int((fixed_by_ft & icl_correct.bool()).sum()) / denom


def simaou(h_icl: torch.Tensor, h_zs: torch.Tensor, h_ft: torch.Tensor, eps: float = 1e-20, per_example: bool = False) -> torch.Tensor:
    """SimAOU per layer [layer]: mean over examples of cos(ĥ_ICL − ĥ_ZS, ĥ_FT − ĥ_ZS).

    Inputs [n, layer, d]: attention-sublayer outputs at the recorded position; each is normalised
    ĥ = h / max(‖h‖, eps) before differencing.  The overall score is the mean of the result.
    ``per_example``: the cosines [n, layer] before the mean over examples (for intervals)."""
    for name, t in (("h_icl", h_icl), ("h_zs", h_zs), ("h_ft", h_ft)):
        _check_ndim(name, t, 3, "[n, layer, d]")
    _check_same_shape(h_icl=h_icl, h_zs=h_zs, h_ft=h_ft)
    z = _unit(h_zs, eps)
    cos = _cosine(_unit(h_icl, eps) - z, _unit(h_ft, eps) - z)
    return cos if per_example else cos.mean(0)


def simaou_random_baseline(h_icl: torch.Tensor, h_zs: torch.Tensor, generator: torch.Generator | None = None,
                           eps: float = 1e-20, per_example: bool = False) -> torch.Tensor:
    """Random SimAOU baseline [layer]: mean over examples of cos(ĥ_ICL − ĥ_ZS, u), u ~ U[0, 1)^d.

    u is drawn afresh per (example, layer) with ``torch.rand(..., generator=generator)``, as in Dai's
    code (``np.random.random``).  Note u is not centred: for a fixed update direction the expected
    cosine is not 0; it is ≈ 0 only on average over update directions symmetric about 0.
    ``per_example``: the cosines [n, layer] before the mean over examples (for intervals)."""
    for name, t in (("h_icl", h_icl), ("h_zs", h_zs)):
        _check_ndim(name, t, 3, "[n, layer, d]")
    _check_same_shape(h_icl=h_icl, h_zs=h_zs)
    u = torch.rand(h_icl.shape, generator=generator, dtype=h_icl.dtype, device=h_icl.device)
    cos = _cosine(_unit(h_icl, eps) - _unit(h_zs, eps), u)
    return cos if per_example else cos.mean(0)


# --------------------------------------------------------------------------------------------
# Dai et al. / Deutch et al.: SimAM


def _as_examples(name: str, a: AttentionScores) -> list[torch.Tensor]:
    """Split [n, layer, head, t] (or take a list of [layer, head, t_i]) into per-example tensors."""
    if isinstance(a, torch.Tensor):
        _check_ndim(name, a, 4, "[n, layer, head, t] (or pass a list of [layer, head, t_i])")
        return list(a.unbind(0))
    examples = list(a)
    for i, e in enumerate(examples):
        _check_ndim(f"{name}[{i}]", e, 3, "[layer, head, t_i]")
    return examples


def simam(a_icl: AttentionScores, a_other: AttentionScores, a_zs: AttentionScores | None = None,
          per_example: bool = False) -> torch.Tensor:
    """SimAM per layer [layer]: cosine over the token axis, mean over heads, then over examples.

    ``a_*`` are raw attention logits (q·k, pre-softmax) of the recorded position over the query-part
    tokens, either [n, layer, head, t] or a list of per-example [layer, head, t_i] (t_i may vary;
    the three inputs must agree per example).  Without ``a_zs``: cos(A_ICL, A_other) — Dai's SimAM
    (``a_other`` = FT) or his before-fine-tuning SimAM (``a_other`` = ZS).  With ``a_zs``: Deutch's
    update-based cos(A_ICL − A_ZS, A_other − A_ZS).

    In the update-based form a head whose ICL or other update is float noise (‖A − A_ZS‖ ≤
    ``NOISE_FLOOR`` · ‖A_ZS‖; layer 0 of a rotary model, whose query-part scores cannot see the
    demonstrations) has no direction: it is left out of the mean over heads (nan when a layer has
    none left) instead of contributing the cosine of rounding errors.  ``per_example``: the values
    [n, layer] before the mean over examples (for intervals)."""
    icl, other = _as_examples("a_icl", a_icl), _as_examples("a_other", a_other)
    zs = _as_examples("a_zs", a_zs) if a_zs is not None else None
    if len(icl) != len(other) or (zs is not None and len(zs) != len(icl)):
        raise ValueError(f"example counts differ (a_icl {len(icl)}, a_other {len(other)}"
                         f"{'' if zs is None else f', a_zs {len(zs)}'}): pass the same examples to each")
    if not icl:
        raise ValueError("no examples: pass at least one")
    rows = []
    for i, (x, y) in enumerate(zip(icl, other)):
        if zs is None:
            _check_same_shape(**{f"a_icl[{i}]": x, f"a_other[{i}]": y})
        else:
            _check_same_shape(**{f"a_icl[{i}]": x, f"a_other[{i}]": y, f"a_zs[{i}]": zs[i]})
            base = zs[i].norm(dim=-1)
            x, y = x - zs[i], y - zs[i]
            cos = _cosine(x, y)
            noise = (x.norm(dim=-1) <= NOISE_FLOOR * base) | (y.norm(dim=-1) <= NOISE_FLOOR * base)
            rows.append(cos.masked_fill(noise, float("nan")).nanmean(-1))  # [layer]
            continue
        rows.append(_cosine(x, y).mean(-1))  # [layer]
    values = torch.stack(rows)
    if per_example:
        return values
    return values.nanmean(0) if zs is not None else values.mean(0)


# --------------------------------------------------------------------------------------------
# Dai et al.: attention to demo / training tokens and Kendall's tau


def training_token_attention(q_test: torch.Tensor, q_train: torch.Tensor) -> torch.Tensor:
    """FT side [..., T]: softmax_t(q_train[t] · q_test) over the training tokens.

    ``q_test`` [..., d] (fine-tuned model, zero-shot input, recorded position; full multi-head query,
    already scaled), ``q_train`` [..., T, d] (queries recorded during the SGD steps).  No extra scaling."""
    if q_train.dim() < 2 or q_train.shape[-1] != q_test.shape[-1]:
        raise ValueError(f"q_train {tuple(q_train.shape)} must be [..., T, d] with d = q_test's last dim "
                         f"{tuple(q_test.shape)}")
    return torch.einsum("...td,...d->...t", q_train, q_test).softmax(-1)


def icl_demo_attention(scores: torch.Tensor) -> torch.Tensor:
    """ICL side [..., T]: softmax over demo tokens of the raw logits summed over heads.

    ``scores`` [..., head, T]: logits of the recorded position to every demo token (bos and
    separators removed)."""
    if scores.dim() < 2:
        raise ValueError(f"scores has shape {tuple(scores.shape)}; expected [..., head, T]")
    return scores.sum(-2).softmax(-1)


def kendall_tau(icl_attention: torch.Tensor, gd_attention: torch.Tensor) -> float:
    """Kendall's τ_b (``scipy.stats.kendalltau``) between two 1-D attention vectors.

    NaN (without a warning) when either vector is constant."""
    from scipy.stats import kendalltau

    for name, t in (("icl_attention", icl_attention), ("gd_attention", gd_attention)):
        _check_ndim(name, t, 1, "[T]")
    _check_same_shape(icl_attention=icl_attention, gd_attention=gd_attention)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = kendalltau(icl_attention.detach().double().cpu().numpy(), gd_attention.detach().double().cpu().numpy())
    return float(res[0])


def kendall_by_layer(icl: torch.Tensor, gd: torch.Tensor, per_example: bool = False) -> torch.Tensor:
    """Mean Kendall τ_b per layer [layer] (float64) over examples; NaN taus are ignored (nanmean).

    ``icl``, ``gd`` [n, layer, T]: per example and layer, the two attention vectors over tokens.
    ``per_example``: the taus [n, layer] before the mean (for intervals)."""
    for name, t in (("icl", icl), ("gd", gd)):
        _check_ndim(name, t, 3, "[n, layer, T]")
    _check_same_shape(icl=icl, gd=gd)
    n, n_layers, _ = icl.shape
    taus = torch.tensor([[kendall_tau(icl[i, l], gd[i, l]) for l in range(n_layers)] for i in range(n)],
                        dtype=torch.float64).reshape(n, n_layers)
    return taus if per_example else taus.nanmean(0)


# --------------------------------------------------------------------------------------------
# Shen et al.: output-distribution agreement and order sensitivity


def _topk_mask(p: torch.Tensor, k: int) -> torch.Tensor:
    if not 1 <= k <= p.shape[-1]:
        raise ValueError(f"k = {k} must be in [1, vocab = {p.shape[-1]}]")
    return torch.zeros_like(p, dtype=torch.bool).scatter_(-1, p.topk(k, dim=-1).indices, True)


def _check_distributions(p1: torch.Tensor, p2: torch.Tensor) -> None:
    for name, t in (("p1", p1), ("p2", p2)):
        _check_ndim(name, t, 2, "[n, vocab]")
    _check_same_shape(p1=p1, p2=p2)


def token_overlap(p1: torch.Tensor, p2: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Token Overlap@k [n]: |TopK(p1) ∩ TopK(p2)| / k for distributions [n, vocab].

    Ties at the k-th place are broken by ``torch.topk``."""
    _check_distributions(p1, p2)
    return (_topk_mask(p1, k) & _topk_mask(p2, k)).sum(-1).to(p1.dtype) / k


def overlap_cosine(p1: torch.Tensor, p2: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Overlap Cosine Similarity [n]: cos(p1|_O, p2|_O) with O = TopK(p1) ∩ TopK(p2); 0 when O = ∅.

    Plain cosine on the overlap (the digest's extra (K − |O|) factor is not applied)."""
    _check_distributions(p1, p2)
    overlap = _topk_mask(p1, k) & _topk_mask(p2, k)
    zero = torch.zeros((), dtype=p1.dtype, device=p1.device)
    return _cosine(torch.where(overlap, p1, zero), torch.where(overlap, p2, zero))


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) [n] = Σ_v p(v) (log p(v) − log q(v)) from log-probabilities [n, vocab].

    Terms with p(v) = 0 contribute 0; p(v) > 0 = q(v) gives +inf."""
    for name, t in (("logp", logp), ("logq", logq)):
        _check_ndim(name, t, 2, "[n, vocab]")
    _check_same_shape(logp=logp, logq=logq)
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def order_sensitivity(probs: torch.Tensor) -> torch.Tensor:
    """Order sensitivity [n] = Σ_v std_orders p(v) for output distributions [orders, n, vocab].

    Uses the population std (``correction=0``): the N orders are the whole set being described, not a
    sample, and with two orders the score is then Σ_v |p_1(v) − p_2(v)| / 2, the total-variation
    distance.  (Shen et al. do not state the correction; with ``correction=1`` multiply by
    √(N / (N − 1)).)"""
    _check_ndim("probs", probs, 3, "[orders, n, vocab]")
    return probs.std(dim=0, correction=0).sum(-1)
