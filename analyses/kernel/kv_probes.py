"""Probing keys and values around the demo labels (Han et al. 2023 §5.4).

For every demo i of every prompt, at relative offsets −1..+3 around its label position, take the
key and value vectors of every layer and key/value head (GQA heads as they are).  Ridge probes
(λ = 0.01, Han et al.):

- values → the demo's label y_i (the "vote" a kernel-regression head would copy);
- keys → the model's own prediction on x_i alone (zero-shot run of the input in isolation),
  i.e. what the key would have to encode for attention to act as a similarity kernel.

Demos of one prompt stay on one side of the split (grouped), and every score has its
shuffled-target control beside it (:mod:`probes`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from interp.capture import Capture
from interp.prompts import build_icl_batch
from interp.scoring import minibatches
from interp.tasks import Example, Task, load_task
from probes import RidgeClassifierProbe, probe_sweep


@dataclass
class KVProbeResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    offsets: list[int]
    keys: dict = field(default_factory=dict)  # offset -> ProbeSweepResult.to_dict()
    values: dict = field(default_factory=dict)
    key_target: str = "model prediction on x_i alone"
    value_target: str = "demo label y_i"

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k not in ("keys", "values")},
                "keys": {str(o): r for o, r in self.keys.items()}, "values": {str(o): r for o, r in self.values.items()}}

    def layer_means(self, which: str = "values") -> dict[int, list[float]]:
        """Per offset, the per-layer mean over heads of the test accuracy."""
        out = {}
        for o, r in getattr(self, which).items():
            if "score" in r:
                out[o] = [sum(row) / len(row) for row in r["score"]]
        return out

    def summary(self) -> str:
        lines = [f"Key/value probes on {self.task} ({self.model}, k={self.k}, n={self.n}, ridge, grouped by prompt, seed {self.seed})"]
        for which, target in (("values", self.value_target), ("keys", self.key_target)):
            for o, r in getattr(self, which).items():
                if "skipped" in r:
                    lines.append(f"  {which} offset {o:+d}: skipped ({r['skipped']})")
                    continue
                means = [sum(row) / len(row) for row in r["score"]]
                best = max(range(len(means)), key=means.__getitem__)
                lines.append(f"  {which} → {target}, offset {o:+d}: best layer {r['layer_names'][best] if 'layer_names' in r else best} "
                             f"mean accuracy {means[best]:.3f}; last layer {means[-1]:.3f}")
        return "\n".join(lines)

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for which, target in (("values", self.value_target), ("keys", self.key_target)):
            fig = go.Figure([go.Scatter(x=list(range(len(v))), y=v, mode="lines+markers", name=f"offset {o:+d}")
                             for o, v in self.layer_means(which).items()])
            fig.update_layout(title=f"Ridge probe on {which[:-1]} vectors → {target} — {self.task}, {self.model}, k={self.k}, n={self.n}",
                              xaxis_title="layer", yaxis_title="test accuracy (mean over kv heads)", yaxis_range=[0, 1])
            figs.append(fig)
        return figs


def kv_probes(model, task: Task | str = "sentiment", *, k: int = 4, n: int = 100, seed: int = 0,
              offsets: Sequence[int] = (-1, 0, 1, 2, 3), alpha: float = 0.01, n_boot: int = 200, layers: Sequence[int] | None = None,
              batch_size: int = 8) -> KVProbeResult:
    task = load_task(task) if isinstance(task, str) else task
    layers = list(range(model.n_layers)) if layers is None else list(layers)
    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx).sorted_by_length()
    class_of = {w: i for i, w in enumerate(task.label_words)}
    ids = batch.label_words.first_token_ids
    feats = {("k", o): [] for o in offsets} | {("v", o): [] for o in offsets}
    for sub in minibatches(batch, batch_size):
        with torch.no_grad():
            acts = model.run(sub, capture=[Capture("attn.hook_k", layers=layers), Capture("attn.hook_v", layers=layers)], logits="final").acts
        K, V = acts.stack("attn.hook_k"), acts.stack("attn.hook_v")  # [L, b, pos, kv, d]
        for b, row in enumerate(sub.rows):
            for span in row.demo_labels:
                for o in offsets:
                    p = min(max(span.start + o, row.start), row.final)
                    feats[("k", o)].append(K[:, b, p])
                    feats[("v", o)].append(V[:, b, p])
    demo_inputs = [d.input for row in batch.demos for d in row]
    y_values = torch.tensor([class_of[d.output] for row in batch.demos for d in row])
    distinct = list(dict.fromkeys(demo_inputs))  # each demo input alone, once, shortest first
    iso = build_icl_batch(model.tokenizer, task, k=0, queries=[Example(t, task.label_words[0], 0) for t in distinct], pool=[],
                          seed=seed, padding_side="left").sorted_by_length()
    preds = []
    for sub in minibatches(iso, 32):
        with torch.no_grad():
            logits = model.run(sub, logits="final").logits
        preds.append(logits[:, ids].argmax(-1).cpu())
    row_of = {q.input: i for i, q in enumerate(iso.queries)}
    y_keys = torch.cat(preds)[torch.tensor([row_of[t] for t in demo_inputs])]
    groups = torch.arange(len(batch)).repeat_interleave(k)
    result = KVProbeResult(model.name, task.name, k, len(batch), seed, list(offsets))
    for (kind, o), rows in feats.items():
        X = torch.stack(rows, dim=1).permute(0, 2, 1, 3)  # [L, kv, N, d]
        y = y_values if kind == "v" else y_keys
        if len(set(y.tolist())) < 2:  # e.g. the model predicts one class for every input alone
            (result.values if kind == "v" else result.keys)[o] = {"skipped": f"the target has a single class ({int(y[0])}) on these rows"}
            continue
        sweep = probe_sweep(X.float(), y, make_probe=lambda: RidgeClassifierProbe(alpha=alpha), groups=groups, head_axis=True,
                            seed=seed, n_boot=n_boot, layer_names=[str(l) for l in layers])
        (result.values if kind == "v" else result.keys)[o] = sweep.to_dict()
    return result
