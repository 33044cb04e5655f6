"""Akyürek et al.'s SPD / ILWD analysis and Garg et al.'s error-vs-k curves (analyses.linreg.algorithms)."""
import json

import pytest
import torch

from analyses.linreg.algorithms import LEARNERS, ilwd, implicit_weights, spd, which_algorithm
from interp.linreg.gd import best_gd_eta, gd_one_step, hand_built_gd_model, knn, ols, ridge, sgd_one_pass
from interp.linreg.models import GPTConfig, SoftmaxGPT
from interp.linreg.sampler import sample_regression_tasks
from interp.linreg.train import TrainConfig, train


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(k: int, d: int = 3, n_tasks: int = 64, seed: int = 0, noise_std: float = 0.0):
    """The batch which_algorithm uses for k (seed + k, float64)."""
    return sample_regression_tasks(n_tasks, k + 1, d, noise_std=noise_std, seed=seed + k, dtype=torch.float64)


def test_spd_and_ilwd_are_normalised_by_d():
    assert spd(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]), d=2) == pytest.approx(1.0)  # mean(0, 4) / 2
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert ilwd(w, torch.zeros(2, 2)) == pytest.approx(0.25)  # mean_tasks(1, 0) / d
    assert ilwd(w, w) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        spd(torch.zeros(3), torch.zeros(4), d=1)
    with pytest.raises(ValueError, match=r"\[tasks, d\]"):
        ilwd(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("k", [2, 7])  # under- and over-determined (d = 4)
def test_implicit_weights_recover_linear_learners(k):
    d, eta, lam, lr = 4, 0.4, 0.5, 0.1
    batch = _batch(k, d=d, noise_std=0.1)
    X, y = batch.x[:, :-1], batch.y[:, :-1]
    sgd_w = torch.zeros(X.shape[0], d, dtype=torch.float64)
    for i in range(k):
        sgd_w = sgd_w - lr * ((sgd_w * X[:, i]).sum(-1) - y[:, i]).unsqueeze(-1) * X[:, i]
    expected = {
        "ols": (ols, (torch.linalg.pinv(X) @ y.unsqueeze(-1)).squeeze(-1)),
        "ridge": (lambda b: ridge(b, lam),
                  torch.linalg.solve(X.mT @ X + lam * torch.eye(d, dtype=X.dtype), X.mT @ y.unsqueeze(-1)).squeeze(-1)),
        "gd": (lambda b: gd_one_step(b, eta), eta / k * (X.mT @ y.unsqueeze(-1)).squeeze(-1)),
        "sgd": (lambda b: sgd_one_pass(b, lr), sgd_w),
    }
    for name, (fn, w_true) in expected.items():
        w, b = implicit_weights(fn, batch, n_probe=12, seed=5)
        assert w.shape == (64, d) and b.shape == (64,)
        assert (w - w_true).abs().max() < 1e-6, name
        assert b.abs().max() < 1e-8, name
        assert ilwd(w, w_true) < 1e-12, name
    w_ols, _ = implicit_weights(ols, batch, n_probe=12, seed=5)
    assert ilwd(w_ols, implicit_weights(ols, batch, n_probe=12, seed=5)[0]) < 1e-20  # seeded probe points: the same fit (up to LAPACK rounding)


def test_hand_built_gd_model_matches_one_gd_step():
    d, k = 3, 6
    eta, _ = best_gd_eta(_batch(k, d=d, n_tasks=128, seed=1))
    model = hand_built_gd_model(d, eta, n_points=k + 1)  # P = η/N with N = k
    r = which_algorithm({"gd model": model}, d, [k], n_tasks=128, seed=1)
    assert r.tuned["gd_eta"] == [eta]
    assert r.spd["gd model"]["gd_1step"][0] <= 1e-10
    assert r.ilwd["gd model"]["gd_1step"][0] <= 1e-10
    assert r.best_match["gd model"][k] == "gd_1step"
    others = [v[0] for name, v in r.spd["gd model"].items() if name != "gd_1step"]
    assert min(others) > 1e-3
    assert r.model_error["gd model"]["mean"][0] == pytest.approx(r.learner_error["gd_1step"]["mean"][0], rel=1e-5)
    # a fixed η instead of the line search
    fixed = which_algorithm({"gd model": hand_built_gd_model(d, 0.3, k + 1)}, d, [k], n_tasks=64, gd_eta=0.3)
    assert fixed.spd["gd model"]["gd_1step"][0] <= 1e-10 and fixed.best_match["gd model"][k] == "gd_1step"


def test_ols_row_noiseless_and_knn_is_not_linear():
    d = 3
    r = which_algorithm({"ols": ols, "3nn": lambda b: knn(b, 3)}, d, [1, 3, 6], n_tasks=64, seed=2)
    for i, k in enumerate(r.k):
        assert r.spd["ols"]["ols"][i] == 0.0
        assert r.ilwd["ols"]["ols"][i] <= 1e-20
        assert r.best_match["ols"][k] == "ols"
        assert r.best_match["3nn"][k] == "knn_3"
        assert r.ilwd["ols"]["knn_3"][i] > 1e-2
        assert r.ilwd["3nn"]["knn_3"][i] <= 1e-20
    assert r.learner_error["ols"]["mean"][1] < 1e-20 and r.learner_error["ols"]["mean"][2] < 1e-20  # k >= d
    assert r.learner_error["ols"]["mean"][0] > 0.05  # k = 1 < d: under-determined
    assert r.model_error["ols"] == r.learner_error["ols"]
    assert set(r.learner_error) == set(r.learners) | {"averaging", "nadaraya_watson"}
    assert r.learners == ["ols", "ridge_0.1", "ridge_1", "gd_1step", "sgd_1pass", "knn_3"]


def test_trained_one_layer_lsa_is_closest_to_one_gd_step():
    model, _ = train(TrainConfig(model="lsa", d=3, n_points=7, steps=300, batch_size=256, eval_tasks=256,
                                 x_dist="normal", lr=1e-2))
    r = which_algorithm({"1 layer": model}, 3, [6], n_tasks=256, seed=0)
    row = {name: v[0] for name, v in r.spd["1 layer"].items()}
    assert r.best_match["1 layer"][6] == "gd_1step"
    assert row["gd_1step"] < 0.2 * min(v for name, v in row.items() if name != "gd_1step")


def test_softmax_gpt_runs_unchanged_on_probe_batches():
    gpt = SoftmaxGPT(GPTConfig(d=3, n_points=7, d_model=16, n_layers=1, n_heads=2)).eval()
    w, b = implicit_weights(gpt, _batch(4, n_tasks=8), n_probe=8)
    assert w.shape == (8, 3) and torch.isfinite(w).all() and torch.isfinite(b).all()
    r = which_algorithm({"gpt": gpt}, 3, [2, 4], n_tasks=16, learners=("ols", "knn"))
    assert r.learners == ["ols", "knn_3"] and set(r.best_match["gpt"]) == {2, 4}


def test_bad_inputs_raise_with_the_fix():
    good = dict(models={"ols": ols}, d=3, k_values=[2])
    with pytest.raises(ValueError, match="k_values must be a non-empty list"):
        which_algorithm(**{**good, "k_values": []})
    with pytest.raises(ValueError, match="distinct ints >= 1"):
        which_algorithm(**{**good, "k_values": [0, 2]})
    with pytest.raises(ValueError, match=r"unknown learner\(s\) \['lasso'\].*subset of"):
        which_algorithm(**good, learners=("ols", "lasso"))
    with pytest.raises(ValueError, match="non-empty dict"):
        which_algorithm(**{**good, "models": {}})
    with pytest.raises(ValueError, match=r"\.predict\(batch\)"):
        which_algorithm(**{**good, "models": {"x": 3}})
    with pytest.raises(ValueError, match="n_probe.*>= 4"):
        which_algorithm(**good, n_probe=3)
    with pytest.raises(ValueError, match="gd_eta must be a finite number > 0, or None"):
        which_algorithm(**good, gd_eta=-1.0)
    with pytest.raises(ValueError, match="ridge_lams"):
        which_algorithm(**good, ridge_lams=(-1.0,))
    with pytest.raises(ValueError, match="must not read the query's y"):  # the probe queries' y is NaN
        which_algorithm(**{**good, "models": {"cheat": lambda b: b.y[:, -1]}})
    assert set(LEARNERS) == {"ols", "ridge", "gd", "sgd", "knn"}


def test_to_dict_round_trips_and_every_axis_has_a_title():
    r = which_algorithm({"ols": ols, "gd": lambda b: gd_one_step(b, 0.5)}, 3, [1, 4], n_tasks=32, seed=3)
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["best_match"]["ols"] == {"1": "ols", "4": "ols"}
    figs = r.figures()
    assert len(figs) == 2 * 2 + 1
    for fig in figs:
        layout = fig.layout.to_plotly_json()
        assert "d=3" in layout["title"]["text"] and "n_tasks=32" in layout["title"]["text"] and "seed=3" in layout["title"]["text"]
        axes = [key for key in layout if key.startswith(("xaxis", "yaxis"))]
        assert len(axes) >= 2
        assert all(layout[a]["title"]["text"] for a in axes)
    assert len(figs[-1].data) == 2 + len(r.learner_error)
