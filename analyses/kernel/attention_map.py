"""Where the query's attention goes over the demonstrations (Han et al. 2023, §5.1, Fig. 2).

For each prompt, the attention row of the final position (the one that predicts the label), per
layer and averaged over heads.  Demos differ in length, so each demo input x_i's segment is
resampled to ``length`` tokens (Han et al.: 30) by linear interpolation of the per-token attention,
followed by the label token(s) of demo i (their mean per token); the query input is resampled the
same way.  The aligned rows are averaged over prompts: the map is [layer, k · (length + 1) +
length].  Han et al. report mass on the last tokens of x_test, on the first tokens (the sink), and
concentrated on each demo's label token.

The per-prompt number behind the last observation: the mean attention per label token minus the
mean attention per demo-input token (averaged over layers and heads), with a bootstrap interval
over prompts (``label_excess``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def resample(values: torch.Tensor, length: int) -> torch.Tensor:
    """``values`` [..., t] linearly interpolated to [..., length] (align_corners: the first and
    last tokens map onto the first and last points; one token is repeated)."""
    if values.shape[-1] == length:
        return values
    if values.shape[-1] == 1:
        return values.expand(*values.shape[:-1], length).clone()
    x = values.reshape(-1, 1, values.shape[-1]).float()
    out = torch.nn.functional.interpolate(x, size=length, mode="linear", align_corners=True)
    return out.reshape(*values.shape[:-1], length)


@dataclass
class AlignedAttentionResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    length: int
    aligned: torch.Tensor  # [layer, k·(length+1) + length] mean attention per token, heads averaged
    label_excess: list[float]  # per prompt: mean attention per label token − per demo-input token
    label_excess_ci: list | None  # 95% bootstrap interval of the mean of label_excess

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "aligned"}, "aligned": self.aligned.tolist()}

    def summary(self) -> str:
        m = sum(self.label_excess) / len(self.label_excess)
        ci = self.label_excess_ci
        return (f"Attention of the final position over the demos, aligned to {self.length} tokens per input ({self.task}, {self.model}, "
                f"k={self.k}, n={self.n}, seed {self.seed}): a demo label token gets {m:.4f} more attention than a demo input token "
                + (f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "(no interval: fewer than 2 prompts)"))

    def figures(self) -> list:
        import plotly.graph_objects as go

        ticks = []
        for i in range(self.k):
            ticks += [f"x{i + 1}:{t}" for t in range(self.length)] + [f"y{i + 1}"]
        ticks += [f"query:{t}" for t in range(self.length)]
        fig = go.Figure(go.Heatmap(z=self.aligned.tolist(), x=ticks, colorscale="Viridis",
                                   colorbar=dict(title="attention per token")))
        fig.update_layout(title=f"Final-position attention over the demos, inputs aligned to {self.length} tokens (Han et al. Fig. 2) — "
                                f"{self.task}, {self.model}, k={self.k}, n={self.n}",
                          xaxis_title="aligned position (x_i: demo input, y_i: its label, query: the test input)",
                          yaxis_title="layer (attention averaged over heads)")
        return [fig]


def aligned_attention_map(model, task="sentiment", *, k: int = 4, n: int = 20, seed: int = 0, length: int = 30,
                          batch_size: int = 8) -> AlignedAttentionResult:
    """The map and the label-token excess of the module docstring on ``n`` seeded k-shot prompts."""
    from interp.capture import Capture
    from interp.prompts import build_icl_batch
    from interp.scoring import bootstrap_mean_interval, minibatches
    from interp.tasks import load_task

    if length < 2:
        raise ValueError(f"length must be >= 2 aligned tokens per input (Han et al. use 30), got {length}")
    task = load_task(task) if isinstance(task, str) else task
    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx)
    total = None
    excess = []
    for sub in minibatches(batch, batch_size):
        with torch.no_grad():
            out = model.run(sub, capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
        rows = out.acts.stack("attn.hook_pattern")[:, :, :, 0].float().mean(2)  # [layer, b, pos], heads averaged
        for b, row in enumerate(sub.rows):
            a = rows[:, b]
            pieces = []
            for x, y in zip(row.demo_inputs, row.demo_labels):
                pieces += [resample(a[:, x.start:x.end], length), a[:, y.start:y.end].mean(-1, keepdim=True)]
            q = row.query_input
            pieces.append(resample(a[:, q.start:q.end], length))
            aligned = torch.cat(pieces, dim=-1)
            total = aligned if total is None else total + aligned
            label = torch.cat([a[:, s.start:s.end] for s in row.demo_labels], dim=-1).mean()
            inputs = torch.cat([a[:, s.start:s.end] for s in row.demo_inputs], dim=-1).mean()
            excess.append(float(label - inputs))
    return AlignedAttentionResult(model.name, task.name, k, len(batch), seed, length, total / len(batch), excess,
                                  bootstrap_mean_interval(excess, seed=seed))
