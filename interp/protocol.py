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
    first = next(hf.parameters())
    return {
        "bos": model.bos_policy if hasattr(model, "bos_policy") else None,
        "dtype": str(first.dtype).replace("torch.", ""),
        "attn_implementation": getattr(config, "_attn_implementation", None),
        # a model served remotely (NDIF) has no local weights to hash
        "weights_sha256": None if first.is_meta else parameter_hash(model),
        "versions": package_versions(),
    }


def task_protocol(task) -> dict:
    """Which task ran: its name, where it was read from, and a SHA-256 of its content (examples,
    test examples, label words, label policy, template)."""
    import hashlib
    import json

    def rows(examples):
        return None if examples is None else [[e.input, e.output, e.label] for e in examples]

    content = {"examples": rows(task.examples), "test_examples": rows(task.test_examples), "label_words": task.label_words,
               "label_policy": getattr(task, "label_policy", None), "template": asdict(task.template), "kind": task.kind}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"task": task.name, "task_source": getattr(task, "source", None), "task_sha256": digest,
            "label_policy": getattr(task, "label_policy", None)}


def template_protocol(template, padding_side: str = "left") -> dict:
    """The prompt format's part of the protocol, from the task's template."""
    return {"tokenisation": template.tokenisation, "template": asdict(template), "padding_side": padding_side}


def batch_protocol(batch) -> dict:
    """The prompts' part of the protocol (an :class:`~interp.prompts.IclBatch`)."""
    return {
        **template_protocol(batch.template, batch.padding_side),
        "tokenisation": batch.tokenisation,  # the batch's own: an argument may override the template's
        "label_policy": None if batch.label_words is None else batch.label_words.policy,
        "straddling_tokens": int(sum(batch.straddles)) if batch.straddles else 0,
    }
