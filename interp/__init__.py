"""icl-interp core: models, engines, sites, ICL prompts, capture, edits."""
from interp.capture import Activations, Capture
from interp.edits import Ablate, AddVector, AttentionKnockout, BlockAttentionPairs, Patch, ScaleAttention
from interp.embedded import DEFAULT_MODEL, EMBEDDED_MODELS
from interp.loading import load_model
from interp.model import Model, RunResult

__all__ = [
    "Ablate", "Activations", "AddVector", "AttentionKnockout", "BlockAttentionPairs", "Capture", "DEFAULT_MODEL", "EMBEDDED_MODELS",
    "Model", "Patch", "RunResult", "ScaleAttention", "load_model",
]
