"""Probes fitted on captured activations, each score with its controls beside it.

- :mod:`probes.ridge`: closed-form ridge / ridge classifier / least squares (float64 torch).
- :mod:`probes.logistic`: multinomial L2 logistic regression fitted with L-BFGS.
- :mod:`probes.mlp`: a 2-layer GELU MLP regression probe (Akyürek et al.), seeded.
- :mod:`probes.splits`: leak-free (grouped) train/test splits and K-folds, seeded.
- :mod:`probes.metrics`: R², accuracy, percentile (cluster) bootstrap intervals.
- :mod:`probes.evaluate`: one probe's test score + CI + shuffled-target and random-init controls.
- :mod:`probes.sweep`: the same over layers or layers × heads, with plotly figures.
"""
from probes.evaluate import ProbeScore, evaluate_probe, shuffled_targets
from probes.logistic import LogisticProbe
from probes.mlp import MLPProbe
from probes.metrics import ConfidenceInterval, accuracy_score, bootstrap_ci, r2_score
from probes.ridge import LinearProbe, RidgeClassifierProbe, RidgeProbe
from probes.splits import group_kfold, group_train_test_split, kfold, split, train_test_split
from probes.sweep import ProbeSweepResult, probe_sweep

__all__ = [
    "ConfidenceInterval", "LinearProbe", "LogisticProbe", "MLPProbe", "ProbeScore", "ProbeSweepResult",
    "RidgeClassifierProbe", "RidgeProbe", "accuracy_score", "bootstrap_ci", "evaluate_probe",
    "group_kfold", "group_train_test_split", "kfold", "probe_sweep", "r2_score", "shuffled_targets",
    "split", "train_test_split",
]
