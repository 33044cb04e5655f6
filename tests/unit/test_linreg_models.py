"""The in-context regression transformers (interp.linreg.models), the hand-built GD layer and the
reference learners (interp.linreg.gd), and deterministic training / checkpoints (interp.linreg.train)."""
import time

import pytest
import torch

from interp.linreg import RegressionBatch, sample_regression_tasks
from interp.linreg.gd import (averaging, best_gd_eta, error_vs_k, gd_layer_weights, gd_one_step, hand_built_gd_model, knn,
                              nadaraya_watson, ols, ridge, sgd_one_pass)
from interp.linreg.models import GPTConfig, LinearSelfAttention, LSAConfig, SoftmaxGPT, build_model
from interp.linreg.train import TrainConfig, load_checkpoint, save_checkpoint, train


pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(x, y, w=None) -> RegressionBatch:
    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.as_tensor(y, dtype=torch.float32)
    return RegressionBatch(x=x, y=y, w=torch.zeros(x.shape[0], x.shape[-1]) if w is None else w, noise_std=0.0)


# ------------------------------------------------------------------------------------------
# hand-built GD layer


@pytest.mark.parametrize("x_dist,eta", [("normal", 0.5), ("uniform", 6.0)])
@pytest.mark.parametrize("with_w0", [False, True])
def test_hand_built_gd_layer_equals_one_gd_step(x_dist, eta, with_w0):
    batch = sample_regression_tasks(256, 11, 10, x_dist=x_dist, x_range=0.5, seed=3)  # d = 10, N = 10
    w0 = torch.randn(10, generator=torch.Generator().manual_seed(1)) if with_w0 else None
    model = hand_built_gd_model(10, eta, 11, w0=w0)
    with torch.no_grad():
        pred = model.predict(batch)
    ref = gd_one_step(batch, eta, w0=w0)
    assert pred.dtype == torch.float32
    assert (pred - ref).abs().max().item() <= 1e-5
    # and the explicit formula (W0 − η ∇L(W0)) x_q, L = (1/2N) Σ (W x_i − y_i)²
    X, y, xq = batch.x[:, :-1].double(), batch.y[:, :-1].double(), batch.x[:, -1].double()
    w = torch.zeros(10, dtype=torch.float64) if w0 is None else w0.double()
    w_new = w - eta * ((X @ w - y).unsqueeze(-1) * X).mean(1)
    assert torch.allclose(ref.double(), (w_new * xq).sum(-1), atol=1e-4)


def test_gd_layer_weights_are_von_oswalds_construction():
    w0 = torch.arange(3.0)
    sd = gd_layer_weights(3, 2.0, 5, w0=w0)
    qk = torch.zeros(4, 4)
    qk[:3, :3] = torch.eye(3)
    assert torch.equal(sd["blocks.0.attn.W_Q"][0], qk) and torch.equal(sd["blocks.0.attn.W_K"][0], qk)
    assert torch.equal(sd["blocks.0.attn.W_V"][0], torch.tensor([[0.0] * 4] * 3 + [[0.0, 1.0, 2.0, -1.0]]))
    assert torch.allclose(sd["blocks.0.attn.P"][0], torch.eye(4) * 2.0 / 4)  # η / N, N = n_points − 1 = 4
    # the pattern is x_i · x_q over the context keys and 0 on the query key
    model = hand_built_gd_model(3, 2.0, 5)
    batch = sample_regression_tasks(2, 5, 3, seed=0)
    _, cache = model.run_with_cache(model.tokens(batch))
    pattern = cache["blocks.0.attn.hook_pattern"][:, 0, -1]  # [b, k] row of the query
    assert torch.allclose(pattern[:, :-1], (batch.x[:, :-1] * batch.x[:, -1:]).sum(-1), atol=1e-6)
    assert torch.equal(pattern[:, -1], torch.zeros(2))


# ------------------------------------------------------------------------------------------
# hook points


def _models():
    return [LinearSelfAttention(d=4, n_points=6, n_layers=2, n_heads=2, d_head=3, init_scale=1.0, seed=1),
            SoftmaxGPT(d=4, n_points=6, d_model=16, n_layers=2, n_heads=2, seed=1)]


def _expected_shapes(model, b: int, pos: int) -> dict:
    H, dh, dm = model.n_heads, model.d_head, model.d_model
    shapes = {"hook_embed": (b, pos, dm), "unembed.hook_out": (b, pos, 1)}
    for layer in range(model.n_layers):
        p = f"blocks.{layer}."
        shapes.update({p + "hook_resid_pre": (b, pos, dm), p + "hook_attn_out": (b, pos, dm), p + "hook_resid_post": (b, pos, dm),
                       p + "attn.hook_q": (b, pos, H, dh), p + "attn.hook_k": (b, pos, H, dh), p + "attn.hook_v": (b, pos, H, dh),
                       p + "attn.hook_z": (b, pos, H, dh), p + "attn.hook_attn_scores": (b, H, pos, pos),
                       p + "attn.hook_pattern": (b, H, pos, pos)})
        if isinstance(model, SoftmaxGPT):
            shapes.update({p + "hook_resid_mid": (b, pos, dm), p + "hook_mlp_out": (b, pos, dm)})
    return shapes


@pytest.mark.parametrize("which", [0, 1])
def test_hook_points_names_and_shapes(which):
    model = _models()[which]
    batch = sample_regression_tasks(3, 6, 4, seed=0)
    tokens = model.tokens(batch)
    pos = 6 if which == 0 else 11
    assert tokens.shape == (3, pos, 4 + 1 if which == 0 else 4)
    expected = _expected_shapes(model, 3, pos)
    assert set(expected) <= set(model.hook_dict)
    if which == 0:
        assert not any("resid_mid" in n or "mlp_out" in n for n in model.hook_dict)
    seen = {}

    def grab(t, hook):
        seen[hook.name] = t.detach().clone()

    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(name, grab) for name in expected])
    assert {n: tuple(t.shape) for n, t in seen.items()} == expected
    assert torch.equal(seen["unembed.hook_out"], out)
    assert torch.equal(model.predict(batch), out[:, -1, 0])
    assert (model.d_vocab, model.n_ctx) == (1, 6 if which == 0 else 12)
    scores, pattern = seen["blocks.1.attn.hook_attn_scores"], seen["blocks.1.attn.hook_pattern"]
    if which == 0:  # linear: the query token is not a key (masked to 0); pattern = scores (scale 1)
        assert torch.equal(seen["hook_embed"], tokens)
        assert torch.equal(scores[..., -1], torch.zeros_like(scores[..., -1]))
        assert torch.equal(pattern, scores)
        assert torch.equal(out, -seen["blocks.1.hook_resid_post"][..., -1:])
    else:  # softmax: causal, −inf above the diagonal, rows sum to 1
        upper = torch.ones(pos, pos, dtype=torch.bool).triu(1)
        assert bool(torch.isneginf(scores[..., upper]).all()) and bool(torch.isfinite(scores[..., ~upper]).all())
        assert torch.allclose(pattern.sum(-1), torch.ones(3, 2, pos))
    # the W_O contract of the hooked-module engine: Σ_h z_h W_O[h] = attn_out (no output bias)
    for layer in range(2):
        z, w_o = seen[f"blocks.{layer}.attn.hook_z"], model.W_O(layer)
        assert w_o.shape == (model.n_heads, model.d_head, model.d_model)
        assert torch.allclose(torch.einsum("bphd,hdm->bpm", z, w_o), seen[f"blocks.{layer}.hook_attn_out"], atol=1e-5)


def _zero(t, hook):
    return torch.zeros_like(t)


def test_zeroing_attn_out_lsa_one_layer_known_answer():
    model = hand_built_gd_model(4, 0.7, 6)
    batch = sample_regression_tasks(5, 6, 4, seed=2)
    tokens = model.tokens(batch)
    out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", _zero)])
    # without the only layer's attention the read-out is −(y-slot of the input): −y_i, and 0 for the query
    expected = -batch.y.clone()
    expected[:, -1] = 0.0
    assert torch.equal(out[..., 0], expected)
    # zeroing the pattern is the same edit, through hook_pattern
    assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", _zero)]), out)
    assert not torch.equal(model(tokens), out)


def test_zeroing_attn_out_lsa_two_layers_equals_dropping_the_layer():
    model = LinearSelfAttention(d=4, n_points=6, n_layers=2, n_heads=2, init_scale=2.0, seed=3)
    batch = sample_regression_tasks(5, 6, 4, seed=2)
    tokens = model.tokens(batch)
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", _zero)])
        second = LinearSelfAttention(d=4, n_points=6, n_layers=1, n_heads=2, init_scale=2.0, seed=0)
        second.blocks[0].load_state_dict(model.blocks[1].state_dict())
        expected = second(tokens)
    assert torch.equal(out, expected)
    assert not torch.allclose(out, model(tokens))


def test_zeroing_attn_out_gpt_equals_recomputing_without_it():
    model = SoftmaxGPT(d=4, n_points=6, d_model=16, n_layers=2, n_heads=2, seed=1)
    batch = sample_regression_tasks(3, 6, 4, seed=0)
    tokens = model.tokens(batch)
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_out", _zero)])
        resid = model.read_in(tokens) + model.W_pos[: tokens.shape[1]]
        blk = model.blocks[0]
        resid = resid + blk.mlp(blk.ln2(resid))  # block 0 without its attention
        resid = model.blocks[1](resid)
        expected = model.unembed.readout(model.ln_final(resid))
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, model(tokens), atol=1e-3)


def test_models_reject_wrong_inputs():
    lsa = LinearSelfAttention(d=3, n_points=5)
    gpt = SoftmaxGPT(d=3, n_points=5, d_model=8, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match="d=3"):
        lsa.tokens(sample_regression_tasks(2, 5, 4))
    with pytest.raises(ValueError, match="positions"):
        gpt.tokens(sample_regression_tasks(2, 6, 3))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d=3, n_points=5, d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="n_points"):
        LSAConfig(d=3, n_points=1)
    assert isinstance(build_model(lsa.cfg.to_dict()), LinearSelfAttention)
    assert isinstance(build_model(gpt.cfg.to_dict()), SoftmaxGPT)


# ------------------------------------------------------------------------------------------
# training


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["lsa", "gpt"])
def test_training_is_bit_identical_per_seed(kind):
    extra = dict(d_model=16, n_layers=1, n_heads=2) if kind == "gpt" else dict(n_layers=2, n_heads=2)
    cfg = TrainConfig(model=kind, d=3, n_points=6, steps=30, batch_size=32, eval_tasks=64, eval_every=10, **extra)
    a, ma = train(cfg)
    b, mb = train(cfg)
    c, _ = train(TrainConfig(**{**cfg.to_dict(), "seed": 1}))
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma["curve"] == mb["curve"]
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # training moved the weights away from the initialisation
    init = _state(build_model(cfg.model_config()))
    assert any(not torch.equal(sa[k], init[k]) for k in sa)


def test_trained_lsa_reaches_best_one_step_gd():
    """1 layer, 1 head, d = 10, N = 10, x ~ U(−0.5, 0.5) (von Oswald's code): trained loss within
    3% of best-η one-step GD (≈ 0.205; the zero predictor ≈ 0.42).  Shorter than the reference
    (batch 512, 300 steps, lr 5e-3 cosine instead of 2048 / 5000 / 1e-3): ≈ 4 s on one thread."""
    cfg = TrainConfig(model="lsa", d=10, n_points=11, steps=300, batch_size=512, lr=5e-3, schedule="cosine",
                      eval_tasks=4096, eval_every=300, seed=0)
    start = time.perf_counter()
    model, metrics = train(cfg)
    seconds = time.perf_counter() - start
    base = metrics["baselines"]
    print(f"LSA trained in {seconds:.1f}s: loss {metrics['final']['query_loss']:.4f}, best GD (eta {base['gd_eta']:.2f}) "
          f"{base['gd_query_loss']:.4f}, zero {base['zero_query_loss']:.4f}")
    assert 4 < base["gd_eta"] < 8
    assert metrics["final"]["query_loss"] <= 1.03 * base["gd_query_loss"]
    assert metrics["final"]["query_loss"] < 0.6 * base["zero_query_loss"]


def test_checkpoint_round_trip(tmp_path):
    cfg = TrainConfig(model="gpt", d=3, n_points=5, d_model=8, n_layers=1, n_heads=2, steps=3, batch_size=8, eval_tasks=16)
    model, metrics = train(cfg)
    save_checkpoint(model, cfg, metrics, tmp_path / "ck")
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    loaded, cfg2, metrics2 = load_checkpoint(tmp_path / "ck")
    assert cfg2 == cfg and metrics2 == metrics
    batch = sample_regression_tasks(4, 5, 3, seed=9)
    assert torch.equal(loaded.predict(batch), model.predict(batch))
    gd = hand_built_gd_model(3, 1.0, 5, w0=[1.0, 2.0, 3.0])
    save_checkpoint(gd, None, None, tmp_path / "gd")
    gd2, none_cfg, _ = load_checkpoint(tmp_path / "gd")
    assert none_cfg is None and torch.equal(gd2.predict(batch), gd.predict(batch))
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_train_config_defaults_and_validation():
    lsa = TrainConfig()
    assert (lsa.lr, lsa.betas, lsa.optimizer, lsa.batch_size, lsa.x_dist, lsa.x_range) == (1e-3, (0.9, 0.98), "adamw", 2048, "uniform", 0.5)
    gpt = TrainConfig(model="gpt")
    assert (gpt.d_model, gpt.n_layers, gpt.n_heads, gpt.optimizer, gpt.x_dist) == (128, 4, 4, "adam", "normal")
    assert TrainConfig.from_dict(gpt.to_dict()) == gpt
    with pytest.raises(ValueError, match="d_model"):
        TrainConfig(model="lsa", d_model=32)
    with pytest.raises(ValueError, match="'lsa' or 'gpt'"):
        TrainConfig(model="mlp")


# ------------------------------------------------------------------------------------------
# reference learners


def test_ols_recovers_w_and_ridge_tends_to_ols():
    batch = sample_regression_tasks(64, 13, 5, seed=4)  # N = 12 > d = 5, noiseless
    truth = (batch.x[:, -1] * batch.w).sum(-1)
    assert torch.allclose(ols(batch), truth, atol=1e-4)
    assert torch.allclose(ridge(batch, 1e-9), ols(batch), atol=1e-5)
    assert torch.equal(ridge(batch, 0.0), ols(batch))
    under = sample_regression_tasks(32, 4, 6, seed=5)  # N = 3 < d: min-norm; ridge → min-norm too
    assert torch.allclose(ridge(under, 1e-9), ols(under), atol=1e-5)
    X, y = under.x[:, :-1].double(), under.y[:, :-1].double()
    w_min_norm = X.mT @ torch.linalg.solve(X @ X.mT, y.unsqueeze(-1))
    assert torch.allclose(ols(under).double(), (w_min_norm.squeeze(-1) * under.x[:, -1].double()).sum(-1), atol=1e-4)
    with pytest.raises(ValueError, match="lam"):
        ridge(batch, -1.0)


def test_reference_learners_on_one_dimensional_toys():
    # context x = 0, 1, 2, 3, 10 with y = 5, 7, 9, 11, 100; query x = 2.2 (y_q unused)
    toy = _batch([[[0.0], [1.0], [2.0], [3.0], [10.0], [2.2]]], [[5.0, 7.0, 9.0, 11.0, 100.0, 0.0]])
    assert knn(toy, k=3).item() == pytest.approx(9.0)  # nearest 2, 3, 1 → (9 + 11 + 7) / 3
    assert knn(toy, k=1).item() == pytest.approx(9.0)
    assert knn(toy, k=99).item() == pytest.approx(132 / 5)  # k capped at N
    assert nadaraya_watson(toy, bandwidth=1e-3).item() == pytest.approx(9.0)  # → 1-NN
    assert nadaraya_watson(toy, bandwidth=1e9).item() == pytest.approx(132 / 5, rel=1e-5)  # → mean
    # x = 1, 2 with y = 1, 2; query x = 1
    line = _batch([[[1.0], [2.0], [1.0]]], [[1.0, 2.0, 0.0]])
    assert ridge(line, 1.0).item() == pytest.approx(5 / 6)  # Σxy / (Σx² + λ)
    assert gd_one_step(line, 0.4).item() == pytest.approx(0.4 * 2.5)  # η · mean(x y) · x_q
    assert averaging(line).item() == pytest.approx(2.5)
    assert sgd_one_pass(line, 0.5).item() == pytest.approx(1.5)  # w: 0 → 0.5 → 0.5 − 0.5·(1 − 2)·2
    assert ols(line).item() == pytest.approx(1.0)


def test_best_gd_eta_is_the_grid_minimum():
    batch = sample_regression_tasks(2000, 11, 10, x_dist="uniform", x_range=0.5, seed=7)
    etas = torch.linspace(0.5, 12, 47)
    eta, loss = best_gd_eta(batch, etas)
    direct = [0.5 * (gd_one_step(batch, float(e)).double() - batch.y[:, -1].double()).pow(2).mean().item() for e in etas]
    i = min(range(len(direct)), key=direct.__getitem__)
    assert eta == pytest.approx(float(etas[i])) and loss == pytest.approx(direct[i], rel=1e-5)
    eta_default, loss_default = best_gd_eta(batch)
    assert 4 < eta_default < 8 and 0.18 < loss_default < 0.23  # von Oswald: η ≈ 6, loss ≈ 0.208


def test_error_vs_k_ols_is_zero_from_k_equals_d():
    curve = error_vs_k(ols, 4, [1, 2, 4, 8], n_tasks=128, seed=0)
    assert curve.k == [1, 2, 4, 8]
    assert curve.mean[0] > 0.3 and curve.mean[2] < 1e-6 and curve.mean[3] < 1e-6
    assert all(lo <= m <= hi for lo, m, hi in zip(curve.ci_low, curve.mean, curve.ci_high))
    assert error_vs_k(lambda b: knn(b, 3), 4, [8], n_tasks=64).to_dict()["mean"][0] > 0.1


def test_curriculum_zeroes_unused_dims_and_grows_to_the_full_task():
    config = TrainConfig(model="gpt", d=5, n_points=20, batch_size=16, curriculum_dims=2, curriculum_points=6, curriculum_every=10)
    assert [config.curriculum(s) for s in (0, 9, 10, 25, 1000)] == [(2, 6), (2, 6), (3, 8), (4, 10), (5, 20)]
    b = config.train_batch(0, seed=3)
    assert b.x.shape == (16, 6, 5) and torch.all(b.x[..., 2:] == 0)
    assert torch.allclose(b.y, (b.x @ b.w.unsqueeze(-1)).squeeze(-1), atol=1e-6)  # y from the zeroed x
    full = TrainConfig(model="gpt", d=5, n_points=20, batch_size=16)
    assert torch.equal(full.train_batch(0, seed=3).x, full.sample(16, 3).x)  # no curriculum: the plain sampler
    with pytest.raises(ValueError, match="curriculum_dims"):
        TrainConfig(model="gpt", d=5, n_points=20, curriculum_dims=6)
