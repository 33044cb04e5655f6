"""Attention-as-kernel in the regression GPT: the kernel fit's closed form, and the per-head
numbers against a hand computation from the module's own cache."""
import json

import numpy as np
import pytest
import torch

from analyses.linreg.kernel import _centred_corr_and_slope, attention_kernel, kernels
from interp.linreg.models import GPTConfig, LinearSelfAttention, LSAConfig, SoftmaxGPT
from interp.linreg.sampler import sample_regression_tasks


def test_centred_fit_recovers_slope_despite_per_task_shifts():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(50, 7, generator=g, dtype=torch.float64)
    s = 2.5 * k + torch.randn(50, 1, generator=g, dtype=torch.float64) * 10  # a different shift per task
    r, beta = _centred_corr_and_slope(s, k)
    assert r == pytest.approx(1.0, abs=1e-12) and beta == pytest.approx(2.5, abs=1e-12)
    r_neg, _ = _centred_corr_and_slope(-s, k)
    assert r_neg == pytest.approx(-1.0, abs=1e-12)


def test_per_head_numbers_match_the_cache():
    module = SoftmaxGPT(GPTConfig(d=3, n_points=7, d_model=16, n_layers=2, n_heads=2, seed=3))
    r = attention_kernel(module, n_tasks=128, seed=4)
    batch = sample_regression_tasks(128, 7, 3, seed=4)
    _, cache = module.run_with_cache(module.tokens(batch))
    x_pos = torch.arange(0, 12, 2)
    k = kernels(batch)["dot"]
    for l in range(2):
        for h in range(2):
            s = cache[f"blocks.{l}.attn.hook_attn_scores"][:, h, -1, x_pos].double()
            sc, kc = s - s.mean(-1, keepdim=True), k - k.mean(-1, keepdim=True)
            assert r.r_dot[l][h] == pytest.approx(float(np.corrcoef(sc.flatten(), kc.flatten())[0, 1]), abs=1e-6)
            mass = cache[f"blocks.{l}.attn.hook_pattern"][:, h, -1, x_pos].sum(-1).mean()
            assert r.x_mass[l][h] == pytest.approx(float(mass), abs=1e-6)
    l, h = r.best_head
    a = cache[f"blocks.{l}.attn.hook_pattern"][:, h, -1, x_pos].double()
    vote = (a * batch.y[:, :-1]).sum(-1) / a.sum(-1)
    assert r.error["attention_vote"] == pytest.approx(float((vote - batch.y[:, -1]).pow(2).mean() / 3), rel=1e-6)
    json.dumps(r.to_dict())
    assert all(f.layout.xaxis.title.text and f.layout.yaxis.title.text for f in r.figures())


def test_linear_attention_model_is_refused():
    with pytest.raises(ValueError, match="softmax GPT"):
        attention_kernel(LinearSelfAttention(LSAConfig(d=2, n_points=4)))
