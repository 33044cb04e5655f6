"""A plain transformers model that shares another model's weights.

Engines may convert the model they run (the TransformerLens bridge wraps every submodule).  Code
that runs its own forward passes (the plain-PyTorch engine, the fast paths, the GD counterpart)
uses this plain twin instead: the same parameter *storage*, its own module and ``Parameter``
objects (so the source's ``requires_grad`` flags and hooks are never touched), eager attention.
"""
from __future__ import annotations

import copy

import torch


def plain_twin(hf_model: torch.nn.Module, *, share_weights: bool = True) -> torch.nn.Module:
    """A plain eager transformers model with ``hf_model``'s weights (shared storage, not copied,
    unless ``share_weights=False``).  Works on bridge-converted and nnsight-wrapped models; the
    source model is left exactly as it was."""
    from transformers import AutoModelForCausalLM

    hf_model = getattr(hf_model, "_module", hf_model)  # an nnsight wrapper
    config = copy.deepcopy(hf_model.config)
    config._attn_implementation = "eager"
    if not getattr(config, "architectures", None):
        config.architectures = [type(hf_model).__name__]
    dtype = next(hf_model.parameters()).dtype
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=dtype)
    # a bridge-converted model names its weights "_self_attn._q_proj._weight" or
    # "original_component.weight" (plus alias duplicates): map back to the transformers names
    source = {}
    for key, value in hf_model.state_dict(keep_vars=True).items():
        source.setdefault(_plain_key(key), value)
    for key, value in hf_model.named_buffers():
        source.setdefault(_plain_key(key), value)
    expected = dict(twin.named_parameters(remove_duplicate=False))
    missing = sorted(k for k in expected if k not in source and not _is_tied(twin, k))
    if missing:
        raise RuntimeError(f"could not rebuild a plain twin of the model: missing weights {missing[:5]}")
    made: dict[int, torch.nn.Parameter] = {}  # one Parameter per source tensor: tied weights stay tied
    for name, meta_param in expected.items():
        if name not in source:
            continue
        key = id(source[name])
        if key not in made:
            src = source[name].detach()
            value = src if share_weights else src.clone()
            made[key] = torch.nn.Parameter(value, requires_grad=bool(getattr(source[name], "requires_grad", False)))
        _set(twin, name, made[key])
    if any(_is_tied(twin, k) and k not in source for k in expected):
        twin.tie_weights()
    _init_buffers(twin, source, next(hf_model.parameters()).device)
    return twin.eval()


def _set(model, name: str, value) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if isinstance(value, torch.nn.Parameter):
        module._parameters[attr] = value
    else:
        module._buffers[attr] = value


def _plain_key(key: str) -> str:
    parts = [p for p in (q.lstrip("_") for q in key.split(".")) if p != "original_component"]
    return ".".join(parts)


def _is_tied(model, key: str) -> bool:
    return key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)


def _init_buffers(twin, source: dict, device) -> None:
    """Buffers left on the meta device (rotary inv_freq, Gemma's embed_scale): the source's value
    where it has one, else the module's own initialiser (rotary embeddings)."""
    for module_name, module in twin.named_modules():
        for name, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            full = f"{module_name}.{name}" if module_name else name
            if full in source:
                module._buffers[name] = source[full].detach().clone()
                continue
            if "rotary" in module_name or "inv_freq" in name:
                with torch.device(device):
                    fresh = type(module)(config=twin.config)
                for n2, b2 in fresh._buffers.items():
                    module._buffers[n2] = b2
                for attr in ("original_inv_freq",):
                    if hasattr(fresh, attr):
                        setattr(module, attr, getattr(fresh, attr))
                break
            raise RuntimeError(f"buffer {full} has no value on the plain twin and none on the model it copies")
    for module_name, module in twin.named_modules():  # non-buffer tensors some rotary modules keep
        for attr, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                full = f"{module_name}.{attr}" if module_name else attr
                if full in source:
                    setattr(module, attr, source[full].detach().clone())
