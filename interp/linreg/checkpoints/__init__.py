"""Checkpoints shipped with the package, each trained by ``icl-interp linreg train`` (the command
and its arguments are in the folder's ``config.json`` / ``metrics.json``):

- ``lsa-d10-n10``: von Oswald et al.'s one-layer linear self-attention, d = 10, N = 10 context
  points, x ~ U(−0.5, 0.5);
- ``gpt-d5-n20``: a 4-layer, 4-head, d_model 128 softmax GPT (Garg et al.'s layout), d = 5,
  20 points (19 context + query), x ~ N(0, I).

Training has seed-dependent plateaus (the GPT's loss sits at the zero predictor's for hundreds of
steps), so the analyses and tests use these files rather than retraining.
"""
from __future__ import annotations

from pathlib import Path

SHIPPED = {"lsa-d10-n10": "one-layer linear self-attention, d=10, N=10 (von Oswald et al.)",
           "gpt-d5-n20": "4-layer 4-head d_model 128 softmax GPT, d=5, 20 points (Garg et al.)"}


def checkpoint_dir(name: str) -> Path:
    """The folder of a shipped checkpoint (see :data:`SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped checkpoint {name!r}; shipped: {sorted(SHIPPED)} "
                         f"(for your own, pass the folder written by `icl-interp linreg train --out DIR`)")
    return Path(__file__).resolve().parent / name


def load_shipped(name: str):
    """(model in eval mode, TrainConfig, metrics) of a shipped checkpoint."""
    from interp.linreg.train import load_checkpoint

    return load_checkpoint(checkpoint_dir(name))
