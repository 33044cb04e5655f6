"""Wang et al. 2023 — "Label words are anchors: an information flow perspective for understanding
in-context learning" (EMNLP 2023; code lancopku/label-words-are-anchors).  Protocol
(``../shared/references``, §2; :mod:`analyses.kernel.anchors` implements it):

- saliency I_l = |Σ_h A_{h,l} ⊙ ∂L/∂A_{h,l}| with L the cross-entropy over the label words at the
  query against gold; flows S_wp (text → label words), S_pq (label words → query), S_ww (the rest),
  normalised to sum to 1 per layer (Fig. 3);
- isolation: label positions may attend only to themselves (pre-softmax mask) in the first or last
  5 layers, against the same number of random non-label positions; label loyalty = agreement of the
  predicted label with the unedited run (Fig. 4);
- AUCROC_l of the attention from the query to each class's label words against the model's own
  prediction (Fig. 5);
- Table 1, anchor re-weighting: exp(β) on the query → label-word attention, β trained on 4 extra
  examples per class (:mod:`analyses.kernel.anchor_reweighting`), vanilla vs re-weighted accuracy.

Paper: GPT2-XL (1.5B) and GPT-J (6B), SST-2 / TREC / AGNews / EmoC, one demo per class, 1000 test
items, 5 seeds.  No numeric table for Figs. 3–5; Table 1 (GPT2-XL): vanilla 1-shot/class SST-2 61.28,
with re-weighting 90.07.
"""
from __future__ import annotations

import dataclasses

import torch

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import dataset_task, our_setting, wilson

KEY = "wang2023"
CITATION = "Wang et al. 2023, Label words are anchors"
PAPER_SETTING = {"model": "GPT2-XL, GPT-J", "size": "1.5B, 6B", "dataset": "SST-2", "k": "1 per class", "n": 1000}
BUDGETS = {
    "smoke": {"datasets": ("sst2",), "n": 16, "reweight_n": 40},
    "small": {"datasets": ("sst2", "agnews", "trec"), "n": 60, "reweight_n": 200},
    "paper": {"datasets": ("sst2", "agnews", "trec"), "n": 1000, "reweight_n": 1000},
}


def _boot_shares(flows: torch.Tensor, layers: slice, seed: int, resamples: int = 500) -> dict:
    """``flows`` [row, 3, layer]: per (S_wp, S_pq, S_ww) the paper's statistic — mean over rows,
    normalised to sum 1 per layer, averaged over ``layers`` — with percentile bootstrap intervals
    (rows resampled) of it and of S_wp − S_pq."""
    def stat(f):
        m = f.mean(0)
        share = m / m.sum(0, keepdim=True).clamp_min(1e-30)
        s = share[:, layers].mean(-1)
        return torch.cat([s, (s[0] - s[1]).reshape(1)])

    g = torch.Generator().manual_seed(seed)
    n = flows.shape[0]
    boots = torch.stack([stat(flows[torch.randint(n, (n,), generator=g)]) for _ in range(resamples)]).sort(0).values
    lo, hi = boots[int(0.025 * (resamples - 1))], boots[int(0.975 * (resamples - 1))]
    point = stat(flows)
    names = ("S_wp", "S_pq", "S_ww", "S_wp - S_pq")
    return {name: Estimate(float(point[i]), float(lo[i]), float(hi[i]), n) for i, name in enumerate(names)}


def anchor_claims(model, task, r, paper_setting: dict | None = None, seed: int = 0) -> list[Claim]:
    """Figs. 3–5's findings for one :class:`~analyses.kernel.anchors.AnchorsResult` (also the
    anchors verdicts of ``icl-interp kernel``'s report)."""
    paper_setting = paper_setting or PAPER_SETTING
    out = []
    setting = our_setting(model, task.name, f"{r.k}" + (" (1 per class)" if r.k == len(task.label_words) else ""), r.n)
    L = len(r.s_wp)
    third = max(1, L // 3)
    flows = torch.tensor(r.flows_per_row, dtype=torch.float64)
    shallow = _boot_shares(flows, slice(0, third), seed)
    deep = _boot_shares(flows, slice(L - third, L), seed)
    out.append(Claim(f"Fig. 3, {task.name}", "in the shallow layers (first third) the flow from the text into the label "
                        "words exceeds the flow from the label words to the query (S_wp − S_pq > 0)",
                        "shallow layers: S_wp high, S_pq low", paper_setting, shallow["S_wp - S_pq"], setting,
                        against=Estimate.fixed(0.0), against_label="no difference"))
    out.append(Claim(f"Fig. 3, {task.name}", "in the deep layers (last third) the flow from the label words to the query "
                        "dominates (S_wp − S_pq < 0)", "deep layers: S_pq dominant", paper_setting, deep["S_wp - S_pq"], setting,
                        against=Estimate.fixed(0.0), direction="<", against_label="no difference"))
    iso = r.isolation
    n_layers_iso = iso["first"]["label"]["layers"]
    label_first = wilson(iso["first"]["label"]["label_loyalty"], r.n)
    out.append(Claim(f"Fig. 4, {task.name}", f"isolating the label words in the first {n_layers_iso} layers changes the "
                        "prediction more than isolating as many random non-label words (lower label loyalty)",
                        "first 5 layers: loyalty drops sharply; random words: negligible", paper_setting, label_first, setting,
                        against=wilson(iso["first"]["random"]["label_loyalty"], r.n), direction="<", against_label="random words"))
    out.append(Claim(f"Fig. 4, {task.name}", f"isolating the label words in the first {n_layers_iso} layers changes the "
                        f"prediction more than isolating them in the last {n_layers_iso} layers",
                        "last 5 layers: negligible effect", paper_setting, label_first, setting,
                        against=wilson(iso["last"]["label"]["label_loyalty"], r.n), direction="<", against_label="last layers"))
    last_ci = r.auroc_ci[-1]
    out.append(Claim(f"Fig. 5, {task.name}", "in the last layer the attention from the query to each class's label words "
                        "predicts the model's output (AUCROC_l > 0.5)", "AUCROC_l ≈ 0.8 in deep layers (averaged over tasks)",
                        paper_setting, Estimate(r.auroc[-1], *(last_ci or (None, None)), r.n), setting,
                        against=Estimate.fixed(0.5), against_label="chance (0.5)"))
    return out


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.kernel.anchor_reweighting import anchor_reweighting
    from analyses.kernel.anchors import anchors_analysis
    from interp.prompts import per_class

    claims, details, figures, notes = [], {}, [], []
    for name in budget["datasets"]:
        task, note = dataset_task(name, fallback="sentiment" if name == "sst2" else None)
        if note:
            notes.append(note)
        paper_setting = {**PAPER_SETTING, "dataset": {"sst2": "SST-2", "agnews": "AGNews", "trec": "TREC"}.get(name, name)}
        if task is None:
            claims.append(Claim("Figs. 3–5", f"anchors on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        task = dataclasses.replace(task, label_policy="first-token")  # Wang et al. score the first sub-token of a label word
        k = len(task.label_words)  # one demo per class
        r = part(f"anchors.{name}", lambda: anchors_analysis(model, task, k=k, n=budget["n"], seed=seed, select=per_class(1)))
        details[f"anchors.{name}"] = r.to_dict()
        claims += anchor_claims(model, task, r, paper_setting, seed)
        if name == budget["datasets"][0]:
            figures += r.figures()
    # Table 1: anchor re-weighting on the first dataset
    name = budget["datasets"][0]
    task, _ = dataset_task(name, fallback="sentiment" if name == "sst2" else None)
    t1 = {**PAPER_SETTING, "model": "GPT2-XL", "size": "1.5B", "dataset": "SST-2", "n": "1000, 5 seeds"}
    finding = ("learning exp(β) on the query → label-word attention (4 examples per class, Adam, 10 epochs) raises 1-shot/class "
               "accuracy")
    if task is None:
        claims.append(Claim("Table 1", finding, "SST-2 61.28 → 90.07", t1, Estimate(float("nan")), {"model": model.name},
                            not_comparable=f"dataset {name} absent"))
    else:
        rw = part(f"reweighting.{name}", lambda: anchor_reweighting(model, task, n=budget["reweight_n"], seed=seed))
        details[f"reweighting.{name}"] = rw.to_dict()
        claims.append(Claim(f"Table 1, {task.name}", finding, "SST-2 61.28 → 90.07 (GPT2-XL)", t1, Estimate.of(rw.reweighted),
                            our_setting(model, task.name, f"{rw.k} (1 per class)", rw.n, other=f"{rw.setting['n_train']} training examples"),
                            against=Estimate.of(rw.vanilla), against_label="vanilla ICL"))
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
