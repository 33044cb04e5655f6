"""Dai et al.'s dual form: relaxed linear attention = (W_ZSL + ΔW_ICL) q exactly; softmax breaks it."""
import math

import pytest
import torch

from analyses.gd.dual_form import (OneLayerLinearAttention, compare_updates, delta_w_icl, dual_form_output,
                                linear_attention)

DT = torch.float64
D_MODEL, D_HEAD, M_DEMO, N_QUERY = 8, 5, 6, 3


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = OneLayerLinearAttention(D_MODEL, D_HEAD, dtype=DT)
    demos = torch.randn(M_DEMO, D_MODEL, dtype=DT)
    query_tokens = torch.randn(N_QUERY, D_MODEL, dtype=DT)
    return model, demos, query_tokens


def kqv(model, x):
    with torch.no_grad():
        return model.W_K(x), model.W_Q(x), model.W_V(x)


def test_layer_output_is_zero_shot_plus_delta_w(setup):
    model, demos, query_tokens = setup
    with torch.no_grad():
        out = model(torch.cat([demos, query_tokens]))
    k_d, _, v_d = kqv(model, demos)
    k_x, q_x, v_x = kqv(model, query_tokens)
    q = q_x[-1]
    w_zsl, dw_icl = delta_w_icl(k_x, v_x), delta_w_icl(k_d, v_d)
    assert dw_icl.shape == (D_HEAD, D_HEAD)
    assert torch.allclose(out, w_zsl @ q + dw_icl @ q, rtol=0, atol=1e-12)
    assert torch.allclose(out, dual_form_output(k_x, v_x, q) + dual_form_output(k_d, v_d, q), rtol=0, atol=1e-12)
    # the demos' contribution is not negligible: the check is not passing trivially
    assert (dw_icl @ q).norm() > 1e-3


def test_dual_form_equals_delta_w_times_q_and_linear_attention():
    g = torch.Generator().manual_seed(1)
    keys, values = torch.randn(2, 7, 4, generator=g, dtype=DT), torch.randn(2, 7, 3, generator=g, dtype=DT)
    query = torch.randn(2, 4, generator=g, dtype=DT)
    dual = dual_form_output(keys, values, query)
    assert dual.shape == (2, 3)
    assert torch.allclose(dual, (delta_w_icl(keys, values) @ query.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-12)
    assert torch.allclose(dual, linear_attention(keys, values, query), rtol=0, atol=1e-12)


def test_compare_updates():
    v = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, 0.0]], dtype=DT)
    res = compare_updates(v, 2 * v)
    assert res["cosine"].tolist() == pytest.approx([1.0, 1.0])
    assert res["norm_ratio"].tolist() == pytest.approx([0.5, 0.5])
    ortho = compare_updates(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]))
    assert ortho["cosine"].item() == pytest.approx(0.0) and ortho["norm_ratio"].item() == pytest.approx(1 / 3)


def test_softmax_attention_does_not_split_into_zero_shot_plus_demos(setup):
    """With softmax the normalisation couples demos and query tokens: no exact dual form."""
    model, demos, query_tokens = setup
    k_d, _, v_d = kqv(model, demos)
    k_x, q_x, v_x = kqv(model, query_tokens)
    q = q_x[-1]

    def softmax_attention(keys, values):
        return torch.softmax(keys @ q / math.sqrt(D_HEAD), -1) @ values

    full = softmax_attention(torch.cat([k_d, k_x]), torch.cat([v_d, v_x]))
    split = softmax_attention(k_x, v_x) + softmax_attention(k_d, v_d)
    assert (full - split).abs().max() > 1e-3
    # the relaxed linear form does split exactly on the same tokens
    lin_full = linear_attention(torch.cat([k_d, k_x]), torch.cat([v_d, v_x]), q)
    assert torch.allclose(lin_full, linear_attention(k_x, v_x, q) + linear_attention(k_d, v_d, q), rtol=0, atol=1e-12)


def test_shape_errors():
    with pytest.raises(ValueError, match="disagree before the last dim"):
        delta_w_icl(torch.zeros(5, 4), torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"query .* must be \[\.\.\., d_k\]"):
        dual_form_output(torch.zeros(5, 4), torch.zeros(5, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="shape mismatch"):
        compare_updates(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="d_model=8"):
        OneLayerLinearAttention(8, 4)(torch.zeros(3, 5))
