"""Scoring ICL predictions.

- Classification: log-probability of each class's label word at the query's final position.
  Policy ``first-token``: log p(first token of " " + word); ``sequence``: the whole word,
  Σ_j log p(t_j | prompt, t_<j), scored by appending each class's tokens (one extra forward per
  class).  Prediction = argmax over classes (Zhao et al. 2021; Wang et al. 2023 restrict the
  logits to the label words in the same way).
- Word tasks: first-token exact match: argmax over the vocabulary at the final position equals
  the first token of " " + output (Todd et al. 2023).
- Accuracy comes with a Wilson score interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from interp.model import pad_ids


def minibatches(batch, batch_size: int):
    """Split an IclBatch into consecutive sub-batches of at most ``batch_size`` rows."""
    for start in range(0, len(batch), batch_size):
        yield batch.select(list(range(start, min(start + batch_size, len(batch)))))


def final_logprobs(model, batch, *, batch_size: int = 16, edits: Sequence = ()) -> torch.Tensor:
    """log-softmax over the vocabulary at each row's final position: [batch, vocab]."""
    out = []
    with torch.no_grad():
        for sub in minibatches(batch, batch_size):
            logits = model.run(sub, edits=edits, logits="final").logits
            out.append(torch.log_softmax(logits.float(), -1).cpu())
    return torch.cat(out)


def label_logprobs(model, batch, *, batch_size: int = 16, edits: Sequence = (), logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of every class's label word for each row: [batch, n_classes]."""
    words = batch.label_words
    if words is None:
        raise ValueError("this batch has no label words (a word task): use first_token_correct instead")
    if words.policy == "first-token" or all(len(t) == 1 for t in words.token_ids):
        lp = logprobs if logprobs is not None else final_logprobs(model, batch, batch_size=batch_size, edits=edits)
        return lp[:, words.first_token_ids]
    return _sequence_logprobs(model, batch, words.token_ids, batch_size=batch_size, edits=edits)


def _sequence_logprobs(model, batch, class_ids: Sequence[Sequence[int]], *, batch_size: int, edits) -> torch.Tensor:
    """Σ_j log p(t_j | prompt, t_<j) for every class's token sequence (teacher forcing)."""
    rows = [batch.input_ids[i][batch.attention_mask[i].bool()].tolist() for i in range(len(batch))]
    scores = torch.zeros(len(rows), len(class_ids))
    with torch.no_grad():
        for c, ids in enumerate(class_ids):
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                input_ids, mask = pad_ids([r + list(ids) for r in chunk], model.pad_token_id, "right")
                logp = torch.log_softmax(model.run(input_ids, attention_mask=mask, edits=edits).logits.float(), -1).cpu()
                for i, r in enumerate(chunk):
                    positions = torch.arange(len(r) - 1, len(r) - 1 + len(ids))
                    scores[start + i, c] = logp[i, positions, torch.tensor(ids)].sum()
    return scores


def first_token_correct(model=None, batch=None, *, logprobs: torch.Tensor | None = None, batch_size: int = 16, edits: Sequence = ()) -> torch.Tensor:
    """Bool [batch]: the top-1 next token at the final position is the target's first token."""
    lp = logprobs if logprobs is not None else final_logprobs(model, batch, batch_size=batch_size, edits=edits)
    return lp.argmax(-1) == batch.target_ids.cpu()


@dataclass(frozen=True)
class Accuracy:
    """Accuracy k/n with a Wilson score interval at ``confidence``."""

    correct: int
    n: int
    low: float
    high: float
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    def to_dict(self) -> dict:
        return {"accuracy": self.value, "correct": self.correct, "n": self.n, "ci_low": self.low, "ci_high": self.high, "confidence": self.confidence}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def accuracy(correct, confidence: float = 0.95) -> Accuracy:
    """Accuracy of a bool sequence with the Wilson score interval (Wilson 1927)."""
    flags = torch.as_tensor(correct).bool().flatten()
    n, k = int(flags.numel()), int(flags.sum())
    low, high = wilson_interval(k, n, confidence)
    return Accuracy(k, n, low, high, confidence)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials:
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n == 0:
        return float("nan"), float("nan")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_interval(values, *, seed: int = 0, resamples: int = 1000, confidence: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval (Efron 1979) of the mean of ``values`` (NaNs left out):
    ``resamples`` seeded draws of the values with replacement, the (1−c)/2 and (1+c)/2 order
    statistics of their means.  None when fewer than two finite values remain."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    v = v[torch.isfinite(v)]
    if v.numel() < 2:
        return None
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(v.numel(), (resamples, v.numel()), generator=g)].mean(-1).sort().values
    i = int((1 - confidence) / 2 * (resamples - 1))
    return [float(means[i]), float(means[resamples - 1 - i])]


def score_batch(model, batch, *, batch_size: int = 16, edits: Sequence = ()) -> dict:
    """Predictions and correctness for one IclBatch, for either kind of task.

    Returns ``{"correct": bool[B], "pred": LongTensor[B]}`` where ``pred`` is the predicted
    class (classification) or the top-1 token id (word tasks)."""
    lp = final_logprobs(model, batch, batch_size=batch_size, edits=edits)
    if batch.label_words is not None:
        scores = label_logprobs(model, batch, batch_size=batch_size, edits=edits, logprobs=lp)
        pred = scores.argmax(-1)
        return {"correct": pred == batch.gold.cpu(), "pred": pred, "label_logprobs": scores}
    pred = lp.argmax(-1)
    return {"correct": pred == batch.target_ids.cpu(), "pred": pred}
