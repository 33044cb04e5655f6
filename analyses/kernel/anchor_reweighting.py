"""Anchor re-weighting (Wang et al. 2023, §3.1 and Table 1; code lancopku/label-words-are-anchors
``reweighting.py``): if label words are anchors and the query reads the task from them, learning
how much to read from each one should help.

    Â^h_l(q, p_i) = exp(β^i_{l,h}) · A^h_l(q, p_i)

post-softmax, no renormalisation, in every layer and head, for the query's final position q and
the label position p_i of demo i; β (shape [layer, head, demo]) starts at 0 and is trained by Adam
(lr 0.01 as in their experiment script, betas 0.9 / 0.999), batch 1, 10 epochs, on an auxiliary set
of ``train_per_class`` (4) examples per class run with the same demos, minimising the cross-entropy
over the label words at q against gold.  The paper's prompts hold one demo per class
(:func:`interp.prompts.per_class`).  Reported: accuracy on held-out queries with the same demos,
vanilla against re-weighted (Wilson intervals), and the training losses.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch


@dataclass
class AnchorReweightingResult:
    model: str
    task: str
    k: int
    n: int
    seed: int
    vanilla: dict  # accuracy dict (Wilson interval) of the unedited prompts
    reweighted: dict  # the same with the trained β
    beta: torch.Tensor  # [layer, head, demo]
    losses: list[float] = field(default_factory=list)  # mean training loss per epoch
    setting: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "beta"}, "beta": self.beta.tolist()}

    def summary(self) -> str:
        v, r = self.vanilla, self.reweighted
        return (f"Anchor re-weighting on {self.task} ({self.model}, k={self.k}, n={self.n}, seed {self.seed}; "
                f"{self.setting.get('n_train')} training examples, {len(self.losses)} epochs): accuracy {v['accuracy']:.3f} "
                f"[{v['ci_low']:.3f}, {v['ci_high']:.3f}] → {r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]")

    def figures(self) -> list:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=self.beta.mean(-1).tolist(), colorscale="RdBu", zmid=0, colorbar=dict(title="β (mean over demos)")))
        fig.update_layout(title=f"Learned anchor re-weighting β — {self.task}, {self.model}, k={self.k}", xaxis_title="head",
                          yaxis_title="layer")
        return [fig]


def _factors(beta: torch.Tensor, sub, n_heads: int) -> dict:
    """Per layer, [batch, head, q, k] ones with exp(β[layer, head, i]) on each row's (final
    position, label position of demo i) edges; differentiable in β."""
    B, T = len(sub), sub.input_ids.shape[1]
    b_idx, q_idx, k_idx, demo = [], [], [], []
    for b, row in enumerate(sub.rows):
        for i, span in enumerate(row.demo_labels):
            b_idx.append(b), q_idx.append(row.final), k_idx.append(span.start), demo.append(i)
    H, m = n_heads, len(demo)
    idx = (torch.tensor(b_idx).expand(H, m), torch.arange(H)[:, None].expand(H, m), torch.tensor(q_idx).expand(H, m),
           torch.tensor(k_idx).expand(H, m))
    ones = torch.ones(B, H, T, T, dtype=beta.dtype)
    return {layer: ones.index_put(idx, beta[layer][:, demo].exp()) for layer in range(beta.shape[0])}


def anchor_reweighting(model, task, *, k: int | None = None, n: int = 100, train_per_class: int = 4, epochs: int = 10,
                       lr: float = 0.01, seed: int = 0, batch_size: int = 8, select=None) -> AnchorReweightingResult:
    """Train β on ``train_per_class`` examples per class and score vanilla vs re-weighted
    accuracy on ``n`` held-out queries, all with one seeded demo set (one per class by default)."""
    from interp.edits import ReweightAttention
    from interp.prompts import build_icl_batch, per_class
    from interp.tasks import split_examples
    from interp.scoring import accuracy, minibatches
    from interp.tasks import load_task

    task = load_task(task) if isinstance(task, str) else task
    if task.kind != "classification":
        raise ValueError("anchor re-weighting needs a classification task (label words)")
    C = len(task.label_words)
    k = C if k is None else k
    tok = model.tokenizer
    rng = random.Random(f"anchor-reweighting:{seed}")
    pool, queries = split_examples(task.examples, n, seed)
    demos = (select or per_class(1))(None, pool, k, rng) if (select or k == C) else rng.sample(pool, k)
    test = build_icl_batch(tok, task, k=k, queries=queries, pool=pool, seed=seed, select=lambda q, p, kk, r: list(demos),
                           padding_side="left", max_length=model.n_ctx)
    used = {d.input for d in demos}
    pool = [e for e in pool if e.input not in used]
    train = []
    for c in task.label_words:
        of_c = [e for e in pool if e.output == c]
        if len(of_c) < train_per_class:
            raise ValueError(f"only {len(of_c)} unused examples of class {c!r} for the auxiliary set, need {train_per_class}")
        train += rng.sample(of_c, train_per_class)
    train_b = build_icl_batch(tok, task, k=k, queries=train, pool=list(demos), seed=seed, select=lambda q, p, kk, r: list(demos),
                              padding_side="left", max_length=model.n_ctx)
    ids = test.label_words.first_token_ids
    beta = torch.zeros(model.n_layers, model.n_heads, k, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([beta], lr=lr, betas=(0.9, 0.999))
    losses = []
    order = list(range(len(train_b)))
    for _ in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for i in order:
            sub = train_b.select([i])
            logits = model.run(sub, edits=[ReweightAttention(_factors(beta, sub, model.n_heads))], grad=True, logits="final").logits
            loss = torch.nn.functional.cross_entropy(logits[:, ids.to(logits.device)].float(), sub.gold.to(logits.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(total / len(order))
    right_v, right_r = [], []
    b_final = beta.detach()
    for sub in minibatches(test, batch_size):
        with torch.no_grad():
            plain = model.run(sub, logits="final").logits[:, ids]
            edited = model.run(sub, edits=[ReweightAttention(_factors(b_final, sub, model.n_heads))], logits="final").logits[:, ids]
        right_v.append(plain.argmax(-1).cpu() == sub.gold.cpu())
        right_r.append(edited.argmax(-1).cpu() == sub.gold.cpu())
    return AnchorReweightingResult(model.name, task.name, k, len(test), seed, accuracy(torch.cat(right_v)).to_dict(),
                                   accuracy(torch.cat(right_r)).to_dict(), b_final, losses,
                                   {"n_train": len(train), "epochs": epochs, "lr": lr, "optimizer": "adam",
                                    "demos": [d.input for d in demos]})
