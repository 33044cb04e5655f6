"""Shen, Mishra & Khashabi 2023 — "Do pretrained transformers learn in-context by gradient
descent?" (ICML 2024 position paper; arXiv 2310.08540; no public code).  Protocol
(``../shared/references``, ICL≡GD §3; details partly from a secondary digest):

- GD counterpart "GD-hat": W_V of the middle layer fine-tuned on the same N demos, cross-entropy on
  the label token over the full vocabulary, Adam (:func:`analyses.gd.presets.shen`; the paper
  trains up to 200 epochs, the preset 20);
- the three metrics on next-token distributions: accuracy, token overlap@10 and overlap cosine,
  against the noise floor ICL vs ICL with the demos reordered, as N grows (N ∈ {1, 2, 4, 8});
- order sensitivity (Theorem 1): Σ_v std over N orders of p(v), ICL prompts reordered vs GD trained
  in each order with batch size 1 (:mod:`analyses.gd.order_sensitivity`).

Paper (LLaMA-7B; AGNews, CB, SST-2, RTE): ICL vs ICL-reordered overlap above ICL vs GD at every N
and epoch; ICL 3–5× more order-sensitive than GD (std ≈ 0.10–0.15 vs 0.01–0.02, 8 AGNews demos).
"""
from __future__ import annotations

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import dataset_task, from_interval, our_setting, per_query_estimate

KEY = "shen2023"
CITATION = "Shen et al. 2023, Do pretrained transformers learn in-context by gradient descent?"
PAPER_SETTING = {"model": "LLaMA", "size": "7B", "dataset": "AGNews, CB, SST-2, RTE", "k": "1, 2, 4, 8"}
BUDGETS = {
    "smoke": {"datasets": ("sst2",), "ks": (4,), "n": 16, "orders": 3, "orders_n": 8, "orders_k": 4},
    "small": {"datasets": ("sst2", "agnews"), "ks": (1, 2, 4, 8), "n": 24, "orders": 4, "orders_n": 12, "orders_k": 8},
    "paper": {"datasets": ("sst2", "agnews", "cb", "rte"), "ks": (1, 2, 4, 8), "n": 500, "orders": 10, "orders_n": 100, "orders_k": 8},
}


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.gd.icl_vs_gd import icl_vs_gd
    from analyses.gd.order_sensitivity import order_sensitivity
    from analyses.gd.presets import shen
    from interp.finetune import GDCounterpart

    claims, details, figures, notes = [], {}, [], []
    gd = GDCounterpart(model)
    config = shen(model.n_layers // 2)
    for name in budget["datasets"]:
        task, note = dataset_task(name, fallback="sentiment" if name == "sst2" else None)
        if note:
            notes.append(note)
        paper_setting = {**PAPER_SETTING, "dataset": name, "n": "not stated"}
        if task is None:
            claims.append(Claim("Fig. 5", f"ICL vs GD on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        for k in budget["ks"]:
            r = part(f"icl_vs_gd.{name}.k{k}", lambda: icl_vs_gd(model, task, k=k, n=budget["n"], seed=seed, config=config,
                                                                   record="final", counterpart=gd))
            details[f"icl_vs_gd.{name}.k{k}"] = r.to_dict()
            setting = our_setting(model, task.name, k, r.n, other=f"W_V of layer {model.n_layers // 2}, Adam, {config.epochs} epochs")
            where = f"Fig. 5 / Table 1, {task.name}, N={k}"
            claims.append(Claim(where, "ICL's top-10 next tokens overlap those of ICL with the demos reordered more than those of GD "
                                "(token overlap@10)", "ICL–ICL above ICL–GD at every N", paper_setting, per_query_estimate(r, "overlap_reordered"),
                                setting, against=per_query_estimate(r, "overlap_gd"), against_label="ICL vs GD"))
            claims.append(Claim(where, "… and the same for the overlap cosine of the distributions", "ICL–ICL above ICL–GD",
                                paper_setting, per_query_estimate(r, "ocs_reordered"), setting,
                                against=per_query_estimate(r, "ocs_gd"), against_label="ICL vs GD"))
            claims.append(Claim(where, "ICL is more accurate than GD trained on the same demos", "GD needs ~512 demos to reach "
                                "8-demo ICL", paper_setting, Estimate.of(r.accuracy["icl"]), setting,
                                against=Estimate.of(r.accuracy["gd"]), against_label="GD"))
        k = budget["orders_k"]
        sens = part(f"orders.{name}", lambda: order_sensitivity(model, task, k=k, n=budget["orders_n"], seed=seed,
                                                                n_orders=budget["orders"], batch_sizes=(1,),
                                                                config=config, counterpart=gd))
        details[f"orders.{name}"] = sens.to_dict()
        b = next(iter(sens.ratio))
        ratio, ci = sens.ratio[b], (sens.ratio_ci or {}).get(b)
        claims.append(Claim(f"Fig. 4, {task.name}", "ICL's output is more sensitive to the order of the demos than GD's "
                            "(ratio of Σ_v std over orders, GD batch 1)", "3–5× (8 AGNews demos)",
                            {**paper_setting, "k": 8, "dataset": "AGNews"},
                            from_interval(ratio, ci) if ratio is not None else Estimate(float("nan")),
                            our_setting(model, task.name, k, sens.n, other=f"{len(sens.orders)} orders"),
                            against=Estimate.fixed(1.0), against_label="equal sensitivity (ratio 1)",
                            not_comparable=None if ratio is not None else (sens.undefined or {}).get(b, "ratio undefined")))
        if name == budget["datasets"][0]:
            figures += sens.figures()
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
