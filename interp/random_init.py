"""A model with the same architecture and fresh random weights: the control for probes and
scores ("is this a property of training, or of the architecture and the input statistics?").

``keep`` copies chosen module groups from the trained model, named by role in the architecture
table (:meth:`~interp.architectures.Architecture.role_prefixes`: ``embed``, ``unembed``, ``norms``,
``attn``, ``mlp``), so the same call works on every family.  Deutch et al. 2024's untrained
baseline keeps token embeddings, norms and the unembedding and randomises attention and MLPs:
``random_init_like(model, keep=DEUTCH_KEEP)``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch

from interp.plain import plain_twin

DEUTCH_KEEP = ("embed", "norms", "unembed")
GROUPS = ("embed", "unembed", "norms", "attn", "mlp")


def random_init_like(model, *, seed: int = 0, keep: Sequence[str] = (), engine: str | None = None):
    """A new :class:`~interp.model.Model` like ``model`` with weights from the architecture's own
    initialiser (seeded; the global RNG is left as it was); ``keep``: module groups (``GROUPS``)
    whose trained weights are copied over."""
    from transformers import AutoModelForCausalLM

    from interp.architectures import architecture_of
    from interp.loading import load_model

    unknown = [k for k in keep if k not in GROUPS]
    if unknown:
        raise ValueError(f"keep={tuple(keep)}: unknown module group(s) {unknown}; use any of {GROUPS} "
                         f"(Deutch et al.'s untrained baseline: {DEUTCH_KEEP})")
    trained = plain_twin(model.hf_model)
    config = copy.deepcopy(trained.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=next(trained.parameters()).dtype)
    if keep:
        arch = architecture_of(trained)
        prefixes = tuple(p for group in keep for p in arch.role_prefixes(trained, group))
        source = dict(trained.named_parameters())
        with torch.no_grad():
            for name, param in fresh.named_parameters():
                if name.startswith(prefixes):
                    param.copy_(source[name])
    fresh.eval()
    out = load_model(fresh, engine=engine or model.engine_name, tokenizer=model.tokenizer)
    out.name = f"{model.name} (random init, seed {seed}{', keeps ' + ','.join(keep) if keep else ''})"
    return out
