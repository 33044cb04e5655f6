"""ICL-vs-GD metrics (Dai et al., Deutch et al., Shen et al.) on hand-built inputs with known answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from analyses.gd.metrics import (icl_demo_attention, kendall_by_layer, kendall_tau, kl_divergence, order_sensitivity,
                                 overlap_cosine, rec2ftp, simam, simaou, simaou_random_baseline, token_overlap,
                                 training_token_attention)

DT = torch.float64


# ---------------------------------------------------------------------------- Rec2FTP


def test_rec2ftp_hand_built():
    zs = torch.tensor([False, False, False, True, False, True])
    ft = torch.tensor([True, True, True, True, False, False])
    icl = torch.tensor([True, False, True, False, True, True])
    # ZS wrong & FT right: examples 0, 1, 2; ICL right among them: 0 and 2 -> 2 / 3
    assert rec2ftp(zs, ft, icl) == pytest.approx(200 / 3)


def test_rec2ftp_empty_denominator_is_nan_and_shapes_checked():
    assert math.isnan(rec2ftp(torch.tensor([True, False]), torch.tensor([True, False]), torch.tensor([True, True])))
    with pytest.raises(ValueError, match="shape mismatch"):
        rec2ftp(torch.tensor([True]), torch.tensor([True, False]), torch.tensor([True, True]))


# ---------------------------------------------------------------------------- SimAOU


def test_simaou_self_similarity_is_one():
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(5, 3, 8, generator=g), torch.randn(5, 3, 8, generator=g)
    assert torch.allclose(simaou(x, z, x), torch.ones(3), atol=1e-6)


def test_simaou_orthogonal_updates_are_zero():
    e1, e2 = torch.tensor([1.0, 0.0, 0.0], dtype=DT), torch.tensor([0.0, 1.0, 0.0], dtype=DT)
    # scales are removed by the normalisation: ĥ_ZS = e1, ĥ_ICL = e2, ĥ_FT = -e2
    # updates (-1, 1, 0) and (-1, -1, 0) are orthogonal
    h_zs, h_icl, h_ft = (7 * e1).view(1, 1, 3), (3 * e2).view(1, 1, 3), (-0.5 * e2).view(1, 1, 3)
    assert simaou(h_icl, h_zs, h_ft).item() == pytest.approx(0.0, abs=1e-12)
    # ĥ_FT = (e1 + e2)/√2: cos((-1, 1, 0), (1/√2 - 1, 1/√2, 0)) by hand
    h_ft2 = torch.tensor([[[2.0, 2.0, 0.0]]], dtype=DT)
    r = 1 / math.sqrt(2)
    expected = (-(r - 1) + r) / (math.sqrt(2) * math.sqrt((r - 1) ** 2 + r**2))
    assert simaou(h_icl, h_zs, h_ft2).item() == pytest.approx(expected)


def test_simaou_random_baseline_near_zero_for_symmetric_updates():
    g = torch.Generator().manual_seed(1)
    # independent ICL / ZS outputs -> ĥ_ICL - ĥ_ZS is symmetric about 0
    h_icl, h_zs = torch.randn(20000, 2, 16, generator=g), torch.randn(20000, 2, 16, generator=g)
    base = simaou_random_baseline(h_icl, h_zs, generator=torch.Generator().manual_seed(2))
    assert base.shape == (2,)
    assert base.abs().max().item() < 0.02


def test_simaou_random_baseline_is_not_centred_for_a_fixed_direction():
    # u ~ U[0,1)^d is not centred, so an all-positive update direction scores ≈ 0.5 / sqrt(1/3) ≈ 0.87
    d = 16
    ones = torch.ones(500, 1, d)
    base = simaou_random_baseline(ones, -ones, generator=torch.Generator().manual_seed(3))
    assert base.item() > 0.8
    # reproducible with the same generator seed
    again = simaou_random_baseline(ones, -ones, generator=torch.Generator().manual_seed(3))
    assert torch.equal(base, again)


def test_simaou_shape_errors():
    with pytest.raises(ValueError, match=r"\[n, layer, d\]"):
        simaou(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape mismatch"):
        simaou(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, 5))


# ---------------------------------------------------------------------------- SimAM


def test_simam_identical_inputs_is_one():
    a = torch.randn(4, 3, 2, 6, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(simam(a, a.clone()), torch.ones(3), atol=1e-6)


def test_simam_hand_built_cosine():
    # one example, one layer, two heads
    a_icl = torch.tensor([[[[1.0, 1.0, 0.0], [1.0, 2.0, 3.0]]]], dtype=DT)
    a_other = torch.tensor([[[[1.0, 0.0, 0.0], [-1.0, -2.0, -3.0]]]], dtype=DT)
    # head 0: 1/sqrt(2); head 1: -1; mean over heads
    assert simam(a_icl, a_other).item() == pytest.approx((1 / math.sqrt(2) - 1) / 2)


def test_simam_update_based():
    zs = torch.tensor([[[[0.5, -1.0, 2.0], [3.0, 1.0, 1.0]]]], dtype=DT)
    icl = zs + torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]]], dtype=DT)
    ft = zs + torch.tensor([[[[0.0, 1.0, 0.0], [2.0, 2.0, 0.0]]]], dtype=DT)
    # head 0: orthogonal updates -> 0; head 1: parallel updates -> 1
    assert simam(icl, ft, a_zs=zs).item() == pytest.approx(0.5)
    # the raw (non-update) SimAM of the same scores is something else
    assert simam(icl, ft).item() != pytest.approx(0.5)


def test_simam_list_of_varying_lengths_matches_left_zero_padding():
    g = torch.Generator().manual_seed(5)
    lengths = [3, 5, 4]
    icl = [torch.randn(2, 3, t, generator=g, dtype=DT) for t in lengths]
    other = [torch.randn(2, 3, t, generator=g, dtype=DT) for t in lengths]
    zs = [torch.randn(2, 3, t, generator=g, dtype=DT) for t in lengths]

    def pad(xs):  # Dai left-pads with 0 to the longest example
        return torch.stack([F.pad(x, (max(lengths) - x.shape[-1], 0)) for x in xs])

    per_example = torch.stack([simam(i[None], o[None]) for i, o in zip(icl, other)]).mean(0)
    assert torch.allclose(simam(icl, other), per_example, atol=1e-12)
    assert torch.allclose(simam(icl, other), simam(pad(icl), pad(other)), atol=1e-12)
    assert torch.allclose(simam(icl, other, zs), simam(pad(icl), pad(other), pad(zs)), atol=1e-12)


def test_simam_errors():
    with pytest.raises(ValueError, match="shape mismatch"):
        simam([torch.zeros(2, 3, 4)], [torch.zeros(2, 3, 5)])
    with pytest.raises(ValueError, match="example counts differ"):
        simam([torch.zeros(2, 3, 4)], [torch.zeros(2, 3, 4)] * 2)
    with pytest.raises(ValueError, match=r"\[n, layer, head, t\]"):
        simam(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))


# ---------------------------------------------------------------------------- Kendall and attention vectors


def test_kendall_identical_and_reversed():
    x = torch.tensor([0.1, 0.4, 0.2, 0.3])
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert kendall_tau(x, x.flip(0)) == pytest.approx(-1 / 3)  # 2 concordant, 4 discordant pairs
    with pytest.raises(ValueError, match="shape mismatch"):
        kendall_tau(x, x[:3])


def test_kendall_by_layer_ignores_nan():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    icl = torch.stack([torch.stack([x, x]), torch.stack([torch.ones(4), x])])  # [n=2, layer=2, T=4]
    gd = torch.stack([torch.stack([x, -x]), torch.stack([x, x])])
    # layer 0: tau 1 and NaN (constant vector) -> 1; layer 1: -1 and 1 -> 0
    out = kendall_by_layer(icl, gd)
    assert out.tolist() == pytest.approx([1.0, 0.0])


def test_training_token_and_icl_demo_attention():
    q_test = torch.tensor([1.0, 0.0], dtype=DT)
    q_train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], dtype=DT)
    assert torch.allclose(training_token_attention(q_test, q_train), torch.softmax(torch.tensor([1.0, 0.0, 2.0], dtype=DT), 0))
    scores = torch.tensor([[1.0, -1.0], [0.0, 1.0]], dtype=DT)  # [head, T]: summed logits (1, 0)
    e = math.e
    assert icl_demo_attention(scores).tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    with pytest.raises(ValueError, match=r"\[\.\.\., T, d\]"):
        training_token_attention(q_test, torch.zeros(3, 5))


# ---------------------------------------------------------------------------- Shen et al.

# 12-word vocab; p1 ranks words 0 > 1 > ... > 11
W1 = torch.arange(12, 0, -1, dtype=DT)
W_SWAP = torch.tensor([1, 2, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3], dtype=DT)  # words 0, 1 pushed to the bottom
W_REV = torch.arange(1, 13, dtype=DT)  # reversed ranking
P1 = torch.stack([W1, W1, W1]) / 78
P2 = torch.stack([W_SWAP, W1, W_REV]) / 78


def test_token_overlap_hand_built():
    # k=10: top10(p1) = {0..9}; top10(swap) = top10(rev) = {2..11} -> 8 shared
    assert token_overlap(P1, P2).tolist() == pytest.approx([0.8, 1.0, 0.8])
    # k=3: top3(p1) = {0,1,2}; swap {2,3,4} -> 1 shared; rev {9,10,11} -> none
    assert token_overlap(P1, P2, k=3).tolist() == pytest.approx([1 / 3, 1.0, 0.0])
    with pytest.raises(ValueError, match="k = 13"):
        token_overlap(P1, P2, k=13)


def test_overlap_cosine_hand_built():
    # row 0, k=10: O = {2..9}; p1 on O ∝ (10..3), swap on O ∝ (12..5)
    a, b = torch.arange(10, 2, -1, dtype=DT), torch.arange(12, 4, -1, dtype=DT)
    expected0 = float((a @ b) / (a.norm() * b.norm()))
    assert expected0 == pytest.approx(484 / math.sqrt(380 * 620))
    out = overlap_cosine(P1, P2)
    # row 2: O = {2..9} again; rev on O ∝ (3..10) -> (10·3 + 9·4 + ... + 3·10) / 380 = 296 / 380
    assert out.tolist() == pytest.approx([expected0, 1.0, 296 / 380])
    # k=3: row 0 overlaps on a single word -> cosine 1; row 2 has no overlap -> 0
    assert overlap_cosine(P1, P2, k=3).tolist() == pytest.approx([1.0, 1.0, 0.0])
    # restricted to O, not the cosine of the full distributions
    assert out[0].item() != pytest.approx(F.cosine_similarity(P1[0], P2[0], dim=0).item())


def test_kl_divergence():
    logp = torch.log(torch.tensor([[0.3, 0.7], [0.9, 0.1], [1.0, 0.0]], dtype=DT))
    logq = torch.log(torch.tensor([[0.3, 0.7], [0.5, 0.5], [0.25, 0.75]], dtype=DT))
    out = kl_divergence(logp, logq)
    assert out[0].item() == pytest.approx(0.0, abs=1e-15)  # KL(p||p) = 0
    assert out[1].item() == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert out[2].item() == pytest.approx(-math.log(0.25))  # 0 · log 0 terms count as 0
    assert torch.allclose(kl_divergence(logp, logp), torch.zeros(3, dtype=DT))


def test_order_sensitivity():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]], dtype=DT)
    assert torch.allclose(order_sensitivity(torch.stack([p, p, p])), torch.zeros(2, dtype=DT))
    q = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=DT)
    # population std of two values = |a - b| / 2: (0.15 + 0 + 0.15) and 0
    assert order_sensitivity(torch.stack([p, q])).tolist() == pytest.approx([0.3, 0.0])
    with pytest.raises(ValueError, match=r"\[orders, n, vocab\]"):
        order_sensitivity(p)
