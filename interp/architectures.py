"""The architecture table: one declared description per model family, registered by ``model_type``.

Everything in the project that touches a transformers model's internals (the nnsight engine, the
plain-PyTorch reference, the fast paths of :mod:`interp.patching.runner`, the GD counterpart's
parameter groups, verify, random init) reads module paths and facts from here; no other module
names a submodule.  The shape follows pyvene's per-model mapping files and TransformerLens's
``supported_architectures`` adapters: a family is a small record of

- module paths: the decoder layers, embeddings (token; learned positions if any), final norm,
  unembedding; per layer the attention module and its projections (separate q/k/v, or one fused
  projection with its split), the output projection, the MLP (or the module whose output is the
  MLP's contribution), the norms by role;
- norm placement by role: ``ln_attn`` / ``ln_mlp`` normalise a sublayer's *input* (pre-norm);
  ``post_attn_norm`` / ``post_mlp_norm`` normalise a sublayer's *output* before it is added to the
  residual (Gemma 2/3 "sandwich", OLMo-2 post-norm); ``q_norm`` / ``k_norm`` per head or over all
  heads;
- positions (learned absolute, rotary full or partial), parallel attention + MLP, softcapping of
  attention scores and final logits, embedding scale, per-layer sliding windows, biases, head_dim
  — read from the config where the config states them.

Site meanings that follow from the table (the README's site table states them):
``hook_attn_out`` / ``hook_mlp_out`` are what the sublayer adds to the residual stream (after a
post-norm); ``hook_resid_mid`` is the residual between the two sublayers (a parallel block has
none); ``logits`` are after final softcapping; attention internals are what the attention
function receives (:mod:`interp.attention`).

:func:`architecture_of` raises :class:`UnsupportedArchitecture` for a family not in the table,
naming it and the supported ones.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

FusedSplit = Literal["blocks", "per_head"]


@dataclass(frozen=True)
class Architecture:
    """How one model family lays out its modules and computes a block.

    Paths are dotted attribute paths: model-level ones from the ``*ForCausalLM`` object, layer
    roles from one decoder layer, attention roles from the attention module.  None = the family
    has no such module.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embed: str
    final_norm: str
    unembed: str = "lm_head"
    pos_embed: str | None = None  # learned absolute position embeddings
    rotary: str | None = None  # model-level rotary embedding module
    # --- per layer ---
    attn: str = "self_attn"
    q: str | None = "q_proj"
    k: str | None = "k_proj"
    v: str | None = "v_proj"
    qkv: str | None = None  # one fused projection instead of q/k/v
    qkv_split: FusedSplit = "blocks"  # [q heads | k heads | v heads], or per head [q_h k_h v_h]
    o: str = "o_proj"
    conv1d: bool = False  # GPT-2's Conv1D stores weights [in, out]
    mlp: str = "mlp"  # the module whose output is the MLP's contribution (before a post-norm)
    mlp_in: str | None = None  # first MLP module, when the MLP is not one module (OPT: fc1)
    ln_attn: str | None = "input_layernorm"
    ln_mlp: str | None = "post_attention_layernorm"
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    q_norm: str | None = None
    k_norm: str | None = None
    qk_norm_scope: Literal["head", "all"] = "head"
    parallel: bool | Callable[[object], bool] = False
    positions: Literal["rotary", "partial_rotary", "learned"] = "rotary"
    # config attributes (None = the family has no such thing)
    attn_softcap_attr: str | None = None
    final_softcap_attr: str | None = None
    embed_scale: bool = False  # the token embedding is multiplied by sqrt(d_model) (Gemma)
    sliding_window_attr: str | None = None
    check: Callable[[object], str | None] | None = field(default=None, repr=False)

    # --- facts read from a config --------------------------------------------------------------
    def is_parallel(self, config) -> bool:
        return self.parallel(config) if callable(self.parallel) else bool(self.parallel)

    def softcaps(self, config) -> tuple[float | None, float | None]:
        """(attention-score softcap, final-logit softcap) of this config, None when off."""
        get = lambda attr: getattr(config, attr, None) if attr else None  # noqa: E731
        return get(self.attn_softcap_attr), get(self.final_softcap_attr)

    def sliding_windows(self, config) -> list[int | None]:
        """Per layer: the sliding window length, or None for full attention."""
        n = config.num_hidden_layers
        window = getattr(config, self.sliding_window_attr, None) if self.sliding_window_attr else None
        if not window:
            return [None] * n
        types = getattr(config, "layer_types", None)
        if types is None:
            return [window] * n
        return [window if t == "sliding_attention" else None for t in types]

    def record(self, config) -> dict:
        """What a results.json states about the model's architecture: the family entry and the
        facts of this config that change what the sites mean."""
        attn_cap, final_cap = self.softcaps(config)
        norms = "post" if self.ln_attn is None else ("sandwich" if self.post_attn_norm else "pre")
        windows = self.sliding_windows(config)
        return {
            "family": self.name, "model_type": getattr(config, "model_type", None),
            "qkv": ("fused " + self.qkv_split) if self.qkv else "separate",
            "norms": norms, "qk_norm": self.qk_norm_scope if self.q_norm else None,
            "positions": self.positions, "parallel_block": self.is_parallel(config),
            "attn_softcap": attn_cap, "final_softcap": final_cap, "embed_scale": self.embed_scale,
            "sliding_windows": windows if any(w is not None for w in windows) else None,
        }

    # --- module access --------------------------------------------------------------------------
    def layer_list(self, model) -> torch.nn.ModuleList:
        return model.get_submodule(self.layers)

    def layer(self, model, index: int) -> torch.nn.Module:
        return self.layer_list(model)[index]

    def sub(self, model, index: int, role: str) -> torch.nn.Module | None:
        """Module of ``role`` in layer ``index``: a layer role (``attn``, ``mlp``, ``ln_attn``,
        ...) or an attention role (``q``, ``k``, ``v``, ``qkv``, ``o``, ``q_norm``, ``k_norm``)."""
        layer = self.layer(model, index)
        if role in ATTN_ROLES:
            path = getattr(self, role)
            return None if path is None else layer.get_submodule(self.attn).get_submodule(path)
        path = self.attn if role == "attn" else getattr(self, role)
        return None if path is None else layer.get_submodule(path)

    def top(self, model, role: str) -> torch.nn.Module | None:
        """Model-level module: ``embed``, ``pos_embed``, ``final_norm``, ``unembed``, ``rotary``."""
        path = getattr(self, role)
        return None if path is None else model.get_submodule(path)

    @contextmanager
    def swapped_top(self, model, role: str, module: torch.nn.Module):
        """Context manager: the model-level module of ``role`` replaced by ``module`` inside
        (restored on exit, also on error).  For private copies only (the runner's twin)."""
        parent, _, name = getattr(self, role).rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        old = getattr(owner, name)
        setattr(owner, name, module)
        try:
            yield old
        finally:
            setattr(owner, name, old)

    def path(self, index: int, role: str) -> str | None:
        """Dotted path of ``role`` in layer ``index``, from the model (parameter-name prefixes)."""
        if role in ATTN_ROLES:
            sub = getattr(self, role)
            return None if sub is None else f"{self.layers}.{index}.{self.attn}.{sub}"
        sub = self.attn if role == "attn" else getattr(self, role)
        return None if sub is None else f"{self.layers}.{index}.{sub}"

    def role_prefixes(self, model, role: str) -> list[str]:
        """Parameter-name prefixes of a group of modules: ``embed`` (token and learned position
        embeddings), ``unembed``, ``norms`` (every norm: per layer by role, q/k norms, final),
        ``attn`` or ``mlp`` (every layer's)."""
        n = len(self.layer_list(model))
        if role == "embed":
            paths = [self.embed, self.pos_embed]
        elif role == "unembed":
            paths = [self.unembed]
        elif role == "norms":
            per_layer = ("ln_attn", "ln_mlp", "post_attn_norm", "post_mlp_norm", "q_norm", "k_norm")
            paths = [self.final_norm] + [self.path(l, r) for l in range(n) for r in per_layer]
        elif role in ("attn", "mlp"):
            paths = [self.path(l, role) for l in range(n)] + ([self.path(l, "mlp_in") for l in range(n)] if role == "mlp" else [])
        else:
            raise ValueError(f"unknown module group {role!r}: use embed, unembed, norms, attn or mlp")
        return [p + "." for p in paths if p]

    # --- weights in TransformerLens layout ----------------------------------------------------------
    def W_O(self, model, index: int, n_heads: int, d_head: int) -> torch.Tensor:
        """Output projection split per head: [head, d_head, d_model]."""
        w = self.sub(model, index, "o").weight
        w = w if self.conv1d else w.T  # [head * d_head, d_model]
        return w.reshape(n_heads, d_head, -1)

    def b_O(self, model, index: int) -> torch.Tensor | None:
        return getattr(self.sub(model, index, "o"), "bias", None)

    def split_qkv(self, out: torch.Tensor, n_heads: int, n_kv: int, d_head: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split a fused projection's output [b, p, ·] into q [b, p, head, d], k and v [b, p, kv, d]."""
        b, p = out.shape[:2]
        if self.qkv_split == "per_head":
            per = out.view(b, p, n_heads, 3 * d_head)
            return per[..., :d_head], per[..., d_head:2 * d_head], per[..., 2 * d_head:]
        q, k, v = out.split([n_heads * d_head, n_kv * d_head, n_kv * d_head], dim=-1)
        return q.view(b, p, n_heads, d_head), k.view(b, p, n_kv, d_head), v.view(b, p, n_kv, d_head)

    def join_qkv(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split_qkv`: [b, p, ·]."""
        b, p = q.shape[:2]
        if self.qkv_split == "per_head":
            return torch.cat([q, k, v], dim=-1).reshape(b, p, -1)
        return torch.cat([q.reshape(b, p, -1), k.reshape(b, p, -1), v.reshape(b, p, -1)], dim=-1)

    def kv_parameter_names(self, names, layer: int | None = None) -> list[str]:
        """Parameter names of the key and value projections of every layer, or only the value
        projection of ``layer`` (Shen et al.'s W_V).  A fused family gives its fused projection;
        :meth:`fused_rows` says which of its output features are keys and values."""
        import re

        index = r"\d+" if layer is None else str(layer)
        if self.qkv is not None:
            roles = re.escape(self.qkv)
        else:
            roles = "|".join(re.escape(getattr(self, r)) for r in (("k", "v") if layer is None else ("v",)))
        pattern = re.compile(rf"{re.escape(self.layers)}\.{index}\.{re.escape(self.attn)}\.({roles})\.")
        return [n for n in names if pattern.match(n)]

    def fused_rows(self, config, roles: tuple[str, ...]) -> torch.Tensor:
        """Bool over the fused projection's output features: True where the feature belongs to
        one of ``roles`` ("q", "k", "v"), in the layout :meth:`split_qkv` reads."""
        n_heads = config.num_attention_heads
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        d = getattr(config, "head_dim", None) or config.hidden_size // n_heads
        if self.qkv_split == "per_head":
            per = torch.tensor([r in roles for r in ("q", "k", "v")]).repeat_interleave(d)
            return per.repeat(n_heads)
        sizes = {"q": n_heads * d, "k": n_kv * d, "v": n_kv * d}
        return torch.cat([torch.full((sizes[r],), r in roles) for r in ("q", "k", "v")])


ATTN_ROLES = frozenset({"q", "k", "v", "qkv", "o", "q_norm", "k_norm"})


def _opt_check(config) -> str | None:
    if not getattr(config, "do_layer_norm_before", True):
        return "OPT with do_layer_norm_before=False (OPT-350m) normalises after the residual add, so no site is what a sublayer adds"
    if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
        return "OPT with word_embed_proj_dim != hidden_size projects embeddings in and out; not described yet"
    return None


_LLAMA = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", rotary="model.rotary_emb")

ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the table under each of its ``model_types``."""
    for t in arch.model_types:
        ARCHITECTURES[t] = arch
    return arch


register(Architecture("llama", ("llama", "mistral", "qwen2", "smollm3"), **_LLAMA, sliding_window_attr="sliding_window"))
register(Architecture("qwen3", ("qwen3",), **_LLAMA, q_norm="q_norm", k_norm="k_norm", sliding_window_attr="sliding_window"))
register(Architecture("phi3", ("phi3",), **_LLAMA, q=None, k=None, v=None, qkv="qkv_proj", qkv_split="blocks",
                      positions="partial_rotary", sliding_window_attr="sliding_window"))
register(Architecture("olmo2", ("olmo2",), **_LLAMA, ln_attn=None, ln_mlp=None, post_attn_norm="post_attention_layernorm",
                      post_mlp_norm="post_feedforward_layernorm", q_norm="q_norm", k_norm="k_norm", qk_norm_scope="all"))
register(Architecture("gemma2", ("gemma2",), **_LLAMA, ln_mlp="pre_feedforward_layernorm",
                      post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                      attn_softcap_attr="attn_logit_softcapping", final_softcap_attr="final_logit_softcapping",
                      embed_scale=True, sliding_window_attr="sliding_window"))
# Gemma 3 adds q/k norms and two rotary bases (per-layer rotary type); Gemma 1 has no post-norms.
register(Architecture("gemma3", ("gemma3_text",), **_LLAMA, ln_mlp="pre_feedforward_layernorm",
                      post_attn_norm="post_attention_layernorm", post_mlp_norm="post_feedforward_layernorm",
                      q_norm="q_norm", k_norm="k_norm", attn_softcap_attr="attn_logit_softcapping",
                      final_softcap_attr="final_logit_softcapping", embed_scale=True, sliding_window_attr="sliding_window"))
register(Architecture("gemma", ("gemma",), **_LLAMA, embed_scale=True))
register(Architecture("gpt2", ("gpt2",), layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe",
                      final_norm="transformer.ln_f", attn="attn", q=None, k=None, v=None, qkv="c_attn", o="c_proj", conv1d=True,
                      ln_attn="ln_1", ln_mlp="ln_2", positions="learned"))
register(Architecture("gpt_neox", ("gpt_neox",), layers="gpt_neox.layers", embed="gpt_neox.embed_in",
                      final_norm="gpt_neox.final_layer_norm", rotary="gpt_neox.rotary_emb",
                      attn="attention", q=None, k=None, v=None, qkv="query_key_value", qkv_split="per_head", o="dense",
                      parallel=lambda c: bool(getattr(c, "use_parallel_residual", True)), positions="partial_rotary"))
register(Architecture("gptj", ("gptj",), layers="transformer.h", embed="transformer.wte", final_norm="transformer.ln_f",
                      rotary="transformer.rotary_emb", attn="attn", o="out_proj", ln_attn="ln_1", ln_mlp=None, parallel=True,
                      positions="partial_rotary"))
register(Architecture("opt", ("opt",), layers="model.decoder.layers", embed="model.decoder.embed_tokens",
                      pos_embed="model.decoder.embed_positions", final_norm="model.decoder.final_layer_norm",
                      o="out_proj", mlp="fc2", mlp_in="fc1", ln_attn="self_attn_layer_norm", ln_mlp="final_layer_norm",
                      positions="learned", check=_opt_check))


class UnsupportedArchitecture(NotImplementedError):
    """A model family that the architecture table does not describe."""


def supported_model_types() -> list[str]:
    return sorted(ARCHITECTURES)


def unsupported_message(model_type: str, reason: str | None = None) -> str:
    what = f"model_type {model_type!r} is not in icl-interp's architecture table" if reason is None else reason
    return (
        f"{what}. Supported model types: {', '.join(supported_model_types())}. "
        "What still works through the TransformerLens engine path (engine='transformer-lens', if TransformerLens itself "
        "supports the model): Model.run with captures and edits, accuracy and the kernel analyses; the nnsight engine, "
        "verify, the patching fast paths, the prefix cache, icl-vs-gd and the heads report need the table. To add the "
        "family, register an interp.architectures.Architecture for it."
    )


def architecture_of(model_or_config) -> Architecture:
    """The table entry of a transformers model (or config); raises :class:`UnsupportedArchitecture`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        raise UnsupportedArchitecture(unsupported_message(str(model_type)))
    if arch.check is not None:
        reason = arch.check(config)
        if reason:
            raise UnsupportedArchitecture(unsupported_message(str(model_type), reason))
    return arch
