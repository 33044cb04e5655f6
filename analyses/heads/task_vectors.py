"""Task vectors (Hendel, Geva & Globerson 2023): ICL compresses the demonstrations into one
hidden state.

θ_L(S) = the residual leaving layer L at the last token of [S + dummy query x'], averaged over
``n_dummy`` dummy queries x' (never the test query).  Applied by *replacing* the residual leaving
layer L at the last position of the zero-shot prompt for the test query; only that position is
recomputed from layer L + 1 on.  Accuracy (top-1 first token) by layer, beside the zero-shot
baseline and ordinary k-shot ICL.  The paper uses the format "example:x->y" with 5 demos; this
uses the task's own template.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from interp.patching.activation import to_left_padding
from interp.patching.runner import DecoderRunner
from interp.prompts import build_icl_batch
from interp.scoring import accuracy
from interp.tasks import Task, load_task, split_examples


@dataclass
class TaskVectorResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    by_layer: dict[int, dict] = field(default_factory=dict)  # layer -> accuracy dict
    zero_shot: dict = field(default_factory=dict)
    icl: dict = field(default_factory=dict)

    @property
    def best_layer(self) -> int:
        return max(self.by_layer, key=lambda l: self.by_layer[l]["accuracy"])

    def to_dict(self) -> dict:
        return {"model": self.model, "task": self.task, "k": self.k, "n": self.n, "seed": self.seed,
                "by_layer": {str(l): v for l, v in self.by_layer.items()}, "zero_shot": self.zero_shot, "icl": self.icl,
                "best_layer": self.best_layer}

    def summary(self) -> str:
        best = self.best_layer
        return (f"Task vectors on {self.task} ({self.model}, k={self.k}, n={self.n}): zero-shot {self.zero_shot['accuracy']:.3f}, "
                f"ICL {self.icl['accuracy']:.3f}, task vector best at layer {best}: {self.by_layer[best]['accuracy']:.3f} "
                f"[{self.by_layer[best]['ci_low']:.3f}, {self.by_layer[best]['ci_high']:.3f}]")

    def figures(self) -> list:
        import plotly.graph_objects as go

        layers = sorted(self.by_layer)
        fig = go.Figure(go.Scatter(x=layers, y=[self.by_layer[l]["accuracy"] for l in layers], mode="lines+markers", name="task vector"))
        fig.add_hline(y=self.icl["accuracy"], line_dash="dash", annotation_text=f"{self.k}-shot ICL")
        fig.add_hline(y=self.zero_shot["accuracy"], line_dash="dot", annotation_text="zero-shot")
        fig.update_layout(title=f"Task-vector accuracy by layer — {self.task}, {self.model}, k={self.k}, n={self.n}, seed {self.seed}",
                          xaxis_title="layer whose output is replaced", yaxis_title="accuracy (fraction correct)", yaxis_range=[0, 1])
        return [fig]


def task_vector_accuracy_by_layer(
    model, task: Task | str = "present-past", *, k: int = 5, n: int = 50, n_dummy: int = 2, seed: int = 0,
    layers=None, runner: DecoderRunner | None = None,
) -> TaskVectorResult:
    """Accuracy of zero-shot prompts whose layer-L output at the last token is the task vector."""
    task = load_task(task) if isinstance(task, str) else task
    runner = runner or model.runner
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    pool, queries = split_examples(task.examples, n, seed)
    rng = random.Random(f"task-vectors:{seed}")
    demo_sets = [rng.sample(pool, k + n_dummy) for _ in queries]  # k demos + n_dummy dummy queries each
    dummies, fixed = [], {}
    for i, chosen in enumerate(demo_sets):
        for j in range(n_dummy):
            dummies.append(chosen[k + j])
            fixed[len(dummies) - 1] = chosen[:k]
    counter = iter(range(len(dummies)))

    def select(query, _pool, _k, _rng):  # the demo set S_i of the test query behind this dummy
        return list(fixed[next(counter)])

    tok = model.tokenizer
    demo_batch = build_icl_batch(tok, task, k=k, queries=dummies, pool=pool, seed=seed, select=select, padding_side="left")
    zero = build_icl_batch(tok, task, k=0, queries=queries, pool=pool, seed=seed, padding_side="left")
    icl = build_icl_batch(tok, task, k=k, queries=queries, pool=pool, seed=seed,
                          select=lambda q, p, kk, r, it=iter(demo_sets): list(next(it)[:k]), padding_side="left")

    demo_state = runner.corrupted_state(*to_left_padding(demo_batch.input_ids, demo_batch.attention_mask, model.pad_token_id))
    zero_state = runner.corrupted_state(*to_left_padding(zero.input_ids, zero.attention_mask, model.pad_token_id))
    icl_state = runner.corrupted_state(*to_left_padding(icl.input_ids, icl.attention_mask, model.pad_token_id))
    target = zero.target_ids.cpu()
    result = TaskVectorResult(model.name, task.name, k, len(queries), seed)
    result.zero_shot = accuracy(zero_state.logits[:, -1].argmax(-1).cpu() == target).to_dict()
    result.icl = accuracy(icl_state.logits[:, -1].argmax(-1).cpu() == target).to_dict()
    for layer in layers:
        theta = runner.resid_post(demo_state, layer)[:, -1].reshape(len(queries), n_dummy, -1).mean(1)
        logits = runner.run_with_final_resid(zero_state, layer, theta)
        result.by_layer[layer] = accuracy(logits.argmax(-1).cpu() == target).to_dict()
    return result
