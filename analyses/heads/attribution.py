"""Which heads carry the demonstrations' labels to the answer?  Exact and attribution patching
of every head on a classification ICL task.

Clean prompts: k demos with gold labels.  Corrupted prompts: the same tokens with every demo label
flipped to another class's label word (token-aligned by construction: single-token label words
are swapped in place).  Metric: gold label word's logit minus the mean of the others at the final
position (:func:`interp.patching.metrics.label_logit_diff`).  Exact patching (each head's z over
all positions, or the final position only) and attribution patching (Nanda 2023) give one grid
each; their Spearman correlation says how far the linear approximation can be trusted.

``screen_budget=N`` is for models with too many heads to patch each exactly: AtP* ranks every
head and only the top N (plus a random check of the rest, which bounds what was missed) are
patched exactly (:func:`interp.patching.screen.screen_then_verify`, Kramár et al. 2024); the exact
grid is then NaN where a head was not verified.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import spearmanr

from interp.patching import label_logit_diff, patch_heads
from interp.patching.activation import PatchingResult
from interp.patching.attribution import attribution_patch_heads
from interp.prompts import build_icl_batch
from interp.tasks import Task, load_task


@dataclass
class HeadAttributionResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    positions: str
    exact: PatchingResult
    attribution: PatchingResult
    spearman: float
    screen: dict | None = None  # screen_then_verify's verification summary, when screened

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "k": self.k, "n": self.n, "seed": self.seed, "positions": self.positions,
                "spearman": self.spearman, "screen": self.screen, "top_exact": self.exact.top(5, by="abs"), "top_attribution": self.attribution.top(5, by="abs"),
                "exact": self.exact.to_dict(), "attribution": self.attribution.to_dict()}

    def summary(self) -> str:
        fmt = lambda top, base: ", ".join(f"L{l}H{h} {v - base:+.3f}" for l, h, v in top)  # noqa: E731
        return "\n".join([
            f"Head attribution on {self.task} ({self.model}, k={self.k}, n={self.n}, {self.positions} positions, seed {self.seed})",
            f"  metric clean {self.exact.clean_metric:.3f}, corrupted (demo labels flipped) {self.exact.corrupted_metric:.3f}",
            f"  top 5 by exact patching (effect): {fmt(self.exact.top(5, by='abs'), self.exact.corrupted_metric)}",
            f"  top 5 by attribution patching:    {fmt(self.attribution.top(5, by='abs'), self.attribution.corrupted_metric)}",
            f"  Spearman(exact, attribution) over {'the verified' if self.screen else 'all'} heads: {self.spearman:.3f}",
            *([f"  {self.screen['summary']}"] if self.screen else []),
        ])

    def figures(self) -> list:
        return self.exact.figures() + self.attribution.figures()


def flip_demo_labels(batch) -> torch.Tensor:
    """Token ids with every demo label replaced by the next class's label word (single-token
    label words only, so the prompt stays token-aligned)."""
    words = batch.label_words
    if words is None or any(len(t) != 1 for t in words.token_ids):
        raise ValueError("flipping labels in place needs single-token label words; use a task whose label words are one token each")
    ids = batch.input_ids.clone()
    first = words.first_token_ids
    for b, row in enumerate(batch.rows):
        for span in row.demo_labels:
            cls = int((first == ids[b, span.start]).nonzero()[0])
            ids[b, span.start] = first[(cls + 1) % len(first)]
    return ids


def head_attribution(model, task: Task | str = "sentiment", *, k: int = 4, n: int = 8, seed: int = 0, positions: str = "all",
                     progress: bool = False, screen_budget: int | None = None) -> HeadAttributionResult:
    task = load_task(task) if isinstance(task, str) else task
    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left")
    clean = (batch.input_ids, batch.attention_mask)
    corrupted = (flip_demo_labels(batch), batch.attention_mask)
    metric = label_logit_diff(batch)
    screen = None
    if screen_budget is not None:
        from interp.patching.screen import screen_then_verify

        res = screen_then_verify(model, clean, corrupted, metric, screen_budget, positions=positions, seed=seed)
        exact, attr, rho = res.exact, res.screen, res.spearman
        screen = {**{k_: v for k_, v in res.to_dict().items() if k_ not in ("screen", "exact")}, "summary": res.summary()}
    else:
        exact = patch_heads(model, clean, corrupted, metric, positions=positions, progress=progress)
        attr = attribution_patch_heads(model, clean, corrupted, metric, positions=positions)
        rho = float(spearmanr(exact.scores.flatten().numpy(), attr.scores.flatten().numpy()).statistic)
    for r in (exact, attr):
        r.setting = {**r.setting, "model": model.name, "task": task.name, "k": k, "n": n, "seed": seed}
    return HeadAttributionResult(model.name, task.name, k, n, seed, positions, exact, attr, rho, screen)
