"""In-context linear regression (Garg et al. 2022; von Oswald et al. 2023)."""
from interp.linreg.sampler import RegressionBatch, sample_regression_tasks

__all__ = ["RegressionBatch", "sample_regression_tasks"]
