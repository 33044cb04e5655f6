"""Han et al. §5.1's aligned attention map against plain transformers attention (eager,
output_attentions), and the resampling on hand-built rows; the per-class demo selector."""
import copy
import random

import pytest
import torch

from analyses.kernel.attention_map import aligned_attention_map, resample
from interp.prompts import build_icl_batch, per_class
from tests.conftest import make_tiny_llama, make_toy_task


def test_resample_known_answers():
    assert torch.allclose(resample(torch.tensor([0.0, 1.0]), 5), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert torch.equal(resample(torch.tensor([[2.0]]), 3), torch.tensor([[2.0, 2.0, 2.0]]))
    x = torch.arange(4.0)
    assert torch.equal(resample(x, 4), x)


def test_aligned_map_equals_plain_transformers(char_tokenizer):
    from interp import load_model

    torch.manual_seed(0)
    task = make_toy_task()
    hf = make_tiny_llama(n_ctx=256)
    model = load_model(hf, tokenizer=copy.deepcopy(char_tokenizer))
    k, n, length = 2, 5, 6
    r = aligned_attention_map(model, task, k=k, n=n, seed=3, length=length, batch_size=2)
    batch = build_icl_batch(char_tokenizer, task, k=k, n=n, seed=3, padding_side="left", max_length=256)
    ref = make_tiny_llama(n_ctx=256)  # the same weights (seeded), untouched by any engine
    total, excess = 0, []
    for i, row in enumerate(batch.rows):
        ids = batch.input_ids[i:i + 1, row.pad:]
        with torch.no_grad():
            att = ref(ids, output_attentions=True).attentions  # per layer [1, head, t, t]
        a = torch.stack([x[0, :, -1].mean(0) for x in att])  # [layer, t] final row, heads averaged
        shift = lambda s: slice(s.start - row.pad, s.end - row.pad)  # noqa: E731
        pieces = []
        for x, y in zip(row.demo_inputs, row.demo_labels):
            seg = a[:, shift(x)]
            pieces += [torch.nn.functional.interpolate(seg[:, None], size=length, mode="linear", align_corners=True)[:, 0],
                       a[:, shift(y)].mean(-1, keepdim=True)]
        q = a[:, shift(row.query_input)]
        pieces.append(torch.nn.functional.interpolate(q[:, None], size=length, mode="linear", align_corners=True)[:, 0])
        total = total + torch.cat(pieces, -1)
        lab = torch.cat([a[:, shift(s)] for s in row.demo_labels], -1).mean()
        inp = torch.cat([a[:, shift(s)] for s in row.demo_inputs], -1).mean()
        excess.append(float(lab - inp))
    assert r.aligned.shape == (2, k * (length + 1) + length)
    assert torch.allclose(r.aligned, total / n, atol=1e-6)
    assert sorted(r.label_excess) == pytest.approx(sorted(excess), abs=1e-6)
    assert r.label_excess_ci[0] <= sum(excess) / n <= r.label_excess_ci[1]
    fig = r.figures()[0]
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_per_class_selector_gives_one_demo_of_each_class():
    task = make_toy_task()
    select = per_class(1)
    demos = select(task.examples[0], task.examples[1:], 2, random.Random(0))
    assert sorted(d.output for d in demos) == ["x", "y"]
    with pytest.raises(ValueError, match="needs k = 1 x 2 classes"):
        select(task.examples[0], task.examples[1:], 3, random.Random(0))
