"""Probes on the real model: sentiment is linearly decodable from SmolLM2's residual stream at the
final token, and not from a random-init model of the same architecture (the control)."""
import pytest
import torch

from interp import Capture
from interp.prompts import build_icl_batch
from interp.random_init import random_init_like
from interp.scoring import wilson_interval
from interp.tasks import load_task
from probes import RidgeClassifierProbe, evaluate_probe


def _final_resid(model, batch, layer):
    with torch.no_grad():
        acts = model.run(batch, capture=[Capture(f"blocks.{layer}.hook_resid_post", positions="final")]).acts
    return acts[f"blocks.{layer}.hook_resid_post"][:, 0]


def test_sentiment_probe_real_vs_random_init(smollm2):
    task = load_task("sentiment")
    batch = build_icl_batch(smollm2.tokenizer, task, k=0, queries=task.examples, pool=[], seed=0, padding_side="left")
    control_model = random_init_like(smollm2, seed=0)
    X, X_rand = _final_resid(smollm2, batch, 15), _final_resid(control_model, batch, 15)
    score = evaluate_probe(lambda: RidgeClassifierProbe(alpha=10.0), X, batch.gold, control_X=X_rand, seed=0, n_boot=200)
    assert score.score >= 0.85                                   # measured 0.96
    low, high = wilson_interval(round(score.control_random_init * score.n_test), score.n_test)
    assert low <= 0.5 <= high                                    # random-init model: chance (measured 0.45)
    assert score.selectivity >= 0.3
