"""Trained-vs-GD comparison: known answers on the hand-built GD layer, the acceptance bars on the
shipped one-layer LSA, and (slow) the same bars after retraining it from its own config."""
import json

import pytest
import torch

from analyses.linreg.gd_check import sensitivities, trained_vs_gd
from interp import load_model
from interp.linreg.checkpoints import checkpoint_dir, load_shipped
from interp.linreg.gd import best_gd_eta, gd_one_step, hand_built_gd_model
from interp.linreg.sampler import sample_regression_tasks


def test_hand_built_gd_layer_is_its_own_gd_step():
    d, n_points, seed, n_tasks = 6, 9, 5, 2000
    batch = sample_regression_tasks(n_tasks, n_points, d, seed=seed)
    eta, _ = best_gd_eta(batch)
    model = hand_built_gd_model(d, eta, n_points)
    r = trained_vs_gd(model, n_tasks=n_tasks, seed=seed, x_dist="normal", ood_scales=(0.5, 2.0))
    assert r.gd_eta == eta
    assert r.loss_ratio == pytest.approx(1.0, abs=1e-6)
    assert r.eta_effective == pytest.approx(eta, rel=1e-6)
    assert r.sensitivity_cos == pytest.approx(1.0, abs=1e-6) and r.sensitivity_l2 < 1e-5 and r.preds_diff < 1e-5
    # out of distribution the layer still is GD at the same η
    assert r.ood["trained"] == pytest.approx(r.ood["gd_same_eta"], rel=1e-5)
    # the facade gives the same numbers as the module
    assert trained_vs_gd(load_model(model), n_tasks=n_tasks, seed=seed, x_dist="normal", ood_scales=()).preds_diff == pytest.approx(r.preds_diff, abs=1e-9)
    json.dumps(r.to_dict())
    assert all(f.layout.xaxis.title.text and f.layout.yaxis.title.text for f in r.figures())


def test_gd_sensitivity_is_its_weight_vector():
    batch = sample_regression_tasks(50, 8, 4, seed=0)
    eta = 0.3
    g = sensitivities(lambda b: gd_one_step(b, eta), batch)
    w = eta * (batch.y[:, :-1, None] * batch.x[:, :-1]).mean(1)
    assert torch.allclose(g, w, atol=1e-6)


def _check_lsa_bars(model):
    r = trained_vs_gd(model)  # 10,000 tasks, seed 5, the training distribution (U(-0.5, 0.5))
    assert r.x_dist == "uniform" and r.x_range == 0.5
    assert r.loss_ratio < 1.01, r.to_dict()
    assert r.sensitivity_cos >= 0.99, r.to_dict()
    assert r.eta_relative_error < 0.05, r.to_dict()
    return r


def test_shipped_lsa_is_one_gd_step():
    model, config, metrics = load_shipped("lsa-d10-n10")
    assert (config.model, config.d, config.n_points) == ("lsa", 10, 11)
    r = _check_lsa_bars(model)
    # the metrics shipped beside the weights are this model's
    assert metrics["final"]["query_loss"] == pytest.approx(r.loss["trained"], rel=1e-4)
    assert "linreg train" in metrics["command"]


def test_unknown_shipped_checkpoint_names_the_choices():
    with pytest.raises(ValueError, match="lsa-d10-n10"):
        checkpoint_dir("lsa-d3")


def test_rejects_a_pretrained_lm_like_object():
    with pytest.raises(ValueError, match="interp.linreg model"):
        trained_vs_gd(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_retraining_the_shipped_lsa_meets_the_same_bars(one_thread):
    from interp.linreg.train import train

    _, config, _ = load_shipped("lsa-d10-n10")
    model, _ = train(config)
    _check_lsa_bars(model)
