"""Patching metrics: functions of the final-position logits [batch, vocab] returning a scalar
(the batch mean), as in TransformerLens's patching module.

- ``logit_diff(correct, wrong)``: mean_b logit[b, correct_b] − logit[b, wrong_b].
- ``label_logit_diff(batch)``: gold label word's first-token logit minus the mean of the other
  classes' (Wang et al. 2023 score classes by their label words' first tokens).
- ``target_prob(target)``: mean_b softmax(logits)[b, target_b] (Todd et al. 2023's CIE uses it).
- ``kl_to(reference_logits)``: mean_b KL(p_reference ‖ p_patched).
- ``normalised_recovery(value, clean, corrupted)`` = (value − corrupted) / (clean − corrupted):
  0 = no effect, 1 = the clean behaviour fully restored.

The two logit differences are :class:`ColumnMetric` objects: they read a few vocabulary columns,
and say which (``columns``), so patched runs unembed only those (:func:`evaluate` does either).
"""
from __future__ import annotations

from typing import Callable

import torch

Metric = Callable[[torch.Tensor], torch.Tensor]


def _ids(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.long).reshape(-1)


class ColumnMetric:
    """A metric that reads only the vocabulary ids ``columns`` of the logits:
    ``metric(logits)`` = ``on_columns(logits[:, columns])``."""

    def __init__(self, columns: torch.Tensor, on_columns: Callable[[torch.Tensor], torch.Tensor]):
        self.columns, self.on_columns = _ids(columns), on_columns

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.on_columns(logits[:, self.columns.to(logits.device)])


def evaluate(metric: Metric, logits: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """``metric`` of logits that are the full vocabulary (``columns`` None) or only ``columns``."""
    return metric(logits) if columns is None else metric.on_columns(logits)


def logit_diff(correct, wrong) -> ColumnMetric:
    correct, wrong = _ids(correct), _ids(wrong)
    columns = torch.unique(torch.cat([correct, wrong]))
    c_at, w_at = torch.searchsorted(columns, correct), torch.searchsorted(columns, wrong)

    def on_columns(logits: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(logits.shape[0], device=logits.device)
        c = c_at.to(logits.device).expand(logits.shape[0]) if c_at.numel() == 1 else c_at.to(logits.device)
        w = w_at.to(logits.device).expand(logits.shape[0]) if w_at.numel() == 1 else w_at.to(logits.device)
        return (logits[rows, c] - logits[rows, w]).mean()

    return ColumnMetric(columns, on_columns)


def label_logit_diff(batch) -> ColumnMetric:
    """Gold label word minus the mean of the other label words (first tokens)."""
    if batch.label_words is None or batch.gold is None:
        raise ValueError("label_logit_diff needs a classification batch (label words and gold labels)")
    ids = batch.label_words.first_token_ids
    gold = batch.gold.cpu()
    others = torch.ones(len(gold), len(ids), dtype=torch.bool)
    others[torch.arange(len(gold)), gold] = False

    def on_columns(lab: torch.Tensor) -> torch.Tensor:
        g = lab[torch.arange(len(gold)), gold.to(lab.device)]
        o = (lab * others.to(lab.device)).sum(-1) / others.sum(-1).to(lab.device)
        return (g - o).mean()

    return ColumnMetric(ids, on_columns)


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
