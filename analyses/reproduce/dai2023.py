"""Dai et al. 2023 — "Why can GPT learn in-context? Language models implicitly perform gradient
descent as meta-optimizers" (ACL Findings 2023; code microsoft/LMOps ``understand_icl``).
Protocol (``../shared/references``, ICL≡GD §1; :mod:`analyses.gd.icl_vs_gd` implements it):

- one demo set per seed (``train.shuffle(seed)[:k]``), the query's label token appended and the
  position after the prediction recorded; ZS, ICL and a GD copy (k_proj + v_proj of every layer,
  SGD, batch 1, one epoch over the demos in order, LM loss on every demo token);
- the learning rate per dataset is Dai's (as Deutch et al.'s configs copy it): SST-2 5e-4, SST-5
  1.6e-4, MR 3e-3, Subj 3e-3, AGNews 0.2, CB 0.08 — the project's 1e-2 (:data:`analyses.gd.presets.DAI`)
  is the named variant ``lr="project"``;
- metrics: accuracy ZS / GD / ICL, Rec2FTP, SimAOU vs the random update, SimAM ICL–GD vs ICL–ZS,
  Kendall τ of ICL attention vs GD's training-token attention vs random.

Paper (fairseq GPT 1.3B / 2.7B; k = 32, fewer on AGNews 22 and CB 19; 2000 eval items): Rec2FTP
85.56 / 89.39 %, SimAOU 0.186 / 0.225 (random ≈ 0), SimAM 0.442 / 0.434 (before fine-tuning 0.338 /
0.355), Kendall 0.193 / 0.214 (random ≈ 0); 2.7B SST-2 accuracy ZS 71.4 / FT 76.9 / ICL 95.0.
"""
from __future__ import annotations

import dataclasses

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import dataset_task, our_setting, per_query_estimate, wilson

KEY = "dai2023"
CITATION = "Dai et al. 2023, Why can GPT learn in-context?"
#: Dai's per-dataset SGD learning rates (Deutch et al.'s configs, 1.3B) and effective k
LR = {"sst2": 5e-4, "sst5": 1.6e-4, "mr": 3e-3, "subj": 3e-3, "agnews": 0.2, "cb": 0.08}
PAPER_K = {"agnews": 22, "cb": 19}
PAPER_SETTING = {"model": "fairseq GPT", "size": "1.3B", "k": 32, "n": 2000}
BUDGETS = {
    "smoke": {"datasets": ("sst2",), "k": 4, "n": 24, "lr": "paper"},
    "small": {"datasets": ("sst2", "sst5", "mr", "subj", "agnews", "cb"), "k": 8, "n": 16, "lr": "paper"},
    "paper": {"datasets": ("sst2", "sst5", "mr", "subj", "agnews", "cb"), "k": 32, "n": 2000, "lr": "paper"},
}


def gd_claims(r, paper_setting: dict, setting: dict, where: str, paper: dict) -> list[Claim]:
    """The Dai metrics of one :class:`~analyses.gd.icl_vs_gd.IclVsGdResult` as claims (shared with
    :mod:`analyses.reproduce.deutch2024`); ``paper`` holds the paper's text per metric."""
    est = lambda key: per_query_estimate(r, key)  # noqa: E731
    out = []
    acc = r.accuracy
    out.append(Claim(where, "ICL is more accurate than zero-shot", paper.get("acc", "2.7B SST-2: ZS 71.4, ICL 95.0"), paper_setting,
                     Estimate.of(acc["icl"]), setting, against=Estimate.of(acc["zs"]), against_label="zero-shot"))
    out.append(Claim(where, "the GD copy is more accurate than zero-shot", paper.get("acc", "2.7B SST-2: ZS 71.4, FT 76.9"), paper_setting,
                     Estimate.of(acc["gd"]), setting, against=Estimate.of(acc["zs"]), against_label="zero-shot"))
    if r.rec2ftp_n and r.rec2ftp == r.rec2ftp:
        out.append(Claim(where, "of the queries GD fixes, ICL gets most right too (Rec2FTP > 50%)", paper.get("rec2ftp", "85.56%"),
                         paper_setting, wilson(r.rec2ftp / 100, r.rec2ftp_n), setting, against=Estimate.fixed(0.5),
                         against_label="half"))
    else:
        out.append(Claim(where, "of the queries GD fixes, ICL gets most right too (Rec2FTP > 50%)", paper.get("rec2ftp", "85.56%"),
                         paper_setting, Estimate(float("nan")), setting, not_comparable="GD fixes no query zero-shot gets wrong here"))
    out.append(Claim(where, "ICL's update of the attention output points the way GD's does (SimAOU above the random update)",
                     paper.get("simaou", "0.186 vs random ≈ 0"), paper_setting, est("simaou"), setting, against=est("simaou_random"),
                     against_label="random update"))
    out.append(Claim(where, "ICL's attention map is closer to GD's than to zero-shot's (SimAM ICL–GD above ICL–ZS)",
                     paper.get("simam", "0.442 vs 0.338"), paper_setting, est("simam_gd"), setting, against=est("simam_zs"),
                     against_label="ICL–ZS"))
    out.append(Claim(where, "ICL's attention to the demo tokens ranks them as GD's training-token attention does (Kendall τ above "
                     "random)", paper.get("kendall", "0.193 vs random ≈ 0"), paper_setting, est("kendall"), setting,
                     against=est("kendall_random"), against_label="random"))
    return out


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.gd.icl_vs_gd import icl_vs_gd
    from analyses.gd.presets import DAI
    from interp.finetune import GDCounterpart

    claims, details, figures, notes = [], {}, [], []
    gd = GDCounterpart(model)
    for name in budget["datasets"]:
        task, note = dataset_task(name, fallback="sentiment" if name == "sst2" else None)
        if note:
            notes.append(note)
        paper_setting = {**PAPER_SETTING, "dataset": name, "k": PAPER_K.get(name, 32)}
        if task is None:
            claims.append(Claim("Tables 1–5", f"ICL vs GD on {name}", "–", paper_setting, Estimate(float("nan")),
                                {"model": model.name, "dataset": name}, not_comparable=note))
            continue
        lr = LR.get(name, DAI.lr) if budget.get("lr", "paper") == "paper" else DAI.lr
        config = dataclasses.replace(DAI, lr=lr)
        r = part(f"icl_vs_gd.{name}", lambda: icl_vs_gd(model, task, k=budget["k"], n=budget["n"], seed=seed, config=config, counterpart=gd))
        details[f"icl_vs_gd.{name}"] = r.to_dict()
        setting = our_setting(model, task.name, r.k, r.n, other=f"SGD lr {lr:g} on k_proj+v_proj")
        claims += gd_claims(r, {**paper_setting, "other": f"SGD lr {LR.get(name, '?')} on k_proj+v_proj"}, setting,
                            f"Tables 1–5, {task.name}", {})
        if name == budget["datasets"][0]:
            figures += r.figures()[:3]
    return PaperResult(KEY, CITATION, model.name, "", claims, details, figures, notes)
