"""The linear-regression lab: von Oswald et al. 2023, Akyürek et al. 2022, Garg et al. 2022 on tiny transformers."""
