"""The in-context regression models go through the same facade as a pretrained LM: captures
equal the module's own hook points, an edit through the facade equals the same edit by hand,
and the hand-built GD layer's prediction comes back as the facade's ``logits``."""
import torch

from interp import Capture, load_model
from interp.edits import Ablate
from interp.linreg import sample_regression_tasks
from interp.linreg.gd import gd_one_step, hand_built_gd_model
from interp.linreg.models import GPTConfig, SoftmaxGPT


def test_hand_built_gd_layer_through_the_facade():
    torch.manual_seed(0)
    batch = sample_regression_tasks(64, 11, 10, seed=1)
    module = hand_built_gd_model(10, 0.5, 11)
    model = load_model(module)
    assert model.engine_name == "hooked-module" and model.n_layers == 1
    out = model.run(module.tokens(batch), capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
    assert torch.allclose(out.logits[:, 0], gd_one_step(batch, 0.5), atol=1e-5)
    pattern = out.acts["blocks.0.attn.hook_pattern"]  # [b, head, 1, k]: x_i · x_q over the context
    x = batch.x
    assert torch.allclose(pattern[:, 0, 0, :-1], torch.einsum("bid,bd->bi", x[:, :-1], x[:, -1]), atol=1e-5)


def test_facade_edit_equals_the_same_edit_by_hand():
    module = SoftmaxGPT(GPTConfig(d=3, n_points=6, d_model=16, n_layers=2, n_heads=2))
    batch = sample_regression_tasks(4, 6, 3, seed=2)
    tokens = module.tokens(batch)
    model = load_model(module)
    edited = model.run(tokens, edits=[Ablate("blocks.1.attn.hook_z", heads=[1])]).logits

    def zero_head(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z
    by_hand = module.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert torch.equal(edited, by_hand)
    assert not torch.equal(edited, module(tokens))
    assert len(module.hook_dict["blocks.1.attn.hook_z"].fwd_hooks) == 0  # hooks removed
