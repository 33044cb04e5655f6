"""Garg, Tsipras, Liang & Valiant 2022 — "What can transformers learn in-context? A case study of
simple function classes" (NeurIPS 2022; code dtsip/in-context-learning).  Protocol
(``../shared/references``, ICL≡GD §6) on the lab's shipped ``gpt-d5-n20`` (Garg's layout scaled
down: 4 layers, 4 heads, d_model 128, d = 5, 20 points, x, w ~ N(0, I), noiseless, curriculum):

- normalised squared error (ŷ − wᵀx_q)² / d against k, beside least squares, averaging
  (w = mean y_i x_i) and 3-NN (:func:`analyses.linreg.algorithms.which_algorithm`'s error curves).

Paper (12 layers, 8 heads, d_model 256, d = 20): the transformer tracks least squares — error 0.02
at k = d and 0.0006 at k = 2d — far below 3-NN and averaging.
"""
from __future__ import annotations

from analyses.reproduce.claims import Claim, Estimate, PaperResult

KEY = "garg2022"
CITATION = "Garg et al. 2022, What can transformers learn in-context?"
CHECKPOINT = "gpt-d5-n20"
PAPER_SETTING = {"model": "GPT-2 layout, 12 layers", "size": "9.5M", "dataset": "d=20, x, w ~ N(0, I), noiseless", "n": "1280 prompts"}
BUDGETS = {"smoke": {"ks": (2, 5, 10, 19), "n_tasks": 256}, "small": {"ks": (1, 2, 5, 10, 15, 19), "n_tasks": 1280},
           "paper": {"ks": tuple(range(1, 20)), "n_tasks": 1280}}


def _est(curve: dict, i: int, n: int) -> Estimate:
    m, se = curve["mean"][i], curve["sem"][i]
    return Estimate(m, m - 1.96 * se, m + 1.96 * se, n)


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.linreg.algorithms import which_algorithm
    from interp.linreg.checkpoints import load_shipped

    gpt = load_shipped(CHECKPOINT)[0]
    d = gpt.cfg.d
    r = part("errors", lambda: which_algorithm({CHECKPOINT: gpt}, d=d, k_values=list(budget["ks"]), n_tasks=budget["n_tasks"],
                                               seed=seed, learners=("ols", "knn")))
    tf = r.model_error[CHECKPOINT]
    claims = []
    big = max(range(len(r.k)), key=lambda i: r.k[i])
    small = min(range(len(r.k)), key=lambda i: r.k[i])
    setting = lambda k: {"model": f"shipped {CHECKPOINT}", "size": "4 layers, d_model 128",  # noqa: E731
                         "dataset": f"d={d}, x, w ~ N(0, I), noiseless", "k": k, "n": f"{r.n_tasks} prompts"}
    k = r.k[big]
    for name, label in (("averaging", "averaging"), ("knn_3", "3-NN")):
        claims.append(Claim(f"Fig. 2, k={k}", f"with k ≥ d examples the transformer's error is below {label}'s",
                            "far below 3-NN and averaging", {**PAPER_SETTING, "k": "2d = 40"}, _est(tf, big, r.n_tasks), setting(k),
                            direction="<", against=_est(r.learner_error[name], big, r.n_tasks), against_label=label))
    claims.append(Claim(f"Fig. 2, k={r.k[small]} → {k}", "its error falls with k as least squares' does (error at the largest k "
                        "below the error at the smallest)", "0.02 at k = d, 0.0006 at k = 2d", {**PAPER_SETTING, "k": "d → 2d"},
                        _est(tf, big, r.n_tasks), setting(f"{r.k[small]} → {k}"), direction="<", against=_est(tf, small, r.n_tasks),
                        against_label=f"k = {r.k[small]}"))
    return PaperResult(KEY, CITATION, "linear-regression lab", "", claims, {"errors": r.to_dict()}, r.figures()[-1:], [])
