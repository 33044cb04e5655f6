"""Screen with AtP*, verify the top exactly (Kramár et al. 2024, §3 and the diagnostics of §3.3).

1. Screen: :func:`interp.patching.attribution.attribution_patch_heads` (AtP*: QK fix for queries
   and keys, GradDrop optional) scores every head; rank by the screen's magnitude.
2. Verify: exact patching (batched, :func:`interp.patching.activation.patch_heads` with
   ``cells``) of the ``budget`` top-ranked heads.
3. Bound what was not verified: ``n_check`` heads drawn uniformly (seeded) from the rest are also
   patched exactly.  With θ = the smallest |effect| among the verified top, x of the m checked
   heads exceeding θ, the one-sided Clopper–Pearson bound at ``confidence`` on the fraction p of
   unverified heads whose |effect| exceeds θ is

       p ≤ Beta⁻¹(confidence; x + 1, m − x)     (1 when x = m),

   so at most p · n_unverified heads stronger than the weakest verified one were missed.  The
   Spearman correlation of screen and exact effects over every verified head says how well the
   screen ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interp.patching.activation import PatchingResult, patch_heads
from interp.patching.attribution import AttributionResult, attribution_patch_heads
from interp.patching.metrics import Metric


@dataclass
class ScreenResult:
    """``screen``: the AtP* estimates of every head; ``exact``: exact patching of the verified
    heads (NaN elsewhere); ``top``: the budget's heads, best first; ``checked``: the random
    unverified heads patched for the bound."""

    screen: AttributionResult
    exact: PatchingResult
    top: list[tuple[int, int]]
    checked: list[tuple[int, int]]
    spearman: float
    threshold: float
    n_exceeding: int
    fraction_bound: float
    missed_bound: float
    confidence: float
    setting: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.setting.get('method', 'AtP*')} screen of {self.setting.get('n_heads')} heads, top {len(self.top)} verified "
                f"exactly: Spearman(screen, exact) {self.spearman:.3f} over {len(self.top) + len(self.checked)} verified heads; "
                f"{self.n_exceeding} of {len(self.checked)} random unverified heads exceed the weakest verified |effect| "
                f"{self.threshold:.4g}: at most {self.fraction_bound:.1%} of the unverified heads "
                f"(≤ {self.missed_bound:.1f} heads) are stronger ({self.confidence:.0%} Clopper–Pearson).")

    def to_dict(self) -> dict:
        return {
            "screen": self.screen.to_dict(), "exact": self.exact.to_dict(), "top": [list(c) for c in self.top],
            "checked": [list(c) for c in self.checked], "spearman": self.spearman, "threshold": self.threshold,
            "n_exceeding": self.n_exceeding, "fraction_bound": self.fraction_bound, "missed_bound": self.missed_bound,
            "confidence": self.confidence, "setting": self.setting,
        }

    def figures(self) -> list:
        import plotly.graph_objects as go

        cells = self.top + self.checked
        screen = [float(self.screen.scores[c] - self.screen.corrupted_metric) for c in cells]
        exact = [float(self.exact.scores[c] - self.exact.corrupted_metric) for c in cells]
        fig = go.Figure()
        n = len(self.top)
        fig.add_scatter(x=screen[:n], y=exact[:n], mode="markers", name="verified top", text=[f"L{l}H{h}" for l, h in self.top])
        fig.add_scatter(x=screen[n:], y=exact[n:], mode="markers", name="random check", text=[f"L{l}H{h}" for l, h in self.checked])
        lo, hi = min(screen + exact + [0.0]), max(screen + exact + [0.0])
        fig.add_scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="screen = exact", line=dict(dash="dot", color="gray"))
        fig.update_layout(title=f"AtP* screen vs exact patching (Spearman {self.spearman:.2f})",
                          xaxis_title="screen estimate of the effect (metric units)", yaxis_title="exact effect (metric units)")
        return [fig]


def screen_then_verify(
    model,
    clean,
    corrupted,
    metric: Metric,
    budget: int,
    *,
    site: str = "attn.hook_z",
    positions="all",
    qk_fix: bool = True,
    grad_drop: bool = False,
    n_check: int = 20,
    confidence: float = 0.95,
    seed: int = 0,
) -> ScreenResult:
    """Rank every head by AtP* (``qk_fix``, ``grad_drop``), patch the top ``budget`` exactly, and
    bound the unverified rest with ``n_check`` random heads patched exactly (see the module
    docstring)."""
    from scipy.stats import beta, spearmanr

    if budget < 1:
        raise ValueError(f"budget must be at least 1 (heads verified exactly), got {budget}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    screen = attribution_patch_heads(model, clean, corrupted, metric, positions=positions, site=site, qk_fix=qk_fix, grad_drop=grad_drop)
    mag = screen.magnitude
    n_heads = mag.shape[1]
    order = torch.argsort(torch.nan_to_num(mag.flatten(), nan=-1.0), descending=True, stable=True)
    ranked = [(int(i) // n_heads, int(i) % n_heads) for i in order if not torch.isnan(mag.flatten()[i])]
    top, rest = ranked[:budget], ranked[budget:]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rest), generator=g)[:min(n_check, len(rest))].tolist()
    checked = [rest[i] for i in sorted(pick)]
    exact = patch_heads(model, clean, corrupted, metric, positions=positions, site=site, cells=top + checked)
    effect = lambda res, c: float(res.scores[c] - res.corrupted_metric)  # noqa: E731
    cells = top + checked
    rho = float(spearmanr([effect(screen, c) for c in cells], [effect(exact, c) for c in cells]).statistic) if len(cells) > 2 else float("nan")
    threshold = min(abs(effect(exact, c)) for c in top)
    x, m = sum(abs(effect(exact, c)) > threshold for c in checked), len(checked)
    fraction = 1.0 if x == m else float(beta.ppf(confidence, x + 1, m - x))
    return ScreenResult(
        screen, exact, top, checked, rho, threshold, x, fraction, fraction * len(rest), confidence,
        setting={**screen.setting, "budget": budget, "n_check": m, "seed": seed, "positions": positions,
                 "n_heads": len(ranked)},
    )
