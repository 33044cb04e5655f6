"""A model with the same architecture and fresh random weights: the control for probes and
scores ("is this a property of training, or of the architecture and the input statistics?").

``keep`` copies chosen parameters from the trained model, e.g. Deutch et al. 2024's untrained
baseline keeps token embeddings, norms and the unembedding and randomises attention and MLPs:
``random_init_like(model, keep=("embed_tokens", "norm", "lm_head"))``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from interp.plain import plain_twin


def random_init_like(model, *, seed: int = 0, keep: Sequence[str] = (), engine: str | None = None):
    """A new :class:`~interp.model.Model` like ``model`` with weights from the architecture's own
    initialiser (seeded; the global RNG is left as it was)."""
    from transformers import AutoModelForCausalLM

    from interp.loading import load_model

    trained = plain_twin(model.hf_model)
    config = copy.deepcopy(trained.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=next(trained.parameters()).dtype)
    if keep:
        source = dict(trained.named_parameters())
        with torch.no_grad():
            for name, param in fresh.named_parameters():
                if any(k in name for k in keep):
                    param.copy_(source[name])
    fresh.eval()
    out = load_model(fresh, engine=engine or model.engine_name, tokenizer=model.tokenizer)
    out.name = f"{model.name} (random init, seed {seed}{', keeps ' + ','.join(keep) if keep else ''})"
    return out
