"""Hypothesis 2, ICL as implicit gradient descent in a pretrained LM (Dai et al. 2023; Shen et al. 2023; Deutch et al. 2024)."""
