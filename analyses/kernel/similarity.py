"""Attention against similarity, and an explicit kernel-regression baseline (Han et al. 2023 §5.3,
§5.5).

If attention from the query to demo i acts as a kernel K(x_q, x_i), the weight a_i should rise
with the similarity of the query to demo i.  Per head, the Pearson correlation between a_i and
three similarities, pooled over (query, demo) pairs:

- prediction similarity (Han et al.): P(o | x_q)ᵀ P(o | x_i), the next-token distributions of the
  model run on each input text alone, as Han et al. run it (``isolated="text"``, default; BOS in
  front where the tokenizer adds one), or on the input in the zero-shot template
  (``isolated="zero-shot"``, the project's earlier variant);
- hidden-state similarity: cosine of the residual stream at a chosen layer at the last token of the
  same isolated runs;
- q·k: the head's pre-softmax score from the query's final position to demo i's label token.

Explicit kernel regression (Nadaraya–Watson) over the demo labels with the model's own hidden
states as features: ŷ = argmax_y Σ_i w_i 1[y_i = y], w = softmax(cos(h_q, h_i) / τ) — the baseline
the attention kernel has to beat.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def pearson_by_head(weights: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """Pearson r between ``weights`` [..., row, k] and ``similarity`` ([row, k] or [..., row, k]),
    pooled over all (row, demo) pairs: [...] (NaN where a variable is constant)."""
    w = weights.flatten(-2).double()
    s = similarity.flatten(-2).double().expand_as(w)
    w = w - w.mean(-1, keepdim=True)
    s = s - s.mean(-1, keepdim=True)
    denom = (w.norm(dim=-1) * s.norm(dim=-1))
    return ((w * s).sum(-1) / denom).where(denom > 0, torch.tensor(float("nan"), dtype=torch.double)).float()


def prediction_similarity(p_query: torch.Tensor, p_demos: torch.Tensor) -> torch.Tensor:
    """P(o|x_q)ᵀ P(o|x_i): ``p_query`` [row, vocab], ``p_demos`` [row, k, vocab] → [row, k]."""
    return torch.einsum("rv,rkv->rk", p_query.double(), p_demos.double()).float()


def cosine_similarity(h_query: torch.Tensor, h_demos: torch.Tensor) -> torch.Tensor:
    """cos(h_q, h_i): [row, d] and [row, k, d] → [row, k]."""
    return torch.nn.functional.cosine_similarity(h_query[:, None].double(), h_demos.double(), dim=-1).float()


def nadaraya_watson(h_query: torch.Tensor, h_demos: torch.Tensor, demo_classes: torch.Tensor, n_classes: int,
                    bandwidth: float = 0.1) -> torch.Tensor:
    """Kernel-regression prediction per row: argmax_y Σ_i softmax_i(cos(h_q, h_i)/τ) 1[y_i = y]."""
    w = torch.softmax(cosine_similarity(h_query, h_demos).double() / bandwidth, dim=-1)
    votes = torch.einsum("rk,rkc->rc", w, torch.nn.functional.one_hot(demo_classes.long(), n_classes).double())
    return votes.argmax(-1)


@dataclass
class AttentionSimilarityResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    layer: int
    r_prediction: torch.Tensor  # [layer, head] Pearson(a_i, prediction similarity)
    r_hidden: torch.Tensor  # [layer, head] Pearson(a_i, hidden cosine at `layer`)
    r_qk: torch.Tensor  # [layer, head] Pearson(a_i, q·k to the label token)
    nw_accuracy: dict
    nw_agreement: float
    model_accuracy: dict
    bandwidth: float
    setting: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        grids = {k: getattr(self, k).tolist() for k in ("r_prediction", "r_hidden", "r_qk")}
        rest = {k: v for k, v in self.__dict__.items() if k not in grids}
        return {**rest, **grids}

    def summary(self) -> str:
        def best(g):
            g = torch.nan_to_num(g, nan=-2.0)
            i = int(g.flatten().argmax())
            return f"L{i // g.shape[1]}H{i % g.shape[1]} r={float(g.flatten()[i]):.3f}"

        return "\n".join([
            f"Attention vs similarity on {self.task} ({self.model}, k={self.k}, n={self.n}, hidden layer {self.layer}, seed {self.seed})",
            f"  best head: prediction similarity {best(self.r_prediction)}; hidden cosine {best(self.r_hidden)}; q.k {best(self.r_qk)}",
            f"  Nadaraya-Watson on layer-{self.layer} hidden states (tau={self.bandwidth}): accuracy {self.nw_accuracy['accuracy']:.3f} "
            f"[{self.nw_accuracy['ci_low']:.3f}, {self.nw_accuracy['ci_high']:.3f}], agreement with ICL {self.nw_agreement:.3f}; "
            f"model ICL accuracy {self.model_accuracy['accuracy']:.3f}",
        ])

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for name, grid in (("prediction similarity", self.r_prediction), (f"hidden cosine (layer {self.layer})", self.r_hidden),
                           ("q·k to the label token", self.r_qk)):
            fig = go.Figure(go.Heatmap(z=grid.tolist(), colorscale="RdBu", zmid=0, zmin=-1, zmax=1, colorbar=dict(title="Pearson r")))
            fig.update_layout(title=f"Correlation of attention a_i with {name} — {self.task}, {self.model}, k={self.k}, n={self.n}, seed {self.seed}",
                              xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        return figs


def _isolated_runs(model, task, texts: list[str], layer: int, isolated: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token distribution [n, vocab] and the residual at ``layer`` [n, d] after each text,
    in the order of ``texts``: the text alone (its tokenizer ids, BOS where the tokenizer adds
    one) or the text in the zero-shot template."""
    from interp.capture import Capture
    from interp.model import pad_ids
    from interp.prompts import bos_to_prepend, build_icl_batch
    from interp.tasks import Example

    if isolated == "text":
        bos = bos_to_prepend(model.tokenizer)
        rows = [([bos] if bos is not None else []) + list(model.tokenizer.encode(t, add_special_tokens=False)) for t in texts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
        inputs = [pad_ids([rows[i] for i in c], model.pad_token_id, "left") for c in chunks]
    else:
        iso = build_icl_batch(model.tokenizer, task, k=0, queries=[Example(t, task.label_words[0], 0) for t in texts], pool=[],
                              seed=seed, padding_side="left")
        order = list(range(len(texts)))
        chunks = [order[i:i + 32] for i in range(0, len(order), 32)]
        inputs = [iso.select(c) for c in chunks]
    probs, hidden = torch.zeros(len(texts), model.d_vocab), torch.zeros(len(texts), model.d_model)
    for c, inp in zip(chunks, inputs):
        kwargs = {"attention_mask": inp[1]} if isinstance(inp, tuple) else {}
        with torch.no_grad():
            out = model.run(inp[0] if isinstance(inp, tuple) else inp, capture=[Capture(f"blocks.{layer}.hook_resid_post", positions="final")],
                            logits="final", **kwargs)
        probs[c] = torch.softmax(out.logits.float(), -1).cpu()[:, : model.d_vocab]
        hidden[c] = out.acts[f"blocks.{layer}.hook_resid_post"][:, 0].float().cpu()
    return probs, hidden


def attention_similarity(model, task="sentiment", *, k: int = 4, n: int = 100, seed: int = 0, layer: int | None = None,
                         weight: str = "max", bandwidth: float = 0.1, batch_size: int = 8,
                         isolated: str = "text") -> AttentionSimilarityResult:
    """Per-head correlations of kernel weights with three similarities, and the NW baseline.
    ``isolated``: what the similarity runs see ("text": the input alone, Han et al.; "zero-shot")."""
    if isolated not in ("text", "zero-shot"):
        raise ValueError(f"isolated must be 'text' (Han et al.) or 'zero-shot', got {isolated!r}")
    from analyses.kernel.reconstruction import kernel_weights
    from interp.capture import Capture
    from interp.prompts import build_icl_batch
    from interp.scoring import accuracy, minibatches
    from interp.tasks import Example, load_task

    task = load_task(task) if isinstance(task, str) else task
    layer = model.n_layers // 2 if layer is None else layer
    tok = model.tokenizer
    batch = build_icl_batch(tok, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx).sorted_by_length()
    class_of = {w: i for i, w in enumerate(task.label_words)}
    demo_classes = torch.tensor([[class_of[d.output] for d in row] for row in batch.demos])
    a, qk, preds = [], [], []
    for sub in minibatches(batch, batch_size):
        with torch.no_grad():
            out = model.run(sub, capture=[Capture("attn.hook_pattern", positions="final"), Capture("attn.hook_attn_scores", positions="final")],
                            logits="final")
        rows = out.acts.stack("attn.hook_pattern")[:, :, :, 0].permute(0, 2, 1, 3).float()
        scores = out.acts.stack("attn.hook_attn_scores")[:, :, :, 0].permute(0, 2, 1, 3).float()
        blocks = [[(s.start, s.end) for s in r.demo_blocks] for r in sub.rows]
        labels = [[(s.start, s.end) for s in r.demo_labels] for r in sub.rows]
        a.append(kernel_weights(rows, blocks, labels, weight))
        label_pos = torch.tensor([[s.start for s in r.demo_labels] for r in sub.rows])
        qk.append(scores.gather(-1, label_pos[None, None].expand(scores.shape[0], scores.shape[1], -1, -1)))
        if batch.label_words.policy == "first-token":
            preds.append(out.logits[:, batch.label_words.first_token_ids].argmax(-1).cpu())
        else:  # whole label words under label_policy="sequence"
            from interp.scoring import label_logprobs

            preds.append(label_logprobs(model, sub).argmax(-1))
    a, qk, model_pred = torch.cat(a, 2), torch.cat(qk, 2), torch.cat(preds)

    # isolated zero-shot runs of every query and demo input
    # (each distinct text once, shortest first; demos recur across queries)
    texts = [q.input for q in batch.queries] + [d.input for row in batch.demos for d in row]
    distinct = list(dict.fromkeys(texts))
    probs, hidden = _isolated_runs(model, task, distinct, layer, isolated, seed)
    row_of = {t: i for i, t in enumerate(distinct)}
    index = torch.tensor([row_of[t] for t in texts])
    probs, hidden = probs[index], hidden[index]
    nq = len(batch)
    p_q, p_d = probs[:nq], probs[nq:].reshape(nq, k, -1)
    h_q, h_d = hidden[:nq], hidden[nq:].reshape(nq, k, -1)
    nw = nadaraya_watson(h_q, h_d, demo_classes, len(task.label_words), bandwidth)
    gold = batch.gold.cpu()
    return AttentionSimilarityResult(
        model=model.name, task=task.name, k=k, n=nq, seed=seed, layer=layer,
        r_prediction=pearson_by_head(a, prediction_similarity(p_q, p_d)),
        r_hidden=pearson_by_head(a, cosine_similarity(h_q, h_d)),
        r_qk=pearson_by_head(a, qk),
        nw_accuracy=accuracy(nw == gold).to_dict(), nw_agreement=float((nw == model_pred).float().mean()),
        model_accuracy=accuracy(model_pred == gold).to_dict(), bandwidth=bandwidth,
    )
