"""Patching metrics: functions of the final-position logits [batch, vocab] returning a scalar
(the batch mean), as in TransformerLens's patching module.

- ``logit_diff(correct, wrong)``: mean_b logit[b, correct_b] − logit[b, wrong_b].
- ``label_logit_diff(batch)``: gold label word's first-token logit minus the mean of the other
  classes' (Wang et al. 2023 score classes by their label words' first tokens).
- ``target_prob(target)``: mean_b softmax(logits)[b, target_b] (Todd et al. 2023's CIE uses it).
- ``kl_to(reference_logits)``: mean_b KL(p_reference ‖ p_patched).
- ``normalised_recovery(value, clean, corrupted)`` = (value − corrupted) / (clean − corrupted):
  0 = no effect, 1 = the clean behaviour fully restored.
"""
from __future__ import annotations

from typing import Callable

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]


def _ids(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


def logit_diff(correct, wrong) -> Metric:
    correct, wrong = _ids(correct), _ids(wrong)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        c = correct.to(logits.device).expand(logits.shape[0]) if correct.numel() == 1 else correct.to(logits.device)
        w = wrong.to(logits.device).expand(logits.shape[0]) if wrong.numel() == 1 else wrong.to(logits.device)
        return (logits[rows, c] - logits[rows, w]).mean()

    return metric


def label_logit_diff(batch) -> Metric:
    """Gold label word minus the mean of the other label words (first tokens)."""
    if batch.label_words is None or batch.gold is None:
        raise ValueError("label_logit_diff needs a classification batch (label words and gold labels)")
    ids = batch.label_words.first_token_ids
    gold = batch.gold.cpu()
    others = torch.ones(len(gold), len(ids), dtype=torch.bool)
    others[torch.arange(len(gold)), gold] = False

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lab = logits[:, ids.to(logits.device)]
        g = lab[torch.arange(len(gold)), gold.to(logits.device)]
        o = (lab * others.to(logits.device)).sum(-1) / others.sum(-1).to(logits.device)
        return (g - o).mean()

    return metric


def target_prob(target) -> Metric:
    target = _ids(target)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.float(), -1)
        t = target.to(logits.device).expand(logits.shape[0]) if target.numel() == 1 else target.to(logits.device)
        return p[torch.arange(logits.shape[0], device=logits.device), t].mean()

    return metric


def kl_to(reference_logits: torch.Tensor) -> Metric:
    ref = torch.log_softmax(reference_logits.float(), -1)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        lp = torch.log_softmax(logits.float(), -1)
        r = ref.to(logits.device)
        return (r.exp() * (r - lp)).sum(-1).mean()

    return metric


def normalised_recovery(value, clean: float, corrupted: float):
    """(value − corrupted) / (clean − corrupted); works on floats and tensors."""
    denom = clean - corrupted
    if abs(float(denom)) < 1e-12:
        raise ValueError("clean and corrupted metrics are equal: normalised recovery is undefined for this pair")
    return (value - corrupted) / denom
