"""Does attention do kernel regression over the demonstrations? (Han et al. 2023, §5.2 and §5.5)

For the attention row of the query's final position, per (layer, head):

- kernel weight of demo i: a_i = max attention over demo i's span (Han et al.; ``weight="max"``),
  or the sum over it (``"sum"``), or the summed attention to its label token(s) (``"label"``);
- the span of demo i (``span=``, Han et al. write "[x_i, y_i]" and do not say which tokens):
  ``"block"`` (default, the project's reading: from the input prefix, e.g. "Review:", to the end of
  the label, template words included), ``"input+label"`` (the input text and the label only,
  template words left out), ``"label"`` (the label tokens only).  The kernel report shows the
  first two side by side;
- reconstructed answer ỹ = argmax_y Σ_i a_i · 1[y_i = y]  (= the kernel-regression vote
  Σ_i y_i K(x, x_i) / Σ_i K(x, x_i) with K = attention);
- agreement of ỹ with the model's own ICL prediction, and accuracy of ỹ against gold.

Baselines beside them: the demos' majority label, the most recent demo's label, and a random head
(the mean over heads).  Held-out selection: the head with the best agreement on a selection split
is scored on the held-out split with a Wilson interval (Han et al. used 700 / 300), so "the best of
270 heads" is not a selection artefact.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from interp.grids import top_cells
from interp.scoring import accuracy

Weighting = Literal["max", "label", "sum"]
SpanRule = Literal["block", "input+label", "label"]
SPAN_RULES: tuple[str, ...] = ("block", "input+label", "label")


def demo_spans(row, span: SpanRule = "block") -> list[list[tuple[int, int]]]:
    """Per demo of one prompt row (:class:`interp.prompts.RowSpans`), the half-open token
    segments its kernel weight is read from under ``span`` (see the module docstring)."""
    if span == "block":
        return [[(s.start, s.end)] for s in row.demo_blocks]
    if span == "input+label":
        return [[(x.start, x.end), (y.start, y.end)] for x, y in zip(row.demo_inputs, row.demo_labels)]
    if span == "label":
        return [[(s.start, s.end)] for s in row.demo_labels]
    raise ValueError(f"span must be one of {SPAN_RULES}, got {span!r}")


def kernel_weights(attn: torch.Tensor, demo_blocks: Sequence[Sequence],
                   demo_labels: Sequence[Sequence[tuple[int, int]]] | None = None, weight: Weighting = "max") -> torch.Tensor:
    """a [..., row, k]: kernel weight of each demo from final-position attention rows.

    ``attn`` [..., row, pos] (leading dims e.g. layer, head); ``demo_blocks[row][i]`` the
    half-open span of demo i, ``(start, end)``, or a list of such segments (:func:`demo_spans`);
    ``demo_labels[row][i]`` the span of its label (needed for ``weight="label"``)."""
    spans = demo_labels if weight == "label" else demo_blocks
    if spans is None:
        raise ValueError("weight='label' needs the demo label spans")
    n_rows, k = attn.shape[-2], len(spans[0])
    out = attn.new_zeros(*attn.shape[:-2], n_rows, k)
    for r in range(n_rows):
        for i, segs in enumerate(spans[r]):
            segs = [segs] if isinstance(segs[0], int) else segs
            seg = torch.cat([attn[..., r, start:end] for start, end in segs], dim=-1)
            out[..., r, i] = seg.amax(-1) if weight == "max" else seg.sum(-1)
    return out


def reconstruct(weights: torch.Tensor, demo_classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """ỹ = argmax_y Σ_i a_i 1[y_i = y]: [..., row] class ids from weights [..., row, k] and the
    demos' classes [row, k].  Ties go to the lowest class id."""
    onehot = torch.nn.functional.one_hot(demo_classes.long(), n_classes).to(weights.dtype)  # [row, k, C]
    votes = torch.einsum("...rk,rkc->...rc", weights, onehot)
    return votes.argmax(-1)


def majority_label(demo_classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The demos' most frequent class per row (ties: lowest id)."""
    return torch.nn.functional.one_hot(demo_classes.long(), n_classes).sum(1).argmax(-1)


def recent_label(demo_classes: torch.Tensor) -> torch.Tensor:
    """The class of the demo closest to the query."""
    return demo_classes[:, -1]


@dataclass
class HeldOutSelection:
    """The best head on the selection rows, scored on the held-out rows."""

    layer: int
    head: int
    selection_agreement: float
    heldout_agreement: dict
    heldout_gold_accuracy: dict
    n_selection: int
    n_heldout: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def select_head_heldout(agree: torch.Tensor, gold_correct: torch.Tensor, selection: torch.Tensor) -> HeldOutSelection:
    """``agree`` / ``gold_correct`` bool [layer, head, row]; ``selection`` bool [row] marks the
    selection split, the rest is held out.  Picks argmax of selection agreement (ties: first)."""
    sel_rate = agree[..., selection].float().mean(-1)
    flat = int(sel_rate.flatten().argmax())
    l, h = divmod(flat, agree.shape[1])
    held = ~selection
    return HeldOutSelection(
        layer=l, head=h, selection_agreement=float(sel_rate[l, h]),
        heldout_agreement=accuracy(agree[l, h, held]).to_dict(),
        heldout_gold_accuracy=accuracy(gold_correct[l, h, held]).to_dict(),
        n_selection=int(selection.sum()), n_heldout=int(held.sum()),
    )


@dataclass
class KernelReconstructionResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    weight: str
    agreement: torch.Tensor  # [layer, head] fraction of rows where ỹ equals the model's prediction
    gold_accuracy: torch.Tensor  # [layer, head] fraction of rows where ỹ equals gold
    model_accuracy: dict
    baselines: dict
    selection: HeldOutSelection
    setting: dict = field(default_factory=dict)
    span: str = "block"

    def top(self, n: int = 5) -> list[tuple[int, int, float]]:
        return top_cells(self.agreement, n)

    def to_dict(self) -> dict:
        return {
            "model": self.model, "task": self.task, "k": self.k, "n": self.n, "seed": self.seed, "weight": self.weight,
            "span": self.span, "agreement": self.agreement.tolist(), "gold_accuracy": self.gold_accuracy.tolist(), "model_accuracy": self.model_accuracy,
            "baselines": self.baselines, "heldout_selection": self.selection.to_dict(), "top_heads": self.top(), **self.setting,
        }

    def summary(self) -> str:
        s = self.selection
        return "\n".join([
            f"Kernel reconstruction on {self.task} ({self.model}, k={self.k}, n={self.n}, a_i = {self.weight} attention "
            f"over the demo's {self.span} span, seed {self.seed})",
            f"  model ICL accuracy: {self.model_accuracy['accuracy']:.3f}",
            f"  best head on selection split: L{s.layer}H{s.head} (agreement {s.selection_agreement:.3f}); held-out agreement "
            f"{s.heldout_agreement['accuracy']:.3f} [{s.heldout_agreement['ci_low']:.3f}, {s.heldout_agreement['ci_high']:.3f}], "
            f"gold accuracy {s.heldout_gold_accuracy['accuracy']:.3f} [{s.heldout_gold_accuracy['ci_low']:.3f}, {s.heldout_gold_accuracy['ci_high']:.3f}]",
            "  baselines (agreement with the model / gold accuracy): " + "; ".join(
                f"{name} {v['agreement']:.3f} / {v['gold_accuracy']:.3f}" for name, v in self.baselines.items()),
            "  top heads by agreement: " + ", ".join(f"L{l}H{h} {v:.3f}" for l, h, v in self.top()),
            *([f"  warning: {self.setting['one_class_prompts']} of {self.n} prompts show demos of one class only; there every "
               "head's vote is that class by construction, whatever its attention"] if self.setting.get("one_class_prompts") else []),
        ])

    def figures(self) -> list:
        import plotly.graph_objects as go

        figs = []
        for name, grid in (("agreement with the model's ICL prediction", self.agreement), ("accuracy against gold", self.gold_accuracy)):
            fig = go.Figure(go.Heatmap(z=grid.tolist(), colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="fraction")))
            fig.update_layout(title=f"Attention-as-kernel reconstruction: {name} — {self.task}, {self.model}, k={self.k}, n={self.n}, seed {self.seed}",
                              xaxis_title="head", yaxis_title="layer")
            figs.append(fig)
        return figs


def kernel_reconstruction(model, task="sentiment", *, k: int = 4, n: int = 100, seed: int = 0, weight: Weighting = "max",
                          selection_fraction: float = 0.7, batch_size: int = 8, progress: bool = False,
                          select=None, span: SpanRule = "block") -> KernelReconstructionResult:
    """Per-head reconstruction of the model's ICL prediction from final-position attention.
    ``select``: a demo selector for the prompt builder (e.g. ``most_similar_first()``);
    ``span``: which tokens of a demo its weight is read from (module docstring)."""
    return kernel_reconstructions(model, task, k=k, n=n, seed=seed, weight=weight, selection_fraction=selection_fraction,
                                  batch_size=batch_size, progress=progress, select=select, spans=(span,))[span]


def kernel_reconstructions(model, task="sentiment", *, k: int = 4, n: int = 100, seed: int = 0, weight: Weighting = "max",
                           selection_fraction: float = 0.7, batch_size: int = 8, progress: bool = False,
                           select=None, spans: Sequence[str] = ("block", "input+label")) -> dict[str, KernelReconstructionResult]:
    """:func:`kernel_reconstruction` under several span rules from one pass over the prompts."""
    from tqdm.auto import tqdm

    from interp.capture import Capture
    from interp.prompts import build_icl_batch
    from interp.scoring import label_logprobs, minibatches
    from interp.tasks import load_task

    task = load_task(task) if isinstance(task, str) else task
    if task.kind != "classification":
        raise ValueError("kernel reconstruction votes over demo labels: it needs a classification task (label words)")
    batch = build_icl_batch(model.tokenizer, task, k=k, n=n, seed=seed, padding_side="left", max_length=model.n_ctx, select=select).sorted_by_length()
    n_classes = len(batch.label_words)
    class_of = {w: i for i, w in enumerate(task.label_words)}
    demo_classes = torch.tensor([[class_of[d.output] for d in row] for row in batch.demos])
    for rule in spans:
        if rule not in SPAN_RULES:
            raise ValueError(f"span must be one of {SPAN_RULES}, got {rule!r}")
    weights, preds = {rule: [] for rule in spans}, []
    for sub in tqdm(minibatches(batch, batch_size), desc="attention rows", disable=not progress,
                    total=-(-len(batch) // batch_size)):
        with torch.no_grad():
            out = model.run(sub, capture=[Capture("attn.hook_pattern", positions="final")], logits="final")
        rows = out.acts.stack("attn.hook_pattern")[:, :, :, 0].permute(0, 2, 1, 3).float()  # [layer, head, row, pos]
        labels = [[(s.start, s.end) for s in r.demo_labels] for r in sub.rows]
        for rule in spans:
            weights[rule].append(kernel_weights(rows, [demo_spans(r, rule) for r in sub.rows], labels, weight))
        preds.append(out.logits[:, batch.label_words.first_token_ids].argmax(-1).cpu() if batch.label_words.policy == "first-token"
                     else label_logprobs(model, sub).argmax(-1))
    model_pred = torch.cat(preds)
    gold = batch.gold.cpu()
    # prompts whose demos all carry one class: every head's vote is that class there by construction
    one_class = int(sum(len(set(row.tolist())) == 1 for row in demo_classes))
    gen = torch.Generator().manual_seed(seed)
    selection = torch.zeros(len(batch), dtype=torch.bool)
    selection[torch.randperm(len(batch), generator=gen)[: int(round(selection_fraction * len(batch)))]] = True
    out = {}
    for rule in spans:
        recon = reconstruct(torch.cat(weights[rule], dim=2), demo_classes, n_classes)  # [layer, head, row]
        agree, gold_ok = recon == model_pred, recon == gold
        baselines = {}
        for name, pred in (("majority demo label", majority_label(demo_classes, n_classes)), ("most recent demo label", recent_label(demo_classes))):
            baselines[name] = {"agreement": float((pred == model_pred).float().mean()), "gold_accuracy": float((pred == gold).float().mean())}
        baselines["random head (mean over heads)"] = {"agreement": float(agree.float().mean()), "gold_accuracy": float(gold_ok.float().mean())}
        out[rule] = KernelReconstructionResult(
            model=model.name, task=task.name, k=k, n=len(batch), seed=seed, weight=weight,
            agreement=agree.float().mean(-1), gold_accuracy=gold_ok.float().mean(-1),
            model_accuracy=accuracy(model_pred == gold).to_dict(), baselines=baselines,
            selection=select_head_heldout(agree, gold_ok, selection), span=rule,
            setting={"tokenisation": batch.tokenisation, "one_class_prompts": one_class},
        )
    return out


@dataclass
class DemoSelectionResult:
    """Random demos vs the most similar demos (placed closest to the query), same queries."""

    model: str
    task: str
    k: int
    n: int
    seed: int
    random: dict
    similar: dict

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        def line(name, d):
            return (f"  {name}: ICL accuracy {d['icl_accuracy']['accuracy']:.3f} [{d['icl_accuracy']['ci_low']:.3f}, {d['icl_accuracy']['ci_high']:.3f}]; "
                    f"best held-out head agreement {d['heldout_agreement']['accuracy']:.3f}; mean head agreement {d['mean_head_agreement']:.3f}")
        return "\n".join([f"Demo selection on {self.task} ({self.model}, k={self.k}, n={self.n}, seed {self.seed})",
                          line("random demos", self.random), line("most similar demos (word overlap), closest last", self.similar)])

    def figures(self) -> list:
        import plotly.graph_objects as go

        names = ["random demos", "most similar demos"]
        fig = go.Figure([
            go.Bar(name="ICL accuracy", x=names, y=[d["icl_accuracy"]["accuracy"] for d in (self.random, self.similar)]),
            go.Bar(name="best held-out head agreement", x=names, y=[d["heldout_agreement"]["accuracy"] for d in (self.random, self.similar)]),
        ])
        fig.update_layout(title=f"Does retrieving similar demonstrations help? — {self.task}, {self.model}, k={self.k}, n={self.n}",
                          xaxis_title="demonstration choice", yaxis_title="fraction", yaxis_range=[0, 1], barmode="group")
        return [fig]


def demo_selection(model, task="sentiment", *, k: int = 4, n: int = 100, seed: int = 0, similarity=None,
                   random_result: KernelReconstructionResult | None = None) -> DemoSelectionResult:
    """Han et al.'s claim that similar demonstrations help: ICL accuracy and reconstruction with
    random demos vs the k most similar ones (``similarity(a, b)`` on input texts; default word
    overlap), on the same queries.  ``random_result``: the reconstruction already run with random
    demos and the same (task, k, n, seed), reused instead of recomputed."""
    from interp.prompts import most_similar_first

    if random_result is not None and (random_result.k, random_result.n, random_result.seed) != (k, n, seed):
        raise ValueError("random_result was run with another k, n or seed; pass the matching reconstruction or None")
    out = {}
    for name, select in (("random", None), ("similar", most_similar_first(similarity))):
        r = random_result if (name == "random" and random_result is not None) else \
            kernel_reconstruction(model, task, k=k, n=n, seed=seed, select=select)
        out[name] = {"icl_accuracy": r.model_accuracy, "heldout_agreement": r.selection.heldout_agreement,
                     "best_head": [r.selection.layer, r.selection.head], "mean_head_agreement": float(r.agreement.mean())}
    return DemoSelectionResult(model.name, r.task, k, r.n, seed, out["random"], out["similar"])
