"""A plain transformers model that shares the engine model's weights.

Engines may convert the model they run (the TransformerLens bridge wraps every submodule).  Code
that must call decoder layers one by one (the patching fast paths) or compare against an
unhooked forward uses this plain twin instead: same parameter tensors, no bridge, eager attention.
"""
from __future__ import annotations

import copy

import torch


def plain_twin(hf_model: torch.nn.Module, *, share_weights: bool = True) -> torch.nn.Module:
    """A plain eager transformers model with ``hf_model``'s weights (shared, not copied, unless
    ``share_weights=False``).  Works on bridge-converted models."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(hf_model.config)
    config._attn_implementation = "eager"
    dtype = next(hf_model.parameters()).dtype
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    # a bridge-converted model names its weights "_self_attn._q_proj._weight" or
    # "original_component.weight" (plus alias duplicates): map back to the transformers names
    state = {}
    for key, value in hf_model.state_dict(keep_vars=True).items():
        state.setdefault(_plain_key(key), value if share_weights else value.detach().clone())
    expected = set(twin.state_dict())
    missing = sorted(k for k in expected - set(state) if "rotary" not in k and not _is_tied(twin, k))
    if missing:
        raise RuntimeError(f"could not rebuild a plain twin of the model: missing weights {missing[:5]}")
    twin.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        twin.tie_weights()
    _init_buffers(twin, hf_model)
    return twin.eval()


def _plain_key(key: str) -> str:
    parts = [p for p in (q.lstrip("_") for q in key.split(".")) if p != "original_component"]
    return ".".join(parts)


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)


def _init_buffers(twin, source) -> None:
    """Materialise non-persistent buffers (rotary inv_freq) that were left on the meta device."""
    device = next(source.parameters()).device
    for module_name, module in twin.named_modules():
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if "rotary" in module_name or name == "inv_freq":
                    with torch.device(device):
                        fresh = type(module)(config=twin.config)
                    for n2, b2 in fresh._buffers.items():
                        module._buffers[n2] = b2
                    if hasattr(fresh, "original_inv_freq"):
                        module.original_inv_freq = fresh.original_inv_freq
                    break
                raise RuntimeError(f"buffer {module_name}.{name} has no value on the plain twin")
