"""Kernel reconstruction on hand-built attention rows, where every answer is known."""
import pytest
import torch

from analyses.kernel.reconstruction import kernel_weights, majority_label, recent_label, reconstruct, select_head_heldout

# one row of 10 positions: demo 0 = positions [0, 3) (label at 2), demo 1 = [3, 6) (label at 5),
# demo 2 = [6, 9) (label at 8), query at 9
BLOCKS = [[(0, 3), (3, 6), (6, 9)]]
LABELS = [[(2, 3), (5, 6), (8, 9)]]


def row(values):
    return torch.tensor([values], dtype=torch.float)


def test_weights_max_label_and_sum():
    attn = row([0.05, 0.10, 0.20, 0.01, 0.30, 0.02, 0.04, 0.04, 0.04, 0.20])
    assert torch.allclose(kernel_weights(attn, BLOCKS, LABELS, "max"), torch.tensor([[0.20, 0.30, 0.04]]))
    assert torch.allclose(kernel_weights(attn, BLOCKS, LABELS, "label"), torch.tensor([[0.20, 0.02, 0.04]]))
    assert torch.allclose(kernel_weights(attn, BLOCKS, LABELS, "sum"), torch.tensor([[0.35, 0.33, 0.12]]))


def test_span_rules_read_the_named_tokens():
    """A prompt row "Q: a\nA: x\n\nQ: b\nA: y\n\n..." with hand-placed spans: the block rule
    includes the template words ("Q:", "A:"), input+label only the input and the label."""
    from types import SimpleNamespace

    from analyses.kernel.reconstruction import demo_spans
    from interp.prompts import Span

    r = SimpleNamespace(demo_blocks=[Span(0, 5), Span(6, 11)], demo_inputs=[Span(1, 2), Span(7, 8)],
                        demo_labels=[Span(4, 5), Span(10, 11)])
    #                  Q:    a     \n   A:    x     \n\n  Q:    b     \n   A:    y     query
    attn = row([0.30, 0.01, 0.02, 0.25, 0.03, 0.05, 0.02, 0.04, 0.01, 0.20, 0.06, 0.01])
    block = kernel_weights(attn, [demo_spans(r, "block")])
    both = kernel_weights(attn, [demo_spans(r, "input+label")])
    label = kernel_weights(attn, [demo_spans(r, "label")])
    assert torch.allclose(block, torch.tensor([[0.30, 0.20]]))  # the template words win
    assert torch.allclose(both, torch.tensor([[0.03, 0.06]]))  # max over input and label only
    assert torch.allclose(label, torch.tensor([[0.03, 0.06]]))
    assert torch.allclose(kernel_weights(attn, [demo_spans(r, "input+label")], weight="sum"), torch.tensor([[0.04, 0.10]]))
    assert reconstruct(block, torch.tensor([[0, 1]]), 2).item() == 0 and reconstruct(both, torch.tensor([[0, 1]]), 2).item() == 1
    with pytest.raises(ValueError, match="span must be one of"):
        demo_spans(r, "query")


def test_reconstruction_is_the_weighted_vote():
    classes = torch.tensor([[0, 1, 1]])
    # demo 0 (class 0) weighs 0.5; demos 1 and 2 (class 1) weigh 0.3 + 0.3 = 0.6 -> class 1
    assert reconstruct(torch.tensor([[0.5, 0.3, 0.3]]), classes, 2).tolist() == [1]
    # 0.7 against 0.2 + 0.2 -> class 0
    assert reconstruct(torch.tensor([[0.7, 0.2, 0.2]]), classes, 2).tolist() == [0]
    # leading (layer, head) dims broadcast
    w = torch.tensor([[[[0.5, 0.3, 0.3]], [[0.7, 0.2, 0.2]]]])  # [1, 2, row=1, k=3]
    assert reconstruct(w, classes, 2).tolist() == [[[1], [0]]]


def test_baselines():
    classes = torch.tensor([[0, 1, 1], [2, 2, 0], [1, 0, 2]])
    assert majority_label(classes, 3).tolist() == [1, 2, 0]  # tie in row 3 -> lowest id
    assert recent_label(classes).tolist() == [1, 0, 2]


def test_heldout_selection_scores_the_selected_head_on_other_rows():
    # 2 layers x 2 heads x 10 rows.  Head (1, 0) agrees on every selection row but on no held-out
    # row; head (0, 1) agrees on 4/6 selection rows and all held-out rows.
    agree = torch.zeros(2, 2, 10, dtype=torch.bool)
    selection = torch.tensor([True] * 6 + [False] * 4)
    agree[1, 0, :6] = True
    agree[0, 1, :4] = True
    agree[0, 1, 6:] = True
    gold = agree.clone()
    gold[1, 0, 6] = True
    result = select_head_heldout(agree, gold, selection)
    assert (result.layer, result.head) == (1, 0)
    assert result.selection_agreement == 1.0
    assert result.heldout_agreement["accuracy"] == 0.0      # the selection artefact is exposed
    assert result.heldout_gold_accuracy["accuracy"] == pytest.approx(0.25)
    assert (result.n_selection, result.n_heldout) == (6, 4)


def test_demo_selection_uses_the_similar_demos_and_scores_them(char_tokenizer):
    import copy

    from analyses.kernel.reconstruction import demo_selection
    from interp import load_model
    from interp.prompts import Template, build_icl_batch, most_similar_first
    from interp.scoring import score_batch
    from interp.tasks import Example, Task
    from tests.conftest import make_tiny_llama

    fm = load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))
    words = ["x", "y"]
    inputs = ["ab cd", "ab ce", "ef gh", "ij kl", "ab cf", "mn op", "qr st", "uv wx", "ab cg", "yz ab", "ef gi", "ij km"]
    task = Task("toy", [Example(t, words[i % 2], i % 2) for i, t in enumerate(inputs)], kind="classification", label_words=words,
                template=Template(space_before_text=False))
    result = demo_selection(fm, task, k=2, n=4, seed=0)
    similar = build_icl_batch(fm.tokenizer, task, k=2, n=4, seed=0, padding_side="left", select=most_similar_first())
    expected = score_batch(fm, similar)["correct"].float().mean()
    assert result.similar["icl_accuracy"]["accuracy"] == pytest.approx(float(expected))
    rnd = build_icl_batch(fm.tokenizer, task, k=2, n=4, seed=0, padding_side="left")
    assert result.random["icl_accuracy"]["accuracy"] == pytest.approx(float(score_batch(fm, rnd)["correct"].float().mean()))


def test_top_cells():
    from interp.grids import top_cells

    grid = torch.tensor([[0.1, 0.9], [0.5, 0.9]])
    assert top_cells(grid, 3) == [(0, 1, pytest.approx(0.9)), (1, 1, pytest.approx(0.9)), (1, 0, pytest.approx(0.5))]
    assert top_cells(grid, 1, key=-grid) == [(0, 0, pytest.approx(0.1))]
