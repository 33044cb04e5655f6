"""von Oswald et al. 2023 — "Transformers learn in-context by gradient descent" (ICML 2023; code
google-research/self-organising-systems ``transformers_learn_icl_by_gd``).  Protocol
(``../shared/references``, ICL≡GD §4; :mod:`analyses.linreg.gd_check` implements it) on the
lab's shipped one-layer linear self-attention ``lsa-d10-n10`` (trained by ``icl-interp linreg
train`` as the paper's: d = 10, N = 10, x ~ U(−0.5, 0.5) as in their code, w ~ N(0, I), noiseless):

- one GD step from W0 = 0 with the line-searched η on 10,000 tasks (seed 5, the paper's eval key);
- the trained layer against it: query loss, the effective η (least squares of ŷ_TF on ŷ_GD / η),
  and "model cos" = mean cos(∂ŷ_TF/∂x_q, ∂ŷ_GD/∂x_q).

Paper / check numbers: best one-step GD loss 0.208 (0.5·MSE; zero predictor 0.42); the trained
layer converges to it with model cos → 1 and preds diff → 0 (Fig. 2).
"""
from __future__ import annotations

from analyses.reproduce.claims import Claim, Estimate, PaperResult
from analyses.reproduce.common import from_interval

KEY = "vonoswald2023"
CITATION = "von Oswald et al. 2023, Transformers learn in-context by gradient descent"
CHECKPOINT = "lsa-d10-n10"
PAPER_SETTING = {"model": "1-layer linear self-attention", "size": "d=10, N=10", "dataset": "x ~ U(-0.5, 0.5), w ~ N(0, I)",
                 "n": "10,000 tasks"}
BUDGETS = {"smoke": {"n_tasks": 2000}, "small": {"n_tasks": 10_000}, "paper": {"n_tasks": 10_000}}


def gd_check_claims(r, name: str = CHECKPOINT) -> list[Claim]:
    """The paper's findings for one :class:`~analyses.linreg.gd_check.TrainedVsGDResult` of the
    model ``name`` (also the verdicts of ``icl-interp linreg analyze``'s report); the 0.208 check
    number only for the shipped checkpoint, whose task distribution it belongs to."""
    iv = r.intervals
    setting = {"model": name if name != CHECKPOINT else f"shipped {CHECKPOINT}", "size": f"d={r.d}, N={r.n_points - 1}",
               "dataset": f"x ~ {r.x_dist}({r.x_range}), w ~ N(0, I)", "n": f"{r.n_tasks} tasks"}
    claims = [
        Claim("§3 / check number", "one GD step with the line-searched η reaches 0.5·MSE 0.208 on these tasks", "0.208 (zero "
              f"predictor 0.42; ours {r.loss['zero']:.3f})", PAPER_SETTING, from_interval(r.loss["gd"], iv.get("loss_gd"), r.n_tasks),
              setting, kind="value", paper_value=0.208),
        Claim("Fig. 2", "the trained layer's query loss equals one GD step's (ratio within ±3% of 1)", "converges to the GD loss",
              PAPER_SETTING, Estimate(r.loss_ratio), setting, kind="value", paper_value=1.0, tolerance=0.03),
        Claim("Fig. 2", "the trained layer's effective learning rate equals the line-searched η (within ±5%)",
              "trained weights = the GD construction's, up to scale", PAPER_SETTING, Estimate(r.eta_effective), setting, kind="value",
              paper_value=r.gd_eta, tolerance=0.05 * r.gd_eta),
        Claim("Fig. 2", "its sensitivities ∂ŷ/∂x_q point as GD's do (model cos above 0.99)", "model cos → 1", PAPER_SETTING,
              from_interval(r.sensitivity_cos, iv.get("sensitivity_cos"), r.n_tasks), setting, against=Estimate.fixed(0.99),
              against_label="0.99"),
    ]
    return claims if name == CHECKPOINT else claims[1:]


def run(model, budget: dict, part, seed: int = 0) -> PaperResult:
    from analyses.linreg.gd_check import trained_vs_gd
    from interp.linreg.checkpoints import load_shipped

    lsa = load_shipped(CHECKPOINT)[0]
    r = part("trained_vs_gd", lambda: trained_vs_gd(lsa, n_tasks=budget["n_tasks"], seed=5 + seed))
    claims = gd_check_claims(r)
    return PaperResult(KEY, CITATION, "linear-regression lab", "", claims, {"trained_vs_gd": r.to_dict()}, r.figures(), [])
