"""The shipped softmax GPT (d=5, 20 points): it beats one GD step, 3-NN and Nadaraya–Watson at
every k in [d, 2d] (Garg et al.'s normalised error, baselines tuned on the same tasks), and a
2-layer MLP probe (Akyürek et al.) reads the task's w from its last layer at the query (R² ≥ 0.6) but not from a
random-init copy (≤ 0.05)."""
import pytest

from analyses.linreg.probes import implicit_weight_probes
from interp.linreg.checkpoints import load_shipped
from interp.linreg.gd import best_gd_eta, error_vs_k, gd_one_step, knn, nadaraya_watson

pytestmark = pytest.mark.usefixtures("one_thread")
KS = list(range(5, 11))


@pytest.fixture(scope="module")
def gpt():
    model, config, metrics = load_shipped("gpt-d5-n20")
    assert (config.model, config.d, config.n_points, config.n_layers, config.n_heads, config.d_model) == ("gpt", 5, 20, 4, 4, 128)
    return model


def _nw_best_bandwidth(batch):
    """Nadaraya–Watson with the bandwidth that is best on these very tasks (an optimistic baseline)."""
    preds = [nadaraya_watson(batch, h) for h in (0.3, 1.0, 3.0, 10.0, 30.0)]
    return min(preds, key=lambda p: float((p - batch.y[:, -1]).pow(2).mean()))


def test_beats_gd_knn_and_nadaraya_watson_for_k_in_d_to_2d(gpt):
    curve = lambda fn: error_vs_k(fn, 5, KS, n_tasks=2048, seed=0).mean  # noqa: E731
    model = curve(gpt.predict)
    for name, fn in (("one GD step (best η)", lambda b: gd_one_step(b, best_gd_eta(b)[0])), ("3-NN", lambda b: knn(b, 3)),
                     ("Nadaraya–Watson", _nw_best_bandwidth)):
        other = curve(fn)
        assert all(m < o for m, o in zip(model, other)), (name, KS, model, other)


def test_last_layer_encodes_w_and_a_random_init_does_not(gpt):
    # Akyürek et al.'s 2-layer MLP probe: w is encoded non-linearly (a ridge probe reads R² ≈ 0.57 here)
    p = implicit_weight_probes(gpt, 5, n_tasks=8192, seed=0, targets=("w",), positions=("query",), probe="mlp", layers=("3",),
                               n_boot=200)
    assert p.layer_names == ["3"]
    assert p.r2("w")[0] >= 0.6, p.r2("w")
    assert p.r2("w", control=True)[0] <= 0.05, p.r2("w", control=True)
