"""Induction / previous-token scores: parity with TransformerLens head_detector, and the
prefix-matching definition checked against the raw patterns."""
import copy

import pytest
import torch
from transformer_lens.head_detector import detect_head

from analyses.heads.induction import head_detection_scores, induction_scores, repeated_random_tokens
from interp import Capture, load_model
from tests.conftest import make_tiny_llama


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    hf = make_tiny_llama(n_layers=2)
    return {e: load_model(hf, engine=e, tokenizer=copy.deepcopy(char_tokenizer)) for e in ("transformer-lens", "nnsight")}


@pytest.mark.parametrize("engine", ["transformer-lens", "nnsight"])
@pytest.mark.parametrize("kind", ["induction_head", "previous_token_head", "duplicate_token_head"])
@pytest.mark.parametrize("measure", ["mul", "abs"])
def test_detection_scores_match_head_detector(tiny, engine, kind, measure):
    bridge = tiny["transformer-lens"].bridge
    seq = "abc de abc de"
    tokens = bridge.to_tokens(seq)
    ours = head_detection_scores(tiny[engine], tokens, kind, error_measure=measure)
    theirs = detect_head(bridge, seq, kind, error_measure=measure)
    assert (ours - theirs).abs().max() <= 1e-4


def test_prefix_matching_score_is_the_offset_diagonal(tiny):
    fm = tiny["transformer-lens"]
    result = induction_scores(fm, n_repeat=6, n_sequences=3, seed=1)
    tokens = repeated_random_tokens(fm, 6, 3, seed=1)
    assert torch.equal(tokens[:, :6], tokens[:, 6:])
    with torch.no_grad():
        pattern = fm.run(tokens, capture=[Capture("attn.hook_pattern", layers=1)]).acts["blocks.1.attn.hook_pattern"]
    manual = torch.stack([pattern[:, :, q, q - 5] for q in range(6, 12)], -1).mean((0, -1))
    assert torch.allclose(result.induction[1], manual, atol=1e-6)
    prev = torch.stack([pattern[:, :, q, q - 1] for q in range(1, 12)], -1).mean((0, -1))
    assert torch.allclose(result.previous_token[1], prev, atol=1e-6)
    assert result.top(1)[0][2] == pytest.approx(float(result.induction.max()))
