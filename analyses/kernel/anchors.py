"""Label words are anchors (Wang et al. 2023, EMNLP): information flows from demo texts into the
label words in shallow layers, and from the label words to the prediction in deep layers.

- **Saliency** per layer: I_l = |Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l}| (diagonal zeroed), L = cross-entropy of
  the label-word logits at the final position q against gold.  Flows, with p_k the label
  positions and positions counted from each row's first real token:
  S_wp = Σ_k Σ_{j<p_k} I(p_k, j) / Σ_k p_k;  S_pq = Σ_k I(q, p_k) / C;
  S_ww = (Σ_{j<i≤q} I(i, j) − wp − pq) / (q(q+1)/2 − Σ_k p_k − C).  The paper plots them
  normalised to sum to 1 per layer.
- **Isolation**: block attention into the label words (label token p attends only to itself,
  pre-softmax) in the first or last ``n_isolate`` layers, against the same number of random
  non-label positions; label loyalty = fraction of unchanged label-word argmax, word loyalty =
  mean Jaccard of the top-10 vocabulary ids (10 as in the authors' code; the paper says 5).  The
  random control's positions are drawn anew for every isolated layer, as Wang's code does
  (``random_positions="per-layer"``, default; ``"shared"``: one draw for all layers).
- **AUCROC_l**: does the attention from q to each class's label positions (summed over heads and
  positions) predict the model's own output?  As Wang's notebook computes it (``roc_auc_score``
  against the model's predictions): only the classes the model predicts are kept; binary: AUC of
  the second kept class's score; more: the scores renormalised over the kept classes, one-vs-one
  macro average (Hand & Till).  R_l = Σ_{i≤l}(AUC_i − ½) / Σ_i(AUC_i − ½).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch


def flows(saliency: torch.Tensor, label_positions: list[int], q: int) -> tuple[float, float, float]:
    """(S_wp, S_pq, S_ww) of one row's saliency matrix [pos, pos] (row-relative positions,
    diagonal already zeroed); ``q`` the final position."""
    wp = sum(float(saliency[p, :p].sum()) for p in label_positions)
    pq = sum(float(saliency[q, p]) for p in label_positions)
    total = float(torch.tril(saliency[: q + 1, : q + 1], diagonal=-1).sum())
    n_wp = sum(label_positions)
    c = len(label_positions)
    n_ww = q * (q + 1) / 2 - n_wp - c
    return wp / max(n_wp, 1), pq / max(c, 1), (total - wp - pq) / max(n_ww, 1)


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """ROC AUC = P(score of a positive > score of a negative) + ½ P(tie) (Mann–Whitney)."""
    labels = labels.bool()
    pos, neg = scores[labels].double(), scores[~labels].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def auc_ovo(y: torch.Tensor, scores: torch.Tensor) -> float:
    """AUCROC of ``scores`` [n, C] against labels ``y`` as Wang et al.'s notebook computes it:
    classes absent from ``y`` dropped, scores renormalised over the kept ones, then binary AUC
    (two kept classes) or the macro one-vs-one average.  NaN with fewer than two classes."""
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        return float("nan")
    kept = scores[:, classes].double()
    s = kept / kept.sum(-1, keepdim=True).clamp_min(1e-12)
    if len(classes) == 2:
        return auc(y == classes[1], s[:, 1])
    vals = []
    for (i, a), (j, b) in itertools.combinations(enumerate(classes), 2):
        keep = (y == a) | (y == b)
        vals.append(0.5 * (auc(y[keep] == a, s[keep, i]) + auc(y[keep] == b, s[keep, j])))
    return float(sum(vals) / len(vals))


def word_jaccard(a: torch.Tensor, b: torch.Tensor, top: int = 10) -> torch.Tensor:
    """Per row, |top-k(a) ∩ top-k(b)| / |top-k(a) ∪ top-k(b)| of two logit tensors [n, vocab]."""
    ta, tb = a.topk(top, -1).indices, b.topk(top, -1).indices
    out = []
    for x, y in zip(ta.tolist(), tb.tolist()):
        sx, sy = set(x), set(y)
        out.append(len(sx & sy) / len(sx | sy))
    return torch.tensor(out)


@dataclass
class AnchorsResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    s_wp: list[float]
    s_pq: list[float]
    s_ww: list[float]
    auroc: list[float]
    r_cumulative: list[float]
    isolation: dict = field(default_factory=dict)  # "first"/"last" -> "label"/"random" -> loyalties
    flows_per_row: list = field(default_factory=list, repr=False)  # [row][S_wp, S_pq, S_ww][layer], for intervals
    auroc_ci: list = field(default_factory=list)  # per layer: 95% bootstrap interval over prompts (None: undefined)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def normalised_flows(self) -> dict[str, list[float]]:
        out = {"S_wp": [], "S_pq": [], "S_ww": []}
        for a, b, c in zip(self.s_wp, self.s_pq, self.s_ww):
            t = a + b + c
            for key, v in zip(out, (a, b, c)):
                out[key].append(v / t if t else float("nan"))
        return out

    def summary(self) -> str:
        f = self.normalised_flows()
        n = len(self.s_wp)
        third = max(1, n // 3)
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        lines = [
            f"Label words as anchors on {self.task} ({self.model}, k={self.k}, n={self.n}, seed {self.seed})",
            f"  normalised flows, first third of layers: S_wp {mean(f['S_wp'][:third]):.2f}, S_pq {mean(f['S_pq'][:third]):.2f}, S_ww {mean(f['S_ww'][:third]):.2f}",
            f"  normalised flows, last third of layers:  S_wp {mean(f['S_wp'][-third:]):.2f}, S_pq {mean(f['S_pq'][-third:]):.2f}, S_ww {mean(f['S_ww'][-third:]):.2f}",
        ]
        valid = [(a, i) for i, a in enumerate(self.auroc) if a == a]
        lines.append(f"  AUCROC by layer: max {max(valid)[0]:.3f} at layer {max(valid)[1]}" if valid
                     else "  AUCROC undefined: the model predicts a single class on these prompts")
        for where, d in self.isolation.items():
            lines.append(f"  isolation in the {where} layers: label words -> label loyalty {d['label']['label_loyalty']:.3f}, word loyalty "
                         f"{d['label']['word_loyalty']:.3f}; random non-label -> {d['random']['label_loyalty']:.3f}, {d['random']['word_loyalty']:.3f}")
        return "\n".join(lines)

    def figures(self) -> list:
        import plotly.graph_objects as go

        f = self.normalised_flows()
        layers = list(range(len(self.s_wp)))
        fig = go.Figure([go.Scatter(x=layers, y=v, mode="lines+markers", name=k) for k, v in f.items()])
        fig.update_layout(title=f"Information flow (normalised saliency) — {self.task}, {self.model}, k={self.k}, n={self.n}, seed {self.seed}",
                          xaxis_title="layer", yaxis_title="share of saliency (sums to 1 per layer)")
        fig2 = go.Figure([go.Scatter(x=layers, y=self.auroc, mode="lines+markers", name="AUCROC_l"),
                          go.Scatter(x=layers, y=self.r_cumulative, mode="lines", name="R_l")])
        fig2.add_hline(y=0.5, line_dash="dot")
        fig2.update_layout(title=f"Attention to label words predicts the output: AUCROC_l and R_l — {self.task}, {self.model}",
                           xaxis_title="layer", yaxis_title="AUCROC / cumulative share")
        return [fig, fig2]


def anchors_analysis(model, task="sentiment", *, k: int = 4, n: int = 40, seed: int = 0, n_isolate: int = 5, batch_size: int = 4,
                     random_positions: str = "per-layer", select=None) -> AnchorsResult:
    """Saliency flows, AUCROC_l and isolation on ``n`` k-shot prompts (see the module docstring);
    ``select``: a demo selector (e.g. :func:`interp.prompts.per_class`, Wang et al.'s one per class)."""
    if random_positions not in ("per-layer", "shared"):
        raise ValueError(f"random_positions must be 'per-layer' (Wang et al.'s code) or 'shared', got {random_positions!r}")
    import random

    from interp.capture import Capture
    from interp.edits import BlockAttentionPairs
    from interp.prompts import build_icl_batch
    from interp.scoring import minibatches
    from interp.tasks import load_task

    task = load_task(task) if isinstance(task, str) else task
    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx, select=select).sorted_by_length()
    ids = batch.label_words.first_token_ids
    L = model.n_layers
    n_isolate = max(1, min(n_isolate, L // 2))  # first/last n layers must not overlap
    sums = torch.zeros(3, L)
    per_row_flows = []
    class_of = {w: i for i, w in enumerate(task.label_words)}
    attn_scores, preds = [], []
    iso_rows = {(w, kind): [] for w in ("first", "last") for kind in ("label", "random")}
    rng = random.Random(f"anchors:{seed}")
    sites = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    for sub in minibatches(batch, batch_size):
        gold = sub.gold

        def loss(logits, gold=gold):
            return torch.nn.functional.cross_entropy(logits[:, ids.to(logits.device)].float(), gold.to(logits.device), reduction="sum")

        g = model.gradients(sub, sites, loss)
        pred = g.logits[:, ids].argmax(-1).cpu()
        preds.append(pred)
        T = sub.input_ids.shape[1]
        per_row_scores = torch.zeros(len(sub), L, len(ids))
        for b, row in enumerate(sub.rows):
            off = row.pad
            labels = [s.start - off for s in row.demo_labels]
            q = row.final - off
            label_cls = [class_of[d.output] for d in sub.demos[b]]
            row_flows = torch.zeros(3, L)
            for l in range(L):
                A, dA = g.acts[sites[l]][b], g.grads[sites[l]][b]
                sal = (A * dA).sum(0).abs()[off:, off:]
                sal.fill_diagonal_(0)
                wp, pq, ww = flows(sal, labels, q)
                row_flows[:, l] = torch.tensor([wp, pq, ww])
                a_q = A[:, row.final].sum(0)  # summed over heads
                for pos, c in zip(labels, label_cls):
                    per_row_scores[b, l, c] += float(a_q[pos + off])
            sums += row_flows
            per_row_flows.append(row_flows.tolist())
        attn_scores.append(per_row_scores)
        # isolation
        base = g.logits
        for where in ("first", "last"):
            layers = list(range(n_isolate)) if where == "first" else list(range(L - n_isolate, L))
            for kind in ("label", "random"):
                draws = layers if (kind == "random" and random_positions == "per-layer") else [None]
                edits = []
                for layer in draws:  # one set of positions per layer (per-layer control), else one for all
                    pairs = torch.zeros(len(sub), T, T, dtype=torch.bool)
                    for b, row in enumerate(sub.rows):
                        label_pos = [s.start for s in row.demo_labels]
                        if kind == "random":
                            candidates = [p for p in range(row.start + 1, row.final - 1) if p not in label_pos]
                            label_pos = rng.sample(candidates, len(label_pos))
                        for p in label_pos:
                            pairs[b, p, row.start:p] = True
                    edits.append(BlockAttentionPairs(pairs, layers=layers if layer is None else [layer]))
                with torch.no_grad():
                    out = model.run(sub, edits=edits, logits="final").logits
                iso_rows[(where, kind)].append((out[:, ids].argmax(-1).cpu() == pred, word_jaccard(out.float(), base.float())))
    sums /= len(batch)
    model_pred = torch.cat(preds)
    scores = torch.cat(attn_scores)  # [row, layer, C]
    auroc = [auc_ovo(model_pred, scores[:, l]) for l in range(L)]
    excess = [a - 0.5 if a == a else 0.0 for a in auroc]
    total = sum(excess)
    r_cum = [sum(excess[: l + 1]) / total if total else float("nan") for l in range(L)]
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randint(len(model_pred), (len(model_pred),), generator=gen) for _ in range(200)]
    auroc_ci = []
    for l in range(L):
        vals = sorted(v for v in (auc_ovo(model_pred[i], scores[i, l]) for i in draws) if v == v)
        auroc_ci.append([vals[int(0.025 * (len(vals) - 1))], vals[int(0.975 * (len(vals) - 1))]] if len(vals) >= 20 and auroc[l] == auroc[l]
                        else None)
    isolation = {}
    for (where, kind), parts in iso_rows.items():
        lab = torch.cat([p[0] for p in parts]).float().mean()
        word = torch.cat([p[1] for p in parts]).mean()
        isolation.setdefault(where, {})[kind] = {"label_loyalty": float(lab), "word_loyalty": float(word), "layers": n_isolate}
    return AnchorsResult(model.name, task.name, k, len(batch), seed, sums[0].tolist(), sums[1].tolist(), sums[2].tolist(), auroc, r_cum, isolation,
                         flows_per_row=per_row_flows, auroc_ci=auroc_ci)
