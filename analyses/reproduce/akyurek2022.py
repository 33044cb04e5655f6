"""Akyürek et al. 2023 — "What learning algorithm is in-context learning? Investigations with
linear models" (ICLR 2023; code google-research ``incontext``).  Protocol (``../shared/references``,
ICL≡GD §5; :mod:`analyses.linreg.algorithms` implements it) on the lab's shipped softmax GPT
``gpt-d5-n20`` (4 layers, d = 5, x, w ~ N(0, I), noiseless):

- SPD(A1, A2) = E (A1(D)(x') − A2(D)(x'))² / d on fresh query points x', per number of in-context
  examples k, against OLS (min-norm), ridge, one GD step (η line-searched), one SGD pass and 3-NN;
- ILWD from linear fits to each algorithm's predictions.

Paper (L = 16, H = 512, d = 8, 40 pairs): noiseless ICL matches OLS, normalised SPD and ILWD < 0.01
at every k (Fig. 1); shallow models look like one GD step, deep ones like OLS.
"""
from __future__ import annotations

from analyses.reproduce.claims import Claim, PaperResult
from analyses.reproduce.common import from_interval

KEY = "akyurek2022"
CITATION = "Akyürek et al. 2023, What learning algorithm is in-context learning?"
CHECKPOINT = "gpt-d5-n20"
PAPER_SETTING = {"model": "16-layer transformer", "size": "H=512", "dataset": "d=8, x, w ~ N(0, I), noiseless", "k": "1–40"}
BUDGETS = {"smoke": {"ks": (5, 10, 19), "n_tasks": 256}, "small": {"ks": (2, 5, 10, 15, 19), "n_tasks": 1024},
           "paper": {"ks": tuple(range(1, 20)), "n_tasks": 4096}}


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.linreg.algorithms import which_algorithm
    from interp.linreg.checkpoints import load_shipped

    gpt = load_shipped(CHECKPOINT)[0]
    d = gpt.cfg.d
    r = part("which_algorithm", lambda: which_algorithm({CHECKPOINT: gpt}, d=d, k_values=list(budget["ks"]), n_tasks=budget["n_tasks"],
                                                        seed=seed))
    claims = []
    spd, ci = r.spd[CHECKPOINT], r.spd_ci[CHECKPOINT]
    est = lambda name, i: from_interval(spd[name][i], ci[name][i], r.n_tasks)  # noqa: E731
    for i, k in enumerate(r.k):
        if k < d:
            continue
        setting = {"model": f"shipped {CHECKPOINT}", "size": "4 layers, d_model 128", "dataset": f"d={d}, x, w ~ N(0, I), noiseless",
                   "k": k, "n": f"{r.n_tasks} tasks"}
        for other, label in (("gd_1step", "one GD step"), ("knn_3", "3-NN")):
            claims.append(Claim(f"Fig. 1, k={k}", f"at k ≥ d the transformer's predictions are closer to OLS than to {label} "
                                "(lower SPD)", "SPD to OLS < 0.01 at every k", PAPER_SETTING, est("ols", i), setting, direction="<",
                                against=est(other, i), against_label=label))
    return PaperResult(KEY, CITATION, "linear-regression lab", "", claims, {"which_algorithm": r.to_dict()}, r.figures(), [])
