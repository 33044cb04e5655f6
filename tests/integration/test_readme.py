"""The README's Python example runs as written on the embedded model."""
import re
from pathlib import Path

import torch


def test_readme_ten_line_example_runs(smollm2):
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## Ten lines of Python\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    shape = scope["out"].acts["blocks.12.attn.hook_pattern"].shape
    assert tuple(shape[:3]) == (8, 9, 1)
    assert scope["out"].logits.shape == (8, scope["model"].d_vocab)
    torch.testing.assert_close(scope["out"].acts["blocks.12.attn.hook_pattern"].sum(-1), torch.ones(8, 9, 1))
