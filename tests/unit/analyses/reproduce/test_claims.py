"""The verdict rule of analyses.reproduce.claims on hand-built estimates (known answers)."""
import math

import pytest

from analyses.reproduce.claims import DOES_NOT, NOT_COMPARABLE, REPRODUCES, Claim, Estimate, PaperResult
from analyses.reproduce.common import mean_interval, wilson

PAPER = {"model": "GPT-J", "size": "6B", "dataset": "SST-2", "k": 4}
OURS = {"model": "tiny", "size": "1M", "dataset": "SST-2", "k": 4}


def claim(ours, against=None, **kw):
    return Claim("Table 1", "A beats B", "0.8", PAPER, ours, OURS, against=against, **kw)


@pytest.mark.parametrize("ours,against,direction,verdict,why", [
    (Estimate(0.8, 0.7, 0.9), Estimate(0.5, 0.4, 0.6), ">", REPRODUCES, "lies above"),
    (Estimate(0.8, 0.55, 0.9), Estimate(0.5, 0.4, 0.6), ">", DOES_NOT, "overlaps"),
    (Estimate(0.3, 0.2, 0.35), Estimate(0.5, 0.4, 0.6), ">", DOES_NOT, "the other way"),
    (Estimate(0.3, 0.2, 0.35), Estimate(0.5, 0.4, 0.6), "<", REPRODUCES, "lies below"),
    (Estimate(0.8, 0.7, 0.9), Estimate(0.5, 0.4, 0.6), "<", DOES_NOT, "the other way"),
    (Estimate(0.8, 0.7, 0.9), Estimate.fixed(0.69), ">", REPRODUCES, "lies above"),
    (Estimate(0.8, 0.7, 0.9), Estimate.fixed(0.7), ">", DOES_NOT, "overlaps"),  # touching is not disjoint
    (Estimate(0.5, 0.45, 0.65), Estimate(0.5, 0.4, 0.6), "not>", REPRODUCES, "null finding"),
    (Estimate(0.8, 0.7, 0.9), Estimate(0.5, 0.4, 0.6), "not>", DOES_NOT, "lies above"),
])
def test_directional_rule(ours, against, direction, verdict, why):
    v, reason = claim(ours, against, direction=direction).decide()
    assert v == verdict and why in reason


def test_value_rule_inside_outside_and_tolerance():
    inside = claim(Estimate(0.21, 0.20, 0.23), kind="value", paper_value=0.208)
    above = claim(Estimate(0.25, 0.24, 0.26), kind="value", paper_value=0.208)
    assert inside.decide() == (REPRODUCES, "the paper's 0.208 lies inside our 95% interval")
    assert above.decide() == (DOES_NOT, "the paper's 0.208 lies below our 95% interval")
    # a tolerance needs no interval
    assert claim(Estimate(1.02), kind="value", paper_value=1.0, tolerance=0.03).verdict == REPRODUCES
    assert claim(Estimate(1.05), kind="value", paper_value=1.0, tolerance=0.03).verdict == DOES_NOT


def test_not_comparable_when_no_interval_or_a_reason():
    assert claim(Estimate(0.8), Estimate(0.5, 0.4, 0.6)).decide() == (NOT_COMPARABLE, "our estimate has no interval")
    assert claim(Estimate(0.8, 0.7, 0.9), Estimate(0.5)).decide() == (NOT_COMPARABLE, "the comparison has no interval")
    c = claim(Estimate(float("nan")), not_comparable="dataset absent")
    assert c.decide() == (NOT_COMPARABLE, "dataset absent")
    assert c.row()["ours (95% CI)"] == "undefined"  # never "nan" in a report


def test_differs_lists_the_setting_columns_that_differ():
    c = claim(Estimate(0.8, 0.7, 0.9), Estimate.fixed(0.5))
    assert c.differs == ["model", "size"]
    row = c.row()
    assert row["differs"] == "model, size" and row["verdict"] == REPRODUCES
    assert "vs" in row["ours (95% CI)"] and "0.800 [0.700, 0.900]" in row["ours (95% CI)"]


def test_paper_result_counts_and_dict():
    r = PaperResult("x", "X et al.", "tiny", "smoke", [claim(Estimate(0.8, 0.7, 0.9), Estimate.fixed(0.5)),
                                                      claim(Estimate(0.8), not_comparable="no")])
    assert r.counts() == {REPRODUCES: 1, DOES_NOT: 0, NOT_COMPARABLE: 1}
    d = r.to_dict()
    assert d["claims"][0]["verdict"] == REPRODUCES and "rule" in d


def test_wilson_and_bootstrap_intervals():
    w = wilson(0.5, 100)  # the textbook Wilson interval for 50/100
    assert math.isclose(w.low, 0.4038, abs_tol=1e-4) and math.isclose(w.high, 0.5962, abs_tol=1e-4)
    m = mean_interval([1.0] * 10 + [0.0] * 10)
    assert m.value == 0.5 and m.low < 0.5 < m.high
    assert not mean_interval([float("nan")]).has_interval
