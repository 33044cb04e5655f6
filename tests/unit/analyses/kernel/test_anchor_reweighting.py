"""Wang et al.'s anchor re-weighting on a tiny Llama: β = 0 leaves the model as it is, exp(β)
lands exactly on the (final position, label position) edges, the gradient of the loss in β equals
finite differences, and training lowers the training loss."""
import copy

import pytest
import torch

from analyses.kernel.anchor_reweighting import _factors, anchor_reweighting
from interp.edits import ReweightAttention, ScaleAttention
from interp.prompts import build_icl_batch, per_class
from tests.conftest import make_tiny_llama, make_toy_task


@pytest.fixture(scope="module")
def setup(char_tokenizer):
    from interp import load_model

    torch.manual_seed(0)
    model = load_model(make_tiny_llama(n_ctx=256), tokenizer=copy.deepcopy(char_tokenizer))
    task = make_toy_task()
    import random

    demos = per_class(1)(None, task.examples[3:], 2, random.Random(1))
    batch = build_icl_batch(model.tokenizer, task, k=2, queries=task.examples[:3], pool=task.examples[3:], seed=1,
                            select=lambda q, p, k, r: list(demos), padding_side="left")
    return model, task, batch


def test_factors_put_exp_beta_on_the_label_edges_only(setup):
    model, _, batch = setup
    beta = torch.randn(model.n_layers, model.n_heads, 2)
    f = _factors(beta, batch, model.n_heads)
    for layer in range(model.n_layers):
        want = torch.ones_like(f[layer])
        for b, row in enumerate(batch.rows):
            for i, span in enumerate(row.demo_labels):
                want[b, :, row.final, span.start] = beta[layer, :, i].exp()
        assert torch.equal(f[layer], want)


def test_zero_beta_is_the_unedited_model_and_one_edge_equals_scale_attention(setup):
    model, _, batch = setup
    with torch.no_grad():
        plain = model.run(batch, logits="final").logits
        zero = model.run(batch, edits=[ReweightAttention(_factors(torch.zeros(model.n_layers, model.n_heads, 2), batch,
                                                                   model.n_heads))], logits="final").logits
    assert torch.equal(plain, zero)
    # β nonzero on layer 1, head 2, demo 0 only == ScaleAttention on that one edge per row
    beta = torch.zeros(model.n_layers, model.n_heads, 2)
    beta[1, 2, 0] = 0.8
    label0 = [row.demo_labels[0].start for row in batch.rows]
    assert len(set(label0)) == 1  # same demos, left padding: one column for every row
    with torch.no_grad():
        got = model.run(batch, edits=[ReweightAttention(_factors(beta, batch, model.n_heads))], logits="final").logits
        want = model.run(batch, edits=[ScaleAttention("final", [label0[0]], float(torch.tensor(0.8).exp()), layers=1, heads=2)],
                         logits="final").logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_gradient_in_beta_equals_finite_differences(setup):
    model, _, batch = setup
    ids = batch.label_words.first_token_ids

    def loss(beta):
        logits = model.run(batch, edits=[ReweightAttention(_factors(beta, batch, model.n_heads))], grad=True, logits="final").logits
        return torch.nn.functional.cross_entropy(logits[:, ids].double(), batch.gold)

    beta = (0.3 * torch.randn(model.n_layers, model.n_heads, 2, generator=torch.Generator().manual_seed(2))).requires_grad_()
    grad, = torch.autograd.grad(loss(beta), beta)
    eps = 1e-3
    for idx in [(0, 0, 0), (1, 3, 1), (1, 1, 0)]:
        plus, minus = beta.detach().clone(), beta.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            fd = (loss(plus) - loss(minus)) / (2 * eps)
        assert float(grad[idx]) == pytest.approx(float(fd), rel=2e-2, abs=1e-5)


def test_training_lowers_the_training_loss(setup):
    from interp.finetune import parameter_hash

    model, task, _ = setup
    before = parameter_hash(model), [p.requires_grad for p in model.hf_model.parameters()]
    r = anchor_reweighting(model, task, n=6, train_per_class=3, epochs=6, lr=0.05, seed=0)
    assert r.losses[-1] < r.losses[0]
    assert r.beta.shape == (model.n_layers, model.n_heads, 2) and r.beta.abs().sum() > 0
    assert r.vanilla["n"] == r.reweighted["n"] == 6
    assert (parameter_hash(model), [p.requires_grad for p in model.hf_model.parameters()]) == before  # only β was trained
