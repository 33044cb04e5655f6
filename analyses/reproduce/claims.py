"""A paper's finding beside ours, with a verdict decided by a stated rule on the intervals.

Each :class:`Claim` is one cell or one finding of a paper's table or figure: the paper's value and
setting (model, size, dataset, k), our estimate with its 95% interval and our setting, the
columns where the two settings differ, and a verdict in words (:data:`RULE`):

- **reproduces** — a directional finding ("A > B") holds with the intervals disjoint in the
  paper's direction (our A's interval above B's interval, or above a fixed reference such as
  chance); a null finding ("A is not above B", ``direction="not>"``: a paper's critique) holds when
  our A's interval does not lie above B's — weak evidence at small sizes, and said so; a value
  finding (``kind="value"``) holds when the paper's value lies inside our 95% interval (or within
  the stated tolerance of our estimate, which then needs no interval);
- **does not reproduce** — otherwise; the reason says whether the intervals overlap (no effect
  established at this size) or the effect goes the other way;
- **not comparable** — the quantity cannot be measured as the paper measured it in our setting
  (a context too short for the paper's k, a dataset absent, a model with no such component); the
  reason says why.  Estimates without an interval are never judged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

REPRODUCES, DOES_NOT, NOT_COMPARABLE = "reproduces", "does not reproduce", "not comparable"

RULE = ("A directional finding (A > B) reproduces when our 95% interval for A lies entirely above B's 95% interval (or above "
        "B's value when B is a fixed reference such as chance or zero); a null finding (A not above B) reproduces when our "
        "interval for A does not lie above B's (weak evidence at small sizes); a value finding reproduces when the paper's value lies "
        "inside our 95% interval (or within the stated tolerance of our estimate).  Otherwise it does not reproduce: the reason "
        "says whether the intervals overlap or the effect goes the other way.  Not comparable: the paper's measurement cannot "
        "be made in our setting (the reason says why), or an estimate has no interval.")

#: Setting keys shown side by side; "differs" lists those whose values are not the same.
SETTING_KEYS = ("model", "size", "dataset", "k", "n", "other")


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval (``low`` / ``high``; None when it has none) and sample size."""

    value: float
    low: float | None = None
    high: float | None = None
    n: int | None = None

    @property
    def has_interval(self) -> bool:
        return all(x is not None and math.isfinite(x) for x in (self.value, self.low, self.high))

    @classmethod
    def of(cls, d: dict, key: str = "accuracy") -> "Estimate":
        """From ``interp.scoring`` dicts: ``{"accuracy"|"mean": v, "ci_low": lo, "ci_high": hi, "n": n}``."""
        return cls(float(d[key]), d.get("ci_low"), d.get("ci_high"), d.get("n"))

    @classmethod
    def fixed(cls, value: float) -> "Estimate":
        """A reference value without sampling error (chance, zero): its interval is the point."""
        return cls(float(value), float(value), float(value))

    def text(self, spec: str = ".3f") -> str:
        if self.value is None or not math.isfinite(self.value):
            return "undefined"
        if self.low is None or self.high is None or self.low == self.high == self.value:
            return format(self.value, spec)
        return f"{self.value:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "n": self.n}


@dataclass
class Claim:
    """One finding of a paper, ours beside it.  ``ours`` is compared with ``against`` (the
    finding's B, an :class:`Estimate`) in ``direction`` (``">"`` or ``"<"``), or, for
    ``kind="value"``, with ``paper_value`` itself (within ``tolerance`` if given)."""

    source: str  # where in the paper: "Table 2, SST-2"
    finding: str  # the finding in words, as a claim that can hold or not
    paper: str  # the paper's number(s), as text ("0.797 agreement (gold 0.750)")
    paper_setting: dict
    ours: Estimate
    our_setting: dict
    against: Estimate | None = None
    against_label: str = ""
    direction: Literal[">", "<", "not>"] = ">"
    kind: Literal["direction", "value"] = "direction"
    paper_value: float | None = None
    tolerance: float | None = None
    not_comparable: str | None = None  # the reason, when the measurement cannot be made as the paper's

    @property
    def differs(self) -> list[str]:
        return [k for k in SETTING_KEYS if str(self.paper_setting.get(k, "–")) != str(self.our_setting.get(k, "–"))]

    def decide(self) -> tuple[str, str]:
        """(verdict, reason) under :data:`RULE`."""
        if self.not_comparable:
            return NOT_COMPARABLE, self.not_comparable
        if self.kind == "value" and self.paper_value is None:
            raise ValueError(f"{self.source}: a value claim needs paper_value")
        if self.kind == "value" and self.tolerance is not None:
            if self.ours.value is None or not math.isfinite(self.ours.value):
                return NOT_COMPARABLE, "our estimate is undefined"
            ok = abs(self.ours.value - self.paper_value) <= self.tolerance
            return (REPRODUCES if ok else DOES_NOT,
                    f"the paper's {self.paper_value:g} is {'within' if ok else 'outside'} ±{self.tolerance:g} of ours")
        if not self.ours.has_interval:
            return NOT_COMPARABLE, "our estimate has no interval"
        lo, hi = self.ours.low, self.ours.high
        if self.kind == "value":
            ok = lo <= self.paper_value <= hi
            return (REPRODUCES if ok else DOES_NOT,
                    f"the paper's {self.paper_value:g} lies {'inside' if ok else ('above' if self.paper_value > hi else 'below')} "
                    "our 95% interval")
        if self.against is None or not self.against.has_interval:
            return NOT_COMPARABLE, "the comparison has no interval"
        b_lo, b_hi = self.against.low, self.against.high
        what = self.against_label or "the baseline"
        if self.direction == "not>":
            if lo > b_hi:
                return DOES_NOT, f"our interval lies above the interval of {what}"
            return REPRODUCES, f"our interval does not lie above the interval of {what} (a null finding: weak evidence at small sizes)"
        if self.direction == ">":
            if lo > b_hi:
                return REPRODUCES, f"our interval lies above the interval of {what}"
            if hi < b_lo:
                return DOES_NOT, f"the other way: our interval lies below the interval of {what}"
        else:
            if hi < b_lo:
                return REPRODUCES, f"our interval lies below the interval of {what}"
            if lo > b_hi:
                return DOES_NOT, f"the other way: our interval lies above the interval of {what}"
        return DOES_NOT, f"our interval overlaps the interval of {what}: no difference established at this size"

    @property
    def verdict(self) -> str:
        return self.decide()[0]

    def to_dict(self) -> dict:
        verdict, reason = self.decide()
        return {"source": self.source, "finding": self.finding, "paper": self.paper, "paper_setting": self.paper_setting,
                "ours": self.ours.to_dict(), "ours_text": self.ours.text(), "ours_vs": self.row()["ours (95% CI)"],
                "our_setting": self.our_setting,
                "against": self.against.to_dict() if self.against else None, "against_label": self.against_label,
                "direction": self.direction, "kind": self.kind, "paper_value": self.paper_value, "tolerance": self.tolerance,
                "differs": self.differs, "verdict": verdict, "reason": reason}

    def row(self) -> dict:
        """The claim as one row of the verdict table (column → text)."""
        verdict, reason = self.decide()
        ours = self.ours.text()
        if self.against is not None and self.kind == "direction":
            ours += f" vs {self.against_label or 'baseline'} {self.against.text()}"
        setting = lambda s: ", ".join(f"{k} {s[k]}" for k in SETTING_KEYS if k in s)  # noqa: E731
        return {"source": self.source, "finding": self.finding, "paper": self.paper, "paper's setting": setting(self.paper_setting),
                "ours (95% CI)": ours, "our setting": setting(self.our_setting), "differs": ", ".join(self.differs) or "nothing",
                "verdict": verdict, "why": reason}


@dataclass
class PaperResult:
    """A paper's protocol run on one model: its claims with verdicts, plus the figures made."""

    paper: str  # registry key, e.g. "han2023"
    citation: str
    model: str
    budget: str
    claims: list[Claim]
    details: dict = field(default_factory=dict)  # the underlying analyses' to_dict()s
    figure_list: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {REPRODUCES: 0, DOES_NOT: 0, NOT_COMPARABLE: 0}
        for c in self.claims:
            out[c.verdict] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        return (f"{self.citation} on {self.model} ({self.budget} budget): {c[REPRODUCES]} of {len(self.claims)} findings reproduce, "
                f"{c[DOES_NOT]} do not, {c[NOT_COMPARABLE]} not comparable")

    def to_dict(self) -> dict:
        return {"paper": self.paper, "citation": self.citation, "model": self.model, "budget": self.budget, "rule": RULE,
                "counts": self.counts(), "claims": [c.to_dict() for c in self.claims], "details": self.details, "notes": self.notes}

    def figures(self) -> list:
        return list(self.figure_list)


def verdict_section(claims: list[Claim], what: str) -> tuple:
    """The report section that opens a command's report: the papers' findings this run tests, each
    with the paper's number beside ours and a verdict (a sortable table), then the rule."""
    from analyses.report.tables import Paragraphs, Table

    counts = {v: sum(c.verdict == v for c in claims) for v in (REPRODUCES, DOES_NOT, NOT_COMPARABLE)}
    table = Table.from_dicts([c.row() for c in claims], sortable=len(claims) > 10,
                             caption=f"{what}: {counts[REPRODUCES]} of {len(claims)} findings reproduce, {counts[DOES_NOT]} do not, "
                                     f"{counts[NOT_COMPARABLE]} not comparable")
    return ("Verdicts", [table, Paragraphs([f"Verdict rule: {RULE}"])], [])
