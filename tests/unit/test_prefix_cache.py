"""Shared-prefix runs equal full forwards of the concatenated prompts."""
import copy

import torch

from interp import Capture, load_model
from interp.prefix_cache import SharedPrefix
from tests.conftest import make_tiny_llama


def test_shared_prefix_matches_full_forward(char_tokenizer):
    fm = load_model(make_tiny_llama(n_layers=3), tokenizer=copy.deepcopy(char_tokenizer))
    enc = lambda t: fm.tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix = enc("q: ab\na: ba\n\nq: cd\na: dc\n\n")
    suffixes = [enc("q: efg\na:"), enc("q: h\na:"), enc("q: ijkl\na:")]
    run = SharedPrefix(fm, prefix).run(suffixes, batch_size=2)
    for i, suffix in enumerate(suffixes):
        ids = torch.tensor([prefix + suffix])
        with torch.no_grad():
            full = fm.run(ids, capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
        assert (run.logits[i] - full.logits[0]).abs().max() <= 1e-5
        n = ids.shape[1]
        assert int(run.final_positions[i]) == n - 1
        ours = run.patterns[:, i, :, :n]
        theirs = full.acts.stack("attn.hook_pattern")[:, 0, :, 0]
        assert (ours - theirs).abs().max() <= 1e-6
        assert run.patterns[:, i, :, n:].abs().sum() == 0  # padding beyond the row
