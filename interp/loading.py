"""``load_model``: build the :class:`~interp.model.Model` facade from whatever the user has.

Accepted: an embedded model name (``smollm2-135m``, the default, or ``gemma3-270m``), a local folder or Hugging Face id
(hub only when online), an already-loaded ``transformers`` model, a TransformerLens
``TransformerBridge``, or an nnsight model.  The engine is ``transformer-lens`` (default) or
``nnsight``; a bridge or an nnsight model fixes the engine to its own.

A model the user passes in is never changed: the TransformerLens engine boots its bridge on a
deep copy (booting converts a model in place), the nnsight engine wraps a plain twin that shares
its weights (:func:`interp.plain.plain_twin`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from interp.embedded import DEFAULT_MODEL, EMBEDDED_MODELS, load_embedded, unknown_model_message
from interp.model import Model

ENGINES = ("transformer-lens", "nnsight")
EngineName = Literal["transformer-lens", "nnsight"]


def load_model(
    model=DEFAULT_MODEL,
    *,
    engine: EngineName = "transformer-lens",
    tokenizer=None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = "eager",
    remote: bool | str = False,
) -> Model:
    """Build a :class:`Model`.

    ``attn_implementation``: for models loaded here, the attention implementation to load with
    (eager, so attention weights exist).  For a transformers model you pass in, ``"eager"`` makes
    the nnsight engine work on an eager copy when yours runs sdpa; ``None`` keeps yours as it is.
    ``remote``: nnsight only; ``True`` runs on NDIF (hub model ids), ``"local"`` dry-runs the
    serialisation offline.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {ENGINES}")
    if remote and engine != "nnsight":
        raise ValueError("remote= runs through NDIF, which is the nnsight engine: pass engine='nnsight'")

    kind = _kind(model)
    if kind == "hooked-module":
        from interp.engines.hooked_module import HookedModuleEngine

        if engine == "nnsight" or remote:
            raise ValueError("the project's own HookedRootModule models run on their hook points: leave engine= and remote= at their defaults")
        return Model(HookedModuleEngine(model), name=type(model).__name__, tokenizer=tokenizer)
    if kind == "bridge":
        from interp.engines.transformer_lens import TransformerLensEngine

        if tokenizer is None:
            tokenizer = _tokenizer_before_transformer_lens(model.tokenizer)
        return Model(TransformerLensEngine.for_bridge(model, tokenizer), name=getattr(model.cfg, "model_name", "bridge"), tokenizer=tokenizer)
    if kind == "nnsight":
        from interp.engines.nnsight_engine import NNsightEngine

        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        name = type(model._module).__name__
        if remote is True:  # the served model runs as it is
            return Model(NNsightEngine(model, remote=remote), name=name, tokenizer=tokenizer)
        # locally: our own nnsight wrapper around a plain twin (shared weights); the user's
        # nnsight model and the module inside it are left as they are
        return Model(NNsightEngine.from_hf(model._module, tokenizer, remote=remote), name=name, tokenizer=tokenizer)

    owned = kind == "name"
    if kind == "name":
        name = str(model)
        if engine == "nnsight" and remote is True and name not in EMBEDDED_MODELS:
            return _remote_nnsight(name, tokenizer)
        hf_model, tok = _load_by_name(name, attn_implementation or "eager", dtype)
        tokenizer = tokenizer or tok
    else:  # a transformers model the user passed in
        name = getattr(model.config, "_name_or_path", None) or type(model).__name__
        hf_model = model
        if tokenizer is None:
            raise ValueError("pass tokenizer= with a transformers model (the facade needs it for prompts)")
    if device is not None:
        if not owned:
            raise ValueError("device= moves models loaded here; move your own model before passing it in")
        hf_model = hf_model.to(device)

    if engine == "transformer-lens":
        from interp.engines.transformer_lens import TransformerLensEngine

        eng = TransformerLensEngine.from_hf(hf_model, tokenizer, copy_model=not owned, name=name)
    else:
        from interp.engines.nnsight_engine import NNsightEngine

        # a plain twin of hf_model (shared weights, eager tapped attention) is what nnsight wraps
        eng = NNsightEngine.from_hf(hf_model, tokenizer, remote=remote)
    return Model(eng, name=name, tokenizer=tokenizer)


def _tokenizer_before_transformer_lens(tokenizer):
    """The tokenizer a bridge was booted with, as its files define it.  Booting reloads a
    tokenizer that does not prepend BOS with ``add_bos_token=True``, so prompts built with the
    bridge's tokenizer would start with a BOS the model's own tokenizer never adds; the saved
    tokenizer is reloaded from its local folder without that override.  When it cannot be (no
    local files), the bridge's tokenizer is kept with a warning: pass ``tokenizer=``."""
    import warnings

    if tokenizer is None or not getattr(tokenizer, "add_bos_token", False):
        return tokenizer
    kwargs = dict(getattr(tokenizer, "init_kwargs", {}))
    path = kwargs.pop("name_or_path", None)
    for key in ("add_bos_token", "local_files_only", "is_local"):
        kwargs.pop(key, None)
    try:
        from transformers import AutoTokenizer

        saved = AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)
    except Exception:  # noqa: BLE001 - any failure: keep the bridge's tokenizer, say so
        warnings.warn("load_model(bridge): the bridge's tokenizer prepends BOS (TransformerLens sets add_bos_token=True) "
                      "and the tokenizer's own files could not be reloaded; prompts will start with BOS. Pass tokenizer= "
                      "(the tokenizer you booted the bridge with) to build prompts as the model's tokenizer does.", stacklevel=3)
        return tokenizer
    return saved if not getattr(saved, "add_bos_token", False) else tokenizer


def _kind(model) -> str:
    if isinstance(model, (str, Path)):
        return "name"
    cls_names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in cls_names:
        return "bridge"
    if "HookedRootModule" in cls_names:
        return "hooked-module"
    if "NNsight" in cls_names or "Envoy" in cls_names:
        return "nnsight"
    if isinstance(model, torch.nn.Module) and hasattr(model, "config"):
        return "transformers"
    raise TypeError(
        f"cannot build a model from {type(model).__name__}: pass an embedded name ({', '.join(EMBEDDED_MODELS)}), "
        "a local folder or Hugging Face id, a transformers model, a TransformerBridge or an nnsight model"
    )


def _load_by_name(name: str, attn_implementation: str, dtype):
    if name in EMBEDDED_MODELS:
        return load_embedded(name, attn_implementation=attn_implementation, dtype=dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_local = Path(name).exists()
    if not is_local and ("/" not in name or name.startswith((".", "/"))):
        raise ValueError(unknown_model_message(name))
    try:
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation=attn_implementation, dtype=dtype or torch.float32)
        tok = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise ValueError(unknown_model_message(name) + f" (loading {name!r} failed: {err})") from err
    model.eval()
    return model, tok


def _remote_nnsight(name: str, tokenizer) -> Model:
    """A hub model on NDIF: nnsight loads only its config (meta weights); every run is remote."""
    from nnsight import LanguageModel

    from interp.engines.nnsight_engine import NNsightEngine

    nn_model = LanguageModel(name, tokenizer=tokenizer) if tokenizer is not None else LanguageModel(name)
    return Model(NNsightEngine(nn_model, remote=True), name=name)
