"""probes/: closed-form ridge against an independent solve, planted signals, chance-level probes,
controls, leak-free splits, (cluster) bootstrap intervals, logistic regression, layer sweeps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes import (
    LinearProbe,
    LogisticProbe,
    ProbeScore,
    ProbeSweepResult,
    RidgeClassifierProbe,
    RidgeProbe,
    accuracy_score,
    bootstrap_ci,
    evaluate_probe,
    group_kfold,
    group_train_test_split,
    kfold,
    probe_sweep,
    r2_score,
    shuffled_targets,
    split,
    train_test_split,
)


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These problems are tiny: on a busy machine, intra-op threads cost more in synchronisation
    (each L-BFGS step is many small ops) than they gain.  Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def ridge_augmented(X: np.ndarray, Y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: solve ([X 1]ᵀ[X 1] + diag(α,…,α,0)) θ = [X 1]ᵀY (intercept unpenalised)."""
    Xa = np.concatenate([X, np.ones((len(X), 1))], 1)
    P = alpha * np.eye(Xa.shape[1])
    P[-1, -1] = 0.0
    theta = np.linalg.solve(Xa.T @ Xa + P, Xa.T @ Y)
    return theta[:-1], theta[-1]


def planted_regression(n=2000, d=64, noise=0.1, seed=0):
    g = rng(seed)
    X = g.standard_normal((n, d))
    w = g.standard_normal(d)
    y = X @ w + noise * g.standard_normal(n)
    return X, y, w


# --------------------------------------------------------------------------------------------
# Ridge / least squares
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 1.0, 30.0])
def test_ridge_matches_independent_closed_form(alpha):
    g = rng(1)
    X = g.standard_normal((60, 8)) * 3 + 5  # off-centre, so a penalised intercept would show
    Y = X @ g.standard_normal((8, 3)) + 2.0 + g.standard_normal((60, 3))
    W_ref, b_ref = ridge_augmented(X, Y, alpha)
    p = RidgeProbe(alpha=alpha).fit(torch.tensor(X), torch.tensor(Y))
    assert p.coef_.shape == (8, 3) and p.intercept_.shape == (3,)
    np.testing.assert_allclose(p.coef_.numpy(), W_ref, atol=1e-8, rtol=0)
    np.testing.assert_allclose(p.intercept_.numpy(), b_ref, atol=1e-8, rtol=0)
    # 1-D target, numpy input: the same numbers, a 1-D coef
    p1 = RidgeProbe(alpha=alpha).fit(X, Y[:, 0])
    assert p1.coef_.shape == (8,) and p1.intercept_.ndim == 0
    np.testing.assert_allclose(p1.coef_.numpy(), W_ref[:, 0], atol=1e-8, rtol=0)
    np.testing.assert_allclose(p1.predict(X).numpy(), X @ W_ref[:, 0] + b_ref[0], atol=1e-8, rtol=0)


def test_ridge_without_intercept_matches_plain_solve():
    g = rng(2)
    X, y = g.standard_normal((40, 5)) + 1, g.standard_normal(40)
    p = RidgeProbe(alpha=0.5, fit_intercept=False).fit(X, y)
    ref = np.linalg.solve(X.T @ X + 0.5 * np.eye(5), X.T @ y)
    np.testing.assert_allclose(p.coef_.numpy(), ref, atol=1e-10)
    assert float(p.intercept_) == 0.0


@pytest.mark.parametrize("n,d", [(30, 80), (80, 30)])
def test_ridge_primal_equals_dual(n, d):
    g = rng(3)
    X = torch.tensor(g.standard_normal((n, d)), dtype=torch.float32)  # float32 input, float64 inside
    Y = g.standard_normal((n, 2))
    primal = RidgeProbe(alpha=0.3, solver="primal").fit(X, Y)
    dual = RidgeProbe(alpha=0.3, solver="dual").fit(X, Y)
    auto = RidgeProbe(alpha=0.3).fit(X, Y)
    assert primal.solver_used_ == "primal" and dual.solver_used_ == "dual"
    assert auto.solver_used_ == ("dual" if n < d else "primal")
    assert primal.coef_.dtype == torch.float64
    torch.testing.assert_close(primal.coef_, dual.coef_, atol=1e-9, rtol=0)
    torch.testing.assert_close(primal.intercept_, dual.intercept_, atol=1e-9, rtol=0)


def test_ridge_alpha_to_zero_approaches_ols():
    g = rng(4)
    X = g.standard_normal((100, 10))
    y = X @ g.standard_normal(10) + 0.5 * g.standard_normal(100)
    ols = LinearProbe().fit(X, y)
    W_ref, b_ref = ridge_augmented(X, y, 0.0)
    np.testing.assert_allclose(ols.coef_.numpy(), W_ref, atol=1e-9)
    np.testing.assert_allclose(float(ols.intercept_), b_ref, atol=1e-9)
    gaps = [float((RidgeProbe(alpha=a).fit(X, y).coef_ - ols.coef_).norm()) for a in (10.0, 1.0, 1e-2, 1e-6)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 1e-6
    # alpha=0 is least squares exactly
    torch.testing.assert_close(RidgeProbe(alpha=0).fit(X, y).coef_, ols.coef_, atol=1e-10, rtol=0)


def test_linear_probe_min_norm_when_underdetermined():
    g = rng(5)
    X, y = g.standard_normal((10, 40)), g.standard_normal(10)
    p = LinearProbe(fit_intercept=False).fit(X, y)
    np.testing.assert_allclose(p.predict(X).numpy(), y, atol=1e-9)  # interpolates
    np.testing.assert_allclose(p.coef_.numpy(), np.linalg.pinv(X) @ y, atol=1e-9)  # the min-norm one


def test_perfect_fit_r2_is_one():
    g = rng(6)
    X = g.standard_normal((50, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + 7.0
    p = RidgeProbe(alpha=1e-10).fit(X, y)
    assert p.score(X, y) == pytest.approx(1.0, abs=1e-9)
    assert LinearProbe().fit(X, y).score(X, y) == pytest.approx(1.0, abs=1e-12)
    assert RidgeProbe(alpha=100.0).fit(X, y).score(X, y) < 0.99  # shrinkage costs fit


def test_ridge_errors():
    with pytest.raises(ValueError):
        RidgeProbe(alpha=-1)
    with pytest.raises(RuntimeError):
        RidgeProbe().predict(np.zeros((2, 2)))
    with pytest.raises(ValueError):
        RidgeProbe().fit(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError):
        RidgeClassifierProbe().fit(np.zeros((5, 2)), np.zeros(5))  # one class


# --------------------------------------------------------------------------------------------
# Planted signals
# --------------------------------------------------------------------------------------------


def test_planted_linear_signal_recovered():
    X, y, w = planted_regression()
    tr, te = train_test_split(len(y), 0.3, seed=0)
    p = RidgeProbe(alpha=1.0).fit(X[tr], y[tr])
    assert p.score(X[te], y[te]) >= 0.95
    cos = float(np.dot(p.coef_.numpy(), w) / np.linalg.norm(p.coef_.numpy()) / np.linalg.norm(w))
    assert cos >= 0.99


@pytest.mark.parametrize("make", [lambda: RidgeClassifierProbe(alpha=0.01), lambda: LogisticProbe(C=1.0)])
def test_planted_direction_classification(make):
    g = rng(7)
    X = g.standard_normal((6000, 64))
    w = g.standard_normal(64)
    labels = np.where(X @ w > 0, 5, 2)  # non-0/1 labels: classes must map back
    tr, te = train_test_split(6000, 0.3, seed=1)
    p = make().fit(torch.tensor(X[tr], dtype=torch.float32), labels[tr])
    assert list(p.classes_) == [2, 5]
    pred = p.predict(X[te])
    assert set(np.unique(pred)) <= {2, 5}
    assert accuracy_score(labels[te], pred) >= 0.95
    assert p.score(X[te], labels[te]) == accuracy_score(labels[te], pred)


# --------------------------------------------------------------------------------------------
# Chance level and controls
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: LogisticProbe(C=1.0), lambda: RidgeClassifierProbe(alpha=1.0)])
def test_probe_at_chance_on_random_features(make):
    g = rng(8)
    X = g.standard_normal((1500, 16))
    y = g.integers(0, 3, 1500)
    res = evaluate_probe(make, X, y, seed=0, n_boot=1000)
    assert res.metric == "accuracy"
    assert res.ci_low <= 1 / 3 <= res.ci_high
    assert abs(res.selectivity) < 0.1
    assert abs(res.control_shuffled - 1 / 3) < 0.1


def test_random_regression_targets_have_no_test_r2():
    g = rng(9)
    X, y = g.standard_normal((1000, 16)), g.standard_normal(1000)
    res = evaluate_probe(lambda: RidgeProbe(1.0), X, y, seed=0)
    assert res.metric == "r2"
    assert res.score <= 0.05
    assert res.ci_low <= 0.0


def test_shuffled_control_on_planted_signal_gives_large_selectivity():
    X, y, _ = planted_regression(seed=10)
    res = evaluate_probe(lambda: RidgeProbe(1.0), torch.tensor(X, dtype=torch.float32), y, seed=3)
    assert isinstance(res, ProbeScore)
    assert res.score >= 0.95
    assert res.control_shuffled <= 0.05
    assert res.control_random_init is None
    assert res.selectivity == pytest.approx(res.score - res.control_shuffled)
    assert res.selectivity >= 0.8
    assert res.ci_low <= res.score <= res.ci_high
    assert res.n_train + res.n_test == 2000 and res.n_test == 600


def test_random_init_control_is_at_chance():
    X, y, _ = planted_regression(n=1500, d=32, seed=11)
    control_X = rng(12).standard_normal((1500, 48))  # a different width is fine
    res = evaluate_probe(lambda: RidgeProbe(1.0), X, y, control_X=control_X, seed=0)
    assert res.control_random_init is not None and res.control_random_init <= 0.05
    assert res.selectivity == pytest.approx(res.score - max(res.control_shuffled, res.control_random_init))
    # classification: the random-init control sits at chance
    labels = (X[:, 0] > 0).astype(int)
    res = evaluate_probe(LogisticProbe, X, labels, control_X=control_X, seed=0)
    assert res.score >= 0.95
    assert abs(res.control_random_init - 0.5) < 0.1
    # a control that carries the signal wipes out the selectivity
    res = evaluate_probe(LogisticProbe, X, labels, control_X=X[:, :4], seed=0)
    assert res.control_random_init >= 0.95 and res.selectivity < 0.05


def test_evaluate_probe_is_deterministic_and_json_safe():
    X, y, _ = planted_regression(n=300, d=8, seed=13)
    a = evaluate_probe(RidgeProbe, X, y, seed=5, n_boot=200).to_dict()
    b = evaluate_probe(RidgeProbe, X, y, seed=5, n_boot=200).to_dict()
    c = evaluate_probe(RidgeProbe, X, y, seed=6, n_boot=200).to_dict()
    assert a == b and a != c
    json.dumps(a, allow_nan=False)


def test_shuffled_targets_keep_group_structure():
    groups = np.repeat(np.arange(20), 5)
    y = np.repeat(rng(14).standard_normal(20), 5)  # constant within each group
    tr, te = group_train_test_split(groups, 0.3, seed=0)
    ys = shuffled_targets(y, tr, te, groups, seed=0)
    for grp in range(20):
        assert np.unique(ys[groups == grp]).size == 1  # still one target per group
    for side in (tr, te):  # a permutation within each side
        np.testing.assert_array_equal(np.sort(ys[side]), np.sort(y[side]))
    assert not np.array_equal(ys, y)
    # a target that varies within groups: rows are permuted within each side
    y2 = rng(15).standard_normal(100)
    ys2 = shuffled_targets(y2, tr, te, groups, seed=0)
    for side in (tr, te):
        np.testing.assert_array_equal(np.sort(ys2[side]), np.sort(y2[side]))
    assert np.unique(ys2[groups == 0]).size > 1
    assert not np.array_equal(ys2, y2)


def test_grouped_split_prevents_memorisation_leak():
    """Rows of a prompt share a random target and a prompt-specific feature offset: a row split
    lets the probe memorise prompts; a group split measures generalisation (none here)."""
    g = rng(16)
    n_groups, per = 40, 10
    groups = np.repeat(np.arange(n_groups), per)
    centres = g.standard_normal((n_groups, 64)) * 3
    X = centres[groups] + 0.3 * g.standard_normal((n_groups * per, 64))
    y = np.repeat(g.standard_normal(n_groups), per)
    leaky = evaluate_probe(lambda: RidgeProbe(1.0), X, y, seed=0)
    clean = evaluate_probe(lambda: RidgeProbe(1.0), X, y, groups=groups, seed=0)
    assert leaky.score > 0.5
    assert clean.score < 0.1
    assert clean.selectivity < 0.3


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_groups_never_straddle_the_split():
    groups = np.repeat(np.arange(37), rng(17).integers(1, 9, 37))
    for seed in range(50):
        tr, te = group_train_test_split(groups, 0.3, seed=seed)
        assert set(groups[tr]).isdisjoint(groups[te])
        assert len(tr) and len(te)
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(len(groups)))
    # test_size counts groups
    tr, te = group_train_test_split(groups, 0.3, seed=0)
    assert len(np.unique(groups[te])) == round(0.3 * 37)
    tr, te = group_train_test_split([f"p{g}" for g in groups], 5, seed=0)  # string ids, int size
    assert len(np.unique(groups[te])) == 5


def test_split_seeding():
    groups = np.repeat(np.arange(30), 4)
    a, b = group_train_test_split(groups, seed=3), group_train_test_split(groups, seed=3)
    c = group_train_test_split(groups, seed=4)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(train_test_split(100, seed=1)[1], train_test_split(100, seed=1)[1])
    assert not np.array_equal(train_test_split(100, seed=1)[1], train_test_split(100, seed=2)[1])
    # the global RNGs are neither used nor disturbed
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.random(), torch.rand(1).item())
    np.random.seed(0)
    torch.manual_seed(0)
    group_train_test_split(groups, seed=3)
    group_kfold(groups, 3, seed=3)
    assert (np.random.random(), torch.rand(1).item()) == before
    # split() dispatches on groups
    np.testing.assert_array_equal(split(120, groups, 0.3, 3)[1], a[1])
    np.testing.assert_array_equal(split(100, None, 0.3, 1)[1], train_test_split(100, 0.3, 1)[1])


def test_split_errors():
    with pytest.raises(ValueError, match="at least 2"):
        group_train_test_split(np.zeros(10), 0.3)
    with pytest.raises(ValueError, match="at least 2"):
        train_test_split(1)
    with pytest.raises(ValueError):
        group_kfold(np.repeat(np.arange(3), 4), n_splits=5)
    with pytest.raises(ValueError):
        group_train_test_split(np.arange(10), test_size=1.5)
    with pytest.raises(ValueError):
        evaluate_probe(RidgeProbe, np.zeros((10, 2)), np.zeros(10), groups=np.zeros(10))


def test_group_kfold_partitions_groups():
    groups = np.repeat(np.arange(23), rng(18).integers(1, 6, 23))
    folds = group_kfold(groups, n_splits=5, seed=0)
    assert len(folds) == 5
    tests = np.concatenate([te for _, te in folds])
    np.testing.assert_array_equal(np.sort(tests), np.arange(len(groups)))  # every row tested once
    for tr, te in folds:
        assert set(groups[tr]).isdisjoint(groups[te])
        assert len(tr) + len(te) == len(groups)
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 5  # balanced by rows
    assert [te.tolist() for _, te in group_kfold(groups, 5, seed=0)] == [te.tolist() for _, te in folds]
    assert [te.tolist() for _, te in group_kfold(groups, 5, seed=1)] != [te.tolist() for _, te in folds]
    kf = kfold(50, 5, seed=0)
    np.testing.assert_array_equal(np.sort(np.concatenate([te for _, te in kf])), np.arange(50))
    assert all(len(te) == 10 for _, te in kf)


# --------------------------------------------------------------------------------------------
# Metrics and bootstrap
# --------------------------------------------------------------------------------------------


def test_metrics_against_hand_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.0, 2.0, 3.0, 5.0])
    assert r2_score(y, p) == pytest.approx(1 - 1 / 5)
    Y = np.stack([y, 2 * y], 1)
    P = np.stack([p, 2 * y], 1)
    assert r2_score(torch.tensor(Y), P) == pytest.approx((0.8 + 1.0) / 2)  # uniform average
    assert r2_score([3.0, 3.0], [3.0, 3.0]) == 1.0 and r2_score([3.0, 3.0], [3.0, 4.0]) == 0.0
    assert r2_score(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert accuracy_score([0, 1, 2, 2], torch.tensor([0, 1, 1, 2])) == 0.75
    assert accuracy_score(np.array(["a", "b"]), np.array(["a", "a"])) == 0.5


def test_bootstrap_ci_contains_estimate_and_shrinks_with_n():
    widths = []
    for n in (100, 2000):
        g = rng(19)
        y = g.standard_normal(n)
        p = y + 0.7 * g.standard_normal(n)
        lo, hi = bootstrap_ci(r2_score, y, p, n_boot=1000, seed=0)
        assert lo <= r2_score(y, p) <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.5 * widths[0]  # ~ 1/sqrt(n): expect ~0.22
    # calibrated width: accuracy 0.5 on 1000 iid rows, normal theory 2 * 1.96 * sqrt(0.25 / 1000) = 0.062
    right = rng(26).random(1000) < 0.5
    y, pred = np.zeros(1000, dtype=int), np.where(right, 0, 1)
    lo, hi = bootstrap_ci(accuracy_score, y, pred, n_boot=2000, seed=0)
    assert 0.052 < hi - lo < 0.072
    lo50, hi50 = bootstrap_ci(accuracy_score, y, pred, n_boot=2000, confidence=0.5, seed=0)
    assert lo < lo50 < hi50 < hi and 0.015 < hi50 - lo50 < 0.027  # 2 * 0.674 * 0.0158 = 0.021


def test_cluster_bootstrap_wider_when_groups_are_correlated():
    g = rng(20)
    groups = np.repeat(np.arange(20), 50)
    right = np.repeat(g.random(20) < 0.5, 50)  # each prompt all right or all wrong
    y = np.zeros(1000, dtype=int)
    pred = np.where(right, 0, 1)
    row = bootstrap_ci(accuracy_score, y, pred, n_boot=1000, seed=0)
    cluster = bootstrap_ci(accuracy_score, y, pred, groups=groups, n_boot=1000, seed=0)
    acc = accuracy_score(y, pred)
    assert row.low <= acc <= row.high and cluster.low <= acc <= cluster.high
    assert (cluster.high - cluster.low) > 3 * (row.high - row.low)
    # with independent rows, grouping changes little
    iid_pred = (g.random(1000) < 0.5).astype(int)
    r = bootstrap_ci(accuracy_score, y, iid_pred, n_boot=1000, seed=0)
    c = bootstrap_ci(accuracy_score, y, iid_pred, groups=groups, n_boot=1000, seed=0)
    assert 0.6 < (c.high - c.low) / (r.high - r.low) < 1.6


@pytest.mark.parametrize("with_groups", [False, True])
def test_bootstrap_fast_paths_match_generic_loop(with_groups):
    g = rng(21)
    groups = np.repeat(np.arange(30), 4) if with_groups else None
    y = g.standard_normal((120, 2))
    p = y + g.standard_normal((120, 2))
    fast = bootstrap_ci(r2_score, y, p, groups=groups, n_boot=300, seed=2)
    slow = bootstrap_ci(lambda a, b: r2_score(a, b), y, p, groups=groups, n_boot=300, seed=2)
    np.testing.assert_allclose(fast, slow, atol=1e-9)
    labels, pred = g.integers(0, 3, 120), g.integers(0, 3, 120)
    fast = bootstrap_ci(accuracy_score, labels, pred, groups=groups, n_boot=300, seed=2)
    slow = bootstrap_ci(lambda a, b: accuracy_score(a, b), labels, pred, groups=groups, n_boot=300, seed=2)
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert bootstrap_ci(accuracy_score, labels, pred, n_boot=300, seed=3) != bootstrap_ci(
        accuracy_score, labels, pred, n_boot=300, seed=2)


# --------------------------------------------------------------------------------------------
# Logistic regression
# --------------------------------------------------------------------------------------------


def test_logistic_separable_and_probabilities():
    g = rng(22)
    X = np.concatenate([g.standard_normal((50, 3)) + 4, g.standard_normal((50, 3)) - 4])
    y = np.array(["pos"] * 50 + ["neg"] * 50)
    p = LogisticProbe(C=1.0).fit(X, y)
    assert list(p.classes_) == ["neg", "pos"]
    assert p.score(X, y) == 1.0
    assert (p.predict(X) == y).all()
    proba = LogisticProbe(C=0.5).fit(X, g.integers(0, 3, 100)).predict_proba(X)
    assert proba.shape == (100, 3)
    assert (proba >= 0).all()
    torch.testing.assert_close(proba.sum(1), torch.ones(100, dtype=torch.float64))


def test_logistic_symmetric_1d_hand_case():
    from scipy.optimize import minimize_scalar

    X = np.array([[-2.0], [-1.0], [1.0], [2.0]])
    y = np.array([0, 0, 1, 1])
    C = 1.0
    p = LogisticProbe(C=C).fit(X, y)
    # symmetric data: the logit difference has no intercept
    assert float(p.intercept_[1] - p.intercept_[0]) == pytest.approx(0.0, abs=1e-6)
    # two-column softmax with ||W||² penalty: w1 = -w0 = δ/2, so the objective in the logit slope δ
    # on standardised z is Σ log(1 + exp(-sᵢ δ zᵢ)) + (1/(2C)) δ²/2
    mu, sd = X.mean(), X.std()
    z = (X[:, 0] - mu) / sd
    s = np.where(y == 1, 1.0, -1.0)
    delta = minimize_scalar(lambda d: np.log1p(np.exp(-s * d * z)).sum() + d * d / (4 * C), tol=1e-12).x
    assert float(p.coef_[0, 1] - p.coef_[0, 0]) == pytest.approx(delta / sd, abs=1e-5)
    assert float(p.coef_[0, 1] + p.coef_[0, 0]) == pytest.approx(0.0, abs=1e-8)
    # larger C, weaker penalty, steeper slope
    assert float(LogisticProbe(C=100.0).fit(X, y).coef_[0, 1]) > float(p.coef_[0, 1])


def test_logistic_matches_scipy_multinomial_optimum():
    from scipy.optimize import minimize

    g = rng(23)
    X = g.standard_normal((90, 4)) * np.array([1.0, 5.0, 0.2, 2.0]) + 1.0
    y = (X @ g.standard_normal((4, 3)) + g.standard_normal((90, 3))).argmax(1)
    C = 0.7
    Z = (X - X.mean(0)) / X.std(0)
    onehot = np.eye(3)[y]

    def obj(theta):
        W, b = theta[:12].reshape(4, 3), theta[12:]
        logits = Z @ W + b
        logits = logits - logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        loss = -(onehot * logp).sum() + (W**2).sum() / (2 * C)
        grad_logits = np.exp(logp) - onehot
        return loss, np.concatenate([(Z.T @ grad_logits + W / C).ravel(), grad_logits.sum(0)])

    ref = minimize(obj, np.zeros(15), jac=True, method="L-BFGS-B", options=dict(gtol=1e-12, ftol=1e-15, maxiter=5000))
    W, b = ref.x[:12].reshape(4, 3), ref.x[12:]
    logits = Z @ W + b
    ref_proba = np.exp(logits - logits.max(1, keepdims=True))
    ref_proba /= ref_proba.sum(1, keepdims=True)
    p = LogisticProbe(C=C, max_iter=500).fit(torch.tensor(X, dtype=torch.float32), y)
    np.testing.assert_allclose(p.predict_proba(X).numpy(), ref_proba, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


def layered_features(L=4, n=600, d=16, signal_layer=2, seed=24):
    g = rng(seed)
    feats = g.standard_normal((L, n, d))
    w = g.standard_normal(d)
    y = feats[signal_layer] @ w + 0.1 * g.standard_normal(n)
    return torch.tensor(feats, dtype=torch.float32), y


def test_probe_sweep_finds_the_signal_layer():
    feats, y = layered_features()
    res = probe_sweep(feats, y, make_probe=lambda: RidgeProbe(1.0), n_boot=200, seed=0)
    assert isinstance(res, ProbeSweepResult)
    assert res.score.shape == (4,) and res.selectivity.shape == (4,)
    assert res.argmax() == (2,) and int(np.argmax(res.score)) == 2
    assert res.score[2] >= 0.95 and res.selectivity[2] >= 0.8
    assert np.all(res.score[[0, 1, 3]] <= 0.05)
    assert np.all(np.isnan(res.control_random_init))
    assert res.layer_names == ["0", "1", "2", "3"] and res.metric == "r2"
    assert len(res.cells) == 4 and res.cells[2].score == res.score[2]
    # a cell equals evaluate_probe on that layer alone (same split, same control)
    one = evaluate_probe(lambda: RidgeProbe(1.0), feats[1], y, n_boot=200, seed=0)
    assert one.to_dict() == res.cells[1].to_dict()


def test_probe_sweep_heads_dict_controls_and_progress():
    g = rng(25)
    L, H, n, d = 2, 3, 400, 8
    feats = g.standard_normal((L, H, n, d))
    labels = (feats[1, 2] @ g.standard_normal(d) > 0).astype(int)
    groups = np.repeat(np.arange(100), 4)
    ctrl = g.standard_normal((L, H, n, d))
    res = probe_sweep(feats, labels, make_probe=lambda: RidgeClassifierProbe(0.01), head_axis=True, groups=groups,
                      control_features=ctrl, n_boot=100, layer_names=["L5", "L9"], progress=True)
    assert res.score.shape == (L, H) and res.control_random_init.shape == (L, H)
    assert res.argmax() == (1, 2) and res.metric == "accuracy"
    assert np.isfinite(res.control_random_init).all() and np.all(np.abs(res.control_random_init - 0.5) < 0.15)
    assert res.layer_names == ["L5", "L9"] and res.head_names == ["0", "1", "2"]
    assert res.n_test == 120  # 30 of 100 groups, 4 rows each
    d_ = res.to_dict()
    json.loads(json.dumps(d_, allow_nan=False))
    assert np.array(d_["score"]).shape == (L, H)
    # dict input, per layer
    dres = probe_sweep({"embed": feats[0, 0], "mlp1": feats[1, 2]}, labels, make_probe=LogisticProbe, n_boot=100)
    assert dres.layer_names == ["embed", "mlp1"] and dres.argmax() == (1,)
    with pytest.raises(ValueError):
        probe_sweep(feats, labels, make_probe=RidgeClassifierProbe)  # 4-D without head_axis


def test_probe_sweep_figures_and_json():
    import plotly.graph_objects as go

    feats, y = layered_features(L=3, n=300, signal_layer=1)
    res = probe_sweep(feats, y, make_probe=RidgeProbe, control_features=torch.randn(3, 300, 16), n_boot=100)
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False))["head_names"] is None
    assert len(d["score"]) == 3 and all(isinstance(v, float) for v in d["control_random_init"])
    assert [f.layout.title.text for f in res.figures()] == [f.layout.title.text for f in res.figures_by_name().values()]
    figs = res.figures_by_name()
    assert set(figs) == {"score", "selectivity"}
    names = {t.name for t in figs["score"].data}
    assert {"probe", "control: shuffled targets", "control: random-init model"} <= names
    head_res = probe_sweep(torch.randn(2, 2, 200, 4), rng(0).standard_normal(200), make_probe=RidgeProbe,
                           head_axis=True, n_boot=50)
    head_figs = head_res.figures_by_name()
    assert set(head_figs) == {"score", "selectivity", "control_shuffled"}
    assert isinstance(head_figs["score"].data[0], go.Heatmap)
    for fig in [*figs.values(), *head_figs.values()]:
        assert isinstance(fig, go.Figure)
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert "R²" in fig.layout.title.text


def test_mlp_probe_fits_a_nonlinear_target_a_linear_probe_cannot():
    from probes import MLPProbe, RidgeProbe

    g = torch.Generator().manual_seed(0)
    X = torch.randn(1200, 4, generator=g)
    y = X[:, 0] * X[:, 1]  # a product: no linear signal
    tr, te = slice(0, 900), slice(900, None)
    mlp = MLPProbe(hidden=64, epochs=800, lr=1e-2, seed=0).fit(X[tr], y[tr])
    assert mlp.score(X[te], y[te]) > 0.8
    assert RidgeProbe(alpha=1e-3).fit(X[tr], y[tr]).score(X[te], y[te]) < 0.05
    again = MLPProbe(hidden=64, epochs=800, lr=1e-2, seed=0).fit(X[tr], y[tr])
    assert torch.equal(mlp.predict(X[te]), again.predict(X[te]))  # seeded
    with pytest.raises(ValueError, match="not fitted"):
        MLPProbe().predict(X)
