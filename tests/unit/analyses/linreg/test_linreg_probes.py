"""Implicit-weight probes and the layer ↔ GD-steps match, on models whose answer is known: the
hand-built one-GD-step LSA writes −ŷ_GD into the query's y-slot (von Oswald et al. 2023)."""
import json

import pytest
import torch

from analyses.linreg.probes import (
    capture_residuals, gd_steps, gd_steps_matched, implicit_weight_probes, regression_targets, token_positions,
)
from interp import load_model
from interp.linreg.gd import best_gd_eta, gd_one_step, hand_built_gd_model, ols
from interp.linreg.models import GPTConfig, SoftmaxGPT
from interp.linreg.sampler import sample_regression_tasks

D, N_POINTS, ETA = 4, 11, 0.5


@pytest.fixture(scope="module")
def gd_probes():
    return implicit_weight_probes(hand_built_gd_model(D, ETA, N_POINTS), D, n_tasks=512, n_boot=100)


def test_y_gd_is_read_off_the_query_after_the_gd_layer(gd_probes):
    assert gd_probes.layer_names == ["embed", "0"]
    assert gd_probes.positions == {"query": 10, "last_y": 9}
    embed, layer0 = gd_probes.r2("y_gd", "query")
    assert layer0 >= 0.999  # the y-slot is exactly −(η_model/N) Σ y_i x_i·x_q ∝ ŷ_GD
    assert embed <= 0.05  # (x_q, 0) alone says nothing about the task
    assert max(gd_probes.r2("y_gd", "query", control=True)) <= 0.2  # random-init LSA of the same shape
    # the weights themselves are not linearly in one token of a single GD layer
    assert max(gd_probes.r2("w", "query")) <= 0.2


def test_facade_accepted_and_same_numbers():
    module = hand_built_gd_model(D, ETA, N_POINTS)
    a = implicit_weight_probes(load_model(module), D, n_tasks=256, targets=["y_gd"], positions="query", n_boot=50)
    b = implicit_weight_probes(module, D, n_tasks=256, targets=["y_gd"], positions="query", n_boot=50)
    assert a.r2("y_gd") == b.r2("y_gd") and list(a.sweeps) == ["query"]


def test_gpt_positions_match_run_with_cache():
    module = SoftmaxGPT(GPTConfig(d=3, n_points=6, d_model=16, n_layers=2, n_heads=2)).eval()
    pos = token_positions(module, 6)
    assert pos == {"query": 10, "last_y": 9}  # x_j at 2j, y_j at 2j+1; query x_5 at 10, y_4 at 9
    batch = sample_regression_tasks(8, 6, 3, seed=3)
    acts = capture_residuals(module, batch)
    _, cache = module.run_with_cache(module.tokens(batch))
    for name, p in pos.items():
        assert acts[name].shape == (3, 8, 16)
        assert torch.allclose(acts[name][0], cache["blocks.0.hook_resid_pre"][:, p], atol=1e-6)
        assert torch.allclose(acts[name][2], cache["blocks.1.hook_resid_post"][:, p], atol=1e-6)
    tokens = module.tokens(batch)
    assert torch.equal(tokens[:, pos["last_y"], 0], batch.y[:, -2]) and torch.equal(tokens[:, pos["query"]], batch.x[:, -1])
    res = implicit_weight_probes(module, 3, n_tasks=128, n_boot=20)
    assert res.layer_names == ["embed", "0", "1"] and set(res.sweeps["last_y"]) == {"w", "Xty", "w_ols", "w_gd", "y_gd"}
    g = gd_steps_matched(module, 3, max_steps=3, n_tasks=128)
    assert g.method == "probe" and len(g.error) == 2 and len(g.error[0]) == 3


def test_targets():
    batch = sample_regression_tasks(16, 9, 3, seed=4)
    ys = regression_targets(batch, 0.7)
    assert torch.allclose(ys["w_ols"], batch.w.double(), atol=1e-8)  # noiseless, N = 8 ≥ d
    assert torch.allclose(ys["w_gd"], 0.7 / 8 * ys["Xty"])
    assert torch.allclose(ys["y_gd"], gd_one_step(batch, 0.7).double(), atol=1e-6)


def test_gd_steps():
    batch = sample_regression_tasks(64, 21, 3, seed=5)
    assert torch.allclose(gd_steps(batch, 0.3, 1), gd_one_step(batch, 0.3), atol=1e-6)
    assert torch.allclose(gd_steps(batch, 0.3, 2000), ols(batch), atol=1e-4)
    assert not torch.allclose(gd_steps(batch, 0.3, 2), gd_one_step(batch, 0.3), atol=1e-3)
    with pytest.raises(ValueError, match="t must be"):
        gd_steps(batch, 0.3, 0)


def test_gd_layer_matches_one_step():
    fixed = gd_steps_matched(hand_built_gd_model(D, ETA, N_POINTS), D, max_steps=4, n_tasks=256, eta=ETA)
    assert fixed.best_steps == [1] and fixed.error[0][0] < 1e-10 < fixed.error[0][1]
    assert fixed.method == "readout" and fixed.etas == [ETA] * 4
    # with the η line-searched per t: build the layer with t = 1's η (same tasks as the function samples)
    batch = sample_regression_tasks(256, N_POINTS, D, x_dist="uniform", x_range=0.5, seed=0)
    eta1 = best_gd_eta(batch)[0]
    searched = gd_steps_matched(hand_built_gd_model(D, eta1, N_POINTS), D, max_steps=4, n_tasks=256)
    assert searched.etas[0] == pytest.approx(eta1) and searched.best_steps == [1]
    assert searched.error[0][0] < 1e-10 and searched.gd_loss[0] > searched.gd_loss[-1]


def test_bad_inputs():
    module = hand_built_gd_model(D, ETA, N_POINTS)
    with pytest.raises(ValueError, match="valid targets: w, Xty, w_ols, w_gd, y_gd"):
        implicit_weight_probes(module, D, n_tasks=64, targets=["w", "bias"])
    with pytest.raises(ValueError, match="valid positions: query, last_y"):
        implicit_weight_probes(module, D, n_tasks=64, positions=["first"])
    with pytest.raises(ValueError, match="d=5"):
        implicit_weight_probes(module, 5, n_tasks=64)
    with pytest.raises(ValueError, match="valid method"):
        gd_steps_matched(module, D, method="lens", n_tasks=64)
    with pytest.raises(ValueError, match="readout"):
        gd_steps_matched(SoftmaxGPT(GPTConfig(d=2, n_points=4, d_model=8, n_layers=1, n_heads=1)), 2, method="readout", n_tasks=64)


def test_to_dict_and_figures(gd_probes):
    g = gd_steps_matched(hand_built_gd_model(D, ETA, N_POINTS), D, max_steps=60, n_tasks=128, eta=1e8)  # diverges
    for res in (gd_probes, g):
        json.dumps(res.to_dict(), allow_nan=False)  # NaN/inf (g's diverged GD) become None
        figs = res.figures()
        assert figs
        for fig in figs:
            assert fig.layout.title.text and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
    assert g.to_dict()["gd_loss"][-1] is None and g.best_steps == [1]
    assert len(gd_probes.figures()) == 2  # one per position
    assert "LSA" in gd_probes.figures()[0].layout.title.text
