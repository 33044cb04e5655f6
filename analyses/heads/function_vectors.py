"""Function vectors (Todd et al. 2023) and the causal indirect effect of every head.

1. Mean head outputs: ā_{l,h} = mean over clean k-shot prompts of z_{l,h} at the final position
   (``attn.hook_z``, the per-head input of W_O).  Todd et al.'s protocol (default,
   ``mean_over="correct"``) averages only the clean prompts the model answers correctly (top-1
   next token = the answer's first token); ``mean_over="all"`` averages every clean prompt (the
   project's earlier variant).  The result records how many prompts were kept.
2. Corrupted prompts: the same demonstrations with their labels shuffled.  For every head,
   CIE(l, h | p̃) = P(y_q | p̃, z_{l,h} := ā_{l,h}) − P(y_q | p̃) at the final position, and
   AIE(l, h) = mean over corrupted prompts (computed with the final-position fast path).
3. Function vector v = Σ_{(l,h) ∈ top heads by AIE} ā_{l,h} W_O^{l,h} (no bias), added to the
   residual stream leaving layer ``edit_layer`` at the last position of zero-shot prompts
   ("Q: x\\nA:"); accuracy = top-1 next token equals the first token of " " + y.

Zero-shot accuracy with and without the vector, each with a Wilson 95% interval, and the
accuracy of the shuffled-label prompts with and without it, are reported.  The paper uses 10-shot
prompts, |A| = 10 heads for GPT-J and edit layer ≈ n_layers / 3.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from interp.capture import Capture
from interp.grids import top_cells
from interp.patching.activation import patch_heads, to_left_padding
from interp.patching.metrics import target_prob
from interp.patching.runner import DecoderRunner
from interp.prompts import build_icl_batch
from interp.scoring import accuracy, minibatches
from interp.tasks import Task, load_task, split_examples


@dataclass
class FunctionVectorResult:
    model: str
    task: str
    k: int
    seed: int
    n_clean: int
    n_corrupted: int
    n_eval: int
    edit_layer: int
    aie: torch.Tensor  # [layer, head]
    top_heads: list[tuple[int, int, float]]
    fv_norm: float
    zero_shot: dict
    zero_shot_with_fv: dict
    shuffled: dict
    shuffled_with_fv: dict
    clean_icl: dict
    layer_sweep: dict = field(default_factory=dict)  # edit layer -> zero-shot accuracy with FV
    mean_over: str = "correct"
    n_mean: int = 0  # clean prompts the mean head outputs come from

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "aie"}
        d["aie"] = self.aie.tolist()
        d["layer_sweep"] = {str(k): v for k, v in self.layer_sweep.items()}
        return d

    def summary(self) -> str:
        heads = ", ".join(f"L{l}H{h} {v:.4f}" for l, h, v in self.top_heads)
        return "\n".join([
            f"Function vectors on {self.task} ({self.model}, k={self.k}, seed {self.seed})",
            f"  top heads by AIE: {heads}",
            f"  clean {self.k}-shot accuracy: {_fmt(self.clean_icl)}; mean head outputs over {self.n_mean} of "
            f"{self.n_clean} clean prompts ({'those answered correctly' if self.mean_over == 'correct' else 'all'})",
            f"  zero-shot: {_fmt(self.zero_shot)}  ->  with FV at layer {self.edit_layer}: {_fmt(self.zero_shot_with_fv)}",
            f"  shuffled labels: {_fmt(self.shuffled)}  ->  with FV: {_fmt(self.shuffled_with_fv)}",
        ])

    def figures(self) -> list:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.aie.tolist(), colorscale="RdBu", zmid=0, colorbar=dict(title="AIE (prob.)")))
        fig.update_layout(title=f"Average indirect effect per head — {self.task}, {self.model}, k={self.k}, n={self.n_corrupted}, seed {self.seed}",
                          xaxis_title="head", yaxis_title="layer")
        figs = [fig]
        if self.layer_sweep:
            layers = sorted(self.layer_sweep)
            fig2 = go.Figure(go.Scatter(x=layers, y=[self.layer_sweep[l]["accuracy"] for l in layers], mode="lines+markers", name="zero-shot + FV"))
            fig2.add_hline(y=self.zero_shot["accuracy"], line_dash="dot", annotation_text="zero-shot")
            fig2.update_layout(title=f"Zero-shot accuracy with the function vector added at each layer — {self.task}, {self.model}",
                               xaxis_title="edit layer", yaxis_title="accuracy (fraction correct)", yaxis_range=[0, 1])
            figs.append(fig2)
        return figs


def _fmt(a: dict) -> str:
    return f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] (n={a['n']})"


def mean_head_outputs(model, batch, *, batch_size: int = 16) -> torch.Tensor:
    """ā: mean over rows of each head's z at the final position, [layer, head, d_head]."""
    total = torch.zeros(model.n_layers, model.n_heads, model.d_head)
    for sub in minibatches(batch, batch_size):
        with torch.no_grad():
            acts = model.run(sub, capture=[Capture("attn.hook_z", positions="final")], logits="final").acts
        total += acts.stack("attn.hook_z")[:, :, 0].sum(1).float().cpu()
    return total / len(batch)


class NoCorrectPrompts(ValueError):
    """Todd et al.'s mean over correctly answered clean prompts is undefined: none is answered."""


def clean_mean_head_outputs(model, clean, mean_over: str = "correct") -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """(ā [layer, head, d_head], the rows it averages, per-row correctness) over the clean
    prompts: those answered correctly (top-1 = ``target_ids``; Todd et al.) or all."""
    with torch.no_grad():
        right = model.run(clean, logits="final").logits.argmax(-1).cpu() == clean.target_ids.cpu()
    kept = right.nonzero().flatten().tolist() if mean_over == "correct" else list(range(len(clean)))
    if not kept:
        raise NoCorrectPrompts(f"the model answers none of the {len(clean)} clean {clean.k}-shot prompts correctly, so Todd et al.'s "
                         "mean over correct prompts is undefined: use more demonstrations (k), more clean prompts (n_clean), "
                         "or mean_over='all'")
    return mean_head_outputs(model, clean.select(kept)), kept, right


def function_vector(model, mean_z: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """v = Σ_{(l,h)} ā_{l,h} W_O^{l,h}: [d_model]."""
    v = torch.zeros(model.d_model)
    for l, h in heads:
        v += (mean_z[l, h].to(model.W_O(l).dtype) @ model.W_O(l)[h].detach()).float().cpu()
    return v


def _final_state(runner, model, batch):
    """One unedited run of ``batch`` (left-padded), reused by every accuracy below."""
    return runner.corrupted_state(*to_left_padding(batch.input_ids, batch.attention_mask, model.pad_token_id))


def _final_accuracy(runner, state, target_ids, layer: int | None, vector: torch.Tensor | None) -> dict:
    """Top-1 accuracy at the final position, optionally with ``vector`` added to the residual
    leaving ``layer`` (only the final position is recomputed)."""
    if vector is None:
        logits = state.logits[:, -1]
    else:
        resid = runner.resid_post(state, layer)[:, -1] + vector.to(state.resid_pre.dtype)
        logits = runner.run_with_final_resid(state, layer, resid)
    return accuracy(logits.argmax(-1).cpu() == target_ids.cpu()).to_dict()


def function_vector_analysis(
    model,
    task: Task | str = "country-capital",
    *,
    k: int = 10,
    n_clean: int = 40,
    n_corrupted: int = 20,
    n_eval: int = 100,
    n_top_heads: int = 10,
    edit_layer: int | None = None,
    sweep_layers: bool = False,
    seed: int = 0,
    runner: DecoderRunner | None = None,
    mean_over: str = "correct",
) -> FunctionVectorResult:
    """AIE of every head, the function vector of the top heads, and its zero-shot effect.
    ``mean_over``: "correct" (Todd et al.: clean prompts the model gets right) or "all"."""
    if mean_over not in ("correct", "all"):
        raise ValueError(f"mean_over must be 'correct' (Todd et al.) or 'all', got {mean_over!r}")
    task = load_task(task) if isinstance(task, str) else task
    if task.kind != "generation":
        raise ValueError("function vectors are defined on word tasks (first-token targets); pick e.g. country-capital")
    runner = runner or model.runner
    edit_layer = model.n_layers // 3 if edit_layer is None else edit_layer
    pool, held_out = split_examples(task.examples, min(n_eval, len(task.examples) // 3), seed)
    tok = model.tokenizer
    clean = build_icl_batch(tok, task, k=k, n=n_clean, pool=pool, queries=pool[:n_clean], seed=seed, padding_side="left")
    mean_z, kept, right = clean_mean_head_outputs(model, clean, mean_over)
    clean_icl = accuracy(right).to_dict()

    queries = pool[n_clean:n_clean + n_corrupted]
    corrupted = build_icl_batch(tok, task, k=k, queries=queries, pool=pool, seed=seed + 1, labels="shuffled", padding_side="left")
    result = patch_heads(model, None, corrupted, target_prob(corrupted.target_ids), positions="final", values=mean_z, runner=runner)
    aie = result.scores - result.corrupted_metric
    top = top_cells(aie, n_top_heads)
    fv = function_vector(model, mean_z, [(l, h) for l, h, _ in top])

    zero_shot_batch = build_icl_batch(tok, task, k=0, queries=held_out, pool=pool, seed=seed, padding_side="left")
    shuffled_batch = build_icl_batch(tok, task, k=k, queries=held_out, pool=pool, seed=seed + 2, labels="shuffled", padding_side="left")
    zs_state, sh_state = _final_state(runner, model, zero_shot_batch), _final_state(runner, model, shuffled_batch)
    zs = _final_accuracy(runner, zs_state, zero_shot_batch.target_ids, None, None)
    zs_fv = _final_accuracy(runner, zs_state, zero_shot_batch.target_ids, edit_layer, fv)
    sh = _final_accuracy(runner, sh_state, shuffled_batch.target_ids, None, None)
    sh_fv = _final_accuracy(runner, sh_state, shuffled_batch.target_ids, edit_layer, fv)
    sweep = {}
    if sweep_layers:
        for layer in range(model.n_layers):
            sweep[layer] = _final_accuracy(runner, zs_state, zero_shot_batch.target_ids, layer, fv)
    return FunctionVectorResult(
        model=model.name, task=task.name, k=k, seed=seed, n_clean=n_clean, n_corrupted=n_corrupted, n_eval=len(held_out),
        edit_layer=edit_layer, aie=aie, top_heads=top, fv_norm=float(fv.norm()), zero_shot=zs, zero_shot_with_fv=zs_fv,
        shuffled=sh, shuffled_with_fv=sh_fv, clean_icl=clean_icl, layer_sweep=sweep, mean_over=mean_over, n_mean=len(kept),
    )
