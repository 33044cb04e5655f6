"""Induction and previous-token heads (Olsson et al. 2022; Elhage et al. 2021).

- **Prefix-matching (induction) score** on repeated random tokens: for tokens r + r with
  |r| = N, score(l, h) = mean over queries q in the second copy of A_{l,h}[q, q − N + 1], the
  attention from a token's second occurrence to the token that followed its first occurrence.
- **Previous-token score**: mean over q ≥ 1 of A_{l,h}[q, q − 1] on the same sequences.
- **Detection scores as TransformerLens's head_detector defines them** (``"mul"``: the fraction
  of attention on the detection pattern; ``"abs"``: 1 − mean |A − D|·T), computed from patterns
  captured by either engine with TransformerLens's own pattern and scoring functions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from interp.capture import Capture
from interp.grids import top_cells


@dataclass
class InductionResult:
    model: str
    induction: torch.Tensor  # [layer, head]
    previous_token: torch.Tensor  # [layer, head]
    n_repeat: int
    n_sequences: int
    seed: int
    setting: dict = field(default_factory=dict)

    def top(self, k: int = 5, score: Literal["induction", "previous_token"] = "induction") -> list[tuple[int, int, float]]:
        return top_cells(getattr(self, score), k)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "n_repeat": self.n_repeat, "n_sequences": self.n_sequences, "seed": self.seed,
            "induction": self.induction.tolist(), "previous_token": self.previous_token.tolist(),
            "top_induction": self.top(5), "top_previous_token": self.top(5, "previous_token"), **self.setting,
        }

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for name, grid in (("induction (prefix-matching)", self.induction), ("previous-token", self.previous_token)):
            fig = go.Figure(go.Heatmap(z=grid.tolist(), colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="attention")))
            fig.update_layout(title=f"{name} score — {self.model}, {self.n_sequences} random sequences x2 of {self.n_repeat} tokens, seed {self.seed}",
                              xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        return figs


def repeated_random_tokens(model, n_repeat: int = 50, n_sequences: int = 8, seed: int = 0) -> torch.Tensor:
    """[n_sequences, 2·n_repeat] token ids r + r, r uniform over ids [1000, min(vocab, 10000))
    (the range Todd et al.'s prefix_matching_score uses, avoiding special tokens)."""
    gen = torch.Generator().manual_seed(seed)
    high = min(model.d_vocab, 10_000)
    low = min(1000, high // 2)
    r = torch.randint(low, high, (n_sequences, n_repeat), generator=gen)
    return torch.cat([r, r], dim=1)


def induction_scores(model, *, n_repeat: int = 50, n_sequences: int = 8, seed: int = 0, batch_size: int = 8) -> InductionResult:
    """Prefix-matching and previous-token scores for every head (see the module docstring)."""
    tokens = repeated_random_tokens(model, n_repeat, n_sequences, seed)
    sums_ind = torch.zeros(model.n_layers, model.n_heads)
    sums_prev = torch.zeros(model.n_layers, model.n_heads)
    q = torch.arange(n_repeat, 2 * n_repeat)
    qp = torch.arange(1, 2 * n_repeat)
    for start in range(0, n_sequences, batch_size):
        chunk = tokens[start:start + batch_size]
        with torch.no_grad():
            acts = model.run(chunk, capture=[Capture("attn.hook_pattern")], logits="final").acts
        for l in range(model.n_layers):
            a = acts[f"blocks.{l}.attn.hook_pattern"].float()  # [b, h, q, k]
            sums_ind[l] += a[:, :, q, q - n_repeat + 1].mean(-1).sum(0)
            sums_prev[l] += a[:, :, qp, qp - 1].mean(-1).sum(0)
    return InductionResult(model.name, sums_ind / n_sequences, sums_prev / n_sequences, n_repeat, n_sequences, seed)


def head_detection_scores(
    model,
    tokens: torch.Tensor,
    kind: Literal["induction_head", "previous_token_head", "duplicate_token_head"] = "induction_head",
    *,
    error_measure: Literal["mul", "abs"] = "mul",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> torch.Tensor:
    """TransformerLens head_detector scores [layer, head] for one token sequence [pos] or [1, pos],
    with the attention patterns captured through ``model`` (either engine)."""
    from transformer_lens import head_detector as hd

    tokens = tokens.reshape(1, -1).cpu()
    pattern_fn = {
        "induction_head": hd.get_induction_head_detection_pattern,
        "previous_token_head": hd.get_previous_token_head_detection_pattern,
        "duplicate_token_head": hd.get_duplicate_token_head_detection_pattern,
    }[kind]
    detection = pattern_fn(tokens)
    with torch.no_grad():
        acts = model.run(tokens, capture=[Capture("attn.hook_pattern")], logits="final").acts
    scores = torch.empty(model.n_layers, model.n_heads)
    for l in range(model.n_layers):
        pattern = acts[f"blocks.{l}.attn.hook_pattern"][0]
        for h in range(model.n_heads):
            scores[l, h] = hd.compute_head_attention_similarity_score(
                pattern[h].clone(), detection_pattern=detection, exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token, error_measure=error_measure,
            )
    return scores
