"""Anchors: flows, AUC and loyalty on known inputs; isolation makes label tokens attend to themselves;
the saliency A ⊙ dL/dA from zero-leaf taps equals Wang et al.'s ones-multiplier trick."""
import copy

import pytest
import torch

from analyses.kernel.anchors import auc, auc_ovo, flows, word_jaccard
from interp import BlockAttentionPairs, Capture, ScaleAttention, load_model
from tests.conftest import make_tiny_llama


def test_flows_known_values():
    sal = torch.zeros(6, 6)
    sal[2, 0], sal[2, 1] = 1.0, 3.0      # into label at 2: wp pairs (2,0),(2,1)
    sal[4, 1] = 2.0                      # into label at 4
    sal[5, 2], sal[5, 4] = 5.0, 7.0      # label -> q=5
    sal[3, 0] = 6.0                      # other
    wp, pq, ww = flows(sal, [2, 4], 5)
    assert wp == pytest.approx((1 + 3 + 2) / (2 + 4))
    assert pq == pytest.approx((5 + 7) / 2)
    assert ww == pytest.approx(6.0 / (5 * 6 / 2 - 6 - 2))


def test_auc_known_values():
    y = torch.tensor([0, 0, 1, 1])
    assert auc(y == 1, torch.tensor([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc(y == 1, torch.tensor([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc(y == 1, torch.tensor([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert auc(y == 1, torch.tensor([0.1, 0.35, 0.3, 0.4])) == 0.75
    y3 = torch.tensor([0, 1, 2, 0, 1, 2])
    perfect = torch.nn.functional.one_hot(y3, 3).float() + 0.1
    assert auc_ovo(y3, perfect) == 1.0


def _wang_notebook_aucroc(y, scores):
    """Wang et al.'s deep_analysis notebook, re-implemented with scipy: keep the classes the
    model predicts, renormalise their scores, roc_auc_score(multi_class="ovo") = the mean over
    class pairs of the two directed Mann-Whitney AUCs (Hand & Till)."""
    import itertools

    import numpy as np
    from scipy.stats import mannwhitneyu

    y, scores = np.asarray(y), np.asarray(scores, dtype=float)
    classes = sorted(set(y.tolist()))
    s = scores[:, classes] / scores[:, classes].sum(1, keepdims=True)

    def directed(pos_class, col, rows):
        pos, neg = s[rows & (y == pos_class), col], s[rows & (y != pos_class), col]
        return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))

    if len(classes) == 2:
        return directed(classes[1], 1, np.ones(len(y), bool))
    pairs = [0.5 * (directed(a, i, (y == a) | (y == b)) + directed(b, j, (y == a) | (y == b)))
             for (i, a), (j, b) in itertools.combinations(enumerate(classes), 2)]
    return float(np.mean(pairs))


def test_aucroc_drops_never_predicted_classes_as_wangs_notebook():
    """Four classes, class 3 never predicted: renormalising over the three predicted classes
    changes the AUC (over all four it would differ); binary case with a third, absent class."""
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1, 0, 2])
    scores = torch.rand(12, 4, generator=g) + torch.nn.functional.one_hot(y, 4) * 0.4
    scores[:, 3] += torch.rand(12, generator=g) * 2  # a large, uninformative never-predicted class
    want = _wang_notebook_aucroc(y.tolist(), scores.tolist())
    assert auc_ovo(y, scores) == pytest.approx(want, abs=1e-12)
    # the earlier variant normalised over all four classes; here that gives another number
    s4 = scores / scores.sum(-1, keepdim=True)
    old = sum(0.5 * (auc(y[m] == a, s4[m, a]) + auc(y[m] == b, s4[m, b]))
              for a, b in ((0, 1), (0, 2), (1, 2)) for m in [(y == a) | (y == b)]) / 3
    assert abs(old - want) > 1e-3
    y2 = torch.tensor([0, 2, 0, 2, 2, 0])
    s2 = torch.rand(6, 3, generator=g)
    assert auc_ovo(y2, s2) == pytest.approx(_wang_notebook_aucroc(y2.tolist(), s2.tolist()), abs=1e-12)


def test_word_jaccard():
    a = torch.tensor([[5.0, 4, 3, 2, 1, 0]])
    assert word_jaccard(a, a, top=3).tolist() == [1.0]
    b = torch.tensor([[0.0, 1, 2, 3, 4, 5]])
    assert word_jaccard(a, b, top=3).tolist() == [0.0]
    c = torch.tensor([[5.0, 4, 0, 3, 1, 2]])  # top-3 {0,1,3} vs {0,1,2}: 2 shared of 4
    assert word_jaccard(a, c, top=3).tolist() == [0.5]


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    return load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))


def test_isolation_makes_label_rows_attend_only_to_themselves(tiny):
    ids = tiny.encode(["ab cd ef gh"])[0]
    T = ids.shape[1]
    pairs = torch.zeros(1, T, T, dtype=torch.bool)
    pairs[0, 4, :4] = True
    with torch.no_grad():
        out = tiny.run(ids, capture=["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"],
                       edits=[BlockAttentionPairs(pairs, layers=[0])])
    row = out["blocks.0.attn.hook_pattern"][0, :, 4]
    assert torch.allclose(row[:, 4], torch.ones(4)) and row[:, :4].abs().max() == 0
    assert out["blocks.1.attn.hook_pattern"][0, :, 4, :4].sum() > 0  # other layers untouched


def test_saliency_from_taps_equals_ones_multiplier(tiny):
    ids = tiny.encode(["ab cd ef gh"])[0]
    T = ids.shape[1]

    def loss(logits):
        return torch.nn.functional.cross_entropy(logits[:, [5, 7]].float(), torch.tensor([1]))

    g = tiny.gradients(ids, ["blocks.1.attn.hook_pattern"], loss)
    ours = g.acts["blocks.1.attn.hook_pattern"] * g.grads["blocks.1.attn.hook_pattern"]
    ones = torch.ones(1, tiny.n_heads, T, T, requires_grad=True)  # Wang et al.: A * P with P = 1
    out = tiny.run(ids, grad=True, logits="final", edits=[ScaleAttention(None, None, factor=ones, layers=1)])
    (grad,) = torch.autograd.grad(loss(out.logits), ones)
    assert torch.allclose(ours, grad, atol=1e-6)
