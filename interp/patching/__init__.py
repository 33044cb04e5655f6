"""Patching: exact activation patching, attribution patching, and the layer runner they share."""
from interp.patching.activation import PatchingResult, patch_heads, patch_layer_outputs, patch_residual
from interp.patching.metrics import kl_to, label_logit_diff, logit_diff, normalised_recovery, target_prob
from interp.patching.runner import DecoderRunner

__all__ = [
    "DecoderRunner", "PatchingResult", "kl_to", "label_logit_diff", "logit_diff", "normalised_recovery",
    "patch_heads", "patch_layer_outputs", "patch_residual", "target_prob",
]
