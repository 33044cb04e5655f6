"""Hypothesis 1, attention as kernel regression (Han et al. 2023) and label words as anchors (Wang et al. 2023)."""
