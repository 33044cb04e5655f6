"""The protocol block every results.json carries: what was run, so a number can be re-derived.

- from the model: BOS policy, dtype, attention implementation, a SHA-256 of the weights
  (:func:`interp.finetune.parameter_hash`), the versions of torch, transformers,
  transformer-lens and nnsight;
- from the prompts (:func:`batch_protocol`): tokenisation (whole-text or piecewise), template,
  padding side, label policy, tokens straddling two prompt pieces;
- from the analysis: its own named choices (span rule, weighting, GD configuration, ...).

Everything in it is deterministic, so the same seed still gives a byte-identical results.json.
"""
from __future__ import annotations

from dataclasses import asdict
from importlib import metadata

PACKAGES = ("torch", "transformers", "transformer-lens", "nnsight")


def package_versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_protocol(model) -> dict:
    """The model's part of the protocol (a :class:`~interp.model.Model`)."""
    from interp.finetune import parameter_hash

    hf = model.hf_model
    config = getattr(hf, "config", None)
    return {
        "bos": model.bos_policy if hasattr(model, "bos_policy") else None,
        "dtype": str(next(hf.parameters()).dtype).replace("torch.", ""),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "weights_sha256": parameter_hash(model),
        "versions": package_versions(),
    }


def template_protocol(template, padding_side: str = "left") -> dict:
    """The prompt format's part of the protocol, from the task's template."""
    return {"tokenisation": template.tokenisation, "template": asdict(template), "padding_side": padding_side}


def batch_protocol(batch) -> dict:
    """The prompts' part of the protocol (an :class:`~interp.prompts.IclBatch`)."""
    return {
        "tokenisation": batch.tokenisation,
        "template": asdict(batch.template),
        "padding_side": batch.padding_side,
        "label_policy": None if batch.label_words is None else batch.label_words.policy,
        "straddling_tokens": int(sum(batch.straddles)) if batch.straddles else 0,
    }
