"""nnsight engine: the same site hooks through nnsight's tracing (local, or NDIF with ``remote``).

Module paths come from the architecture table (:mod:`interp.architectures`), so every family it
describes runs here, with the site meanings of :mod:`interp.torch_sites` (``hook_attn_out`` /
``hook_mlp_out`` after a post-norm, ``hook_resid_mid`` = resid_pre + attn_out, ``logits`` after
final softcapping).

Locally, nnsight wraps a *plain twin* of the model (:func:`interp.plain.plain_twin`: same weight
storage, its own modules), never the user's object, and the twin runs the tapped attention of
:mod:`interp.attention`; the attention internals (``hook_rot_q/rot_k``, ``hook_attn_scores``,
``hook_pattern``) are its ``tap_*`` operations, reached with nnsight's ``.source``.  On NDIF
(``remote=True``) the served model is used as it is: there the internals are the inputs of the
attention call and the softmax inside the model's own eager attention function, and the served
model must run eager attention.

nnsight requires modules to be touched in execution order, so hooks are sorted by
:meth:`interp.sites.Site.sort_key` before the trace.
"""
from __future__ import annotations

from itertools import groupby
from typing import Sequence

import torch

from interp.architectures import architecture_of
from interp.engines.base import ATTENTION_WEIGHT_HOOKS, Engine, HookFn, apply_hooks, facts_from_hf_config
from interp.sites import Site
from interp.torch_sites import check_site_exists

_TAP_OPS = {"attn.hook_rot_q": "tap_rot_q_0", "attn.hook_rot_k": "tap_rot_k_0",
            "attn.hook_attn_scores": "tap_scores_0", "attn.hook_pattern": "tap_pattern_0"}
SOFTMAX_OP = "nn_functional_softmax_0"


def _envoy(root, path: str):
    obj = root
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


class NNsightEngine(Engine):
    name = "nnsight"

    def __init__(self, nn_model, *, remote: bool | str = False, tapped: bool = False):
        self.nn = nn_model
        self.remote = remote
        self.tapped = tapped
        self.served_by = ("nnsight's wrapper on a plain eager twin (shared weights, tapped attention)" if tapped
                          else "the nnsight model as given (NDIF)" if remote is True else "the nnsight model as given")
        model = nn_model._module
        self.arch = architecture_of(model)
        self.tokenizer = getattr(nn_model, "tokenizer", None)
        self.facts = facts_from_hf_config(model.config)
        self._layers = _envoy(nn_model, self.arch.layers)
        # nnsight instruments a module's forward for ``.source`` on first access, which must
        # happen before that module runs: do it for every layer's attention up front.
        for i in range(self.facts.n_layers):
            _envoy(self._layers[i], self.arch.attn).source
        self._attn_op = _attention_op_name(_envoy(self._layers[0], self.arch.attn))

    @classmethod
    def from_hf(cls, hf_model, tokenizer, *, remote: bool | str = False) -> "NNsightEngine":
        """Wrap a plain twin of ``hf_model`` (shared weights, tapped attention): the user's model
        and tokenizer are never wrapped or changed."""
        import copy

        from nnsight.modeling.transformers import TransformersModel

        from interp.attention import use_tapped
        from interp.plain import plain_twin

        twin = use_tapped(plain_twin(hf_model))
        # nnsight sets the tokenizer's padding side: give it a copy, keep the caller's as it is
        engine = cls(TransformersModel(twin, tokenizer=copy.deepcopy(tokenizer)), remote=remote, tapped=True)
        engine.tokenizer = tokenizer
        return engine

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.nn._module

    @property
    def attn_implementation(self) -> str:
        return getattr(self.hf_model.config, "_attn_implementation", None) or "eager"

    def check_sites(self, sites: Sequence[Site]) -> None:
        for s in sites:
            check_site_exists(self.arch, self.hf_model.config, s)
        if self.tapped:
            return
        needs_weights = sorted({s.name for s in sites if s.hook in ATTENTION_WEIGHT_HOOKS})
        if needs_weights and self.attn_implementation != "eager":
            raise ValueError(
                f"sites {needs_weights[:3]}{'...' if len(needs_weights) > 3 else ''} need attention weights, but this "
                f"model runs attn_implementation={self.attn_implementation!r}, which never materialises them. Fix: load "
                "the model with attn_implementation='eager' (load_model(..., attn_implementation='eager') does that "
                "for you), or call model.set_attn_implementation('eager') on your transformers model."
            )

    def W_O(self, layer: int) -> torch.Tensor:
        return self.arch.W_O(self.hf_model, layer, self.facts.n_heads, self.facts.d_head)

    def b_O(self, layer: int) -> torch.Tensor | None:
        b = self.arch.b_O(self.hf_model, layer)
        return None if b is None or not bool(b.any()) else b

    def forward(self, input_ids, attention_mask, position_ids, hooks: Sequence[tuple[Site, HookFn]], store: dict | None = None,
                keep: int | torch.Tensor | None = None) -> torch.Tensor:
        import nnsight

        ordered = sorted(hooks, key=lambda item: item[0].sort_key())  # stable: same-site order kept
        grouped = [(site, [fn for _, fn in group]) for site, group in groupby(ordered, key=lambda item: item[0])]
        nn = self.nn
        saved = store if store is not None else {}
        extra = {} if keep is None else {"logits_to_keep": keep}
        with nn.trace(input_ids, attention_mask=attention_mask, position_ids=position_ids, remote=self.remote, **extra):
            embed = [fns for site, fns in grouped if site.hook == "hook_embed"]
            if embed:
                env = _envoy(nn, self.arch.embed)
                new = apply_hooks(env.output, embed[0])
                if new is not None:
                    env.output = new
            for layer, items in groupby([g for g in grouped if g[0].layer is not None], key=lambda g: g[0].layer):
                self._visit_layer(layer, {site.hook: fns for site, fns in items}, input_ids.shape)
            out = nn.output
            logits = out["logits"]
            new = apply_hooks(logits, [fn for site, fns in grouped if site.hook == "logits" for fn in fns])
            if new is not None:
                out["logits"] = new
                logits = new
            logits = logits.save()
            # Captures are written into ``store`` inside the trace; saving it is what brings them
            # back from NDIF (locally it is the same object).
            saved = nnsight.save(saved)
        if store is not None and saved is not store:
            store.update(saved)
        return logits

    # --- site access, in execution order within one layer -------------------------------------------
    def _visit_layer(self, index: int, fns: dict, shape) -> None:
        b, p = shape
        f, arch = self.facts, self.arch
        layer = self._layers[index]
        attn = _envoy(layer, arch.attn)
        pre = None
        if "hook_resid_pre" in fns or "hook_resid_mid" in fns:
            pre = layer.input
            new = apply_hooks(pre, fns.get("hook_resid_pre", []))
            if new is not None:
                layer.input = new
                pre = new
        qkv_hooks = [h for h in ("attn.hook_q", "attn.hook_k", "attn.hook_v") if h in fns]
        if qkv_hooks:
            self._visit_qkv(attn, fns, qkv_hooks, b, p)
        internals = [h for h in _TAP_OPS if h in fns]
        if internals:
            self._visit_internals(attn, fns, internals)
        if "attn.hook_z" in fns:
            o = _envoy(attn, arch.o)
            new = apply_hooks(o.input.view(b, p, f.n_heads, f.d_head), fns["attn.hook_z"])
            if new is not None:
                o.input = new.reshape(b, p, -1)
        if "hook_attn_out" in fns or "hook_resid_mid" in fns:
            env = _envoy(layer, arch.post_attn_norm) if arch.post_attn_norm else attn
            out = env.output
            value = out[0] if isinstance(out, tuple) else out
            new = apply_hooks(value, fns.get("hook_attn_out", []))
            changed = new is not None
            value = new if changed else value
            if "hook_resid_mid" in fns:
                mid = apply_hooks(pre + value, fns["hook_resid_mid"])
                if mid is not None:
                    value, changed = mid - pre, True
            if changed:
                env.output = (value, *out[1:]) if isinstance(out, tuple) else value
        if "hook_mlp_out" in fns:
            env = _envoy(layer, arch.post_mlp_norm or arch.mlp)
            out = env.output
            flat = out.ndim == 2  # OPT's MLP runs on [batch * pos, d]
            new = apply_hooks(out.view(b, p, -1) if flat else out, fns["hook_mlp_out"])
            if new is not None:
                env.output = new.reshape(out.shape)
        if "hook_resid_post" in fns:
            out = layer.output
            is_tuple = isinstance(out, tuple)
            new = apply_hooks(out[0] if is_tuple else out, fns["hook_resid_post"])
            if new is not None:
                layer.output = (new, *out[1:]) if is_tuple else new

    def _visit_qkv(self, attn, fns, hooks, b, p) -> None:
        f, arch = self.facts, self.arch
        if arch.qkv is not None:
            env = _envoy(attn, arch.qkv)
            out = env.output
            parts = list(arch.split_qkv(out, f.n_heads, f.n_kv_heads, f.d_head))
            changed = False
            for h in hooks:
                i = "qkv".index(h[-1])
                new = apply_hooks(parts[i], fns[h])
                if new is not None:
                    parts[i], changed = new, True
            if changed:
                env.output = arch.join_qkv(*parts).reshape(out.shape)
            return
        for h in hooks:
            env = _envoy(attn, getattr(arch, h[-1]))
            new = apply_hooks(env.output.view(b, p, -1, f.d_head), fns[h])
            if new is not None:
                env.output = new.reshape(b, p, -1)

    def _visit_internals(self, attn, fns, hooks) -> None:
        call = getattr(attn.source, self._attn_op)
        if self.tapped:
            src = call.source
            for h in hooks:
                op = getattr(src, _TAP_OPS[h])
                value = op.output
                rot = h in ("attn.hook_rot_q", "attn.hook_rot_k")
                new = apply_hooks(value.transpose(1, 2) if rot else value, fns[h])
                if new is not None:
                    op.output = new.transpose(1, 2) if rot else new
            return
        # a served model's own eager attention: q/k are the call's inputs, scores/pattern the softmax's
        rot = [h for h in hooks if h in ("attn.hook_rot_q", "attn.hook_rot_k")]
        if rot:
            args = call.inputs[0]
            for h in rot:
                i = 1 if h == "attn.hook_rot_q" else 2
                new = apply_hooks(args[i].transpose(1, 2), fns[h])
                if new is not None:
                    raise ValueError(f"{h}: editing queries/keys on a served model is not supported; edit attn.hook_q/hook_k")
        weights = [h for h in hooks if h in ATTENTION_WEIGHT_HOOKS]
        if weights:
            softmax = getattr(call.source, SOFTMAX_OP)
            if "attn.hook_attn_scores" in weights:
                new = apply_hooks(softmax.input, fns["attn.hook_attn_scores"])
                if new is not None:
                    softmax.input = new
            if "attn.hook_pattern" in weights:
                new = apply_hooks(softmax.output, fns["attn.hook_pattern"])
                if new is not None:
                    softmax.output = new


def _attention_op_name(attn_envoy) -> str:
    """Name of the call to the attention function inside the attention module's forward (the
    last ``attention_interface_*`` op in current transformers)."""
    names = [n for n in attn_envoy.source.names if n.startswith("attention_interface")]
    if not names:
        raise NotImplementedError(
            "could not find the attention-function call inside the attention module's forward; this transformers "
            "version is not supported by the nnsight engine: use engine='transformer-lens'"
        )
    return names[-1]
