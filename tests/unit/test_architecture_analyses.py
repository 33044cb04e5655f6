"""The analyses on every family of the architecture table (tiny random models, a toy task):

- kernel reconstruction through the TransformerLens engine equals the same analysis on the
  plain-PyTorch reference (torch hooks on a plain twin);
- the prefix-cached ICL side of ``icl-vs-gd`` equals full forwards (≤ 1e-4), and the whole
  ICL-vs-GD analysis gives the same numbers with and without the cache;
- the heads report runs every score and its results.json records the architecture, the BOS
  policy and the path that served the model;
- the user's model is unchanged afterwards.
"""
import copy
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from architecture_fixtures import FAMILIES, assert_same_fingerprint, make_family_model, model_fingerprint  # noqa: E402

from interp.engines.torch_engine import TorchEngine  # noqa: E402
from interp.finetune import GDConfig  # noqa: E402
from interp.loading import load_model  # noqa: E402
from interp.model import Model  # noqa: E402
from interp.prompts import Template, build_icl_batch  # noqa: E402
from interp.tasks import Example, Task  # noqa: E402

WORDS = ["x", "y"]
INPUTS = [f"{a}{b} {c}" for a, b, c in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", "mnopqrstuvwxyzabcdef")]
K, N, SEED = 2, 4, 0
GD = GDConfig(lr=0.1, loss="all")


@pytest.fixture(scope="module")
def task():
    return Task("toy", [Example(t, WORDS[i % 2], i % 2) for i, t in enumerate(INPUTS)], kind="classification",
                label_words=WORDS, template=Template(space_before_text=False))


@pytest.fixture(scope="module")
def tokenizer():
    from conftest import make_char_tokenizer

    return make_char_tokenizer()


def _model(family):
    return make_family_model(family, n_ctx=128)


def _max_diff(a, b) -> float:
    """Max |a − b|, entries that are -inf on both sides (outside a sliding window) counting as equal."""
    both = torch.isneginf(a) & torch.isneginf(b)
    return float((a - b).masked_fill(both, 0).abs().max())


def _mismatches(a, b, tol, path="") -> list[str]:
    """Where two results differ by more than ``tol`` (relative to the values' size, at least 1)."""
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} vs {sorted(b)}"]
        return [m for k in a for m in _mismatches(a[k], b[k], tol, f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: lengths {len(a)} vs {len(b)}"]
        return [m for i, (x, y) in enumerate(zip(a, b)) for m in _mismatches(x, y, tol, f"{path}[{i}]")]
    if isinstance(a, float) or isinstance(b, float):
        if a != a and b != b:
            return []
        return [] if abs(a - b) <= tol * max(1.0, abs(a), abs(b)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a} vs {b}"]


@pytest.mark.parametrize("family", FAMILIES)
def test_kernel_and_icl_vs_gd_on_every_family(family, task, tokenizer):
    from analyses.gd.icl_vs_gd import icl_vs_gd, reference_runs, run_side, run_side_cached
    from analyses.kernel.reconstruction import kernel_reconstruction

    model = _model(family)
    before = model_fingerprint(model)
    fm = load_model(model, tokenizer=copy.deepcopy(tokenizer))
    reference = Model(TorchEngine(model, tokenizer), tokenizer=tokenizer)
    got = kernel_reconstruction(fm, task, k=K, n=8, seed=SEED)
    want = kernel_reconstruction(reference, task, k=K, n=8, seed=SEED)
    assert torch.equal(got.agreement, want.agreement) and torch.equal(got.gold_accuracy, want.gold_accuracy)

    b = build_icl_batch(fm.tokenizer, task, k=K, n=N, seed=SEED, same_demos=True, padding_side="left")
    r0 = b.rows[0]
    cols = [p - r0.start for s in r0.demo_blocks for p in range(s.start, s.end)]
    token = int(b.label_words.first_token_ids[0])
    full = run_side(fm, b, append=token, demo_columns=cols, rotary_q=True)
    fast = run_side_cached(fm, b, append=token, demo_columns=cols, batch_size=2)
    for name in ("logprobs", "attn_out", "z", "q_rot", "demo_scores"):
        assert _max_diff(getattr(full, name), getattr(fast, name)) <= 1e-4, name
    assert all(_max_diff(a, c) <= 1e-4 for a, c in zip(full.query_scores, fast.query_scores))

    cached = icl_vs_gd(fm, task, k=K, n=N, seed=SEED, config=GD, reference=reference_runs(fm, task, k=K, n=N, seed=SEED))
    uncached = icl_vs_gd(fm, task, k=K, n=N, seed=SEED, config=GD,
                         reference=reference_runs(fm, task, k=K, n=N, seed=SEED, cached=False))
    assert cached.model_hash_unchanged
    assert not _mismatches(cached.to_dict(), uncached.to_dict(), 1e-4)
    assert_same_fingerprint(before, model_fingerprint(model))


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_report_on_every_family_records_the_model(family, task, tokenizer, tmp_path):
    from analyses.heads.atlas import ALL_SCORES, run_heads_report
    from analyses.kernel.reconstruction import kernel_reconstruction

    model = _model(family)
    before = model_fingerprint(model)
    fm = load_model(model, engine="nnsight", tokenizer=copy.deepcopy(tokenizer))
    result = run_heads_report(fm, task, out=tmp_path, k=K, n=N, seed=SEED, gd_config=GD, fv_mean_over="all")
    assert list(result.scores) == list(ALL_SCORES)
    for name, grid in result.scores.items():
        g = torch.tensor(grid)
        assert g.shape == (2, 4) and bool(torch.isfinite(g).all()), name
    reference = Model(TorchEngine(model, tokenizer), tokenizer=tokenizer)
    assert result.scores["kernel"] == kernel_reconstruction(reference, task, k=K, n=N, seed=SEED).agreement.tolist()
    info = json.loads((tmp_path / "results.json").read_text())["model_info"]
    assert info["architecture"]["family"] and info["architecture"]["model_type"] == model.config.model_type
    assert info["engine"] == "nnsight" and "plain eager twin" in info["served_by"]
    assert info["bos"] == {"prepend_bos": False, "bos_token_id": None, "rule": info["bos"]["rule"]}
    assert info["architecture"]["parallel_block"] == (family in ("gptj", "gpt_neox"))
    assert_same_fingerprint(before, model_fingerprint(model))
