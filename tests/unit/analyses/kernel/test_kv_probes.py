"""Key/value probes: at layer 0 a value vector is a function of its own token, so the label token's
value decodes the demo label perfectly and the next position (the same separator everywhere) is
at chance — on any model, trained or not."""
import copy

import pytest

from analyses.kernel.kv_probes import kv_probes
from interp import load_model
from interp.prompts import Template
from interp.tasks import Example, Task
from tests.conftest import make_tiny_llama


def test_layer0_values_decode_labels_only_at_the_label_token(char_tokenizer):
    fm = load_model(make_tiny_llama(n_layers=2), tokenizer=copy.deepcopy(char_tokenizer))
    pairs = list(zip("abcdefghijklmnopqrst", "tsrqponmlkjihgfedcba"))
    task = Task("toy", [Example(f"{a}{b}{a}", ["x", "y"][i % 2], i % 2) for i, (a, b) in enumerate(pairs)],
                kind="classification", label_words=["x", "y"], template=Template(space_before_text=False))
    r = kv_probes(fm, task, k=4, n=16, seed=0, offsets=(0, 1), n_boot=50)
    at_label = r.values[0]["score"][0]      # layer 0, both kv heads
    after = r.values[1]["score"][0]
    assert min(at_label) == 1.0
    assert max(after) <= 0.75 and r.values[1]["control_shuffled"][0][0] == pytest.approx(after[0], abs=0.3)
    assert set(r.keys) == {0, 1}
    assert all(("score" in v and len(v["score"]) == 2) or "skipped" in v for v in r.keys.values())
