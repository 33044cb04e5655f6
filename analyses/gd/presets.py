"""The GD counterparts of the papers, as named presets (one place for every paper's setting).

- :data:`DAI` — Dai et al. 2023 (LMOps ``understand_icl``): the k_proj and v_proj weights of every
  layer, SGD, batch 1, one epoch over the k demos in order, LM cross-entropy on every demo token.
  Their per-task lrs ran 1.6e-4 … 0.2; 1e-2 moves SmolLM2's outputs without wrecking them.
- :func:`shen` — Shen et al. 2023's "GD-hat": W_V of one (middle) layer, Adam, cross-entropy on the
  label token over the full vocabulary, many epochs.
- :func:`paper_config` — the paper's setting for a parameter group, ``kv`` → Dai, else Shen, with
  single fields overridden (the project's variants are these overrides, recorded in results.json).
"""
from __future__ import annotations

from interp.finetune import GDConfig

#: Dai et al.'s setting (k_proj + v_proj of every layer, SGD, batch 1, one epoch, LM loss on every
#: demo token; their lrs ran 1.6e-4..0.2 by task, 1e-2 moves SmolLM2's outputs without wrecking
#: them) and Shen et al.'s (W_V of one middle layer, label-token loss, Adam, many epochs).
DAI = GDConfig(params="kv", optimizer="sgd", lr=1e-2, epochs=1, batch_size=1, loss="all")


def shen(layer: int, lr: float = 1e-3, epochs: int = 20) -> GDConfig:
    return GDConfig(params=f"wv:{layer}", optimizer="adam", lr=lr, epochs=epochs, batch_size=1, loss="label")


def paper_config(params: str, **overrides) -> GDConfig:
    """The paper's setting for ``params``: ``kv`` → Dai et al. (SGD, batch 1, one epoch, loss on
    every demo token, lr 1e-2); anything else → Shen et al. (Adam lr 1e-3, loss on the label
    token, 20 epochs).  ``overrides`` (None values ignored) replace single fields."""
    base = dict(optimizer="sgd", lr=1e-2, epochs=1, batch_size=1, loss="all") if params == "kv" else \
        dict(optimizer="adam", lr=1e-3, epochs=20, batch_size=1, loss="label")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return GDConfig(params=params, **base)
