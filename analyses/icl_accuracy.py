"""ICL accuracy against the number of demonstrations k — the first thing to look at.

For each seed, one fixed set of n queries is drawn from the task and, for every k, each query is
shown with k demonstrations sampled from the remaining examples (k = 0 is zero-shot).  Scoring is
label-word log-probability argmax (classification) or first-token exact match (word tasks), see
:mod:`interp.scoring`.  Accuracy pools the queries of all seeds and carries a Wilson 95% interval;
the per-seed accuracies are kept beside it.  The chance baseline (1 / number of classes, or 0 for
word tasks) is reported with it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from interp.prompts import build_icl_batch
from interp.scoring import accuracy, score_batch
from interp.tasks import Task, load_task, split_examples


@dataclass
class IclAccuracyResult:
    model: str
    task: str
    ks: list[int]
    n: int
    seeds: list[int]
    accuracy: dict[int, dict] = field(default_factory=dict)  # k -> Accuracy.to_dict()
    per_seed: dict[int, list[float]] = field(default_factory=dict)  # k -> accuracy per seed
    chance: float = 0.0
    engine: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accuracy"] = {str(k): v for k, v in self.accuracy.items()}
        d["per_seed"] = {str(k): v for k, v in self.per_seed.items()}
        return d

    def summary(self) -> str:
        lines = [f"ICL accuracy on {self.task} ({self.model}; n={self.n} queries x {len(self.seeds)} seeds; chance {self.chance:.2f})"]
        for k in self.ks:
            a = self.accuracy[k]
            lines.append(f"  k={k:>2}: {a['accuracy']:.3f}  95% CI [{a['ci_low']:.3f}, {a['ci_high']:.3f}]")
        return "\n".join(lines)

    def figures(self) -> list:
        import plotly.graph_objects as go

        acc = [self.accuracy[k]["accuracy"] for k in self.ks]
        lo = [a - self.accuracy[k]["ci_low"] for a, k in zip(acc, self.ks)]
        hi = [self.accuracy[k]["ci_high"] - a for a, k in zip(acc, self.ks)]
        fig = go.Figure()
        fig.add_trace(go.Scatter(x=self.ks, y=acc, mode="lines+markers", name="ICL accuracy",
                                 error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo)))
        fig.add_trace(go.Scatter(x=self.ks, y=[self.chance] * len(self.ks), mode="lines", name="chance", line=dict(dash="dot")))
        fig.update_layout(
            title=f"ICL accuracy vs k — {self.task}, {self.model}, n={self.n}, seeds={self.seeds}",
            xaxis_title="number of demonstrations k", yaxis_title="accuracy (fraction correct, 95% Wilson CI)",
            yaxis_range=[0, 1],
        )
        return [fig]


def icl_accuracy_vs_k(
    model,
    task: Task | str,
    *,
    ks: Sequence[int] = (0, 1, 2, 4, 8),
    n: int = 100,
    seeds: Sequence[int] = (0,),
    batch_size: int = 16,
    progress: bool = True,
) -> IclAccuracyResult:
    """Accuracy of ``model`` on ``task`` for every k in ``ks`` (see the module docstring)."""
    task = load_task(task) if isinstance(task, str) else task
    if n >= len(task.examples):
        raise ValueError(f"n={n} queries leaves no demonstrations in {task.name} ({len(task.examples)} examples): lower n")
    result = IclAccuracyResult(
        model=model.name, task=task.name, ks=list(ks), n=n, seeds=list(seeds), engine=model.engine_name,
        chance=1.0 / len(task.label_words) if task.label_words else 0.0,
    )
    steps = [(seed, k) for seed in seeds for k in ks]
    correct: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for seed, k in tqdm(steps, desc=f"ICL accuracy {task.name}", disable=not progress):
        pool, queries = split_examples(task.examples, n, seed)
        batch = build_icl_batch(model.tokenizer, task, k=k, queries=queries, pool=pool, seed=seed, max_length=model.n_ctx)
        correct[k].append(score_batch(model, batch, batch_size=batch_size)["correct"])
    for k in ks:
        result.accuracy[k] = accuracy(torch.cat(correct[k])).to_dict()
        result.per_seed[k] = [float(c.float().mean()) for c in correct[k]]
    return result
