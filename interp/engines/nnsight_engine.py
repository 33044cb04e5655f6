"""nnsight engine: the same site hooks through nnsight's tracing (local, or NDIF with ``remote``).

Sites map onto the transformers module tree of Llama-style decoders (Llama, Mistral, Qwen2,
SmolLM, ...: ``model.layers[i].self_attn.{q,k,v,o}_proj``, ``mlp``, ``post_attention_layernorm``).
Values inside the attention function (RoPE output, pre-softmax scores, pattern) are reached with
nnsight's ``.source``, which needs the eager attention implementation: sdpa and flash attention
never materialise the pattern.

nnsight requires modules to be touched in execution order, so hooks are sorted by
:meth:`interp.sites.Site.sort_key` before the trace.  nnsight wraps the model without registering
hooks on it; the model the user passed in keeps behaving as before.
"""
from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch

from interp.engines.base import ATTENTION_WEIGHT_HOOKS, Engine, HookFn, apply_hooks, facts_from_hf_config
from interp.sites import Site

ROTARY_OP = "apply_rotary_pos_emb_0"
SOFTMAX_OP = "nn_functional_softmax_0"


class NNsightEngine(Engine):
    name = "nnsight"

    def __init__(self, nn_model, *, remote: bool | str = False):
        self.nn = nn_model
        self.remote = remote
        model = nn_model._module
        self.tokenizer = getattr(nn_model, "tokenizer", None)
        self.facts = facts_from_hf_config(model.config)
        if not hasattr(model, "model") or not hasattr(model.model, "layers"):
            raise NotImplementedError(
                f"the nnsight engine reaches Llama-style decoders (model.model.layers[i].self_attn); "
                f"{type(model).__name__} is not one: use engine='transformer-lens'"
            )
        # nnsight instruments a module's forward for ``.source`` on first access, which must
        # happen before that module runs: do it for every layer up front.
        for layer in nn_model.model.layers:
            layer.source, layer.self_attn.source
        self._attn_op = _attention_op_name(nn_model.model.layers[0].self_attn)
        self._resid_mid_op = _resid_mid_op_name(nn_model.model.layers[0])

    @classmethod
    def from_hf(cls, hf_model, tokenizer, *, remote: bool | str = False) -> "NNsightEngine":
        import copy

        from nnsight.modeling.transformers import TransformersModel

        # nnsight sets the tokenizer's padding side: give it a copy, keep the caller's as it is
        engine = cls(TransformersModel(hf_model, tokenizer=copy.deepcopy(tokenizer)), remote=remote)
        engine.tokenizer = tokenizer
        return engine

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.nn._module

    @property
    def attn_implementation(self) -> str:
        return getattr(self.hf_model.config, "_attn_implementation", None) or "eager"

    def check_sites(self, sites: Sequence[Site]) -> None:
        needs_weights = sorted({s.name for s in sites if s.hook in ATTENTION_WEIGHT_HOOKS | {"attn.hook_rot_q", "attn.hook_rot_k"}})
        if needs_weights and self.attn_implementation != "eager":
            raise ValueError(
                f"sites {needs_weights[:3]}{'...' if len(needs_weights) > 3 else ''} need attention weights, but this "
                f"model runs attn_implementation={self.attn_implementation!r}, which never materialises them. Fix: load "
                "the model with attn_implementation='eager' (load_model(..., attn_implementation='eager') does that "
                "for you), or call model.set_attn_implementation('eager') on your transformers model."
            )

    def W_O(self, layer: int) -> torch.Tensor:
        f = self.facts
        weight = self.hf_model.model.layers[layer].self_attn.o_proj.weight  # [d_model, head*d_head]
        return weight.T.reshape(f.n_heads, f.d_head, f.d_model)

    def b_O(self, layer: int) -> torch.Tensor | None:
        return self.hf_model.model.layers[layer].self_attn.o_proj.bias

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                last_only: bool = False) -> torch.Tensor:
        import nnsight

        ordered = sorted(hooks, key=lambda item: item[0].sort_key())  # stable: same-site order kept
        grouped = [(site, [fn for _, fn in group]) for site, group in groupby(ordered, key=lambda item: item[0])]
        nn = self.nn
        saved = store if store is not None else {}
        extra = {"logits_to_keep": 1} if last_only else {}
        with nn.trace(input_ids, attention_mask=attention_mask, position_ids=position_ids, remote=self.remote, **extra):
            for site, fns in grouped:
                if site.hook != "logits":
                    self._visit(site, fns, input_ids.shape)
            logits = nn.lm_head.output
            new = apply_hooks(logits, [fn for site, fns in grouped if site.hook == "logits" for fn in fns])
            if new is not None:
                nn.lm_head.output = new
                logits = new
            logits = logits.save()
            # Captures are written into ``store`` inside the trace; saving it is what brings them
            # back from NDIF (locally it is the same object).
            saved = nnsight.save(saved)
        if store is not None and saved is not store:
            store.update(saved)
        return logits

    # --- site access -------------------------------------------------------------------------
    def _visit(self, site: Site, fns: Sequence[HookFn], shape) -> None:
        """Read the site's value (in TransformerLens layout), run the hooks, write back edits."""
        b, p = shape
        f = self.facts
        if site.layer is None:  # hook_embed
            env = self.nn.model.embed_tokens
            new = apply_hooks(env.output, fns)
            if new is not None:
                env.output = new
            return
        layer = self.nn.model.layers[site.layer]
        attn = layer.self_attn
        hook = site.hook
        if hook == "hook_resid_pre":
            new = apply_hooks(layer.input, fns)
            if new is not None:
                layer.input = new
        elif hook in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
            proj = {"attn.hook_q": attn.q_proj, "attn.hook_k": attn.k_proj, "attn.hook_v": attn.v_proj}[hook]
            new = apply_hooks(proj.output.view(b, p, -1, f.d_head), fns)
            if new is not None:
                proj.output = new.reshape(b, p, -1)
        elif hook in ("attn.hook_rot_q", "attn.hook_rot_k"):
            op = getattr(attn.source, ROTARY_OP)
            q, k = op.output  # [b, head, pos, d_head]
            i = 0 if hook == "attn.hook_rot_q" else 1
            new = apply_hooks((q, k)[i].transpose(1, 2), fns)
            if new is not None:
                out = [q, k]
                out[i] = new.transpose(1, 2)
                op.output = tuple(out)
        elif hook in ATTENTION_WEIGHT_HOOKS:
            softmax = getattr(getattr(attn.source, self._attn_op).source, SOFTMAX_OP)
            if hook == "attn.hook_attn_scores":
                new = apply_hooks(softmax.input, fns)
                if new is not None:
                    softmax.input = new
            else:
                new = apply_hooks(softmax.output, fns)
                if new is not None:
                    softmax.output = new
        elif hook == "attn.hook_z":
            new = apply_hooks(attn.o_proj.input.view(b, p, f.n_heads, f.d_head), fns)
            if new is not None:
                attn.o_proj.input = new.reshape(b, p, -1)
        elif hook == "hook_attn_out":
            out = attn.output
            new = apply_hooks(out[0], fns)
            if new is not None:
                attn.output = (new, *out[1:])
        elif hook == "hook_resid_mid":
            # the residual add after attention: writing its output updates both the MLP's input
            # and the residual carried past the MLP
            op = getattr(layer.source, self._resid_mid_op)
            new = apply_hooks(op.output, fns)
            if new is not None:
                op.output = new
        elif hook == "hook_mlp_out":
            new = apply_hooks(layer.mlp.output, fns)
            if new is not None:
                layer.mlp.output = new
        elif hook == "hook_resid_post":
            out = layer.output
            is_tuple = isinstance(out, tuple)
            new = apply_hooks(out[0] if is_tuple else out, fns)
            if new is not None:
                layer.output = (new, *out[1:]) if is_tuple else new
        else:  # pragma: no cover - parse_site only lets known hooks through
            raise ValueError(f"the nnsight engine cannot reach {site.name}")


def _attention_op_name(attn_envoy) -> str:
    """Name of the call to the attention function inside ``self_attn.forward`` (the last
    ``attention_interface_*`` op in current transformers)."""
    names = [n for n in attn_envoy.source.names if n.startswith("attention_interface")]
    if not names:
        raise NotImplementedError(
            "could not find the attention-function call inside self_attn.forward; this transformers "
            "version is not supported by the nnsight engine: use engine='transformer-lens'"
        )
    return names[-1]


def _resid_mid_op_name(layer_envoy) -> str:
    """Name of ``hidden_states = residual + attn_output`` inside the decoder layer's forward:
    the first ``hidden_states_*`` op after the self-attention call."""
    names = list(layer_envoy.source.names)
    attn = [i for i, n in enumerate(names) if n.startswith("self_self_attn")]
    after = [n for n in names[attn[0] + 1:] if n.startswith("hidden_states")] if attn else []
    if not after:
        raise NotImplementedError(
            "could not find the residual add after attention inside the decoder layer; this "
            "architecture is not supported by the nnsight engine: use engine='transformer-lens'"
        )
    return after[0]
